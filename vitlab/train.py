"""``python -m vitlab.train``: fit a model on a dataset with a recipe and hardware profile, then test.

    python -m vitlab.train model=mini_vit data=cifar10
    python -m vitlab.train experiment=cifar10_mini_vit hardware=rtx3060_6gb
    python -m vitlab.train run_dir=logs/train/runs/<date>_<time>        # continue a run where it stopped

The run dir (``paths.output_dir``) receives ``checkpoints/`` (best by val top-1, and last),
``tensorboard/``, the resolved ``config.yaml`` and, after testing, ``metrics.json``. Under
``protocol=heldout`` (the default) the best checkpoint is tested; under ``protocol=seed`` (each
original's own protocol, docs/seeds/) the final weights, beside the best of the test scores of fit. :func:`train` is the task itself, usable without the command line.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, OmegaConf, open_dict

from callbacks import EpochCurve, SDPABackend
from vitlab.checkpoint import check_resume_checkpoint
from vitlab.cli import check_group_choices, check_overrides_compose, composition_error, one_line_errors, run_entry_point
from vitlab.config import HardwareConfig, register_configs, split_batch, to_hardware, to_recipe
from vitlab.errors import ConfigError, VitlabError

register_configs()

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# How numbers are measured (conf/protocol/): held-out selection, or each original's own protocol.
PROTOCOLS = ("heldout", "seed")


def train(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Fit, test the best checkpoint, write ``metrics.json``; returns the metrics.

    ``choices`` are the config group selections (``{"data": "cifar10", ...}``) recorded with the metrics.
    """
    choices = choices or {}
    started = time.perf_counter()
    recipe, hardware = to_recipe(cfg.recipe), to_hardware(cfg.hardware)
    batch_per_device, accumulate = split_batch(recipe, hardware)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    if ckpt_path is None and (output_dir / "checkpoints" / "last.ckpt").is_file():
        # The run dir already holds a run (a SLURM job requeued after its time limit reruns in its
        # sweep folder): continue it instead of overwriting its checkpoints.
        ckpt_path = str(output_dir / "checkpoints" / "last.ckpt")
        rank_zero_info(f"{output_dir} already holds a run: continuing from {ckpt_path}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed: expected an integer in [0, 2**32), got {cfg.seed!r}")

    protocol = cfg.get("protocol", "heldout")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)} (files in conf/protocol/)")
    # With data.val_size=0 the validation split is the test split: its curve is a test curve.
    validates_on_test = cfg.data.get("val_size") == 0

    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, batch_size=batch_per_device)
    module = build(cfg.model, recipe=OmegaConf.to_container(cfg.recipe, resolve=True))
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, module)
    curve = EpochCurve()
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        accumulate_grad_batches=accumulate,
        callbacks=_instantiate_group(cfg.get("callbacks")) + _hardware_callbacks(hardware) + [curve],
        logger=_instantiate_group(cfg.get("logger")) or False,
    )
    _save_config(cfg, output_dir)
    rank_zero_info(
        f"run dir: {output_dir} | batch {recipe.batch_size} = {batch_per_device} per device x "
        f"{hardware.devices} device(s) x {accumulate} accumulation | {hardware.precision} on {hardware.resolved_accelerator()}"
    )

    fit_started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_time = time.perf_counter() - fit_started
    metrics: dict[str, Any] = {
        "protocol": protocol,
        "model": cfg.model.net.name,
        "data": choices.get("data"),
        "recipe": choices.get("recipe"),
        "hardware": choices.get("hardware"),
        "params": sum(p.numel() for p in module.net.parameters()),
        "trainable_params": sum(p.numel() for p in module.net.parameters() if p.requires_grad),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "val/top1_best": module.best_val_top1,
        "fit_time_s": round(fit_time, 1),  # includes validation; a resumed run counts only its own part
    }
    metrics.update(getattr(module, "run_metrics", {}))  # what callbacks measured: FLOPs, images/s, MFU
    curve_split = "test" if validates_on_test else "val"
    metrics[f"{curve_split}/top1_per_epoch"] = [{"epoch": p["epoch"], "top1": p["top1"]} for p in curve.points]
    if validates_on_test and curve.best is not None:
        # The originals that scored the test split during training reported the best of those scores.
        metrics["test/top1_best"] = curve.best["top1"]
        metrics["test/top1_best_epoch"] = curve.best["epoch"]
    if cfg.test:
        if protocol == "seed":
            # The originals report the final weights' test score (beside the best of the curve).
            best = ""
        else:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if not best:
                rank_zero_warn("no best checkpoint (validation off?): testing the last weights")
        metrics["tested_ckpt"] = best or None
        metrics["tested_weights"] = "best" if best else "final"
        (results,) = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(results)
        if protocol == "seed":
            metrics["test/top1_final"] = results.get("test/top1")
    metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
    _write_metrics(metrics, trainer, cfg, output_dir)
    return metrics


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` -> the run dir's ``checkpoints/last.ckpt``; a file path must exist."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last: no checkpoint at {last}; give run_dir=<the folder of the run to continue>")
        return str(last)
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path: no checkpoint file at {path.resolve()}; give an existing .ckpt file or ckpt_path=last with run_dir=<run folder>")
    return str(path)


def continued_run_config(cfg: DictConfig) -> tuple[DictConfig, dict[str, str]]:
    """The config of the run in ``run_dir`` (its first invocation's overrides, then today's) and its
    group choices."""
    run_dir = Path(cfg.run_dir)
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ConfigError(f"run_dir: {run_dir.resolve()} holds no .hydra/overrides.yaml; give the folder of an earlier vitlab run")
    skip = ("run_dir=", "ckpt_path=")
    earlier = [o for o in OmegaConf.load(saved) if not o.startswith(skip)]
    today = list(HydraConfig.get().overrides.task)
    composed = hydra.compose(config_name="train", overrides=earlier + today, return_hydra_config=True)
    choices = dict(composed.hydra.runtime.choices)
    with open_dict(composed):
        del composed["hydra"]
    if composed.ckpt_path is None:
        composed.ckpt_path = "last"
    return composed, choices


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with plain containers; bad input raised by the target comes out as
    itself instead of wrapped in Hydra's InstantiationException (so it stays one line)."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, VitlabError):
            raise err.__cause__ from None
        raise


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [build(node) for node in group.values() if node and "_target_" in node]


def _hardware_callbacks(hardware: HardwareConfig) -> list[Any]:
    return [] if hardware.sdpa_backend == "auto" else [SDPABackend(hardware.sdpa_backend)]


@rank_zero_only
def _save_config(cfg: DictConfig, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)


@rank_zero_only
def _write_metrics(metrics: dict[str, Any], trainer: L.Trainer, cfg: DictConfig, output_dir: Path) -> None:
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    hparams = {
        "model": cfg.model.net.name,
        "data": str(cfg.data._target_).rsplit(".", 1)[-1],
        "lr": cfg.recipe.optimizer.lr,
        "batch_size": cfg.recipe.batch_size,
        "epochs": cfg.recipe.epochs,
        "seed": cfg.seed,
        "precision": str(cfg.hardware.precision),
        "protocol": str(cfg.get("protocol", "heldout")),
    }
    scores = {
        f"hp/{k.replace('/', '_')}": float(v)
        for k, v in metrics.items()
        if k.startswith(("test/", "val/top1_best")) and isinstance(v, int | float)  # not the per-epoch curves
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # its HPARAMS tab pairs them with the final metrics
            logger.log_hyperparams(hparams, scores)
        else:
            logger.log_hyperparams(hparams)
            logger.log_metrics(scores)
        logger.save()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    with one_line_errors():
        if cfg.run_dir:
            try:
                cfg, choices = continued_run_config(cfg)
            except (ConfigCompositionException, MissingConfigException) as err:
                raise composition_error(err, list(HydraConfig.get().overrides.task), CONF_DIR) from None
        else:
            choices = dict(HydraConfig.get().runtime.choices)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            check_sweep_can_use_ddp(cfg)
        metrics = train(cfg, choices)
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)


def check_sweep_can_use_ddp(cfg: DictConfig) -> None:
    """Refuse a local sweep of multi-process runs. Lightning's DDP launcher starts the other ranks by
    re-running the command line, which in a sweep (-m) re-runs the whole sweep in every rank. Under
    SLURM (hydra/launcher=slurm) or torchrun the ranks come from the job instead, which works."""
    hardware = to_hardware(cfg.hardware)
    launched_outside = any(k in os.environ for k in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID"))
    if hardware.devices > 1 and hardware.strategy.startswith("ddp") and not launched_outside:
        raise ConfigError(
            f"hardware.strategy: {hardware.strategy} over {hardware.devices} devices cannot run inside a local sweep (-m): "
            "Lightning would re-run the whole sweep in every rank; sweep on SLURM (hydra/launcher=slurm) or "
            "start each run on its own"
        )


def check_run_dir_exists(argv: list[str]) -> None:
    """``run_dir=<folder>`` must name an earlier run's folder; checked before Hydra creates it."""
    for arg in argv:
        if arg.startswith("run_dir="):
            value = arg.partition("=")[2].strip("'\"")
            if value not in ("", "null") and not Path(value).is_dir():
                raise ConfigError(f"run_dir: no folder at {Path(value).resolve()}; give the folder of an earlier run (logs/<task>/runs/<date>_<time>)")


def main() -> None:
    run_entry_point(
        _hydra_main,
        check_run_dir_exists,
        partial(check_group_choices, conf_dir=CONF_DIR),
        partial(check_overrides_compose, conf_dir=CONF_DIR, config_name="train"),
    )


if __name__ == "__main__":
    main()
