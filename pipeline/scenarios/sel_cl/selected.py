"""Sel-CL+'s training set: the confident examples a ``w2s sel-cl`` run selected at its end (``noisy.selection``).

The run's ``selection.npz`` holds the mask over its training samples and their noisy labels;
:func:`keep_selected` checks that the data section describes the same samples and labels, and
keeps the selected ones. Stage 1 (``w2s infer-teacher``) and stage 2 apply it alike, so a store
written for the fine-tuning set matches the fine-tuning run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.engine.runtime import RunError
from pipeline.data.sources.base import Source

SELECTION_FILE = "selection.npz"


def load_selection(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a Sel-CL run's ``selection.npz``; RunError naming the path when it is missing."""
    path = Path(run_dir) / SELECTION_FILE
    if not path.is_file():
        raise RunError(f"noisy.selection: {run_dir} holds no finished Sel-CL run ({SELECTION_FILE} missing); "
                       "run `w2s sel-cl` first")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def keep_selected(source: Source, run_dir: str | Path) -> Source:
    """The examples of ``source`` that the Sel-CL run at ``run_dir`` selected (checked to be the same samples)."""
    sel = load_selection(run_dir)
    mask, noisy = sel["mask"].astype(bool), sel["noisy_labels"]
    if len(mask) != len(source) or not np.array_equal(noisy, source.labels):
        raise RunError(f"noisy.selection: {run_dir} selected among {len(mask)} samples with other labels than this "
                       f"run's {len(source)}; use the data section of that Sel-CL run")
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        raise RunError(f"noisy.selection: {run_dir} selected no example")
    return source.subset(rows, f"{source.split}:selcl{rows.size}")
