"""Config schemas and start-up checks.

The recipe and hardware groups extend the dataclasses below (registered in Hydra's ConfigStore as
``recipe/schema`` and ``hardware/schema``), and every data config extends one of the data schemas
(``schema/data/<kind>``), so OmegaConf rejects unknown keys and wrong types while composing (a mistyped
key gets a "did you mean"); the schemas are registered when ``vitlab`` is imported, so Hydra's compose
API works without further set-up; :func:`to_recipe` / :func:`to_hardware` then build the dataclasses, whose ``__post_init__``
runs the cross-field checks before anything is built. Every failure is a :class:`ConfigError` naming
the key as it is typed on the command line.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitlab.errors import ConfigError
from vitlab.registry_nodes import store_registry_nodes
from vitlab.resume import resume_subdir


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # SGD only
    # No weight decay on biases, norm weights, position tables and CLS tokens (the network's
    # no_weight_decay()); false decays every parameter, as the Mini-ViT seed did.
    exclude_from_decay: bool = True
    # The fused (one-kernel) Adam/AdamW step: null = on where torch has it (CUDA GPUs and the CPU).
    fused: Optional[bool] = None
    # timm's layer-wise LR decay: the head at lr, each group below it (the network's group_matcher:
    # blocks, then the stem) at layer_decay times the one above; null = one LR for all.
    layer_decay: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.name in ("adamw", "adam", "sgd"), "recipe.optimizer.name", f"unknown optimizer {self.name!r}; use adamw, adam or sgd")
        _check(self.lr > 0, "recipe.optimizer.lr", f"must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "recipe.optimizer.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "recipe.optimizer.betas", f"needs two values in [0, 1), got {self.betas}")
        _check(self.layer_decay is None or 0 < self.layer_decay <= 1, "recipe.optimizer.layer_decay", f"must be in (0, 1] or null, got {self.layer_decay}")


@dataclass
class ScheduleConfig:
    """Per-step linear warmup then cosine decay; warmup given in epochs or as a ratio of all steps."""

    warmup_epochs: Optional[float] = None
    warmup_ratio: Optional[float] = None
    warmup_lr: float = 1e-6  # LR of the first step; the warmup rises linearly from it
    min_lr: float = 0.0
    # Parity with seeds whose scheduler stepped after the optimizer: the first step runs at the peak LR.
    first_step_peak: bool = False

    def __post_init__(self) -> None:
        _check(
            self.warmup_epochs is None or self.warmup_ratio is None,
            "recipe.schedule",
            "give warmup_epochs or warmup_ratio, not both (set the other to null)",
        )
        _check(self.warmup_epochs is None or self.warmup_epochs >= 0, "recipe.schedule.warmup_epochs", "must be >= 0")
        _check(self.warmup_ratio is None or 0 <= self.warmup_ratio < 1, "recipe.schedule.warmup_ratio", "must be in [0, 1)")
        _check(self.min_lr >= 0 and self.warmup_lr >= 0, "recipe.schedule", "warmup_lr and min_lr must be >= 0")


@dataclass
class MixingConfig:
    """Batch mixing through timm's Mixup: CutMix / MixUp with probability ``prob`` per batch."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5  # when both are on: chance of CutMix instead of MixUp

    def __post_init__(self) -> None:
        _check(self.mixup_alpha >= 0 and self.cutmix_alpha >= 0, "recipe.mixing", "alphas must be >= 0")
        _check(0 <= self.prob <= 1, "recipe.mixing.prob", f"must be in [0, 1], got {self.prob}")
        _check(0 <= self.switch_prob <= 1, "recipe.mixing.switch_prob", f"must be in [0, 1], got {self.switch_prob}")

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass
class RandAugmentConfig:
    num_ops: int = 2
    magnitude: int = 9


@dataclass
class AugmentConfig:
    """The train-time augmentations (the values are range-checked by ``datamodules.resolve_augment``)."""

    hflip: bool = False  # RandomHorizontalFlip(0.5)
    crop_padding: int = 0  # RandomCrop(img_size, padding, zero fill); 0 = no crop
    auto_augment: Optional[str] = None  # null | cifar10 | imagenet | svhn
    rand_augment: Optional[RandAugmentConfig] = None  # null | {num_ops, magnitude}
    random_erasing: float = 0.0  # probability; erased pixels get N(0, 1) noise
    random_erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.4])
    random_erasing_ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])
    # torchvision (per-pixel N(0, 1), log-uniform aspect) or clear_vit (the original's: one U(0, 1)
    # constant per channel, uniform aspect; protocol=seed picks it for clear-vit)
    random_erasing_style: str = "torchvision"
    # null | [min_scale, max_scale]: RandomResizedCrop first, replacing the resize and the padded crop
    random_resized_crop: Optional[list[float]] = None
    randaug_legacy: bool = False  # the clear-vit seed's own RandAugment; excludes the other two


