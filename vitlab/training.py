"""What a ``vitlab-train`` run does once its config is composed: build the data, the network and the
Trainer, fit, test (the best checkpoint under ``protocol=heldout``, the final weights under
``protocol=seed``) and write ``metrics.json``. :func:`train` is the task itself, usable without the
command line (docs/python.md); vitlab/train.py is the command, which imports this module only when
a run starts.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, ListConfig, OmegaConf

from vitlab.callbacks import EpochCurve, SDPABackend, collect_records
from vitlab.checkpoint import DigestCheckpointIO, check_resume_checkpoint
from vitlab.config import HardwareConfig, split_batch, to_hardware, to_recipe
from vitlab.errors import ConfigError
from vitlab.finetune import init_from_run
from vitlab.instantiate import build, build_module
from vitlab.measure import SUGGESTED_PRECISIONS, TRAINER_PRECISIONS
from vitlab.resume import checkpoint_to_continue
from vitlab.run_metrics import RunMetrics
from vitlab.runs import remove_orphaned_temp_files, run_lock
from vitlab.utils import reuse_freed_memory

log = logging.getLogger(__name__)

# How numbers are measured (conf/protocol/): held-out selection, or each original's own protocol.
PROTOCOLS = ("heldout", "seed")


def train(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Fit, test the best checkpoint, write ``metrics.json``; returns the metrics.

    ``choices`` are the config group selections (``{"data": "cifar10", ...}``) recorded with the metrics.
    """
    choices = choices or {}
    started = time.perf_counter()
    recipe, hardware = to_recipe(cfg.recipe), to_hardware(cfg.hardware)
    if hardware.reuse_freed_memory:
        reuse_freed_memory()
    batch_per_device, accumulate = split_batch(recipe, hardware)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = checkpoint_to_continue(cfg.ckpt_path, output_dir)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed: expected an integer in [0, 2**32), got {cfg.seed!r}")

    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_trainer_args(trainer_args)
    check_within_schedule(cfg.trainer.get("max_epochs"), recipe.epochs)
    run_tags(cfg.get("tags"))  # a value that is no list of labels is refused before the run
    protocol = cfg.get("protocol", "heldout")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)} (files in conf/protocol/)")
    # With data.val_size=0 the validation split is the test split: its curve is a test curve.
    validates_on_test = cfg.data.get("val_size") == 0

    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, batch_size=batch_per_device)
    module = build_module(cfg.model, recipe=OmegaConf.to_container(cfg.recipe, resolve=True))
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, module)
    init_from = init_from_run(cfg, module, ckpt_path, output_dir)  # fine-tuning: another run's weights
    check_monitors(cfg.get("callbacks"), module)
    # vitlab's classifiers clamp log_every_n_steps to an epoch's steps, so a short run still logs its
    # step metrics; Lightning's warning that it would not is then wrong.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    curve = EpochCurve()
    callbacks = _instantiate_group(cfg.get("callbacks")) + _hardware_callbacks(hardware) + [curve]
    if any(isinstance(cb, ModelSummary) for cb in callbacks):  # the config's summary is the one summary
        trainer_args.setdefault("enable_model_summary", False)
    try:
        trainer = L.Trainer(
            **trainer_args,
            accumulate_grad_batches=accumulate,
            callbacks=callbacks,
            logger=_instantiate_group(cfg.get("logger")) or False,
            plugins=_plugins(),
        )
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(f"trainer: {(str(err).splitlines() or [type(err).__name__])[0]}; check the trainer.* overrides") from None
    _check_data(datamodule)
    # Nothing is written into the run folder before here: a refused run leaves it as it was.
    with _folder_lock(output_dir):
        if trainer.is_global_zero:
            remove_orphaned_temp_files(output_dir)
        _save_config(cfg, output_dir)
        rank_zero_info(
            f"run dir: {output_dir} | batch {recipe.batch_size} = {batch_per_device} per device x "
            f"{hardware.devices} device(s) x {accumulate} accumulation | {hardware.precision} on {hardware.resolved_accelerator()}"
        )

        fit_started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        fit_time = time.perf_counter() - fit_started
        metrics = _fit_metrics(cfg, choices, protocol, module, trainer, curve, validates_on_test, fit_time)
        metrics.init_from = init_from
        if cfg.test:
            metrics.update(_test_metrics(protocol, module, trainer, datamodule, output_dir))
        metrics.update(collect_records(trainer.callbacks))  # what callbacks measured: FLOPs, images/s, MFU, ...
        metrics.wall_time_s = round(time.perf_counter() - started, 1)
        _write_metrics(metrics, trainer, cfg, output_dir)
    return metrics.to_json()


