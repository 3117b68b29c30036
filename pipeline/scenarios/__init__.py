"""Scenarios built on the core, each a plug-in (``pipeline/scenario.py``): few-shot learning and noisy labels.

Importing this package registers them (the ``w2s.scenarios`` entry points do the same for an
installed package).
"""
from pipeline.scenarios.few_shot import plugin as few_shot_plugin  # noqa: F401  (registers)
from pipeline.scenarios.sel_cl import plugin as sel_cl_plugin  # noqa: F401  (registers)
