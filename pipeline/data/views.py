"""View policies: sample view parameters (stage 1) and replay them as DALI operators (both stages).

A view is a crop box in the source image, a horizontal flip and the resize's interpolation,
stored as six float32 numbers ``(y0, x0, h, w, flip, bicubic)`` with the box normalized by the
image's height and width (the box may extend past the image for pad-and-crop; the outside is
zero) and ``bicubic`` 1 for a bicubic resize, 0 for bilinear. A policy is a pure
function ``(seed, sample_index, view_index) -> params``: the random numbers come from a
counter-based hash of those three integers, so any sample's views can be drawn again in any
order, by any rank, and vectorized over a block of samples.

View 0 is always the fixed view (the dataset's eval transform: a centered box of ``crop_pct``
of the shorter side); views 1..K are augmented draws.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from pipeline.data.timm_augment import StudentAugment, _timm_augment, fill_color

PARAM_NAMES = ("y0", "x0", "h", "w", "flip", "bicubic")
PARAM_DIM = len(PARAM_NAMES)
KINDS = ("pad_crop", "random_resized_crop", "none")
INTERPOLATIONS = ("bilinear", "bicubic")
TRAIN_INTERPOLATIONS = (*INTERPOLATIONS, "random")  # random: timm's, bilinear or bicubic per image


@dataclass(frozen=True)
class ViewPolicy:
    """How views are drawn. ``kind="none"`` stores only the fixed view (no augmentation).

    ``interpolation`` resizes the augmented views (timm's ``--train-interpolation``; ``random`` draws
    bilinear or bicubic per view, as timm's RandomResizedCropAndInterpolation does per image),
    ``eval_interpolation`` the fixed view (timm's eval ``interpolation``).
    """

    kind: str = "pad_crop"
    num_views: int = 4
    pad: int = 2
    flip: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_pct: float = 1.0
    seed: int = 0
    interpolation: str = "bilinear"
    eval_interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown view kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.interpolation not in TRAIN_INTERPOLATIONS:
            raise ValueError(f"views.interpolation must be one of {', '.join(TRAIN_INTERPOLATIONS)}, "
                             f"got {self.interpolation!r}")
        if self.eval_interpolation not in INTERPOLATIONS:
            raise ValueError(f"views.eval_interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                             f"got {self.eval_interpolation!r}")
        if self.kind != "none" and self.num_views < 1:
            raise ValueError("num_views must be >= 1 for an augmenting view policy")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def total_views(self) -> int:
        """``V = 1 + K``: the fixed view plus the augmented ones."""
        return 1 if self.kind == "none" else 1 + self.num_views

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded in the store and compared by train-student."""
        d = asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        return d

    def epoch_view(self, epoch: int, augment: bool = True) -> int:
        """View used at ``epoch``: ``1 + (e mod K)``, or the fixed view 0 without augmentation."""
        if not augment or self.kind == "none":
            return 0
        return 1 + epoch % self.num_views

    def fresh(self, epochs: int) -> ViewPolicy:
        """The policy a run with new views every epoch replays: ``K = max(K, epochs)``, so epoch e uses
        view ``1 + e``, the same params a store with ``K >= epochs`` holds for that epoch."""
        return replace(self, num_views=max(self.num_views, epochs))


_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, indices: np.ndarray, view: int, slot: int) -> np.ndarray:
    """Counter-based U[0, 1) for each sample index; a pure function of all four arguments."""
    with np.errstate(over="ignore"):
        x = _mix(np.uint64(seed) * _GOLD + np.uint64(1))
        x = _mix(x ^ (np.asarray(indices, dtype=np.uint64) * _GOLD))
        x = _mix(x ^ np.uint64(view + 1) * _M1)
        x = _mix(x ^ np.uint64(slot + 1) * _M2)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _randint(u: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Integers uniform in ``[0, high]`` from uniforms ``u``."""
    return np.minimum(np.floor(u * (high + 1)), high)


def _sizes(hw: tuple[int, int] | np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample heights and widths ``[n]`` from one size or an ``[n, 2]`` array of sizes."""
    a = np.asarray(hw, dtype=np.float64)
    if a.ndim == 1:
        a = np.broadcast_to(a, (n, 2))
    return a[:, 0], a[:, 1]


def fixed_box(policy: ViewPolicy, hw: tuple[int, int] | np.ndarray, n: int) -> np.ndarray:
    """Centered square box of ``crop_pct`` of the shorter side, no flip."""
    h, w = _sizes(hw, n)
    side = policy.crop_pct * np.minimum(h, w)
    bh, bw = side / h, side / w
    return np.stack([(1 - bh) / 2, (1 - bw) / 2, bh, bw, np.zeros(n)], axis=1)


def _bicubic(policy: ViewPolicy, idx: np.ndarray, view: int) -> np.ndarray:
    """The views' ``bicubic`` flags: the eval interpolation for view 0, else the train one (random: a fair coin)."""
    mode = policy.eval_interpolation if view == 0 else policy.interpolation
    if mode == "random":
        return (uniform(policy.seed, idx, view, 3) < 0.5).astype(np.float64)
    return np.full(len(idx), float(mode == "bicubic"))


def sample_params(policy: ViewPolicy, indices: np.ndarray, view: int, hw: tuple[int, int] | np.ndarray) -> np.ndarray:
    """Params ``[n, 6]`` float32 of ``view`` for samples ``indices`` of images of size ``hw``.

    ``hw`` is one ``(height, width)`` for all samples or an ``[n, 2]`` array (image folders).
    """
    idx = np.asarray(indices, dtype=np.int64)
    if view == 0:
        return np.concatenate([fixed_box(policy, hw, len(idx)), _bicubic(policy, idx, 0)[:, None]],
                              axis=1).astype(np.float32)
    if not 1 <= view < policy.total_views:
        raise ValueError(f"view {view} out of range for a policy with {policy.total_views} views")
    h, w = _sizes(hw, len(idx))
    s = policy.seed
    if policy.kind == "pad_crop":
        p = policy.pad
        dy = _randint(uniform(s, idx, view, 0), np.full(len(idx), 2 * p))
        dx = _randint(uniform(s, idx, view, 1), np.full(len(idx), 2 * p))
        out = np.stack([(dy - p) / h, (dx - p) / w, np.ones(len(idx)), np.ones(len(idx))], axis=1)
    else:
        out = _random_resized_boxes(policy, idx, view, hw)
    flip = (uniform(s, idx, view, 2) < 0.5) if policy.flip else np.zeros(len(idx), dtype=bool)
    return np.concatenate([out, flip[:, None].astype(np.float64), _bicubic(policy, idx, view)[:, None]],
                          axis=1).astype(np.float32)


def _random_resized_boxes(policy: ViewPolicy, idx: np.ndarray, view: int, hw: tuple[int, int] | np.ndarray,
                          attempts: int = 10) -> np.ndarray:
    """timm/torchvision RandomResizedCrop box, vectorized: first of ``attempts`` draws that fits."""
    n = len(idx)
    h, w = _sizes(hw, n)
    area = h * w
    log_r = np.log(policy.ratio)
    box = np.full((n, 4), np.nan)
    for a in range(attempts):
        target = area * (policy.scale[0] + uniform(policy.seed, idx, view, 10 + 4 * a) * (policy.scale[1] - policy.scale[0]))
        aspect = np.exp(log_r[0] + uniform(policy.seed, idx, view, 11 + 4 * a) * (log_r[1] - log_r[0]))
        cw = np.round(np.sqrt(target * aspect))
        ch = np.round(np.sqrt(target / aspect))
        ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h) & np.isnan(box[:, 0])
        y = _randint(uniform(policy.seed, idx, view, 12 + 4 * a), h - ch)
        x = _randint(uniform(policy.seed, idx, view, 13 + 4 * a), w - cw)
        box[ok] = np.stack([y, x, ch, cw], axis=1)[ok]
    miss = np.isnan(box[:, 0])
    if miss.any():  # fallback: the largest centered crop whose ratio is within bounds
        hm, wm = h[miss], w[miss]
        in_ratio = wm / hm
        cw = np.where(in_ratio > policy.ratio[1], np.round(hm * policy.ratio[1]), wm)
        ch = np.where(in_ratio < policy.ratio[0], np.round(wm / policy.ratio[0]), hm)
        box[miss] = np.stack([(hm - ch) // 2, (wm - cw) // 2, ch, cw], axis=1)
    return box / np.stack([h, w, h, w], axis=1)


def pixel_boxes(params: np.ndarray, hw: tuple[int, int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalized params -> integer pixel anchors ``[n, 2]``, shapes ``[n, 2]`` (float32) and flips.

    Rounding happens here, in numpy, once for both stages, so DALI always receives exact pixels.
    """
    p = np.asarray(params, dtype=np.float64)
    h, w = _sizes(hw, len(p))
    scale = np.stack([h, w], axis=1)
    anchor = np.round(p[:, 0:2] * scale).astype(np.float32)
    shape = np.maximum(np.round(p[:, 2:4] * scale), 1).astype(np.float32)
    flip = (p[:, 4] > 0.5).astype(np.int32)
    return anchor, shape, flip


def interp_types(params: np.ndarray) -> np.ndarray:
    """The DALI interpolation of each view's resize (``DALIInterpType`` values, int32) from its ``bicubic`` flag."""
    from nvidia.dali import types

    cubic = np.asarray(params)[:, 5] > 0.5
    return np.where(cubic, int(types.INTERP_CUBIC), int(types.INTERP_LINEAR)).astype(np.int32)


@dataclass(frozen=True)
class InputSpec:
    """What one model receives: output size ``(h, w)`` and per-channel mean/std on the 0..1 scale."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def needs_resize(spec: InputSpec, crop_hw: tuple[int, int] | None) -> bool:
    """Whether :func:`replay` resizes the crops for ``spec`` (not when every crop already has its size)."""
    return crop_hw is None or tuple(spec.size) != tuple(crop_hw)


def replay(images: Any, anchor: Any, shape: Any, flip: Any, outputs: list[InputSpec],
           crop_hw: tuple[int, int] | None, augment: StudentAugment | None = None, interp: Any = None) -> list[Any]:
    """The DALI graph shared by both stages: crop (zero padding outside), resize, flip, normalize.

    The resize uses each view's interpolation ``interp`` (:func:`interp_types`; None: bilinear) and is
    antialiased when it downscales, as PIL's (timm's) resize. ``outputs`` lists the consumers (the
    student, and the teacher in online mode; the teacher alone in stage 1). ``crop_hw`` is the crop
    size when every view's crop already has the output size (pad-and-crop, no resize needed), else
    None. ``augment`` (timm's RandAugment / AutoAugment, :func:`_timm_augment`) changes the first
    output only, after the crop and the flip (timm's order), so the teacher's copy stays the stored view.
    """
    from nvidia.dali import fn, types

    crop = fn.slice(images, anchor, shape, axis_names="HW", out_of_bounds_policy="pad", fill_values=0,
                    normalized_anchor=False, normalized_shape=False)
    results = []
    for i, spec in enumerate(outputs):
        x = crop
        if needs_resize(spec, crop_hw):
            x = fn.resize(crop, size=list(spec.size), antialias=True,
                          interp_type=types.INTERP_LINEAR if interp is None else interp)
        mirror = flip
        if i == 0 and augment is not None and augment.active:  # timm: crop, flip, then RandAugment/AutoAugment
            x = _timm_augment(fn.flip(x, horizontal=flip), augment, tuple(spec.size), fill_color(spec.mean))
            mirror = 0
        results.append(fn.crop_mirror_normalize(x, mirror=mirror, mean=[255.0 * m for m in spec.mean],
                                                std=[255.0 * s for s in spec.std], dtype=types.FLOAT,
                                                output_layout="CHW"))
    return results
