"""timm's RandAugment and AutoAugment as DALI operators: the student's augmentation the teacher never saw.

:class:`StudentAugment` is the config's ``augment`` policy; :func:`_timm_augment` adds its operators
to the replay graph (``pipeline.data.views.replay``) after the crop and the flip, as timm orders them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# -- timm's RandAugment / AutoAugment as DALI operators ------------------------------------------
#
# An operation's strength is timm's level, 0..MAX_LEVEL (timm's _LEVEL_DENOM: ``rand-m9`` is 9/10
# of each operation's range). DALI's auto_aug operators read their parameter from a table indexed
# by a magnitude bin: here bin b is level b / BINS_PER_LEVEL, and each table entry is computed
# from that level with timm's formula (tests/data/test_augment_fidelity.py checks every op and bin
# against timm's own LEVEL_TO_ARG). timm's magnitude noise (``mstd``: level ~ N(m, mstd) clipped to
# [0, 10], per op application) is drawn in the pipeline and rounded to the nearest bin.

MAX_LEVEL = 10
BINS_PER_LEVEL = 100
NUM_LEVEL_BINS = MAX_LEVEL * BINS_PER_LEVEL + 1
RAND_OP_PROB = 0.5  # timm's RandAugment applies each drawn op with probability 0.5 (its default 'p')
TRANSLATE_PCT = 0.45  # timm's TranslateXRel/YRel at level 10: 45% of the image side
_FULL_RANGE = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateXRel": TRANSLATE_PCT,
               "TranslateYRel": TRANSLATE_PCT}  # randomly negated, linear in the level
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float64) / 13  # PIL's SMOOTH, the Sharpness blend base
_IDENTITY_KERNEL = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float64)

# timm's RandAugment op lists (_RAND_TRANSFORMS, and _RAND_INCREASING_TRANSFORMS for 'inc1').
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_OPS_INCREASING = tuple(n + "Increasing" if n in ("Posterize", "Solarize") + _ENHANCE else n for n in RAND_OPS)

# The ImageNet policy of the AutoAugment paper (Cubuk et al. 2019, its appendix table), as timm's
# 'original': 25 sub-policies of two (op, probability, level) steps.
AUTO_AUGMENT_ORIGINAL = (
    (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)), (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)), (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)), (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)), (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)


def op_magnitudes(name: str) -> np.ndarray | None:
    """Per-bin magnitudes of timm op ``name`` (before the random sign), from timm's level formulas.

    Rotate degrees, shear factor, translate fraction of the side; enhancement factors (``*Increasing``:
    the distance from 1, randomly negated); bits kept for Posterize; thresholds for Solarize; the
    added value for SolarizeAdd. None for the ops without a level (AutoContrast, Equalize, Invert).
    """
    frac = (np.arange(NUM_LEVEL_BINS) / BINS_PER_LEVEL) / MAX_LEVEL
    base = name.removesuffix("Increasing")
    if name in _FULL_RANGE:
        return frac * _FULL_RANGE[name]
    if base in _ENHANCE:
        return frac * 0.9 if name != base else frac * 1.8 + 0.1
    if base in ("Posterize", "PosterizeOriginal"):
        bits = np.floor(frac * 4)
        return {"Posterize": bits, "PosterizeIncreasing": 4 - bits, "PosterizeOriginal": bits + 4}[name]
    if base == "Solarize":
        thresh = np.minimum(256, np.floor(frac * 256))
        return 256 - thresh if name != base else thresh
    if name == "SolarizeAdd":
        return np.minimum(128, np.floor(frac * 110))
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    raise ValueError(f"unknown timm augmentation op {name!r}")


def op_param(name: str, magnitude: float) -> np.ndarray:
    """The DALI operator's parameter for one (signed) magnitude of :func:`op_magnitudes`."""
    base = name.removesuffix("Increasing")
    if name == "Rotate":
        return np.array(magnitude, dtype=np.float32)
    if name in _FULL_RANGE:  # shear factor / translate fraction as an (x, y) pair
        return np.array([magnitude, 0.0] if name in ("ShearX", "TranslateXRel") else [0.0, magnitude], dtype=np.float32)
    if base in _ENHANCE:
        factor = max(0.1, 1.0 + magnitude) if name != base else magnitude
        if base == "Sharpness":  # PIL: blend of the image and its SMOOTH-filtered copy
            return (factor * _IDENTITY_KERNEL + (1 - factor) * _SMOOTH).astype(np.float32)
        return np.array(factor, dtype=np.float32)
    if base in ("Posterize", "PosterizeOriginal"):
        bits = int(magnitude)
        return np.array(0xFF ^ ((1 << (8 - bits)) - 1), dtype=np.uint8)  # keep the top `bits` bits
    if base == "Solarize":
        return np.array(int(magnitude), dtype=np.int32)
    if name == "SolarizeAdd":
        return np.array(int(magnitude), dtype=np.uint8)
    raise ValueError(f"op {name!r} takes no parameter")


