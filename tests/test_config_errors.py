"""Bad configurations end with one ``error: <key>: ...`` line, exit status 2 and no traceback.

Each case runs the real command-line path (``python -m vitlab.train``) in this process through
``runpy``, which costs a fraction of a subprocess; one case also runs as a real subprocess.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import flip_tensor_byte, run_cli
from vitlab.checkpoint import DigestCheckpointIO
from vitlab.models import create_model

# A tiny synthetic run: cases that pass start-up checks would train for one step on one thread.
COMMON = [
    "hardware=cpu", "hardware.num_workers=0", "recipe.epochs=1", "recipe.batch_size=8", "recipe.repeated_aug=1",
    "trainer.limit_train_batches=1", "~logger", "callbacks.progress_bar.kind=tqdm",
]
SYNTHETIC = ["data=synthetic", "data.train_size=32", "data.val_size=8", "data.test_size=8"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")

# (overrides, the start of the error line). Grouped by what is wrong.
CASES = [
    # unknown group options
    (["model=no_such_model"], "error: model=no_such_model: no such model config; choose one of: "),
    (["data=imagenet1k"], "error: data=imagenet1k: no such data config; choose one of: "),
    (["recipe=deit"], "error: recipe=deit: no such recipe config"),
    (["hardware=tpu"], "error: hardware=tpu: no such hardware config"),
    (["logger=neptune"], "error: logger=neptune: no such logger config"),
    (["hydra/launcher=no_such_launcher"], "error: hydra/launcher=no_such_launcher: no such hydra/launcher config; choose one of: "),
    # mistyped keys and unparsable overrides
    (["recipe.lr=0.1"], "error: recipe.lr: no such key in the config; did you mean recipe.optimizer.lr?"),
    (["lr=0.1"], "error: lr: no such key in the config; did you mean recipe.optimizer.lr?"),
    (["model.net.drop_rat=0.1"], "error: model.net.drop_rat: no such key in the config; did you mean model.net.drop_rate"),
    (["+model.net.embed_dimm=64"], "error: model.net.embed_dimm: mini_vit (ViTConfig) has no such setting; did you mean embed_dim?"),
    (["recipe.epochs=[1,2"], "error: recipe.epochs=[1,2: not a valid override"),
    (["--cfg=job", "recipe.optimizer.lrr=1"], "error: recipe.optimizer.lrr: no such key in the config; did you mean recipe.optimizer.lr "),
    (["+recipe.epochs=3"], "error: recipe.epochs: could not append to config"),
    (["model=mini_vit,outgrid"], "error: model=mini_vit,outgrid: a comma-separated value is a sweep; add -m"),
    (["-m", "model=mini_vit,outgrid", "recipe.optimizer.lrr=1,2"], "error: recipe.optimizer.lrr: no such key in the config; did you mean recipe.optimizer.lr"),
    (["-m", "model=mini_vit,outgrid", "recipe.batch_size=big"], "error: recipe.batch_size: Value 'big' of type 'str' could not be converted to Integer"),
    # wrong types
    (["recipe.epochs=many"], "error: recipe.epochs: Value 'many' of type 'str' could not be converted to Integer"),
    (["recipe.optimizer.lr=fast"], "error: recipe.optimizer.lr: Value 'fast' of type 'str' could not be converted to Float"),
    (["hardware.devices=two"], "error: hardware.devices: Value 'two' of type 'str' could not be converted to Integer"),
    (["seed=abc"], "error: seed: expected an integer"),
    # bad recipe values
    (["recipe.optimizer.lr=-0.001"], "error: recipe.optimizer.lr: must be positive, got -0.001"),
    (["recipe.optimizer.weight_decay=-0.1"], "error: recipe.optimizer.weight_decay: must be >= 0"),
    (["recipe.optimizer.name=lamb"], "error: recipe.optimizer.name: unknown optimizer 'lamb'"),
    (["recipe.epochs=0"], "error: recipe.epochs: must be positive, got 0"),
    (["recipe.label_smoothing=1.5"], "error: recipe.label_smoothing: must be in [0, 1)"),
    (["recipe.mixing.prob=2"], "error: recipe.mixing.prob: must be in [0, 1]"),
    (["recipe.schedule.warmup_epochs=1", "recipe.schedule.warmup_ratio=0.1"], "error: recipe.schedule: give warmup_epochs or warmup_ratio"),
    (["recipe.grad_clip=-1"], "error: recipe.grad_clip: must be positive or null"),
    (["recipe.repeated_aug=0"], "error: recipe.repeated_aug: must be >= 1"),
    # hardware
    (["hardware.devices=0"], "error: hardware.devices: must be >= 1, got 0"),
    (["hardware.devices=16", "recipe.batch_size=8"], "error: recipe.batch_size: 8 is smaller than hardware.devices=16"),
    (["hardware.devices=3"], "error: recipe.batch_size: 8 is not divisible by hardware.devices=3"),
    (["hardware.batch_per_device=3"], "error: hardware.batch_per_device: 3 does not divide the per-device batch 8"),
    (["hardware.precision=8-bit"], "error: hardware.precision: unknown precision '8-bit'"),
    (["hardware.precision=16-mixed"], "error: hardware.precision: 16-mixed needs a CUDA GPU; on CPU use 32-true or bf16-mixed"),
    pytest.param(["hardware.accelerator=gpu"], "error: hardware.accelerator: gpu asked for, but no CUDA GPU is visible", marks=NO_CUDA),
    (["hardware.num_workers=-1"], "error: hardware.num_workers: must be >= 0"),
    (["-m", "hardware=ddp", "hardware.accelerator=cpu", "hardware.sync_batchnorm=false", "seed=1,2"],
     "error: hardware.strategy: ddp over 2 devices cannot run inside a local sweep (-m)"),
    (["hardware.sync_batchnorm=true"], "error: hardware.sync_batchnorm: SyncBatchNorm runs on GPUs only"),
    # data
    (["data.num_classes=1"], "error: data.num_classes: the synthetic task has 2 to 36 classes, got 1"),
    (["data.img_size=8"], "error: data.img_size: the synthetic task needs at least 16 pixels"),
    (["data.val_size=-1"], "error: data.val_size: expected an image count >= 0"),
    (["data=image_folder"], "error: data.num_classes: no value given; add data.num_classes=<value>"),
    (["data=cifar10", "data.download=false", "data.data_dir=missing"], "error: data.data_dir"),
    (["data=image_folder", "data.root=empty_root", "data.num_classes=3"], "error: data.root: "),
    # models that cannot be built for the data
    (["model.net.num_heads=5"], "error: model.net: embed_dim 96 is not divisible by num_heads 5"),
    (["data.img_size=30"], "error: model.net: img_size 30 is not divisible by patch_size 4"),
    (["model=outgrid", "data.img_size=20"], "error: model.net: grid_sizes[0]=8 does not divide stage 0's 20x20 feature map"),
    (["model=outgrid", "model.net.kernel_size=4"], "error: model.net: kernel_size=4 must be odd"),
    # resuming
    (["ckpt_path=nope.ckpt"], "error: ckpt_path: no checkpoint file at"),
    (["ckpt_path=last"], "error: ckpt_path=last: no checkpoint at"),
    (["run_dir=no_such_run"], "error: run_dir: no folder at"),
    (["run_dir=not_a_run"], "error: run_dir: "),
    (["run_dir=damaged_run"], "error: run_dir: damaged_run/.hydra/overrides.yaml is damaged (ParserError: while parsing a flow sequence); "),
    (["ckpt_path=other_model.ckpt"], "error: ckpt_path: other_model.ckpt holds weights of outgrid_7m, not of model mini_vit; use model=outgrid_7m"),
    (["ckpt_path=five_classes.ckpt"], "error: ckpt_path: the weights in five_classes.ckpt do not fit model mini_vit (0 tensors missing, 0 unexpected, 2 of another shape; e.g. net.head.weight is [5, "),
    (["ckpt_path=flipped.ckpt"], "error: ckpt_path: flipped.ckpt fails its integrity check"),
    (["ckpt_path=tampered.ckpt"], "error: ckpt_path: tampered.ckpt holds pickled Python objects, not only tensors, and is refused (it asks for print;"),
    (["ckpt_path=truncated.ckpt"], "error: ckpt_path: truncated.ckpt is not a checkpoint (torch.save writes a zip archive; this file of 300 bytes"),
    (["ckpt_path=empty.ckpt"], "error: ckpt_path: empty.ckpt is empty (0 bytes)"),
    # trainer values Lightning refuses with a traceback
    (["trainer.max_epochs=-5"], "error: trainer.max_epochs: expected an integer >= 0 (or -1 for no limit), got -5"),
    (["trainer.precision=fp8"], "error: trainer.precision: unknown precision 'fp8'"),
    (["trainer.limit_train_batches=abc"], "error: trainer.limit_train_batches: expected a number of batches"),
    (["trainer.limit_val_batches=2.5"], "error: trainer.limit_val_batches: expected a number of batches"),
    (["model.net.depth=0"], "error: model.net.depth: must be positive, got 0"),
    (["model.net.embed_dim=0"], "error: model.net.embed_dim: must be positive, got 0"),
    (["trainer.limit_train_batches=0"], "error: trainer.limit_train_batches: trainer.limit_train_batches=0 trains no step"),
    (["trainer.max_epochs=0"], "error: trainer.max_epochs: trainer.max_epochs=0 trains no step"),
    (["+trainer.accumulate_grad_batches=2"], "error: trainer.accumulate_grad_batches: accumulation follows from the batch sizes"),
    (["callbacks.model_checkpoint.monitor=val/nonexistent"], "error: callbacks.model_checkpoint.monitor: 'val/nonexistent' is not logged during fit; use one of"),
    # the template's groups
    (["trainer=cpu"], "error: trainer=cpu: no trainer group in vitlab; hardware profiles are chosen with hardware=<auto|cpu|"),
    (["hparams_search=mnist_optuna"], "error: hparams_search=mnist_optuna: no hparams_search group in vitlab; sweeps are chosen with sweep=<"),
    # where the run folder would go
    (["paths.log_dir=a_file/logs"], "error: paths.log_dir: cannot create run folders under a_file/logs"),
    pytest.param(["paths.log_dir=read_only/logs"], "error: paths.log_dir: cannot create run folders under read_only/logs",
                 marks=pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")),
    pytest.param(["paths.log_dir=/proc/forbidden"], "error: paths.log_dir: cannot create run folders under /proc/forbidden: /proc is not writable",
                 marks=pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")),
    (["paths.output_dir=a_file/run"], "error: paths.output_dir: cannot create the run folder a_file/run: "),
    (["paths.output_dir=" + "x" * 300], "error: paths.output_dir: cannot create the run folder xxx"),
    (["callbacks.model_checkpoint.preemption_signals=[SIGNOPE]"], "error: callbacks.model_checkpoint.preemption_signals: unknown signal 'SIGNOPE'"),
    # callbacks
    (["callbacks.nan_guard.mode=ignore"], "error: callbacks.nan_guard.mode: unknown mode 'ignore'; use stop or skip"),
    (["callbacks.progress_bar.kind=fancy"], "error: callbacks.progress_bar.kind: unknown progress bar 'fancy'"),
]


class _RunsPrint:
    """Pickled as a call to print: what a tampered checkpoint would run when unpickled."""

    def __reduce__(self):
        return (print, ("this ran while loading the checkpoint",))


def _write_checkpoints(folder) -> None:
    net = create_model("mini_vit", num_classes=5)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    DigestCheckpointIO().save_checkpoint(
        {"state_dict": state, "hyper_parameters": {"net": {"name": "mini_vit", "num_classes": 5}}}, folder / "five_classes.ckpt")
    DigestCheckpointIO().save_checkpoint(
        {"state_dict": {"net.head.weight": torch.zeros(2, 2)}, "hyper_parameters": {"net": {"name": "outgrid_7m"}}},
        folder / "other_model.ckpt")
    torch.save({"state_dict": state, "callbacks": {"x": _RunsPrint()}}, folder / "tampered.ckpt")
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "truncated.ckpt").write_bytes((folder / "five_classes.ckpt").read_bytes()[:300])
    # A checkpoint of the configured model, with its digest, and then one byte of a weight flipped on disk.
    net = create_model("mini_vit", num_classes=10)
    DigestCheckpointIO().save_checkpoint(
        {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "hyper_parameters": {"net": {"name": "mini_vit"}}},
        folder / "flipped.ckpt",
    )
    flip_tensor_byte(folder / "flipped.ckpt")
    (folder / "not_a_run").mkdir()
    (folder / "damaged_run" / ".hydra").mkdir(parents=True)
    (folder / "damaged_run" / ".hydra" / "overrides.yaml").write_text("[model=mini_vit, data=synth")


def run_in_process(args: list[str]) -> tuple[int, str]:
    """``python -m vitlab.train <args>`` in this process: (exit status, stderr)."""
    GlobalHydra.instance().clear()
    argv, stderr = sys.argv, io.StringIO()
    sys.argv = ["vitlab.train", *args]
    code = 0
    try:
        with contextlib.redirect_stderr(stderr):
            runpy.run_module("vitlab.train", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return code, stderr.getvalue()


def test_the_list_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("args, expected", CASES)
def test_bad_config_gives_one_line(args, expected, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    for split in ("train", "test"):  # an ImageFolder root without class folders
        (tmp_path / "empty_root" / split).mkdir(parents=True)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "read_only").mkdir()
    (tmp_path / "read_only").chmod(0o555)
    if any(a.startswith("ckpt_path=") or a.startswith("run_dir=") for a in args):
        _write_checkpoints(tmp_path)
    data = [] if any(a.startswith("data=") for a in args) else SYNTHETIC
    flags = [a for a in args if a.startswith("-")]  # Hydra wants its flags before the overrides
    code, stderr = run_in_process([*flags, *COMMON, *data, *(a for a in args if a not in flags)])
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(expected), stderr[-2000:]
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr, stderr[-2000:]
    assert "this ran while loading" not in capsys.readouterr().out
    if args == ["model=no_such_model"]:  # the options are listed
        assert "mini_vit" in errors[0] and "outgrid" in errors[0]
    # A refused run leaves no run folder behind, and writes nothing into a folder it refuses.
    assert not list(tmp_path.glob("logs/train/runs/*")), sorted(p.name for p in tmp_path.glob("logs/train/runs/*/*"))
    if (tmp_path / "not_a_run").is_dir():
        assert not list((tmp_path / "not_a_run").iterdir())


def test_mistyped_key_is_one_line_from_a_real_process(tmp_path):
    done = run_cli("data=synthetic", "hardware=cpu", "recipe.lr=0.1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: recipe.lr: no such key in the config; did you mean recipe.optimizer.lr? `python -m vitlab.train "
        "--cfg job` prints every key (a new key is added with +recipe.lr=...)"
    ]
    assert not (tmp_path / "logs").exists()  # refused before a run dir was made
