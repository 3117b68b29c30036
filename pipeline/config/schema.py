"""Typed run configuration: YAML files and ``--set key=value`` overrides mapped onto dataclasses.

An unknown key is an error naming the valid keys of its section; a value of the wrong type is
an error naming the key and the expected type; a value out of its range (:data:`RULES`) or a
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

import yaml

from pipeline.config.checks import ConfigError, validate
from pipeline.objectives import OBJECTIVES, objective_params
from pipeline.scenarios.sel_cl.config import NoisyConfig, SelCLConfig


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
    subset: str = "all"
    subset_seed: int = 0
    limit: int = 0
    test_limit: int = 0
    image_size: int = 224
    skip_corrupt: bool = False
    classes: list[int] | None = None
    noise_mode: str = "none"
    noise_rate: float = 0.0
    noise_seed: int = 0
    val_fraction: float = 0.0
    val_seed: int | None = None


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

    kind: str = "pad_crop"
    num_views: int = 4
    pad: int = 2
    flip: bool = True
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])
    crop_pct: float = 1.0
    seed: int | None = None
    sampling: str = "auto"
    augmented: bool = True
    interpolation: str = "bilinear"
    eval_interpolation: str = "bilinear"


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

    policy: str = "none"
    num_ops: int = 2
    magnitude: int = 9
    magnitude_std: float = 0.5
    increasing: bool = True
    random_erasing: float = 0.0
    erase_before_mix: bool = True
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0


@dataclass
class ModelConfig:
    """The trained model: a timm name (CIFAR zoo and small models are registered in timm).

    ``bn_batch`` (0 = off: BN over each process's whole batch): training-mode BatchNorm statistics over
    consecutive chunks of this many images of each process's batch, i.e. ``nn.DataParallel``'s per-GPU
    BN on one device (``pipeline.scenarios.few_shot.ghost_bn``; the paper's few-shot classifier stage: 32).
    """

    name: str = "fmnist_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    pretrained_kind: str = "auto"
    pretrained_reset_head: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    input_size: int | None = None
    bn_batch: int = 0


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
    """

    checkpoint: str | None = None
    model: str | None = None
    mode: str = "store"
    store: str | None = None
    layout: str = "full"
    dtype: str = "float16"
    top_k: int = 0
    batch_size: int = 512
    chunk_samples: int = 4096
    read_order: str = "global"
    read_buffer: str = "double"
    input: str = "own"


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
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    filter_bias_and_bn: bool = True
    epochs: int = 10
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-4
    min_lr: float = 0.0
    schedule: str = "cosine"
    milestones: list[float] = field(default_factory=list)
    decay_rate: float = 0.1
    sched_on_updates: bool = False
    layer_decay: float = 0.0
    batch_size: int = 128
    batch_per_process: int = 0
    eval_batch_size: int = 512


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
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 2
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    deterministic: bool = False
    checkpoint_every_steps: int = 0
    log: list[str] = field(default_factory=list)


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
    sel_cl: SelCLConfig = field(default_factory=SelCLConfig)
    noisy: NoisyConfig = field(default_factory=NoisyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            where = f"section '{prefix[:-1]}'" if prefix else "the top level"
            raise ConfigError(f"unknown config key '{full}'; valid keys in {where}: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(current))}")
            _apply(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=0.1"`` -> ``{"optim": {"lr": 0.1}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else None
    except RecursionError:
        raise ConfigError(f"--set {key}: nested too deeply to be a config value") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: {raw!r} is not a YAML value ({' '.join(str(exc).split())[:120]})") from exc
    if "#" in raw and "#" not in yaml.safe_dump(value):
        raise ConfigError(f"--set {key}: the '#' in {raw!r} starts a YAML comment and would be dropped; quote the value "
                          f"({key}='\"{raw.strip()}\"') or remove it")
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1}, first on line "
                    f"{seen[key] + 1}): keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


MAX_YAML_NODES = 100_000  # a config of this project has a few hundred; more is an alias ("billion laughs") bomb


class _BoundedLoader(_UniqueKeyLoader):
    """Refuses a document whose aliases expand to more than :data:`MAX_YAML_NODES` nodes.

    PyYAML shares an aliased node instead of copying it, so a 1 KB document of nested anchors loads
    quickly and then hangs whatever walks it; the expanded size is counted on the node graph (each
    node once, memoized) before anything is constructed."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to {size:.3g} values (at most {MAX_YAML_NODES:,}): "
                "an alias bomb, or a config far larger than any this tool reads", node.start_mark)
        return node


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """The number of nodes ``node`` stands for once every alias is copied out."""
    if id(node) not in memo:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        memo[id(node)] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[id(node)]


def load_yaml(text: str) -> Any:
    """Parse config text: safe tags only, no duplicate keys, bounded expanded size."""
    return yaml.load(text, Loader=_BoundedLoader)


BASE_KEY = "_base_"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, any other value replaces the base's."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_file(path: str | Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, over the file its ``_base_`` names (a path relative to it, mmengine's convention).

    A variant is then a few lines on its base: ``_base_: res56_res20_adaptconf.yaml`` and the keys it changes.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found" + (f" (the _base_ of {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise ConfigError(f"{p}: _base_ chain loops back to a file it came from ({' -> '.join(map(str, chain))})")
    try:
        data = load_yaml(p.read_text()) or {}
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{p}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: {BASE_KEY} must be one file path, got {base!r}")
    return _merge(read_config_file(p.parent / base, chain + (p.resolve(),)), data)


def apply_file_and_overrides(cfg: Any, path: str | Path | None, overrides: list[str] | None) -> Any:
    """Fill the dataclass ``cfg`` from a YAML file (and its ``_base_``), then each ``key=value`` override, strictly;
    then :func:`validate` it."""
    if path is not None:
        _apply(cfg, read_config_file(path), "")
    for text in overrides or []:
        _apply(cfg, parse_override(text), "")
    return validate(cfg)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then each ``key=value`` override in order."""
    return apply_file_and_overrides(Config(), path, overrides)