@dataclass
class RecipeConfig:
    epochs: int = 100  # length of the LR schedule, and trainer.max_epochs unless that is overridden
    batch_size: int = 128  # effective (global) batch: per-device batch x devices x accumulation
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.0
    mixing: MixingConfig = field(default_factory=MixingConfig)
    grad_clip: Optional[float] = None  # max global grad norm; null = no clipping
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # read by the DataModule's transforms
    repeated_aug: int = 1  # each image this many times per epoch, in unrelated batches
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "recipe.epochs", f"must be positive, got {self.epochs}")
        _check(self.batch_size > 0, "recipe.batch_size", f"must be positive, got {self.batch_size}")
        _check(0 <= self.label_smoothing < 1, "recipe.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        _check(self.grad_clip is None or self.grad_clip > 0, "recipe.grad_clip", "must be positive or null")
        _check(self.repeated_aug >= 1, "recipe.repeated_aug", f"must be >= 1, got {self.repeated_aug}")


@dataclass
class HardwareConfig:
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"  # ddp for several devices (conf/hardware/ddp.yaml)
    sync_batchnorm: bool = False  # BatchNorm statistics over all devices (several devices only)
    precision: str = "32-true"
    batch_per_device: Optional[int] = None  # micro-batch; null = recipe batch / devices, no accumulation
    num_workers: int = 4  # DataLoader worker processes; the data config reads it (data.num_workers)
    pin_memory: bool = True  # pinned loader memory (CUDA only); the data config reads it (data.pin_memory)
    compile: bool = False  # torch.compile the network
    # Recompute each block's activations in the backward pass instead of keeping them: less memory
    # for about one more forward of compute (the network's set_grad_checkpointing).
    grad_checkpointing: bool = False
    # Which kernel scaled_dot_product_attention may use: auto (torch picks), flash, efficient, math,
    # cudnn. The CPU has flash and math only.
    sdpa_backend: str = "auto"
    # How vitlab.evaluate runs the network (vitlab-predict: --inference): eager (as it trains), fused
    # (an inference-only copy, BatchNorm folded into its convolution and the network's own folds) or
    # compiled (fused, then torch.compile). vitlab.inference says what each does.
    inference: str = "eager"
    # Keep freed tensor memory in the process for the next step instead of returning it to the
    # system (glibc; vitlab.utils.reuse_freed_memory): fewer page faults, the peak memory stays held.
    reuse_freed_memory: bool = True
    peak_tflops: Optional[float] = None  # the device's peak for MFU; null = unknown

    def __post_init__(self) -> None:
        # torch and what needs it load when a run starts, not when a command line is composed
        import torch

        from vitlab.inference import INFERENCE_MODES
        from vitlab.layers.attention import SDPA_BACKENDS
        from vitlab.measure import SUGGESTED_PRECISIONS, TRAINER_PRECISIONS, resolve_precision

        _check(self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"), "hardware.accelerator", f"unknown accelerator {self.accelerator!r}; use auto, cpu or gpu")
        _check(self.devices >= 1, "hardware.devices", f"must be >= 1, got {self.devices}")
        _check(self.precision in TRAINER_PRECISIONS, "hardware.precision", f"unknown precision {self.precision!r}; use one of {', '.join(SUGGESTED_PRECISIONS)}")
        _check(self.batch_per_device is None or self.batch_per_device > 0, "hardware.batch_per_device", "must be positive or null")
        _check(self.num_workers >= 0, "hardware.num_workers", "must be >= 0")
        _check(self.sdpa_backend in SDPA_BACKENDS, "hardware.sdpa_backend", f"unknown backend {self.sdpa_backend!r}; use one of {', '.join(SDPA_BACKENDS)}")
        _check(self.inference in INFERENCE_MODES, "hardware.inference", f"unknown mode {self.inference!r}; use one of {', '.join(INFERENCE_MODES)}")
        if self.resolved_accelerator() == "cpu":
            _check(
                resolve_precision(self.precision).dtype != torch.float16,
                "hardware.precision",
                f"{self.precision} needs a CUDA GPU; on CPU use 32-true or bf16-mixed",
            )
            _check(not self.sync_batchnorm, "hardware.sync_batchnorm", "SyncBatchNorm runs on GPUs only; set it to false on CPU")
            _check(
                self.sdpa_backend not in ("efficient", "cudnn"),
                "hardware.sdpa_backend",
                f"{self.sdpa_backend} is a CUDA kernel; on CPU use auto, flash or math",
            )
        elif not torch.cuda.is_available():
            raise ConfigError(f"hardware.accelerator: {self.accelerator} asked for, but no CUDA GPU is visible; use hardware=cpu or hardware=auto")
        elif self.precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"hardware.precision: {self.precision} needs a GPU with bfloat16 (Ampere or newer); use 16-mixed")
        elif self.devices > torch.cuda.device_count():
            raise ConfigError(
                f"hardware.devices: {self.devices} GPUs asked for, but {torch.cuda.device_count()} visible; "
                f"use hardware.devices={torch.cuda.device_count()}"
            )

    def resolved_accelerator(self) -> str:
        import torch

        if self.accelerator == "auto":
            return "gpu" if torch.cuda.is_available() else "cpu"
        return "gpu" if self.accelerator == "cuda" else self.accelerator


def where_or_how(default: Any) -> Any:
    """A data key that says where the files are or how they are loaded, not which images arrive in
    which order: a run may change it when it continues (:mod:`vitlab.resume`)."""
    return field(default=default, metadata={"may_change_on_resume": True})


def data_keys_that_may_change() -> set[str]:
    """The data keys of every schema declared with :func:`where_or_how`."""
    from dataclasses import fields

    return {f.name for schema in DATA_SCHEMAS.values() for f in fields(schema) if f.metadata.get("may_change_on_resume")}


@dataclass
class DataConfig:
    """Keys every image DataModule takes (``datamodules.ImageDataModule``); each data config extends
    one of the subclasses below, which add the keys of its DataModule."""

    _target_: str = MISSING
    num_classes: int = MISSING
    img_size: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    batch_size: int = II("recipe.batch_size")  # global batch; train.py replaces it by the per-device batch
    # The loader's processes and pinned memory are the hardware profile's (hardware.num_workers,
    # hardware.pin_memory); data.num_workers=... overrides them for the data alone.
    num_workers: int = where_or_how(II("hardware.num_workers"))
    pin_memory: bool = where_or_how(II("hardware.pin_memory"))
    persistent_workers: bool = where_or_how(True)  # keep loader workers alive between epochs
    val_size: Any = 5000  # images held out of the train split (int), a fraction (float), 0 = validate on test
    split_seed: int = 0
    augment: Any = where_or_how(II("recipe.augment"))  # the recipe's augment block
    repeated_aug: int = II("recipe.repeated_aug")
    seed: int = II("seed")
    cache: bool = where_or_how(False)  # decode every image once into memory (small datasets only)
    subset: Optional[int] = None  # keep the first N train images of each class; null = all
    resize_interpolation: Optional[str] = None  # null = the dataset's default
    # Where augmentation runs: workers (CPU loader processes) or device (on the accelerator); the
    # DataModule checks the value.
    pipeline: str = "workers"
    cache_dir: Optional[str] = where_or_how("${paths.data_dir}/cache")  # data.pipeline=device: the decoded-image cache (null: $VITLAB_DATA_DIR/cache)


@dataclass
class DownloadDataConfig(DataConfig):
    """CIFAR-10/100, TinyImageNet: a folder the files are downloaded into."""

    data_dir: str = where_or_how(MISSING)
    download: bool = where_or_how(True)


@dataclass
class SVHNDataConfig(DownloadDataConfig):
    use_extra: bool = False


@dataclass
class FolderDataConfig(DataConfig):
    root: str = where_or_how(MISSING)
    train_dir: str = "train"
    test_dir: str = "test"


@dataclass
class ImageNet100DataConfig(FolderDataConfig):
    test_dir: str = "val"
    layout: str = "auto"
    class_list: Any = "auto"


@dataclass
class CorruptionDataConfig(DataConfig):
    """TinyImageNet-C: evaluation only."""

    root: str = where_or_how(MISSING)
    train_wnids: Any = MISSING
    corruptions: Optional[list[str]] = None
    severities: Optional[list[int]] = None


@dataclass
class SyntheticDataConfig(DataConfig):
    train_size: int = 2048
    test_size: int = 512


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "download": DownloadDataConfig,
    "svhn": SVHNDataConfig,
    "folder": FolderDataConfig,
    "imagenet100": ImageNet100DataConfig,
    "corruption": CorruptionDataConfig,
    "synthetic": SyntheticDataConfig,
}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def auto_precision() -> str:
    """bf16 mixed precision where the GPU supports it, fp16 mixed on older GPUs, fp32 on CPU."""
    import torch

    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def gpu_precision(precision: str, accelerator: str = "auto") -> str:
    """``precision`` when the run lands on a CUDA GPU, else ``32-true``: for the originals whose mixed
    precision was CUDA-only (on a CPU they trained in fp32)."""
    import torch

    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return precision if on_gpu else "32-true"