def _fit_metrics(cfg: DictConfig, choices: dict[str, str], protocol: str, module: Any, trainer: L.Trainer,
                 curve: EpochCurve, validates_on_test: bool, fit_time: float) -> RunMetrics:
    """What a fit gives metrics.json: the run's choices, the network's size, steps, the curve and
    what the callbacks measured."""
    metrics = RunMetrics(
        protocol=protocol,
        model=cfg.model.net.name,
        data=choices.get("data"),
        recipe=choices.get("recipe"),
        hardware=choices.get("hardware"),
        tags=run_tags(cfg.get("tags")) or None,
        debug=debug_mode(choices.get("debug"), cfg.trainer),
        params=sum(p.numel() for p in module.net.parameters()),
        trainable_params=sum(p.numel() for p in module.net.parameters() if p.requires_grad),
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        val_top1_best=module.best_val_top1,
        fit_time_s=round(fit_time, 1),
    )
    # What the last validation's scores are over (that of the checkpoint when this process ran none).
    if "val/images" in trainer.callback_metrics:
        metrics.val_images = int(trainer.callback_metrics["val/images"].item())
    else:
        metrics.val_images = getattr(module, "val_images", None)
    points = [{"epoch": p["epoch"], "top1": p["top1"]} for p in curve.points]
    if validates_on_test:
        metrics.test_top1_per_epoch = points
        if curve.best is not None:
            # The originals that scored the test split during training reported the best of those scores.
            metrics.test_top1_best, metrics.test_top1_best_epoch = curve.best["top1"], curve.best["epoch"]
    else:
        metrics.val_top1_per_epoch = points
    return metrics


def _test_metrics(protocol: str, module: Any, trainer: L.Trainer, datamodule: Any, output_dir: Path) -> dict[str, Any]:
    """The test scores of the best checkpoint (``protocol=seed``: of the final weights, as the
    originals report them) and what they are over."""
    if protocol == "seed":
        best = ""
    else:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            rank_zero_warn("no best checkpoint (validation off?): testing the last weights")
    # Relative to the run folder, like every path a run folder keeps: it stays right when moved.
    metrics: dict[str, Any] = {"tested_ckpt": _relative_to(best, output_dir) if best else None,
                               "tested_weights": "best" if best else "final"}
    (results,) = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
    metrics.update(results)
    if protocol == "seed":
        metrics["test/top1_final"] = results.get("test/top1")
    if "test/images" in results:
        metrics["test/images"] = int(results["test/images"])
        metrics["test/partial"] = metrics["test/images"] < split_size(trainer.test_dataloaders)
    return metrics


def run_tags(tags: Any) -> list[str]:
    """The run's labels (``tags=[a,b]``) as strings; one label (``tags=a``) is a list of one."""
    if tags is None:
        return []
    items = list(tags) if isinstance(tags, (ListConfig, list, tuple)) else [tags]
    if isinstance(tags, (DictConfig, dict)) or any(isinstance(t, (DictConfig, ListConfig, dict, list)) for t in items):
        raise ConfigError("tags: expected a list of labels, e.g. tags=[baseline,lr_sweep]")
    return [str(t) for t in items]


def debug_mode(debug_config: str | None, trainer: DictConfig) -> str | None:
    """What makes a run a debug run, for metrics.json: the debug config it was started with
    (``debug=smoke``) and the trainer settings that train on less than the data (``fast_dev_run``,
    ``overfit_batches=N``, ``limit_train_batches=N``); None for a full run."""
    marks = [f"debug={debug_config}"] if debug_config else []
    if trainer.get("fast_dev_run"):
        marks.append("fast_dev_run")
    if trainer.get("overfit_batches"):
        marks.append(f"overfit_batches={trainer.overfit_batches}")
    limit = trainer.get("limit_train_batches")
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):
        marks.append(f"limit_train_batches={limit}")
    return ", ".join(marks) or None


def check_within_schedule(max_epochs: Any, recipe_epochs: int) -> None:
    """A run (a resumed one too) stops within its LR schedule: ``trainer.max_epochs`` past
    ``recipe.epochs`` is refused in one line, since the extra epochs would train at the schedule's
    final LR; ``recipe.epochs`` is what lengthens a schedule."""
    if isinstance(max_epochs, int) and max_epochs > recipe_epochs > 0:
        raise ConfigError(
            f"trainer.max_epochs: {max_epochs} is past recipe.epochs={recipe_epochs}, where the LR schedule ends (the "
            f"extra epochs would train at its final LR); set recipe.epochs={max_epochs} to extend the schedule "
            f"(trainer.max_epochs follows it), or trainer.max_epochs<={recipe_epochs} to stop early on it"
        )


