"""The SimCLR prior shipped in priors/ (docs/demo.md): a well-formed model record whose weights load as a prior."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.models.files import file_sha256, load_model

PRIOR = Path(__file__).resolve().parents[2] / "priors" / "fmnist_cnn_simclr"
SHA256 = "5b4b069da7fd20fcafc42a2caf5e299c7984289f1147630972eb7ac05a2bb977"  # as docs/demo.md states


def test_the_shipped_prior_loads_and_is_the_documented_file():
    model, meta, _ = load_model(PRIOR)
    assert meta["model"] == "fmnist_cnn" and meta["stage"] == "pretrain" and meta["dataset"]["split"] == "train:half_b:0"
    assert file_sha256(PRIOR / "model.safetensors") == SHA256
    head = [p for n, p in model.named_parameters() if n.startswith("head")]
    assert head and all(torch.count_nonzero(p) == 0 for p in head)  # SimCLR's zero-initialized logits layer
    result = json.loads((PRIOR / "result.json").read_text())
    assert result["epochs"] == 30 and result["knn_acc"] == 0.8087