def fresh_dir(path: str) -> str:
    """Create and return a new folder at ``path``, or at ``path_1``, ``path_2``... if it exists.

    ``os.mkdir`` fails when the folder exists, so two runs started in the same second (the run dir
    names hold the time to the second) each get a folder of their own and never write into each
    other's. Registered with ``use_cache``, so the folder is claimed once per composed config, however
    often ``hydra.run.dir`` is read afterwards.
    """
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate, suffix = base, 0
    while True:
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            suffix += 1
            candidate = base.with_name(f"{base.name}_{suffix}")


def _run_dir(run_dir: str | None, fresh: str) -> str:
    return fresh_dir(fresh) if run_dir in (None, "") else str(run_dir)


def _hydra_subdir(run_dir: str | None) -> str:
    # A continued run must not overwrite the .hydra/ of the invocation that created the folder.
    return ".hydra" if run_dir in (None, "") else resume_subdir(run_dir)


# A sweep run's folder name is its overrides, written so the folder can be passed back unquoted
# (run_dir=multirun/.../3_model@vit__data.subset@100): `=` and `,` are Hydra syntax, so the config
# joins key and value with `@` and the overrides with `__` (hydra/default.yaml), and any other
# character outside [A-Za-z0-9_.+@-] becomes `-`.
_PATH_ITEM_SEP = "__"
_PATH_MAX = 160