def check_monitors(callbacks: DictConfig | None, module: Any) -> None:
    """A callback's ``monitor`` must name something fit logs, or Lightning refuses it only after the
    first epoch's validation."""
    known = getattr(module, "monitorable", None)
    if not callbacks or known is None:
        return
    for name, node in callbacks.items():
        monitor = node.get("monitor") if isinstance(node, DictConfig) else None
        if monitor is None or monitor in known or (str(monitor).startswith("train/") and getattr(module, "net_returns_aux", False)):
            continue
        raise ConfigError(
            f"callbacks.{name}.monitor: {monitor!r} is not logged during fit; use one of {', '.join(sorted(known))}"
        )


def split_size(loaders: Any) -> int:
    """Images in the datasets behind a loader or a list of loaders (the whole split, whatever was scored)."""
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    return sum(len(loader.dataset) for loader in loaders)


def _check_data(datamodule: Any) -> None:
    """Fetch, read and check the dataset before the run writes anything (config.yaml, the loggers'
    files): a missing, corrupt or inconsistent dataset is refused while the run folder holds only
    Hydra's record. The first process does it; Lightning's calls in fit then find it done, and the
    other ranks of a multi-process run set up there, as before."""
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()
        datamodule.setup("fit")


def _folder_lock(output_dir: Path) -> Any:
    """The run folder's lock, taken by the first process only (the other ranks of a multi-device run
    write into the folder that the first one holds)."""
    return run_lock(output_dir) if rank_zero_only.rank == 0 else nullcontext()


def _relative_to(path: str, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return path


def _plugins() -> list[Any]:
    """The checkpoint IO that writes and checks the content digest; under SLURM, Lightning's SLURM
    environment without its auto-requeue: the checkpoint callback saves last.ckpt on the preemption
    signals and the job is requeued by submitit (hydra/launcher=slurm) or by the user, never twice."""
    plugins: list[Any] = [DigestCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


_BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches", "overfit_batches")


def check_trainer_args(args: dict[str, Any]) -> None:
    """One line for trainer.* values that Lightning would refuse with a traceback."""
    for key in ("max_epochs", "min_epochs", "max_steps", "min_steps"):
        value = args.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
            raise ConfigError(f"trainer.{key}: expected an integer >= 0 (or -1 for no limit), got {value!r}")
    for key in _BATCH_LIMITS:
        value = args.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (isinstance(value, float) and value > 1):
            raise ConfigError(
                f"trainer.{key}: expected a number of batches (an integer >= 0) or a fraction in [0, 1], got {value!r}"
            )
    if "accumulate_grad_batches" in args:
        raise ConfigError(
            "trainer.accumulate_grad_batches: accumulation follows from the batch sizes: recipe.batch_size (the "
            "effective batch) over hardware.batch_per_device x devices; set those instead"
        )
    no_step = [f"trainer.{k}=0" for k in ("max_epochs", "max_steps", "limit_train_batches") if args.get(k) == 0]
    if no_step:
        raise ConfigError(
            f"{no_step[0].split('=')[0]}: {no_step[0]} trains no step, and the run would report an untrained network; "
            "use vitlab-evaluate to score a checkpoint, or a value of at least 1"
        )
    precision = args.get("precision")
    if precision is not None and str(precision) not in TRAINER_PRECISIONS:
        raise ConfigError(f"trainer.precision: unknown precision {precision!r}; use one of {', '.join(SUGGESTED_PRECISIONS)} (or set hardware.precision)")


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
def _write_metrics(record: RunMetrics, trainer: L.Trainer, cfg: DictConfig, output_dir: Path) -> None:
    record.write(output_dir / "metrics.json")
    metrics = record.to_json()
    hparams = {
        "model": cfg.model.net.name,
        "data": str(cfg.data._target_).rsplit(".", 1)[-1],
        "lr": cfg.recipe.optimizer.lr,
        "batch_size": cfg.recipe.batch_size,
        "epochs": cfg.recipe.epochs,
        "seed": cfg.seed,
        "precision": str(cfg.hardware.precision),
        "protocol": str(cfg.get("protocol", "heldout")),
        "tags": ",".join(run_tags(cfg.get("tags"))),
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
