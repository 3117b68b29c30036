"""Typed run configuration: YAML files and ``--set key=value`` overrides mapped onto dataclasses.

An unknown key is an error naming the valid keys of its section; a value of the wrong type is
an error naming the key and the expected type; a value out of its range (declared beside the field, :func:`pipeline.config.checks.setting`) or a
non-finite float is an error naming the key and the allowed range.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from pipeline.config.checks import Check, ConfigError, above, at_least, setting, validate, within
from pipeline.config.yaml_files import parse_override, read_config_file
from pipeline.objectives import OBJECTIVES, objective_params
from pipeline.data.sources.label_noise import NOISE_MODES
from pipeline.data.timm_augment import POLICIES
from pipeline.data.views import INTERPOLATIONS, KINDS, TRAIN_INTERPOLATIONS
from pipeline.scenario import check_scenarios, scenario_sections
from store.attributes import DTYPES, LAYOUTS
from store.ensemble import COMBINES

# the choices of keys whose values the core reads; each is checked when a config is loaded
SUBSETS = ("all", "half_a", "half_b")
SAMPLING_MODES = ("auto", "cycle", "fresh")
TEACHER_MODES = ("store", "online")
TEACHER_INPUTS = ("own", "student")
READ_ORDERS = ("global", "chunked")
READ_BUFFERS = ("double", "bounded")
AMP_CHOICES = ("none", "bf16", "fp16")
SCHEDULES = ("cosine", "multistep")
PRETRAIN_METHODS = ("simclr",)


@dataclass
class DataConfig:
    """Which dataset and which part of it.

    ``subset`` picks the demo's halves of the train split (pinned by ``subset_seed``: the demo's
    teacher and students must see complementary halves whatever ``run.seed`` is); ``classes`` keeps only these classes,
    relabelled 0..n-1 in the given order (few-shot base / novel splits); ``noise_*`` injects label
    noise into the training labels (``pipeline.data.sources.label_noise``: none, symmetric, asym_cifar10,
    asym_cifar100, asym_next), deterministic from ``noise_seed``. ``val_fraction`` holds out that part
    of the (noisy) training selection as a validation split: the best epoch is chosen on it, never
    on the test set. ``val_seed`` pins that split; left unset it follows ``run.seed``, so seeds are
    real repeats (another validation split each).
    """

    source: str = "fashion_mnist"
    data_dir: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    subset: str = setting("all", choices=SUBSETS)
    subset_seed: int = setting(0, check=at_least(0))
    limit: int = setting(0, check=at_least(0))
    test_limit: int = setting(0, check=at_least(0))
    image_size: int = setting(224, check=at_least(1))
    skip_corrupt: bool = False
    classes: list[int] | None = setting(None, check=at_least(0))
    noise_mode: str = setting("none", choices=NOISE_MODES)
    noise_rate: float = setting(0.0, check=within(0, 1))
    noise_seed: int = setting(0, check=at_least(0))
    val_fraction: float = setting(0.0, check=within(0, 1, hi_open=True))
    val_seed: int | None = setting(None, check=at_least(0))


@dataclass
class ViewsConfig:
    """The view policy (see ``pipeline.data.views.ViewPolicy``), how epochs pick views, and whether students train on augmented views.

    ``seed`` pins the view draws; left unset it follows ``run.seed`` (a run that replays a store
    takes the store's). ``sampling``: ``cycle`` (epoch e uses stored view ``1 + e mod K``),
    ``fresh`` (epoch e draws new params, view ``1 + e`` of the policy: a pure function of seed,
    epoch and sample, like a dataloader's random transform, so resume stays exact) or ``auto``:
    fresh for runs that read no store (supervised runs, online teacher), cycle when replaying a store.
    ``interpolation`` resizes the augmented views (bilinear, bicubic, or random: either, per view, as
    timm's ``--train-interpolation random``), ``eval_interpolation`` the fixed view (bilinear or bicubic).
    """

    kind: str = setting("pad_crop", choices=KINDS)
    num_views: int = setting(4, check=Check(lo=1, unless=("kind", "none")))
    pad: int = setting(2, check=at_least(0))
    flip: bool = True
    scale: list[float] = setting(factory=lambda: [0.08, 1.0], check=Check(0, 1, lo_open=True, pair=True))
    ratio: list[float] = setting(factory=lambda: [0.75, 4 / 3], check=Check(lo=0, lo_open=True, pair=True))
    crop_pct: float = setting(1.0, check=within(0, 1, lo_open=True))
    seed: int | None = setting(None, check=at_least(0))
    sampling: str = setting("auto", choices=SAMPLING_MODES)
    augmented: bool = True
    interpolation: str = setting("bilinear", choices=TRAIN_INTERPOLATIONS)
    eval_interpolation: str = setting("bilinear", choices=INTERPOLATIONS)


@dataclass
class AugmentConfig:
    """Augmentations the teacher did not see, for the student only (see docs/cached_teacher.md).

    ``policy``: none | rand_augment | auto_augment, timm's recipes applied by DALI to the replayed
    (flipped) view. ``rand_augment`` is timm's ``rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}``,
    with ``-inc1`` when ``increasing`` (the MAE recipe: ``rand-m9-mstd0.5-inc1``); ``auto_augment`` is
    timm's ``original-mstd{magnitude_std}`` (the AutoAugment paper's ImageNet policy; the paper's
    CIFAR v1 recipe). ``magnitude`` is in timm's units, 0..10 (10 = full strength); ``magnitude_std``
    is timm's per-op magnitude noise (0 = fixed). What differs from timm: docs/cached_teacher.md, "Cached-teacher
    approximations". ``random_erasing``: probability (timm's RandomErasing, per-pixel, each sample
    independently), applied before mixup/cutmix (``erase_before_mix``: timm's per-sample transform,
    as in MAE's fine-tuning) or after it (false: timm's train.py with its prefetcher, the order of
    the paper's train.py). ``mixup``/``cutmix``: Beta alphas (0 = off), the cached teacher target is
    mixed the same way.
    """

    policy: str = setting("none", choices=POLICIES)
    num_ops: int = setting(2, check=at_least(1))
    magnitude: int = setting(9, check=within(0, 10))
    magnitude_std: float = setting(0.5, check=within(0, 100))
    increasing: bool = True
    random_erasing: float = setting(0.0, check=within(0, 1))
    erase_before_mix: bool = True
    mixup: float = setting(0.0, check=at_least(0))
    cutmix: float = setting(0.0, check=at_least(0))
    mix_prob: float = setting(1.0, check=within(0, 1))
    switch_prob: float = setting(0.5, check=within(0, 1))
    label_smoothing: float = setting(0.0, check=within(0, 1, hi_open=True))


@dataclass
class ModelConfig:
    """The trained model: a timm name (CIFAR zoo and small models are registered in timm).

    ``bn_batch`` (0 = off: BN over each process's whole batch): training-mode BatchNorm statistics over
    consecutive chunks of this many images of each process's batch, i.e. ``nn.DataParallel``'s per-GPU
    BN on one device (``pipeline.models.ghost_bn``; the paper's few-shot classifier stage: 32).
    ``freeze_backbone`` trains the classifier alone on a fixed backbone (OpenAI's linear probe of a
    ``model.pretrained`` prior): every other weight is frozen and left out of the optimizer, and the
    model runs in eval mode (BatchNorm keeps the prior's statistics, no dropout).
    """

    name: str = "fmnist_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    pretrained_kind: str = "auto"
    pretrained_reset_head: bool = False
    freeze_backbone: bool = False
    mean: list[float] | None = setting(None, check=within(0, 1))
    std: list[float] | None = setting(None, check=above(0))
    input_size: int | None = setting(None, check=at_least(1))
    bn_batch: int = setting(0, check=at_least(0))


@dataclass
class TeacherConfig:
    """The weak teacher: its checkpoint and the store.

    ``checkpoint`` is a ``w2s train-teacher`` run directory (or its model.safetensors); with ``model``
    set (a timm name) it is an external timm-style ``.pth``/``.safetensors`` file instead.
    ``layout``: full (float16 logits) or top_k (``top_k`` logits + indices + tail mass; docs/store.md).
    ``dtype``: the stored logits' dtype, float16 or float32 (full layout only; for logits beyond 65504).
    ``read_order`` / ``read_buffer``: how stage 2 reads a rank's shard of the store (``store/shard_reader.py``).
    ``input``: the normalization and size the teacher is fed: ``own`` (its model.json / timm ``pretrained_cfg``)
    or ``student`` (the student's, as the paper's train.py feeds one batch to both models).
    ``label_val`` scores the validation split (``data.val_fraction``) against this teacher's predictions
    instead of its ground truth: the weak-supervision stopping rule, which picks an epoch without any
    ground truth (needs ``checkpoint``).
    ``stores`` (instead of ``store``): several teachers' stores of the same images and views, combined per
    row by ``combine`` (mean, weighted with ``weights``, max_confidence; ``store/ensemble.py``). Each is
    checked against the run as a single store is, except for the teacher's weights (no ``checkpoint``).
    """

    checkpoint: str | None = None
    model: str | None = None
    mode: str = setting("store", choices=TEACHER_MODES)
    store: str | None = None
    layout: str = setting("full", choices=LAYOUTS)
    dtype: str = setting("float16", choices=DTYPES)
    top_k: int = setting(0, check=at_least(0))
    batch_size: int = setting(512, check=at_least(1))
    chunk_samples: int = setting(4096, check=at_least(1))
    read_order: str = setting("global", choices=READ_ORDERS)
    read_buffer: str = setting("double", choices=READ_BUFFERS)
    input: str = setting("own", choices=TEACHER_INPUTS)
    label_val: bool = False
    stores: list[str] = setting(factory=list)
    combine: str = setting("mean", choices=COMBINES)
    weights: list[float] = setting(factory=list, check=at_least(0))


def _objective_fields() -> list[tuple[str, Any, Any]]:
    """``name`` and every registered objective's parameters, with their types and defaults."""
    types: dict[str, Any] = {}
    for cls in OBJECTIVES.values():
        types.update(typing.get_type_hints(cls))
    return [("name", str, field(default="vanilla"))] + [
        (n, types[n], field(default=f.default)) for n, f in objective_params().items()]


ObjectiveConfig = dataclasses.make_dataclass("ObjectiveConfig", _objective_fields(), namespace={
    "__module__": __name__,
    "__doc__": """The objective: ``name`` (a registered objective, ``pipeline.objectives.OBJECTIVES``) and the
    parameters of every registered objective, each with its default; the named objective takes its own
    (``pipeline.objectives.build_objective``) and checks them. Built from the registry: an objective's
    parameters and their ranges are declared once, on its class."""})


@dataclass
class OptimConfig:
    """Optimizer (timm ``create_optimizer_v2``) and its warm-up + cosine / multistep schedule.

    ``batch_size`` is the global batch the recipe's ``lr`` belongs to. With ``batch_per_process``
    set, the global batch becomes ``batch_per_process * world_size`` and the lr follows the linear
    scaling rule ``lr * global_batch / batch_size`` (and ``min_lr`` likewise).
    ``layer_decay`` (0 = off) is timm's layer-wise lr decay for ViTs. ``filter_bias_and_bn`` (timm's
    name): no weight decay on biases and norm weights (timm's default); false decays every parameter,
    as plain ``torch.optim.SGD(model.parameters())`` does (Sel-CL+, the few-shot classifier).
    The schedule is timm 0.6.12's ``create_scheduler`` as the paper's ``classification/train.py``
    uses it: a linear warm-up from ``warmup_lr`` to ``lr`` over the first ``warmup_epochs`` *inside*
    the schedule, then ``schedule`` cosine (to ``min_lr`` at ``epochs``) or multistep (lr x
    ``decay_rate`` from each epoch in ``milestones`` on, as ``torch.optim.lr_scheduler.MultiStepLR``),
    stepped once per epoch. ``sched_on_updates`` steps the same curve every update instead (fractional
    ``warmup_epochs`` and milestones then allowed).
    """

    name: str = "sgd"
    lr: float = setting(0.05, check=above(0))
    momentum: float = setting(0.9, check=within(0, 1, hi_open=True))
    nesterov: bool = True
    weight_decay: float = setting(5e-4, check=at_least(0))
    filter_bias_and_bn: bool = True
    epochs: int = setting(10, check=at_least(1))
    warmup_epochs: float = setting(0.0, check=at_least(0))
    warmup_lr: float = setting(1e-4, check=at_least(0))
    min_lr: float = setting(0.0, check=at_least(0))
    schedule: str = setting("cosine", choices=SCHEDULES)
    milestones: list[float] = setting(factory=list, check=at_least(0))
    decay_rate: float = setting(0.1, check=within(0, 1, lo_open=True))
    sched_on_updates: bool = False
    layer_decay: float = setting(0.0, check=within(0, 1))
    batch_size: int = setting(128, check=at_least(1))
    batch_per_process: int = setting(0, check=at_least(0))
    eval_batch_size: int = setting(512, check=at_least(1))


@dataclass
class RunConfig:
    """Where results go and how the process runs.

    ``amp``: none | bf16 | fp16 (fp16 uses a gradient scaler and needs CUDA); ``channels_last`` and
    ``compile`` (``torch.compile`` with ``compile_backend``) are speed switches for GPUs.
    ``deterministic`` asks torch for deterministic algorithms (identical runs on CPU; slower on GPU).
    ``checkpoint_every_steps`` (0 = off) also writes a recovery checkpoint every that many steps
    inside an epoch, so ``--resume`` after a crash or SIGKILL continues mid-epoch, to the same weights
    (also under torchrun: rank 0 writes it with every rank's own state). ``log`` adds experiment
    trackers fed with every metrics row: ``tensorboard`` and/or ``wandb`` (offline).
    """

    output: str = "runs/default"
    seed: int = setting(0, check=at_least(0))
    device: str = "cpu"
    num_threads: int = setting(2, check=at_least(1))
    amp: str = setting("none", choices=AMP_CHOICES)
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    deterministic: bool = False
    checkpoint_every_steps: int = setting(0, check=at_least(0))
    log: list[str] = field(default_factory=list)


@dataclass
class PretrainConfig:
    """``w2s pretrain``: self-supervised pre-training of ``model.name`` on the training images, labels unread.

    ``method``: ``simclr`` (Chen et al. 2020). ``temperature`` of the NT-Xent loss (0.5: SimCLR's
    CIFAR-10 command in google-research/simclr's README; its ImageNet default is 0.1);
    ``proj_dim``: output of the 2-layer MLP projection head (SimCLR's 128); ``knn_k``: neighbours
    of the weighted kNN monitor on the backbone's features (DINO's k=20).
    """

    method: str = setting("simclr", choices=PRETRAIN_METHODS)
    temperature: float = setting(0.5, check=above(0))
    proj_dim: int = setting(128, check=at_least(1))
    knn_k: int = setting(20, check=at_least(1))


@dataclass
class LauncherConfig:
    """Where a sweep's or tune's jobs run under the submitit launchers (``--launcher submitit_slurm|submitit_local``).

    The names are Hydra's submitit launcher's, which map onto submitit's executor parameters
    (``partition`` is ``slurm_partition``, ``setup`` is ``slurm_setup`` and so on). ``tasks_per_node`` x
    ``nodes`` processes make one run's DDP ranks (``gpus_per_node`` GPUs each node). ``timeout_min`` is the
    job's time limit: SLURM signals the job ``signal_delay_s`` seconds before it, and the run writes a step
    checkpoint and requeues itself, at most ``max_num_timeout`` times (preemptions do not count).
    ``array_parallelism`` > 0 submits the runs as one job array running at most that many at once.
    ``setup`` lines run in the job script before the run; ``additional_parameters`` are extra
    ``#SBATCH`` options (``{"mail-type": "END"}``). A resumed run may change every key of this section.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = setting(1, check=at_least(1))
    tasks_per_node: int = setting(1, check=at_least(1))
    gpus_per_node: int = setting(0, check=at_least(0))
    cpus_per_task: int = setting(2, check=at_least(1))
    mem_gb: float = setting(8.0, check=above(0))
    timeout_min: int = setting(60, check=at_least(1))
    signal_delay_s: int = setting(120, check=at_least(0))
    max_num_timeout: int = setting(3, check=at_least(0))
    array_parallelism: int = setting(0, check=at_least(0))
    setup: list[str] = field(default_factory=list)
    additional_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """A whole experiment; each command reads the sections it needs."""

    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # the sections scenarios add (pipeline/scenario.py), read as attributes: cfg.noisy, cfg.sel_cl
    sections: dict[str, Any] = field(default_factory=dict, metadata={"sections": True})

    def __post_init__(self) -> None:
        for name, cls in scenario_sections().items():
            self.sections.setdefault(name, cls())

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"Config has no section {name!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name != "sections"}
        return {**out, **{name: dataclasses.asdict(v) for name, v in self.sections.items()}}


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the annotated type; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e30 / 5e-4 (no dot) as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj) if not f.metadata.get("sections")]
    sections = getattr(obj, "sections", {}) if isinstance(obj, Config) else {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of "
                                  f"{', '.join(f.name for f in dataclasses.fields(sections[key]))}")
            _apply(sections[key], value, f"{full}.")
            continue
        if key not in names:
            names = names + list(sections)
            where = f"section '{prefix[:-1]}'" if prefix else "the top level"
            raise ConfigError(f"unknown config key '{full}'; valid keys in {where}: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(current))}")
            _apply(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def apply_file_and_overrides(cfg: Any, path: str | Path | None, overrides: list[str] | None) -> Any:
    """Fill the dataclass ``cfg`` from a YAML file (and its ``_base_``), then each ``key=value`` override, strictly;
    then :func:`validate` it."""
    if path is not None:
        _apply(cfg, read_config_file(path), "")
    for text in overrides or []:
        _apply(cfg, parse_override(text), "")
    validate(cfg)
    if isinstance(cfg, Config):
        check_scenarios(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then each ``key=value`` override in order."""
    return apply_file_and_overrides(Config(), path, overrides)
