"""Dataset lookup by name and the one split selection every scenario uses: classes, subset halves,
limits, label noise and the validation hold-out, from plain arguments (the names of the ``data``
config section, so ``load_run_splits(**dataclasses.asdict(cfg.data))`` works)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.sources import cifar, fashion_mnist, image_folder, mini_imagenet  # noqa: F401  (they register)
from pipeline.data.sources.base import READERS, DataError, Source

SUBSETS = ("all", "half_a", "half_b")


def load_source(name: str, split: str, data_dir: str | None, image_size: int = 224,
                skip_corrupt: bool = False) -> Source:
    """Read one split of the dataset registered as ``name`` (``@register_source``)."""
    entry = READERS.get(name)
    if entry is None:
        raise DataError(f"unknown data source {name!r}; valid: {', '.join(sorted(READERS))}")
    if entry.needs_dir and data_dir is None:
        raise DataError(f"{name} needs data.data_dir ({entry.needs_dir})")
    return entry.reader(name, split, data_dir, image_size, skip_corrupt)


def select(source: Source, subset: str, seed: int, limit: int) -> Source:
    """Apply a fixed-seed half split (``half_a``/``half_b``) and then keep the first ``limit`` samples."""
    if subset not in SUBSETS:
        raise DataError(f"unknown data.subset {subset!r}; valid: {', '.join(SUBSETS)}")
    idx = np.arange(len(source))
    split = source.split
    if subset != "all":
        perm = np.random.default_rng(seed).permutation(len(source))
        half = len(source) // 2
        idx = np.sort(perm[:half] if subset == "half_a" else perm[half:])
        split = f"{source.split}:{subset}:{seed}"
    if limit > 0:
        idx = idx[:limit]
        split = f"{split}:first{limit}"
    if len(idx) == len(source):
        return source
    return source.subset(idx, split)


def _short(classes: list[int]) -> str:
    return "-".join(str(c) for c in classes)


def with_noise(source: Source, mode: str, rate: float, seed: int, data_dir: str | None = None) -> Source:
    """The same images with noisy training labels; the realized rate is kept on the source."""
    from pipeline.data.sources.label_noise import inject_noise

    coarse = None
    if mode == "asym_cifar100":
        from pipeline.data.sources.cifar import cifar100_coarse_of_fine

        coarse = cifar100_coarse_of_fine(data_dir)
    result = inject_noise(source.labels, source.num_classes, mode, rate, seed, coarse_labels=coarse)
    noisy = source.with_labels(result.labels, f"{source.split}:noise-{mode}-{rate}-{seed}")
    noisy.noise_rate = result.realized_rate
    return noisy


@dataclass
class Splits:
    """The data of one run: the training selection (what a teacher store covers), the part of it that
    trains (``train_rows`` of the selection; None when nothing is held out), validation and test."""

    selection: Source
    train: Source
    val: Source | None
    test: Source
    train_rows: np.ndarray | None = None


def load_split(source: str, split: str, *, training: bool, data_dir: str | None = None, image_size: int = 224,
               skip_corrupt: bool = False, classes: list[int] | None = None, subset: str = "all",
               subset_seed: int = 0, limit: int = 0, noise_mode: str = "none", noise_rate: float = 0.0,
               noise_seed: int = 0) -> Source:
    """One split, checked: ``classes`` kept (relabelled 0..n-1), then for the training side the subset
    half, the first ``limit`` samples and label noise, for the test side the first ``limit`` samples.

    Only this split is read (miniImageNet's training pickle alone is 800 MB).
    """
    src = load_source(source, split, data_dir, image_size, skip_corrupt)
    if classes is not None:
        from pipeline.data.sources.class_split import split_classes

        src = split_classes(src, classes, f"{src.split}:classes{_short(classes)}")
    if training:
        src = select(src, subset, subset_seed, limit)
        if noise_mode != "none":
            src = with_noise(src, noise_mode, noise_rate, noise_seed, data_dir)
    else:
        src = select(src, "all", 0, limit)
    return _checked(src)


def _checked(src: Source) -> Source:
    """``src``, unless it is empty or has a label outside its classes."""
    if len(src) == 0:
        raise DataError(f"{src.name}/{src.split} is empty")
    lo, hi = int(src.labels.min()), int(src.labels.max())
    if lo < 0 or hi >= src.num_classes:
        raise DataError(f"{src.name}/{src.split}: labels {lo}..{hi} fall outside the {src.num_classes} classes")
    return src


def load_run_splits(source: str = "fashion_mnist", *, data_dir: str | None = None, train_split: str = "train",
                    test_split: str = "test", subset: str = "all", subset_seed: int = 0, limit: int = 0,
                    test_limit: int = 0, image_size: int = 224, skip_corrupt: bool = False,
                    classes: list[int] | None = None, noise_mode: str = "none", noise_rate: float = 0.0,
                    noise_seed: int = 0, val_fraction: float = 0.0, val_seed: int | None = None,
                    run_seed: int = 0) -> Splits:
    """The training selection (what a store covers), its validation hold-out (``val_fraction``, drawn
    from ``val_seed``, or from ``run_seed`` when that is unset) and the test split, all checked."""
    common: dict[str, Any] = dict(data_dir=data_dir, image_size=image_size, skip_corrupt=skip_corrupt, classes=classes)
    selection = load_split(source, train_split, training=True, subset=subset, subset_seed=subset_seed, limit=limit,
                           noise_mode=noise_mode, noise_rate=noise_rate, noise_seed=noise_seed, **common)
    test = load_split(source, test_split, training=False, limit=test_limit, **common)
    train, val, rows = selection, None, None
    if val_fraction > 0:
        if not 0 < val_fraction < 1:
            raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        perm = np.random.default_rng([val_seed if val_seed is not None else run_seed, len(selection)]).permutation(
            len(selection))
        n_val = max(1, int(round(val_fraction * len(selection))))
        rows = np.sort(perm[n_val:])
        val = _checked(selection.subset(np.sort(perm[:n_val]), f"{selection.split}:val{val_fraction}"))
        train = _checked(selection.subset(rows, f"{selection.split}:train{1 - val_fraction:g}"))
    return Splits(selection, train, val, test, rows)


def load_splits(run_seed: int = 0, **data: Any) -> tuple[Source, Source | None, Source]:
    """Training part, validation split (``val_fraction``, else None) and test split (see :func:`load_run_splits`)."""
    s = load_run_splits(run_seed=run_seed, **data)
    return s.train, s.val, s.test


def train_and_test(**data: Any) -> tuple[Source, Source]:
    """The training selection (without any validation hold-out: a store covers it all) and the test split."""
    s = load_run_splits(**data)
    return s.selection, s.test
