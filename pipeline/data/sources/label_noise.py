"""Synthetic label noise, deterministic from its own seed (pure numpy).

Modes:

* ``"none"``: labels unchanged.
* ``"symmetric"``: exactly ``round(rate * N)`` samples, chosen uniformly, get a label drawn
  uniformly over *all* ``C`` classes, so about ``1/C`` of them keep their label: the realized
  flip rate is about ``rate * (C - 1) / C`` (reported as ``NoiseResult.realized_rate``).
* ``"asym_cifar10"``: truck(9)->automobile(1), bird(2)->airplane(0), cat(3)<->dog(5),
  deer(4)->horse(7).
* ``"asym_cifar100"``: each fine class -> the next fine class of its superclass, cyclically.
* ``"asym_next"``: class ``c`` -> ``(c + 1) mod C``.

Asymmetric modes flip exactly ``round(rate * count_c)`` samples of each mapped source class
``c``, chosen uniformly among that class's samples (selection uses the clean labels, so
cat->dog and dog->cat never interact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOISE_MODES = ("none", "symmetric", "asym_cifar10", "asym_cifar100", "asym_next")


@dataclass(frozen=True)
class NoiseResult:
    """Noisy labels, which samples differ from the clean labels, and the fraction that differ."""

    labels: np.ndarray
    flipped_mask: np.ndarray
    realized_rate: float


def asym_cifar10_map() -> dict[int, int]:
    """The standard CIFAR-10 asymmetric flips (source class -> target class)."""
    return {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}


def asym_cifar100_map(coarse_of_fine: np.ndarray) -> np.ndarray:
    """Map each fine class to the next fine class (ascending, cyclic) in its superclass.

    ``coarse_of_fine[f]`` is the superclass of fine class ``f``; the result ``m`` has
    ``m[f]`` = target of ``f`` (``m[f] == f`` for a superclass with a single class).
    """
    cof = np.asarray(coarse_of_fine)
    if cof.ndim != 1 or cof.size == 0 or not np.issubdtype(cof.dtype, np.integer) or (cof < 0).any():
        raise ValueError("coarse_of_fine must be a non-empty 1-D array of non-negative superclass ids, one per fine class")
    mapping = np.arange(cof.size, dtype=np.int64)
    for sc in np.unique(cof):
        members = np.flatnonzero(cof == sc)  # ascending fine ids
        mapping[members] = np.roll(members, -1)
    return mapping


def _coarse_of_fine(coarse_labels: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class superclass ids from either per-sample coarse labels or a per-class array.

    An array as long as ``labels`` is read per sample (CIFAR's ``coarse_labels``); otherwise
    an array of length ``num_classes`` is read as ``coarse_of_fine`` directly.
    """
    coarse = np.asarray(coarse_labels).reshape(-1)
    if not np.issubdtype(coarse.dtype, np.integer):
        raise ValueError("coarse_labels must be integers")
    if coarse.size == labels.size:
        out = np.full(num_classes, -1, dtype=np.int64)
        for f in np.unique(labels):
            cs = np.unique(coarse[labels == f])
            if cs.size != 1:
                raise ValueError(f"coarse_labels give fine class {f} several superclasses {cs.tolist()}")
            out[f] = cs[0]
        if (out < 0).any():
            raise ValueError("per-sample coarse_labels do not cover every class; pass coarse_of_fine "
                             f"(one superclass per class, length {num_classes}) instead")
        return out
    if coarse.size == num_classes:
        return coarse.astype(np.int64)
    raise ValueError(f"coarse_labels must have one entry per sample ({labels.size}) or per class ({num_classes}), got {coarse.size}")


def _class_map(mode: str, labels: np.ndarray, num_classes: int, coarse_labels: np.ndarray | None) -> np.ndarray:
    """The target class of each class for an asymmetric mode (identity where unmapped)."""
    if mode == "asym_cifar10":
        if num_classes != 10:
            raise ValueError(f"asym_cifar10 needs num_classes=10, got {num_classes}")
        mapping = np.arange(10, dtype=np.int64)
        for src, dst in asym_cifar10_map().items():
            mapping[src] = dst
        return mapping
    if mode == "asym_cifar100":
        if coarse_labels is None:
            raise ValueError("asym_cifar100 needs coarse_labels (the superclass of each sample or class)")
        return asym_cifar100_map(_coarse_of_fine(coarse_labels, labels, num_classes))
    return (np.arange(num_classes, dtype=np.int64) + 1) % num_classes  # asym_next


def inject_noise(labels: np.ndarray, num_classes: int, mode: str, rate: float, seed: int,
                 coarse_labels: np.ndarray | None = None) -> NoiseResult:
    """Return noisy copies of ``labels`` under ``mode`` at ``rate``; same seed, same result.

    ``coarse_labels`` is needed only by ``"asym_cifar100"``: per-sample superclass labels
    (same length as ``labels``) or one superclass per class (length ``num_classes``).
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {mode!r}; valid modes: {', '.join(NOISE_MODES)}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(rate)) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"noise rate must be a number in [0, 1], got {rate!r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    num_classes = int(num_classes)
    clean = np.asarray(labels, dtype=np.int64).reshape(-1)
    if clean.size and (clean.min() < 0 or clean.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    rate = float(rate)
    noisy = clean.copy()
    rng = np.random.default_rng(seed)

    if mode == "symmetric":
        k = int(round(rate * clean.size))
        chosen = rng.choice(clean.size, size=k, replace=False)
        noisy[chosen] = rng.integers(0, num_classes, size=k)
    elif mode != "none":
        mapping = _class_map(mode, clean, num_classes, coarse_labels)
        for src in range(num_classes):  # fixed order keeps the draw sequence deterministic
            if mapping[src] == src:
                continue
            members = np.flatnonzero(clean == src)
            k = int(round(rate * members.size))
            if k:
                noisy[rng.choice(members, size=k, replace=False)] = mapping[src]

    flipped = noisy != clean
    realized = float(flipped.mean()) if clean.size else 0.0
    return NoiseResult(labels=noisy, flipped_mask=flipped, realized_rate=realized)
