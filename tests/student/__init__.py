"""Tests of pipeline/student/ and the stages."""