POLICIES = ("none", "rand_augment", "auto_augment")


@dataclass(frozen=True)
class StudentAugment:
    """Augmentation the teacher never saw, applied to the student's copy of the replayed view.

    timm's recipes in DALI (see :func:`_timm_augment`): ``rand_augment`` is timm's
    ``rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}[-inc1]`` (``increasing``), ``auto_augment``
    timm's ``original-mstd{magnitude_std}`` (the AutoAugment paper's ImageNet policy). ``magnitude``
    is in timm's units, 0..10 (10 = an operation's full strength; ``rand-m9`` is 9).
    """

    policy: str = "none"
    num_ops: int = 2
    magnitude: float = 9
    magnitude_std: float = 0.5
    increasing: bool = True


    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown augment.policy {self.policy!r}; valid: {', '.join(POLICIES)}")
        if not 0 <= self.magnitude <= MAX_LEVEL:
            raise ValueError(f"augment.magnitude is in timm's units, 0..{MAX_LEVEL} (rand-m9 is 9), "
                             f"got {self.magnitude}")
        if not 0 <= self.magnitude_std <= 100:  # timm reads mstd > 100 as uniform sampling, not supported here
            raise ValueError(f"augment.magnitude_std must be in [0, 100], got {self.magnitude_std}")
        if self.num_ops < 1:
            raise ValueError(f"augment.num_ops must be >= 1, got {self.num_ops}")

    @property
    def active(self) -> bool:
        return self.policy != "none"

    def timm_string(self) -> str:
        """The timm ``auto_augment`` string this augmentation reproduces (``create_transform(auto_augment=...)``)."""
        mstd = f"-mstd{self.magnitude_std:g}" if self.magnitude_std > 0 else ""
        if self.policy == "rand_augment":
            return f"rand-m{self.magnitude:g}-n{self.num_ops}{mstd}{'-inc1' if self.increasing else ''}"
        return f"original{mstd}" if self.policy == "auto_augment" else ""


def fill_color(mean: tuple[float, ...]) -> tuple[int, ...]:
    """timm's fill color of the geometric ops for a normalization ``mean`` (0..1): its ``img_mean``,
    ``round(255 * m)`` per channel (``create_transform``), e.g. 128 for the ViT's mean 0.5."""
    return tuple(min(255, round(255 * m)) for m in mean)


