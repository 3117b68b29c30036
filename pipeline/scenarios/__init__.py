"""Scenarios built on the core: few-shot learning and noisy labels (Sel-CL)."""
