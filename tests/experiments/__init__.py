"""Tests of pipeline/experiments/."""
