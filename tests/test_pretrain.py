"""``w2s pretrain`` (SimCLR): NT-Xent against the paper's formula, a tiny run on real Fashion-MNIST whose prior
``model.pretrained`` loads (also as a linear probe), labels that never reach a weight, exact resume after a SIGKILL
mid-epoch, and one-line refusals."""
from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.pretrain import knn_accuracy, nt_xent
from tests.cli_run import fails, invoke, ok
from tests.conftest import ROOT, write_idx
from tests.helpers import fmnist_config, kill_when, mid_epoch, start, w2s_cmd

STEPS = 15  # 600 samples / batch 40


def _config(tmp: Path, data_dir: Path, name: str, *layers: dict, **sections: dict) -> Path:
    """2 epochs of a narrow fmnist_cnn on 600 training images, a step checkpoint every 3 steps (``fmnist_config``'s
    layers and sections over it)."""
    base = {"data": {"limit": 600, "test_limit": 200},
            "model": {"name": "fmnist_cnn", "kwargs": {"width": 4}},
            "pretrain": {"proj_dim": 16, "knn_k": 10},
            "optim": {"epochs": 2, "batch_size": 40, "lr": 0.1, "eval_batch_size": 200},
            "run": {"output": str(tmp / name), "num_threads": 1, "deterministic": True, "checkpoint_every_steps": 3}}
    return fmnist_config(tmp / f"{name}.yaml", data_dir, base, *layers, **sections)


