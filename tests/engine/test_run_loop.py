"""The shared run loop: named metric sums, experiment trackers, and console lines that do not wrap in logs."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.schema import ConfigError, load_config
from pipeline.engine.run_loop import MetricSums
from pipeline.engine.runtime import Dist
from pipeline.engine.trackers import Trackers, scalars
from tests.cli_run import fails, ok
from tests.helpers import fmnist_config, w2s
ONE = Dist(0, 1, 0)


def test_metric_sums_are_weighted_means_by_name() -> None:
    s = MetricSums()
    s.add({"loss": (2.0 * 4, 4), "acc": (3, 4), "hist": (np.array([1.0, 3.0]), 4)})
    s.add({"loss": (1.0 * 2, 2), "acc": (0, 2), "hist": (np.array([2.0, 0.0]), 2)})
    means = s.means(torch.device("cpu"), ONE)
    assert means["loss"] == pytest.approx((8 + 2) / 6)
    assert means["acc"] == pytest.approx(3 / 6)
    assert means["hist"] == pytest.approx([3 / 6, 3 / 6])
    back = MetricSums.from_state(json.loads(json.dumps(s.state())))  # as a step checkpoint stores it
    assert back.means(torch.device("cpu"), ONE) == means


def test_metric_sums_keep_their_names_whatever_the_insertion_order() -> None:
    a, b = MetricSums(), MetricSums()
    a.add({"x": (1.0, 1), "y": (5.0, 1)})
    b.add({"y": (5.0, 1), "x": (1.0, 1)})
    assert a.means(torch.device("cpu"), ONE) == b.means(torch.device("cpu"), ONE) == {"x": 1.0, "y": 5.0}


def test_scalars_expand_lists_and_skip_the_epoch() -> None:
    row = {"epoch": 2, "loss": 0.5, "weight_hist": [0.25, 0.75], "test_agreement": None, "mode": "x"}
    assert dict(scalars(row)) == {"loss": 0.5, "weight_hist/0": 0.25, "weight_hist/1": 0.75}


def test_wandb_tracker_logs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, list] = {"init": [], "log": [], "finish": []}
    run = types.SimpleNamespace(log=lambda values, step: calls["log"].append((values, step)),
                                finish=lambda: calls["finish"].append(True))
    fake = types.ModuleType("wandb")
    fake.__spec__ = types.SimpleNamespace(name="wandb")  # type: ignore[assignment]
    fake.init = lambda **kw: calls["init"].append(kw) or run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "wandb" else None)
    t = Trackers(tmp_path, ["wandb"])
    t.log({"epoch": 0, "loss": 1.5, "weight_hist": [1.0]})
    t.close()
    assert calls["init"][0]["mode"] == "offline" and calls["init"][0]["dir"] == str(tmp_path)
    assert calls["log"] == [({"loss": 1.5, "weight_hist/0": 1.0}, 1)] and calls["finish"] == [True]


def test_run_log_is_checked() -> None:
    with pytest.raises(ConfigError, match="run.log may list tensorboard, wandb"):
        load_config(None, ["run.log=[mlflow]"])


def _config(tmp: Path, fmnist_dir: Path, out: Path, **run: object) -> Path:
    return fmnist_config(tmp / "cfg.yaml", fmnist_dir,
                         data={"limit": 600, "test_limit": 200},
                         views={"kind": "pad_crop", "num_views": 2, "pad": 2},
                         model={"name": "fmnist_linear"},
                         optim={"epochs": 2, "batch_size": 100, "eval_batch_size": 200},
                         run={"output": str(out), **run})


def test_tensorboard_gets_every_metric_of_every_row(fmnist_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    ok(["train-teacher", str(_config(tmp_path, fmnist_dir, out, log=["tensorboard"]))])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {k for r in rows for k, _ in scalars(r)}
    for key in ("loss", "test_acc"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)


def test_a_tracker_that_is_not_installed_is_one_line(fmnist_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    fails(["train-teacher", str(_config(tmp_path, fmnist_dir, tmp_path / "run", log=["wandb"]))],
          "the wandb package is not installed")


def test_log_lines_do_not_wrap_off_a_terminal(fmnist_dir: Path, tmp_path: Path) -> None:
    """Redirected to a file, a long epoch line or message stays one line (rich would wrap at 80 columns)."""
    out = tmp_path / ("a_long_run_directory_name_" * 4)
    cfg = _config(tmp_path, fmnist_dir, out, checkpoint_every_steps=0)
    res = w2s("train-teacher", str(cfg), timeout=300)
    assert res.returncode == 0, res.stderr
    res = w2s("train-teacher", str(cfg), timeout=300)
    lines = [x for x in res.stderr.splitlines() if "already holds a finished run" in x]
    assert res.returncode != 0 and len(lines) == 1 and str(out) in lines[0] and len(lines[0]) > 120
