"""Tests of pipeline/scenarios/."""
