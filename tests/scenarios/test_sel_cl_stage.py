"""``w2s sel-cl``: a tiny end-to-end run on real Fashion-MNIST with 40% symmetric noise, exact resume after a
SIGKILL mid-epoch, and one-line refusals of bad input (its augmentation: tests/data/test_batch_augment.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.scenarios.sel_cl.steps import SelCLNet, key_encoder
from tests.cli_run import fails, invoke, ok
from tests.helpers import fmnist_config, kill_when, mid_epoch, start, w2s_cmd

STEPS = 20  # 1000 samples / batch 50


def _config(tmp: Path, fmnist_dir: Path, name: str, **sections: dict) -> Path:
    """3 epochs (1 warm-up, the supervised queue from the 3rd) of a small MLP on 1,000 noisy images."""
    base = {"data": {"limit": 1000, "test_limit": 500, "noise_mode": "symmetric", "noise_rate": 0.4, "noise_seed": 0},
            "model": {"name": "fmnist_mlp", "kwargs": {"hidden": 64}},
            "optim": {"epochs": 3, "batch_size": 50, "lr": 0.05, "weight_decay": 1e-4, "eval_batch_size": 500},
            "sel_cl": {"k": 10, "low_dim": 16, "queue_per_class": 10, "uns_queue_size": 200, "warmup_epochs": 1,
                       "sup_queue_begin": 2, "lr_warmup_epochs": 1, "select_batch_size": 500},
            "run": {"output": str(tmp / name), "num_threads": 1, "deterministic": True, "checkpoint_every_steps": 5}}
    return fmnist_config(tmp / f"{name}.yaml", fmnist_dir, base, **sections)


@pytest.fixture(scope="module")
def reference(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    """One uninterrupted run: (run directory, result, seconds)."""
    tmp = tmp_path_factory.mktemp("sel_cl")
    began = time.perf_counter()
    result = ok(["sel-cl", str(_config(tmp, fmnist_dir, "ref"))])
    return tmp / "ref", result, time.perf_counter() - began


def test_key_encoder_normalizes_with_batch_statistics():
    from pipeline.models import create

    net = SelCLNet(create("fmnist_cnn", 10, 1, width=4), 8)
    key = key_encoder(net)
    bns = [m for m in key.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.training for m in bns) and not key.backbone.head.training
    assert not any(p.requires_grad for p in key.parameters())
    logits, emb = key(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10) and torch.allclose(emb.norm(dim=1), torch.ones(4))


def test_schedule_is_upstreams_warmup_then_steps():
    from pipeline.config.schema import load_config
    from pipeline.scenarios.sel_cl.pretrain import build_schedule

    cfg = load_config(None, ["optim.lr=0.1", "optim.milestones=[3,5]", "optim.decay_rate=0.1",
                             "sel_cl.lr_warmup_epochs=2", "sel_cl.lr_warmup_multiplier=100"])
    steps, warm = 4, 8
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_schedule(opt, cfg, steps)
    for k in range(7 * steps):  # lr of update k (0-based), upstream GradualWarmupScheduler + MultiStepLR
        ref = 0.1 / 100 * (99 * k / warm + 1) if k <= warm else 0.1 * 0.1 ** sum(k >= m * steps for m in (3, 5))
        assert opt.param_groups[0]["lr"] == pytest.approx(ref, rel=1e-9), k
        sched.step_update(k + 1)


# ---------------------------------------------------------------- the stage


def test_tiny_run_selects_cleaner_examples_and_writes_a_loadable_model(reference):
    from pipeline.models.files import load_model

    run, result, seconds = reference
    assert {"role", "model", "epochs", "test_acc", "selected", "selection_precision", "selection_recall",
            "noise_rate", "train_samples"} <= result.keys()
    assert result["role"] == "sel_cl" and result["epochs"] == 3 and result["train_samples"] == 1000
    assert 0.3 < result["noise_rate"] < 0.4  # 40% redrawn over 10 classes
    # the kNN selection is much cleaner than the noisy labels it was made from
    assert result["selection_precision"] > (1 - result["noise_rate"]) + 0.15
    assert 0 < result["selected"] < 1000 and result["selection_recall"] > 0.3
    assert result["test_acc"] > 0.15  # the classifier head learned something from the selected examples
    for name in ("model.safetensors", "model.json", "projection.safetensors", "selection.npz", "result.json",
                 "metrics.csv"):
        assert (run / name).is_file(), name
    model, meta, _ = load_model(run)
    assert meta["model"] == "fmnist_mlp" and meta["num_classes"] == 10 and meta["dataset"]["num_samples"] == 1000
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert load_file(run / "projection.safetensors")["weight"].shape == (16, 64)
    sel = np.load(run / "selection.npz")
    assert sel["mask"].dtype == bool and sel["mask"].shape == (1000,) and int(sel["mask"].sum()) == result["selected"]
    noisy, clean = sel["noisy_labels"], sel["clean_labels"]
    assert (noisy != clean).mean() == pytest.approx(result["noise_rate"])
    assert (noisy == clean)[sel["mask"]].mean() == pytest.approx(result["selection_precision"])
    assert sel["confidence"].shape == sel["corrected_labels"].shape == (1000,)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "sup_con" not in rows[0] and "sup_con" in rows[1] and rows[2]["lr"] > 0
    print(f"tiny sel-cl run: {seconds:.1f} s")


def test_sigkill_mid_epoch_then_resume_gives_identical_files(reference, fmnist_dir, tmp_path):
    ref = reference[0]
    cfg = _config(tmp_path, fmnist_dir, "cut")
    ckpt = tmp_path / "cut" / "checkpoints"
    kill_when(start(w2s_cmd("sel-cl", str(cfg)), capture=True), mid_epoch(ckpt), timeout=120,
              interval=0.002)  # inside a Sel-CL epoch
    assert not (tmp_path / "cut" / "result.json").exists()
    step = torch.load(ckpt / "step.pt", weights_only=True)
    assert int(step["epoch"]) >= 1 and 0 < int(step["step"]) < STEPS and step["pairs"] is not None
    res = invoke(["sel-cl", str(cfg), "--resume"])
    assert res.exit_code == 0, res.output
    assert f"resuming epoch {int(step['epoch']) + 1} after step {int(step['step'])}" in " ".join(res.output.split())
    assert json.loads(res.stdout.strip().splitlines()[-1]) == reference[1]
    for name in ("model.safetensors", "projection.safetensors"):
        a, b = load_file(ref / name), load_file(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    a, b = np.load(ref / "selection.npz"), np.load(tmp_path / "cut" / "selection.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_bad_input_is_one_line(fmnist_dir, tmp_path, monkeypatch):
    fails(["sel-cl", str(_config(tmp_path, fmnist_dir, "clean", data={"noise_mode": "none", "noise_rate": 0.0}))],
          "Sel-CL selects clean examples among noisy labels; set data.noise_mode and data.noise_rate")
    fails(["sel-cl", str(_config(tmp_path, fmnist_dir, "zero", data={"noise_rate": 0.0}))], "set data.noise_mode")
    fails(["sel-cl", str(_config(tmp_path, fmnist_dir, "big_k", sel_cl={"k": 1000}))],
          "sel_cl.k=1000 neighbours need more than the 1000 training samples")
    fails(["sel-cl", str(_config(tmp_path, fmnist_dir, "few", optim={"batch_size": 2000}))],
          "1000 training samples are fewer than one batch of 2000")
    monkeypatch.setenv("WORLD_SIZE", "2")
    fails(["sel-cl", str(_config(tmp_path, fmnist_dir, "ddp"))], "without torchrun")
