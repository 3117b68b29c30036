"""Exact mid-epoch resume: SIGKILL inside an epoch, ``--resume`` from the last step checkpoint, same weights."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import fmnist_config, kill_when, mid_epoch, start, w2s_cmd


def _config(tmp: Path, fmnist_dir: Path, out: Path) -> Path:
    """A supervised run with every random part of a step: DALI RandAugment, mixup, random erasing."""
    return fmnist_config(tmp / f"{out.name}.yaml", fmnist_dir,
                         data={"limit": 2000, "test_limit": 200},
                         views={"kind": "pad_crop", "num_views": 2, "pad": 2},
                         augment={"policy": "rand_augment", "num_ops": 1, "mixup": 0.4, "random_erasing": 0.5},
                         model={"name": "fmnist_cnn", "kwargs": {"width": 8}},
                         optim={"epochs": 2, "batch_size": 20, "eval_batch_size": 200, "lr": 0.05},
                         run={"output": str(out), "deterministic": True, "checkpoint_every_steps": 5,
                              "num_threads": 1})


def _train(cfg: Path, *extra: str) -> subprocess.Popen:
    return start(w2s_cmd("train-teacher", str(cfg), *extra), capture=True)


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(fmnist_dir, tmp_path):
    ref_cfg = _config(tmp_path, fmnist_dir, tmp_path / "ref")
    ref = _train(ref_cfg)
    cut_cfg = _config(tmp_path, fmnist_dir, tmp_path / "cut")
    cut = _train(cut_cfg)
    ckpt = tmp_path / "cut" / "checkpoints"
    kill_when(cut, mid_epoch(ckpt), interval=0.005)  # inside epoch 2 of 2
    assert not (tmp_path / "cut" / "result.json").exists()
    step = torch.load(ckpt / "step.pt", weights_only=True)
    assert int(step["epoch"]) == 1 and 0 < int(step["step"]) < 100
    resumed = _train(cut_cfg, "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resuming epoch 2 after step {int(step['step'])}" in " ".join(out.split())
    assert ref.wait(timeout=600) == 0, ref.stdout.read()
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert not (ckpt / "step.pt").exists()  # superseded by the epoch checkpoint


def test_step_checkpoint_interval_is_checked():
    from pipeline.config.schema import ConfigError, load_config

    with pytest.raises(ConfigError, match="run.checkpoint_every_steps must be >= 0"):
        load_config(None, ["run.checkpoint_every_steps=-1"])