def _warp(data: Any, matrix: Any, fill: tuple[int, ...]) -> Any:
    """Bilinear affine warp by ``matrix`` (a ``fn.transforms`` output, as DALI's auto_aug ops use it) with a
    per-channel fill: timm's fill color is the normalization mean, DALI's ``fill_value`` one number."""
    from nvidia.dali import fn, types

    if len(set(fill)) == 1:
        return fn.warp_affine(data, matrix=matrix, fill_value=float(fill[0]), inverse_map=False)
    # DALI fills with one value: warp the image minus the fill color, fill 0, add it back (linear, so exact).
    f = types.Constant(np.array(fill, dtype=np.float32), device=data.device or "cpu")
    moved = fn.warp_affine(fn.cast(data, dtype=types.FLOAT) - f, matrix=matrix, fill_value=0.0, inverse_map=False)
    return fn.cast(moved + f, dtype=types.UINT8)


def _rotate(data: Any, angle: Any, shape: tuple[int, int], fill: tuple[int, ...]) -> Any:
    from nvidia.dali import fn

    center = [shape[1] / 2, shape[0] / 2]
    return _warp(data, fn.transforms.rotation(angle=angle, center=center), fill)


def _shear(data: Any, shear: Any, fill: tuple[int, ...]) -> Any:
    from nvidia.dali import fn

    return _warp(data, fn.transforms.shear(shear=shear), fill)


def _translate(data: Any, rel_offset: Any, shape: tuple[int, int], fill: tuple[int, ...]) -> Any:
    from nvidia.dali import fn, types

    side = types.Constant(np.array([shape[1], shape[0]], dtype=np.float32))  # (x, y): timm's pct of the width / height
    return _warp(data, fn.transforms.translation(offset=rel_offset * side), fill)


def op_negated(name: str) -> bool:
    """Whether timm draws a random sign for op ``name`` (geometric ops and the ``*Increasing`` enhancements)."""
    base = name.removesuffix("Increasing")
    return name in _FULL_RANGE or (base in _ENHANCE and name != base)


def op_param_table(name: str) -> np.ndarray | None:
    """The DALI parameters of op ``name`` indexed by ``2 * bin + sign`` (sign 1: the negated magnitude)."""
    mags = op_magnitudes(name)
    if mags is None:
        return None
    signs = (1, -1) if op_negated(name) else (1, 1)
    return np.stack([op_param(name, float(s * m)) for m in mags for s in signs])


class _TimmOp:
    """One timm op in a DALI graph: DALI's operator and its parameter table (built once per process)."""

    _tables: dict[str, np.ndarray | None] = {}

    def __init__(self, name: str, shape: tuple[int, int], fill: tuple[int, ...]) -> None:
        from nvidia.dali.auto_aug import augmentations as a

        base = name.removesuffix("Increasing")
        dali = {"AutoContrast": a.auto_contrast, "Equalize": a.equalize, "Invert": a.invert, "Color": a.color,
                "Contrast": a.contrast, "Brightness": a.brightness, "Sharpness": a.sharpness, "Posterize": a.posterize,
                "PosterizeOriginal": a.posterize, "Solarize": a.solarize, "SolarizeAdd": a.solarize_add}
        warps = {"Rotate": _rotate, "ShearX": _shear, "ShearY": _shear, "TranslateXRel": _translate,
                 "TranslateYRel": _translate}
        if base in dali:  # DALI's own implementation of the op, and where DALI keeps its parameter
            self.op, self.param_device, self.kwargs = dali[base].op, dali[base].param_device, {}
        else:
            self.op, self.param_device = warps[base], "cpu"
            self.kwargs = {"fill": fill} if base.startswith("Shear") else {"fill": fill, "shape": shape}
        if name not in self._tables:
            from nvidia.dali.pipeline import do_not_convert  # plain Python: autograph would make this very slow

            self._tables[name] = do_not_convert(op_param_table)(name)
        self.table = self._tables[name]
        if base == "Color" and len(fill) == 1:  # PIL's Color leaves a grayscale image as it is (DALI's needs RGB)
            self.op, self.table = _identity, None

    def __call__(self, data: Any, param_index: Any) -> Any:
        from nvidia.dali import types

        if self.table is None:
            return self.op(data, None)
        device = (data.device or "cpu") if self.param_device == "auto" else self.param_device
        return self.op(data, types.Constant(self.table, device=device)[param_index], **self.kwargs)


