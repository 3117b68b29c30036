"""Tests of pipeline/engine/."""