def _same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def reference(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted run: (run directory, result)."""
    tmp = tmp_path_factory.mktemp("pretrain")
    return tmp / "ref", ok(["pretrain", str(_config(tmp, fmnist_dir, "ref"))])


# ---------------------------------------------------------------- the loss and the monitor


def _paper_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Chen et al. 2020, Algorithm 1, transcribed with loops: views 2k-1 and 2k of image k, the mean over 2N terms."""
    z = [v for pair in zip(z1, z2) for v in pair]  # z_1, z_2 (image 1), z_3, z_4 (image 2), ...

    def s(i: int, j: int) -> torch.Tensor:
        return z[i] @ z[j] / (z[i].norm() * z[j].norm())

    def loss(i: int, j: int) -> torch.Tensor:
        return -torch.log(torch.exp(s(i, j) / t) / sum(torch.exp(s(i, k) / t) for k in range(len(z)) if k != i))

    n = len(z1)
    return sum(loss(2 * k, 2 * k + 1) + loss(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def test_nt_xent_golden_value():
    """Two orthogonal images, each view equal to its pair: every anchor scores log(1 + 2 exp(-1 / t))."""
    e = torch.eye(2)
    assert nt_xent(e, e, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)


def test_nt_xent_value_and_gradient_match_the_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for t in (0.1, 0.5, 1.0):
        a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        b1, b2 = z1.double().requires_grad_(), z2.double().requires_grad_()
        ours, ref = nt_xent(a1, a2, t), _paper_nt_xent(b1, b2, t)
        ours.backward()
        ref.backward()
        assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(a1.grad, b1.grad.float(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a2.grad, b2.grad.float(), rtol=1e-4, atol=1e-6)


def test_knn_votes_are_weighted_by_similarity():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    queries = torch.nn.functional.normalize(torch.tensor([[0.2, 1.0], [1.0, 0.05]]), dim=1)
    # k=3: the near neighbour (weight exp(cos / 0.07)) outvotes the two far ones
    assert knn_accuracy(bank, labels, queries, torch.tensor([1, 0]), 3, 2, chunk=1) == 1.0
    assert knn_accuracy(bank, labels, queries, torch.tensor([0, 0]), 3, 2, chunk=2) == 0.5


# ---------------------------------------------------------------- the stage


def test_tiny_run_writes_a_prior_and_its_metrics(reference):
    from pipeline.models.files import load_model

    run, result = reference
    assert result["role"] == "pretrain" and result["method"] == "simclr" and result["epochs"] == 2
    assert result["train_samples"] == 600 and result["knn_k"] == 10 and 0.2 < result["knn_acc"] <= 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["knn_acc"] == result["knn_acc"]
    assert all({"loss", "lr", "images_per_s", "knn_acc"} <= r.keys() and math.isfinite(r["loss"]) for r in rows)
    model, meta, _ = load_model(run)  # a whole model: backbone + a zero classifier for the training classes
    assert meta["stage"] == "pretrain" and meta["num_classes"] == 10 and meta["dataset"]["num_samples"] == 600
    assert not model.head.weight.any() and not model.head.bias.any()
    assert json.loads((run / "result.json").read_text())["knn_acc"] == result["knn_acc"]


def test_the_prior_starts_a_student_and_a_linear_probe(reference, fmnist_dir, tmp_path):
    prior = reference[0]
    student = {"objective": {"name": "vanilla"}, "optim": {"epochs": 1, "batch_size": 40, "lr": 0.1}}
    cfg = _config(tmp_path, fmnist_dir, "full", student, model={"pretrained": str(prior)})
    res = invoke(["train-student", str(cfg)])
    assert res.exit_code == 0, res.output
    assert f"loaded {prior} (timm): 0 kept as initialized" in " ".join(res.output.split())
    probe = _config(tmp_path, fmnist_dir, "probe", student, model={"pretrained": str(prior), "freeze_backbone": True})
    assert ok(["train-student", str(probe)])["test_acc"] > 0
    before, after = load_file(prior / "model.safetensors"), load_file(tmp_path / "probe" / "model.safetensors")
    moved = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert moved == ["head.bias", "head.weight"]  # BatchNorm statistics too stay the prior's (eval mode)
    state = torch.load(tmp_path / "probe" / "checkpoints" / "state.pt", weights_only=True)
    assert sum(len(g["params"]) for g in state["optimizer"]["param_groups"]) == 2  # the optimizer holds the head alone


def test_labels_never_reach_the_weights(reference, fmnist_dir, tmp_path):
    """Permuted training labels: the same weights; only the kNN monitor, which reads them, changes."""
    shuffled = tmp_path / "shuffled"
    shutil.copytree(fmnist_dir, shuffled)
    path = shuffled / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as f:
        labels = np.frombuffer(f.read()[8:], dtype=np.uint8)
    write_idx(path, np.random.default_rng(0).permutation(labels))
    result = ok(["pretrain", str(_config(tmp_path, shuffled, "shuffled"))])
    _same_weights(reference[0], tmp_path / "shuffled")
    assert result["knn_acc"] != reference[1]["knn_acc"]


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(reference, fmnist_dir, tmp_path):
    cfg = _config(tmp_path, fmnist_dir, "cut")
    ckpt = tmp_path / "cut" / "checkpoints"
    kill_when(start(w2s_cmd("pretrain", str(cfg)), capture=True), mid_epoch(ckpt), timeout=120, interval=0.002)
    assert not (tmp_path / "cut" / "result.json").exists()
    step = torch.load(ckpt / "step.pt", weights_only=True)
    assert int(step["epoch"]) == 1 and 0 < int(step["step"]) < STEPS
    res = invoke(["pretrain", str(cfg), "--resume"])
    assert res.exit_code == 0, res.output
    assert f"resuming epoch 2 after step {int(step['step'])}" in " ".join(res.output.split())
    _same_weights(reference[0], tmp_path / "cut")
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in result.items() if k != "images_per_s"} == {
        k: v for k, v in reference[1].items() if k != "images_per_s"}


def test_bad_input_is_one_line(fmnist_dir, tmp_path, monkeypatch):
    fails(["pretrain", str(_config(tmp_path, fmnist_dir, "frozen", model={"freeze_backbone": True}))],
          "w2s pretrain trains no classifier; unset model.freeze_backbone")
    fails(["pretrain", str(_config(tmp_path, fmnist_dir, "k", pretrain={"knn_k": 601}))],
          "pretrain.knn_k=601 neighbours need as many training samples, but there are 600")
    fails(["pretrain", str(_config(tmp_path, fmnist_dir, "m", pretrain={"method": "byol"}))],
          "pretrain.method must be one of simclr")
    monkeypatch.setenv("WORLD_SIZE", "2")
    fails(["pretrain", str(_config(tmp_path, fmnist_dir, "ddp"))], "start it without torchrun")


def test_demo_config_pretrains_the_demo_student_without_labels():
    from pipeline.config.schema import load_config

    cfg = load_config(ROOT / "configs" / "fmnist" / "pretrain_simclr.yaml")
    ceiling = load_config(ROOT / "configs" / "fmnist" / "ceiling_cnn.yaml")
    assert (cfg.model.name, cfg.data.subset, cfg.data.subset_seed) == (
        ceiling.model.name, ceiling.data.subset, ceiling.data.subset_seed)
    assert cfg.pretrain.method == "simclr" and cfg.run.checkpoint_every_steps > 0