def _identity(data: Any, param_index: Any) -> Any:
    return data


def augment_names(augment: StudentAugment) -> list[str]:
    """The timm ops ``augment`` draws from: the RandAugment list, or the ops of the AutoAugment policy."""
    if augment.policy == "rand_augment":
        return list(RAND_OPS_INCREASING if augment.increasing else RAND_OPS)
    return sorted({n for sub in AUTO_AUGMENT_ORIGINAL for n, _, _ in sub})


def augment_draws(augment: StudentAugment) -> tuple[Any, Any]:
    """Per-sample DALI draws of timm's sampling: op index and ``2 * level bin + sign`` per stage.

    RandAugment: ``num_ops`` stages, each an op drawn uniformly (with replacement) from
    :func:`augment_names`, skipped with probability 1 - RAND_OP_PROB (op index ``len(names)``:
    the identity), at level ``magnitude``. AutoAugment: a uniformly drawn sub-policy, each of its
    steps run with its probability at its level. Levels get timm's noise, N(level, magnitude_std)
    clipped to [0, 10], rounded to 1/BINS_PER_LEVEL; sign 1 negates the signed ops' magnitude.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    names = augment_names(augment)
    if augment.policy == "rand_augment":
        stages = augment.num_ops
        op = fn.random.uniform(values=list(range(len(names))), shape=(stages,), dtype=types.INT32)
        run = fn.random.coin_flip(probability=RAND_OP_PROB, shape=(stages,), dtype=types.INT32)
        level = float(augment.magnitude)  # no annotation: DALI's autograph cannot convert annotated locals
    else:
        table = AUTO_AUGMENT_ORIGINAL
        stages = len(table[0])
        sub = fn.random.uniform(values=list(range(len(table))), dtype=types.INT32)
        op = types.Constant(np.array([[names.index(n) for n, _, _ in s] for s in table], dtype=np.int32))[sub]
        prob = types.Constant(np.array([[p for _, p, _ in s] for s in table], dtype=np.float32))[sub]
        run = fn.cast(fn.random.uniform(range=[0.0, 1.0], shape=(stages,)) < prob, dtype=types.INT32)
        level = types.Constant(np.array([[m for _, _, m in s] for s in table], dtype=np.float32))[sub]
    idx = op * run + len(names) * (1 - run)  # a skipped stage runs the identity
    if augment.magnitude_std > 0:
        noise = fn.random.normal(shape=(stages,)) * float(augment.magnitude_std)
        noisy = dmath.clamp(level + noise, 0.0, float(MAX_LEVEL))
        bins = fn.cast(dmath.floor(noisy * float(BINS_PER_LEVEL) + 0.5), dtype=types.INT32)
    elif isinstance(level, float):
        bins = int(round(level * BINS_PER_LEVEL))
    else:
        bins = fn.cast(dmath.floor(level * float(BINS_PER_LEVEL) + 0.5), dtype=types.INT32)
    sign = fn.random.uniform(values=[0, 1], shape=(stages,), dtype=types.INT32)
    return idx, 2 * bins + sign


def _timm_augment(x: Any, augment: StudentAugment, shape: tuple[int, int], fill: tuple[int, ...]) -> Any:
    """timm's RandAugment / AutoAugment ('original') on a uint8 HWC batch of size ``shape``, per sample:
    the stages of :func:`augment_draws`, each applying its op (DALI's operators, timm's parameters)."""
    from nvidia.dali.auto_aug.core import select

    ops = [_TimmOp(n, shape, fill) for n in augment_names(augment)] + [_identity]
    idx, param_index = augment_draws(augment)
    for s in range(augment.num_ops if augment.policy == "rand_augment" else len(AUTO_AUGMENT_ORIGINAL[0])):
        x = select(ops, idx[s], x, param_index[s])
    return x
