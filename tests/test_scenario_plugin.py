"""A scenario that lives in the tests: one class adds a config section, its rule, training rows and a step hook.

It shows that adding a scenario touches no core file (pipeline/scenario.py is the interface).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.config.checks import Check, ConfigError, setting
from pipeline.config.schema import load_config
from pipeline.scenario import SCENARIOS, Scenario, register_scenario
from tests.cli_run import fails, ok


@dataclass
class EveryOtherConfig:
    """Keep every ``step``-th training row; count the student's steps in ``calls`` (the hook's proof)."""

    step: int = setting(0, check=Check(lo=0))


CALLS: list[int] = []


class CountingHook:
    def __call__(self, batch: Any, epoch: int, lam: float, target: Any) -> Any:
        CALLS.append(epoch)
        return target


class EveryOther(Scenario):
    name = "every_other"
    sections = {"every_other": EveryOtherConfig}

    def check(self, cfg: Any) -> None:
        if cfg.every_other.step == 1:
            raise ConfigError("every_other.step=1 keeps every row; use 0 to turn the scenario off")

    def training_rows(self, cfg: Any, source: Any) -> Any:
        step = cfg.every_other.step
        return source.subset(np.arange(0, len(source), step), f"{source.split}:every{step}") if step else None

    def target_hook(self, cfg: Any, student: Any) -> CountingHook | None:
        return CountingHook() if cfg.every_other.step else None


@pytest.fixture
def scenario():
    register_scenario(EveryOther)
    yield
    del SCENARIOS["every_other"]


def test_the_section_is_typed_checked_and_written_back(scenario, tmp_path):
    assert load_config(None, ["every_other.step=3"]).every_other.step == 3
    with pytest.raises(ConfigError, match="every_other.step must be >= 0"):
        load_config(None, ["every_other.step=-1"])
    with pytest.raises(ConfigError, match="every_other.step=1 keeps every row"):
        load_config(None, ["every_other.step=1"])
    with pytest.raises(ConfigError, match="valid keys in section 'every_other': step"):
        load_config(None, ["every_other.stride=2"])
    assert load_config(None, []).to_dict()["every_other"] == {"step": 0}


def test_a_run_uses_the_scenario_rows_and_hook(scenario, fmnist_dir, tmp_path):
    cfg = {"data": {"source": "fashion_mnist", "data_dir": str(fmnist_dir), "limit": 400, "test_limit": 100},
           "model": {"name": "fmnist_linear"}, "objective": {"name": "vanilla"},
           "optim": {"epochs": 1, "batch_size": 50, "eval_batch_size": 100},
           "run": {"output": str(tmp_path / "run"), "num_threads": 1}, "every_other": {"step": 2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    CALLS.clear()
    result = ok(["train-teacher", str(path)])
    assert result["train_samples"] == 200 and len(CALLS) == 200 // 50
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["every_other"] == {"step": 2}


def test_without_the_scenario_its_section_is_an_unknown_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("every_other: {step: 2}\n")
    fails(["train-teacher", str(path)], "unknown config key 'every_other'")
