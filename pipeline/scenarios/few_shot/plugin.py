"""The few-shot scenario as a plug-in of the core (``pipeline/scenario.py``).

Its commands (``w2s few-shot eval`` / ``meta``) read a config schema of their own; the core's key
reference (``docs/config_keys.md``) lists it from here.
"""
from __future__ import annotations

from pipeline.scenario import Scenario, register_scenario
from pipeline.scenarios.few_shot.config import FewShotConfig


@register_scenario
class FewShot(Scenario):
    """Episodic evaluation and Meta-Baseline training with a weak teacher."""

    name = "few_shot"
    schemas = {"few-shot (w2s few-shot eval / meta)": (FewShotConfig, "scenarios/few_shot.md")}