def _path_safe(text: str) -> str:
    """The overrides as a folder name; a long one keeps whole overrides (never half a key) and ends
    with a digest of all of them, so two runs never share a folder."""
    items = [re.sub(r"[^A-Za-z0-9_.+@-]+", "-", item) for item in text.split(_PATH_ITEM_SEP) if item]
    name = _PATH_ITEM_SEP.join(items)
    if len(name) <= _PATH_MAX:
        return name or "default"
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    kept: list[str] = []
    for item in items:
        if len(_PATH_ITEM_SEP.join([*kept, item])) + len(digest) + 8 > _PATH_MAX:
            break
        kept.append(item)
    return _PATH_ITEM_SEP.join([*kept, f"{len(items) - len(kept)}more-{digest}"])


# Resolvers with side effects: evaluated once per composed config.
_CACHED_RESOLVERS = {"vitlab.run_dir": _run_dir, "vitlab.fresh_dir": fresh_dir}
_RESOLVERS = {
    "vitlab.auto_precision": auto_precision,
    "vitlab.gpu_precision": gpu_precision,
    "vitlab.cuda_available": cuda_available,
    "vitlab.hydra_subdir": _hydra_subdir,
    "vitlab.path_safe": _path_safe,
    "vitlab.help_groups": lambda: _help_groups(),
}


def _help_groups() -> str:
    from vitlab.cli import help_groups

    return help_groups(Path(__file__).resolve().parent / "conf")


def register_configs() -> None:
    """Register the schemas and resolvers; safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(group="recipe", name="schema", node=RecipeConfig)
    cs.store(group="hardware", name="schema", node=HardwareConfig)
    for name, schema in DATA_SCHEMAS.items():
        cs.store(group="schema/data", name=name, node=schema)
    # The keys every DataModule takes, with their defaults, open to a class's own keys: the schema of
    # a data config for a DataModule of the user's own package (docs/extending.md).
    cs.store(group="schema/data", name="open", node=OmegaConf.to_container(OmegaConf.structured(DataConfig)))
    store_registry_nodes()
    for name, fn in _RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    for name, fn in _CACHED_RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)


def _to_object(node: DictConfig | dict, schema: type, key: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        where = f"{key}.{err.full_key}" if getattr(err, "full_key", None) else key
        raise ConfigError(f"{where}: {err.msg if hasattr(err, 'msg') else err}".splitlines()[0]) from None


def to_recipe(node: DictConfig | dict) -> RecipeConfig:
    return _to_object(node, RecipeConfig, "recipe")


def to_hardware(node: DictConfig | dict) -> HardwareConfig:
    return _to_object(node, HardwareConfig, "hardware")


def split_batch(recipe: RecipeConfig, hardware: HardwareConfig) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) that keep the recipe's effective batch exactly."""
    global_batch, devices = recipe.batch_size, hardware.devices
    _check(
        global_batch >= devices,
        "recipe.batch_size",
        f"{global_batch} is smaller than hardware.devices={devices}; every device needs at least one sample per step",
    )
    _check(
        global_batch % devices == 0,
        "recipe.batch_size",
        f"{global_batch} is not divisible by hardware.devices={devices}; pick a multiple of {devices}",
    )
    per_device = global_batch // devices
    micro = min(hardware.batch_per_device or per_device, per_device)
    _check(
        per_device % micro == 0,
        "hardware.batch_per_device",
        f"{micro} does not divide the per-device batch {per_device} (recipe.batch_size={global_batch} over {devices} "
        f"device(s)); pick a divisor such as {math.gcd(per_device, micro)}",
    )
    return micro, per_device // micro
