"""``--resume`` continues the run its directory holds, or refuses: a setting that changes results may not differ."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.engine.run_dir import RESUME_FREE, first_difference
from tests.cli_run import fails, ok
from tests.helpers import fmnist_config


def _linear_run(d: Path, fmnist_dir: Path, epochs: int) -> tuple[Path, Path]:
    """A finished linear run of ``epochs`` epochs on 400 images: its config ``d/c.yaml`` and run directory."""
    path = fmnist_config(d / "c.yaml", fmnist_dir,
                         data={"limit": 400, "test_limit": 200},
                         views={"kind": "pad_crop", "num_views": 1, "pad": 2, "seed": 0},
                         model={"name": "fmnist_linear"},
                         optim={"epochs": epochs, "batch_size": 100, "eval_batch_size": 200, "lr": 0.05},
                         run={"output": str(d / "run")})
    ok(["train-teacher", str(path)])
    return path, d / "run"


@pytest.fixture(scope="module")
def finished(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 1-epoch linear run (its config file and its run directory)."""
    return _linear_run(tmp_path_factory.mktemp("resume_cfg"), fmnist_dir, 1)


@pytest.mark.parametrize("override,key", [
    ("optim.epochs=3", "optim.epochs"),  # was: "trained" epochs 2-3 at lr 0 and reported 3 epochs
    ("objective.name=kd", "objective.name"),
    ("optim.lr=0.5", "optim.lr"),
    ("augment.mixup=0.2", "augment.mixup"),
])
def test_resume_with_a_changed_setting_is_refused(finished: tuple[Path, Path], override: str, key: str) -> None:
    path, run = finished
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    msg = fails(["train-teacher", str(path), "--resume", "--set", override], f"cannot resume {run}: {key} is")
    assert "in its config.yaml" in msg and "another run.output" in msg
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # config.yaml not rewritten


def test_resume_with_only_free_settings_goes_on(finished: tuple[Path, Path]) -> None:
    path, run = finished
    result = ok(["train-teacher", str(path), "--resume", "--set", "run.num_threads=1",
                 "--set", "optim.eval_batch_size=100"])
    assert result["epochs"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["epochs"] == 1


def test_first_difference_names_nested_and_missing_keys() -> None:
    stored = {"optim": {"lr": 0.1, "epochs": 2}, "run": {"num_threads": 2, "seed": 0}}
    assert first_difference(stored, {"optim": {"lr": 0.1, "epochs": 2}, "run": {"num_threads": 8, "seed": 0}}) is None
    assert first_difference(stored, {"optim": {"lr": 0.1, "epochs": 3}, "run": stored["run"]}) == ("optim.epochs", 2, 3)
    assert first_difference(stored, {"optim": {"lr": 0.1}, "run": stored["run"]}) == ("optim.epochs", 2, None)
    assert "run.seed" not in RESUME_FREE and "run.num_threads" in RESUME_FREE


def _two_epoch_run(fmnist_dir: Path, d: Path) -> tuple[Path, Path]:
    path, run = _linear_run(d, fmnist_dir, 2)
    (run / "result.json").unlink()  # as if killed before the end
    return path, run


@pytest.mark.parametrize("damage", ["truncate", "zeros", "empty"])
def test_a_damaged_epoch_checkpoint_falls_back_to_the_one_before(fmnist_dir: Path, tmp_path: Path, damage: str) -> None:
    path, run = _two_epoch_run(fmnist_dir, tmp_path)
    state = run / "checkpoints" / "state.pt"
    data = state.read_bytes()
    state.write_bytes({"truncate": data[: len(data) // 2], "zeros": bytes(len(data)), "empty": b""}[damage])
    res = ok(["train-teacher", str(path), "--resume"])
    assert res["epochs"] == 2 and (run / "result.json").exists()


def test_no_readable_checkpoint_is_one_line_without_unsafe_advice(fmnist_dir: Path, tmp_path: Path) -> None:
    path, run = _two_epoch_run(fmnist_dir, tmp_path)
    for name in ("state.pt", "state.prev.pt"):
        (run / "checkpoints" / name).write_bytes(bytes(64))
    msg = fails(["train-teacher", str(path), "--resume"], f"cannot resume {run}: {run / 'checkpoints'}")
    assert "damaged or truncated" in msg and f"remove {run / 'checkpoints'} to train from scratch" in msg
    assert "weights_only" not in msg


def test_a_damaged_step_checkpoint_is_ignored(fmnist_dir: Path, tmp_path: Path) -> None:
    path, run = _two_epoch_run(fmnist_dir, tmp_path)
    (run / "checkpoints" / "step.pt").write_bytes(b"\x80\x02garbage")
    assert ok(["train-teacher", str(path), "--resume"])["epochs"] == 2
