"""Dataset lookup by name and the train/test selection a config describes (subset halves, limits)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import DataConfig
from pipeline.sources.base import DataError, Source

SOURCES = ("fashion_mnist", "cifar10", "cifar100", "mini_imagenet", "image_folder")
SUBSETS = ("all", "half_a", "half_b")


def load_source(name: str, split: str, data_dir: str | None, image_size: int = 224,
                skip_corrupt: bool = False) -> Source:
    """Read one split of a named dataset."""
    if name == "fashion_mnist":
        from pipeline.sources.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(split, data_dir)
    if name in ("cifar10", "cifar100"):
        from pipeline.sources.cifar import load_cifar

        if data_dir is None:
            raise DataError(f"{name} needs data.data_dir (the folder holding the python-version pickles)")
        return load_cifar(data_dir, name, split)
    if name == "mini_imagenet":
        from pipeline.sources.mini_imagenet import load_mini_imagenet

        if data_dir is None:
            raise DataError("mini_imagenet needs data.data_dir (the folder holding the category-split pickles)")
        return load_mini_imagenet(data_dir, split)
    if name == "image_folder":
        from pipeline.sources.image_folder import load_image_folder

        if data_dir is None:
            raise DataError("image_folder needs data.data_dir (the folder holding <split>/<class>/<image>)")
        return load_image_folder(data_dir, split, image_size, skip_corrupt)
    raise DataError(f"unknown data source {name!r}; valid: {', '.join(SOURCES)}")


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


def with_noise(source: Source, cfg: DataConfig) -> Source:
    """The same images with noisy training labels; the realized rate is kept on the source."""
    from pipeline.label_noise import inject_noise

    coarse = None
    if cfg.noise_mode == "asym_cifar100":
        from pipeline.sources.cifar import cifar100_coarse_of_fine

        coarse = cifar100_coarse_of_fine(cfg.data_dir)
    result = inject_noise(source.labels, source.num_classes, cfg.noise_mode, cfg.noise_rate, cfg.noise_seed,
                          coarse_labels=coarse)
    noisy = source.with_labels(result.labels, f"{source.split}:noise-{cfg.noise_mode}-{cfg.noise_rate}-{cfg.noise_seed}")
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


def training_selection(cfg: DataConfig) -> tuple[Source, Source]:
    """The training selection (classes, subset, limit, label noise) before any validation hold-out, and the test split."""
    def load(split: str) -> Source:
        return load_source(cfg.source, split, cfg.data_dir, cfg.image_size, cfg.skip_corrupt)

    train, test = load(cfg.train_split), load(cfg.test_split)
    if cfg.classes is not None:
        from pipeline.sources.class_split import split_classes

        train = split_classes(train, cfg.classes, f"{train.split}:classes{_short(cfg.classes)}")
        test = split_classes(test, cfg.classes, f"{test.split}:classes{_short(cfg.classes)}")
    train = select(train, cfg.subset, cfg.subset_seed, cfg.limit)
    test = select(test, "all", 0, cfg.test_limit)
    if cfg.noise_mode != "none":
        train = with_noise(train, cfg)
    return train, test


def load_run_splits(cfg: DataConfig, run_seed: int = 0) -> Splits:
    """The selection and its validation hold-out (``val_fraction``, drawn from ``val_seed``, or from
    ``run_seed`` when that is unset), checked: no split empty, every label within the classes."""
    selection, test = training_selection(cfg)
    train, val, rows = selection, None, None
    if cfg.val_fraction > 0:
        if not 0 < cfg.val_fraction < 1:
            raise DataError(f"data.val_fraction must be in (0, 1), got {cfg.val_fraction}")
        val_seed = cfg.val_seed if cfg.val_seed is not None else run_seed
        perm = np.random.default_rng([val_seed, len(selection)]).permutation(len(selection))
        n_val = max(1, int(round(cfg.val_fraction * len(selection))))
        rows = np.sort(perm[n_val:])
        val = selection.subset(np.sort(perm[:n_val]), f"{selection.split}:val{cfg.val_fraction}")
        train = selection.subset(rows, f"{selection.split}:train{1 - cfg.val_fraction:g}")
    for src in (train, val, test):
        if src is None:
            continue
        if len(src) == 0:
            raise DataError(f"{src.name}/{src.split} is empty")
        lo, hi = int(src.labels.min()), int(src.labels.max())
        if lo < 0 or hi >= src.num_classes:
            raise DataError(f"{src.name}/{src.split}: labels {lo}..{hi} fall outside the {src.num_classes} classes")
    return Splits(selection, train, val, test, rows)


def load_splits(cfg: DataConfig, run_seed: int = 0) -> tuple[Source, Source | None, Source]:
    """Training part, validation split (``val_fraction``, else None) and test split (see :func:`load_run_splits`)."""
    s = load_run_splits(cfg, run_seed)
    return s.train, s.val, s.test


def train_and_test(cfg: DataConfig) -> tuple[Source, Source]:
    """The training selection (without any validation hold-out: a store covers it all) and the test split."""
    s = load_run_splits(cfg)
    return s.selection, s.test
