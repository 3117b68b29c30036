"""Sel-CL+ fine-tuning on the shared trainer: the selected examples (``noisy.selection``) and label correction."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from pipeline.data.sources.registry import load_run_splits
from tests.cli_run import fails, ok
from tests.helpers import fmnist_config

DATA = {"source": "fashion_mnist", "limit": 600, "test_limit": 200, "noise_mode": "symmetric", "noise_rate": 0.4,
        "noise_seed": 0}


def _selection_run(tmp: Path, fmnist_dir: Path, keep_every: int = 2) -> tuple[Path, np.ndarray]:
    """A stand-in for a finished ``w2s sel-cl`` run: its ``selection.npz`` (every other sample selected)."""
    splits = load_run_splits(**DATA, data_dir=str(fmnist_dir))
    clean = load_run_splits(**{**DATA, "noise_mode": "none"}, data_dir=str(fmnist_dir)).train.labels
    mask = np.arange(len(splits.train)) % keep_every == 0
    run = tmp / "selcl"
    run.mkdir()
    np.savez(run / "selection.npz", mask=mask, noisy_labels=splits.train.labels, clean_labels=clean,
             confidence=np.ones(len(mask)), corrected_labels=splits.train.labels)
    return run, mask


def _config(tmp: Path, fmnist_dir: Path, name: str, **sections: dict) -> Path:
    base = {"data": DATA, "views": {"kind": "pad_crop", "num_views": 2, "pad": 2},
            "augment": {"mixup": 1.0}, "model": {"name": "fmnist_linear"},
            "optim": {"epochs": 2, "batch_size": 50, "eval_batch_size": 200, "schedule": "multistep", "milestones": []},
            "run": {"output": str(tmp / name), "deterministic": True}}
    return fmnist_config(tmp / f"{name}.yaml", fmnist_dir, base, **sections)


def test_fine_tuning_keeps_the_selected_examples(fmnist_dir: Path, tmp_path: Path) -> None:
    run, mask = _selection_run(tmp_path, fmnist_dir)
    res = ok(["train-teacher", str(_config(tmp_path, fmnist_dir, "ft", noisy={"selection": str(run)}))])
    assert res["train_samples"] == int(mask.sum()) == 300


def test_a_store_for_the_selected_examples_serves_the_fine_tuning_student(fmnist_dir: Path, tmp_path: Path) -> None:
    run, mask = _selection_run(tmp_path, fmnist_dir)
    ok(["train-teacher", str(_config(tmp_path, fmnist_dir, "teacher", optim={"epochs": 1}))])
    student = {"noisy": {"selection": str(run)}, "objective": {"name": "adaptconf", "warmup_style": "sel_cl"},
               "teacher": {"checkpoint": str(tmp_path / "teacher"), "store": str(tmp_path / "store"),
                           "chunk_samples": 100}}
    cfg = _config(tmp_path, fmnist_dir, "student", **student)
    ok(["infer-teacher", str(cfg)])
    res = ok(["train-student", str(cfg)])
    assert res["train_samples"] == int(mask.sum()) and res["teacher_mode"] == "store"


def test_bootstrap_zero_is_plain_training_and_one_is_not(fmnist_dir: Path, tmp_path: Path) -> None:
    """With a model without batch norm, label correction with bootstrap 0 leaves the target (and the weights)
    exactly as without correction; bootstrap 1 (the model's own clean predictions) changes them."""
    run, _ = _selection_run(tmp_path, fmnist_dir)
    sel = {"selection": str(run)}
    ok(["train-teacher", str(_config(tmp_path, fmnist_dir, "plain", noisy=sel))])
    ok(["train-teacher", str(_config(tmp_path, fmnist_dir, "b0", noisy={**sel, "label_correction_from": 0,
                                                                        "bootstrap": 0.0}))])
    ok(["train-teacher", str(_config(tmp_path, fmnist_dir, "b1", noisy={**sel, "label_correction_from": 1,
                                                                        "bootstrap": 1.0}))])
    plain, b0, b1 = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("plain", "b0", "b1"))
    assert all(np.array_equal(plain[k], b0[k]) for k in plain)
    assert not all(np.array_equal(plain[k], b1[k]) for k in plain)
    rows = [json.loads(x) for x in (tmp_path / "b1" / "metrics.jsonl").read_text().splitlines()]
    plain_rows = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == plain_rows[0]["loss"]  # correction starts at epoch 1 (0-based)


def test_corrected_target_is_the_bootstrapped_mix() -> None:
    """``(1 - B) onehot(y) + B onehot(argmax f(x_clean))``, mixed with the batch flipped, as the images are."""
    labels = torch.tensor([0, 1, 2, 1])
    clean_pred = torch.tensor([0, 2, 2, 0])
    logits = F.one_hot(clean_pred, 3).float() * 5

    class Rep:
        def __call__(self, images, params, sizes=None):  # type: ignore[no-untyped-def]
            return [torch.zeros(len(images), 1, 2, 2)]

    src = SimpleNamespace(read=lambda idx: np.zeros((len(idx), 2, 2, 1), np.uint8), encoded=False, num_classes=3,
                          sizes_of=lambda idx: np.tile([2, 2], (len(idx), 1)))
    fake = SimpleNamespace(train_src=src, policy=None, net=lambda x: logits,
                           memory_format=torch.contiguous_format, autocast=torch.no_grad)
    import pipeline.scenarios.sel_cl.plugin as plugin

    hook = plugin.LabelCorrection.__new__(plugin.LabelCorrection)
    hook.student, hook.start, hook.bootstrap, hook.replayer = fake, 3, 0.2, Rep()
    orig = plugin.sample_params
    plugin.sample_params = lambda policy, idx, view, hw: np.zeros((len(idx), 5), np.float32)
    batch = SimpleNamespace(indices=np.arange(4), labels=labels)
    try:
        before = torch.zeros(4, 3)
        assert hook(batch, 2, 0.7, before) is before  # off before noisy.label_correction_from
        got = hook(batch, 3, 0.7, before)
    finally:
        plugin.sample_params = orig
    for i in range(4):
        y_i = [0.8 * (c == int(labels[i])) + 0.2 * (c == int(clean_pred[i])) for c in range(3)]
        j = 3 - i
        y_j = [0.8 * (c == int(labels[j])) + 0.2 * (c == int(clean_pred[j])) for c in range(3)]
        assert got[i].tolist() == pytest.approx([0.7 * a + 0.3 * b for a, b in zip(y_i, y_j)])


def test_bad_selection_is_one_line(fmnist_dir: Path, tmp_path: Path) -> None:
    missing = _config(tmp_path, fmnist_dir, "m", noisy={"selection": str(tmp_path / "nowhere")})
    fails(["train-teacher", str(missing)], "holds no finished Sel-CL run (selection.npz missing); run `w2s sel-cl` first")
    run, _ = _selection_run(tmp_path, fmnist_dir)
    other = _config(tmp_path, fmnist_dir, "o", noisy={"selection": str(run)}, data={"limit": 500})
    fails(["train-teacher", str(other)], "use the data section of that Sel-CL run")
    val = _config(tmp_path, fmnist_dir, "v", noisy={"selection": str(run)}, data={"val_fraction": 0.1})
    fails(["train-teacher", str(val)], "set data.val_fraction to 0")
