"""Model factory: timm's ``create_model``, with this project's models registered into timm on import.

Every model is first built on the ``meta`` device (no memory, no weights), which checks the keyword
arguments and counts the parameters, so a keyword the model does not take, a value it rejects, or a
model too large for this machine is one line naming the key instead of a traceback or an allocation.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import re
import warnings
from typing import Any

import timm
import torch
from timm.models import get_arch_name, model_entrypoint
from torch import nn

from pipeline.models import (  # noqa: F401  (importing registers the models in timm)
    cifar_mobilenetv2,
    cifar_resnet,
    cifar_shufflenet,
    cifar_vgg,
    cifar_wrn,
    fewshot_backbones,
    preact_resnet,
    small,
)
from pipeline.models.record import RESERVED_KWARGS
from pipeline.engine.resource_checks import machine_memory

# copies of the weights training holds at once: weights, gradients and two optimizer moments (Adam)
TRAINING_COPIES = 4
_GIVEN = ("num_classes", "in_chans")  # passed by create itself


def create(name: str, num_classes: int, in_chans: int, /, **kwargs: Any) -> nn.Module:
    """Build ``name`` from timm's registry with ``model.kwargs``; see :func:`create_checked`.

    The first three are positional-only, so ``model.kwargs`` holding ``num_classes`` reaches the check.
    """
    return create_checked(name, num_classes, in_chans, kwargs, "model.kwargs")


def create_checked(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any], where: str) -> nn.Module:
    """Build ``name`` (never with hosted weights) after checking ``kwargs`` on the meta device.

    ``where`` names the kwargs in errors (``model.kwargs`` for a config, the file for a model record).
    ValueError, one line, for an unknown model, a reserved or unknown key, a value of the wrong kind or
    that the model rejects, an empty layer, or weights too large to train in this machine's memory.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[-1]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}")
    kwargs = dict(kwargs)
    for key, value in kwargs.items():
        if key in _GIVEN:
            raise ValueError(f"{where}.{key}: remove it; {key} is set separately ({key}="
                             f"{num_classes if key == 'num_classes' else in_chans})")
        if key in RESERVED_KWARGS and not (key == "pretrained" and value is False):
            raise ValueError(f"{where}.{key} is not allowed: it makes timm load weights, read a file, reach a host "
                             "or change what is built; remove it (weights to start from go in model.pretrained)")
    kwargs.pop("pretrained", None)
    keywords = _keywords(name)
    for key, value in kwargs.items():
        if key in keywords and not _same_kind(keywords[key], value):
            raise ValueError(f"{where}.{key} must be {_kind(keywords[key])} like its default "
                             f"{keywords[key]!r}, got {value!r}")
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the probe's warnings (e.g. on empty layers) repeat in the real build
            probe = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except Exception as exc:  # models reject bad values with any exception type (TypeError, RuntimeError...)
        raise ValueError(_rejection(name, kwargs, where, keywords, exc)) from None
    _check_size(probe, name, kwargs, where)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


@functools.lru_cache(maxsize=None)
def _keywords(name: str) -> dict[str, Any]:
    """The keyword arguments ``name`` takes with their defaults (those without one are set by the entrypoint).

    An entrypoint that names its parameters takes those; one that takes only ``pretrained`` and
    ``**kwargs`` (timm's convention) passes them on to its model class, whose ``__init__`` names them.
    """
    fn = model_entrypoint(get_arch_name(name))
    params = inspect.signature(fn).parameters.values()
    if any(p.name != "pretrained" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return _named_parameters(fn)
    with torch.device("meta"):
        cls = type(timm.create_model(name, pretrained=False))
    return _named_parameters(cls.__init__)


def _named_parameters(fn: Any) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    skip = {"self", *_GIVEN, *RESERVED_KWARGS}
    return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is not p.empty and p.name not in skip}


def _kind(default: Any) -> str:
    return "true or false" if isinstance(default, bool) else "a string" if isinstance(default, str) else "a number"


def _same_kind(default: Any, value: Any) -> bool:
    """Whether ``value`` is a boolean / string / number as ``default`` is (other defaults are not compared)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _named(kwargs: dict[str, Any], where: str) -> str:
    """The keyword arguments an error is about: ``where.key=value``, or all of them."""
    if len(kwargs) == 1:
        key, value = next(iter(kwargs.items()))
        return f"{where}.{key}={value!r}"
    return f"{where} {kwargs!r}"


def _rejection(name: str, kwargs: dict[str, Any], where: str, keywords: dict[str, Any], exc: Exception) -> str:
    """One line saying which keyword ``name`` refused and why."""
    valid = ", ".join(sorted(keywords)) or "none"
    found = re.search(r"(unexpected keyword |multiple values for (?:keyword )?)argument '(\w+)'", str(exc))
    if found and found[2] in kwargs:
        why = "takes no such argument" if found[1].startswith("unexpected") else "sets it itself"
        return f"{where}.{found[2]}: {name} {why}; valid: {valid}"
    detail = str(exc).splitlines()[0] if str(exc) else ""
    if not kwargs:
        return f"model {name!r} cannot be built ({type(exc).__name__}: {detail})"
    return f"{_named(kwargs, where)}: {name} cannot be built with it ({type(exc).__name__}: {detail})"


def _check_size(probe: nn.Module, name: str, kwargs: dict[str, Any], where: str) -> None:
    """Refuse an empty layer (a width of 0) and weights too large to train in this machine's memory."""
    subject = _named(kwargs, where) if kwargs else f"model {name!r}"
    for pname, param in probe.named_parameters():
        if param.numel() == 0:
            raise ValueError(f"{subject}: gives {name} an empty layer ({pname} of shape {tuple(param.shape)}); "
                             "sizes must be positive")
    count = sum(p.numel() for p in probe.parameters())
    size = sum(t.numel() * t.element_size() for t in itertools.chain(probe.parameters(), probe.buffers()))
    memory = machine_memory()
    if TRAINING_COPIES * size > memory:
        raise ValueError(f"{subject}: {name} would have {count:.3g} parameters ({size / 2**30:.3g} GiB); training "
                         f"holds about {TRAINING_COPIES}x that and this machine has {memory / 2**30:.3g} GiB of "
                         "memory: use smaller sizes")
