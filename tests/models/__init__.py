"""Tests of pipeline/models/."""
