"""Load external pretrained checkpoints (timm-style or MAE pre-training) into a freshly created model.

Checkpoints from other projects come in several containers (``state_dict``, ``state_dict_ema``,
``model``, a bare dict of tensors, DDP ``module.`` prefixes) and two layouts this module knows:

* **timm**: the keys are the model's own ``state_dict`` keys. Loaded strictly; only the classifier
  may be left out (``reset_head=True``, or when the checkpoint's head was trained for another number
  of classes), so fine-tuning on a new label set keeps the model's freshly initialized head.
* **mae**: an MAE pre-training checkpoint (He et al. 2022) loaded into timm's ViT created with
  ``global_pool="avg", fc_norm=True``, the MAE fine-tuning recipe. The decoder and ``mask_token`` are
  dropped, the final ``norm`` is dropped (its role is taken by ``fc_norm``, which stays freshly
  initialized), and the head is re-initialized as MAE fine-tuning does (trunc-normal, std 2e-5, zero
  bias). The encoder keys of MAE are timm's ViT keys, so everything else must match exactly.

Files are read with ``weights_only=True`` (or safetensors): a pickle holding arbitrary objects is
refused rather than executed. A checkpoint made for another input size has its absolute position
embedding resampled to the model's patch grid.
"""
from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from pipeline.engine.checkpoint import CheckpointError

from pipeline.models.files import MODEL_FILE, load_state_strict

__all__ = ["LoadReport", "detect_kind", "load_pretrained", "read_checkpoint"]

Kind = Literal["auto", "timm", "mae"]
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
MAE_HEAD_STD = 2e-5
_DDP_PREFIX = "module."


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did besides copying matching weights.

    ``missing``: model keys absent from the checkpoint, kept as initialized (e.g. ``fc_norm.*``).
    ``unexpected``: checkpoint keys deliberately dropped (MAE decoder, ``mask_token``, ``norm.*``).
    ``reset``: model keys whose checkpoint values were skipped and which keep / get a fresh init
    (the classifier). ``resized``: keys resampled to the model's shape (``pos_embed``).
    ``kind``: the layout used (``"timm"`` or ``"mae"``).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    kind: str = "timm"


# ----------------------------------------------------------------------------------------- reading


def _load_pickle(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; its refusals become one-line CheckpointErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL (\S+)", text)
        if "Unsupported global" in text or found:
            what = f" (first one: {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: contains non-tensor objects{what} and is refused for safety (torch.load "
                f"weights_only=True); if you trust the file, re-save only its state dict, e.g. "
                f"torch.save({{'state_dict': ckpt['model']}}, new_path)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({text.splitlines()[0][:120]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else 'empty'})") from None


def _read_raw(path: str | Path) -> Any:
    """The deserialized file content: a dict of tensors (safetensors) or whatever the pickle holds.

    A directory stands for the ``model.safetensors`` in it (a run directory of this project).
    """
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise CheckpointError(f"pretrained checkpoint {p} not found")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{p}: not a valid safetensors file ({e})") from None
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(p)
    raise CheckpointError(f"{p}: unknown checkpoint format {suffix or '(no suffix)'!r}; "
                          f"expected .safetensors, {', '.join(PICKLE_SUFFIXES)}")


def _select(raw: Any, path: str | Path, prefer_ema: bool) -> tuple[dict[str, torch.Tensor], str | None]:
    """Pick the weights out of a container; returns (state dict without ``module.``, container key)."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a dict of weights")
    order = (["state_dict_ema"] if prefer_ema else []) + ["state_dict", "model"]
    container = next((k for k in order if isinstance(raw.get(k), Mapping)), None)
    state = raw[container] if container is not None else raw
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            where = f"[{container!r}]" if container else ""
            raise CheckpointError(f"{path}{where}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                                  f"expected a state dict (or a state_dict / state_dict_ema / model container)")
        name = key[len(_DDP_PREFIX):] if key.startswith(_DDP_PREFIX) else key
        out[name] = value
    if not out:
        raise CheckpointError(f"{path}: holds no weights")
    return out, container


def read_checkpoint(path: str | Path, *, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file into a flat CPU state dict.

    timm-style containers are unwrapped: ``state_dict_ema`` when ``prefer_ema`` (falling back to the
    normal order if absent), else ``state_dict``, else ``model``, else the file's own dict of
    tensors. A leading DDP ``module.`` prefix is stripped from every key.
    """
    return _select(_read_raw(path), path, prefer_ema)[0]


# ----------------------------------------------------------------------------------------- layouts


def _is_mae(state: Mapping[str, torch.Tensor], container: str | None) -> bool:
    """MAE pre-training layout: decoder / mask token present, or a headless ViT under ``model``."""
    if "decoder_embed.weight" in state or "mask_token" in state:
        return True
    return container == "model" and any(k.startswith("blocks.") for k in state) and "head.weight" not in state


def detect_kind(path: str | Path, *, prefer_ema: bool = False) -> str:
    """``"mae"`` or ``"timm"``: the layout ``kind="auto"`` would choose for this file."""
    state, container = _select(_read_raw(path), path, prefer_ema)
    return "mae" if _is_mae(state, container) else "timm"


def _module_name(model: nn.Module, module: nn.Module) -> str | None:
    """The dotted name of ``module`` inside ``model`` (None if it is not a submodule)."""
    return next((name for name, m in model.named_modules() if m is module), None)


def classifier_prefixes(model: nn.Module) -> list[str]:
    """Dotted module names of the classifier: from ``get_classifier()`` and ``pretrained_cfg``."""
    prefixes: list[str] = []
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module):
            name = _module_name(model, head)
            if name:
                prefixes.append(name)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    for name in [names] if isinstance(names, str) else list(names or ()):
        if name and name not in prefixes:
            prefixes.append(name)
    return prefixes


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _resample_pos_embed(model: nn.Module, state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                        report: LoadReport) -> None:
    """Resample a square-grid ``pos_embed`` to the model's patch grid; leave anything else to the strict check."""
    if "pos_embed" not in state or "pos_embed" not in own:
        return
    src, dst = state["pos_embed"], own["pos_embed"]
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if tuple(src.shape) == tuple(dst.shape) or grid is None or src.ndim != 3 or src.shape[-1] != dst.shape[-1]:
        return
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    side = math.isqrt(src.shape[1] - prefix)
    if side * side != src.shape[1] - prefix or dst.shape[1] - prefix != grid[0] * grid[1]:
        return
    state["pos_embed"] = resample_abs_pos_embed(src.float(), new_size=list(grid), old_size=[side, side],
                                                num_prefix_tokens=prefix).to(src.dtype)
    report.resized.append("pos_embed")


def _prepare_timm(model: nn.Module, state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                  reset_head: bool, report: LoadReport) -> None:
    """Leave the classifier out when asked, when its class count differs, or when the file has none."""
    prefixes = classifier_prefixes(model)
    own_head = [k for k in own if _under(k, prefixes)]
    ckpt_head = [k for k in state if _under(k, prefixes)]
    other_classes = any(
        k in own and state[k].ndim == own[k].ndim and state[k].shape[1:] == own[k].shape[1:]
        and state[k].shape[0] != own[k].shape[0] for k in ckpt_head)
    # a checkpoint head the model has no room for (e.g. created with num_classes=0) is dropped too
    no_room = bool(ckpt_head) and not own_head
    if reset_head or other_classes or no_room:
        for k in ckpt_head:
            del state[k]
        report.reset.extend(own_head)
        if no_room:
            report.unexpected.extend(ckpt_head)
    elif own_head and not ckpt_head:  # headless backbone checkpoint: keep the fresh classifier
        report.missing.extend(own_head)


def _prepare_mae(model: nn.Module, state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                 report: LoadReport) -> None:
    """Drop the MAE decoder / mask token / final norm / head; note what stays freshly initialized."""
    drop_norm = not any(k.startswith("norm.") for k in own)  # fc_norm replaces norm under avg pooling
    prefixes = classifier_prefixes(model) or ["head"]
    for key in list(state):
        if (key.startswith("decoder_") or key == "mask_token" or (drop_norm and key.startswith("norm."))
                or _under(key, prefixes)):
            del state[key]
            report.unexpected.append(key)
    head_keys = [k for k in own if _under(k, prefixes)]
    report.reset.extend(head_keys)
    report.missing.extend(k for k in own if k.startswith("fc_norm.") and k not in state)


def _reset_mae_head(model: nn.Module) -> None:
    """MAE fine-tuning head init: trunc-normal weight with std 2e-5, zero bias."""
    head = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if isinstance(head, nn.Linear):
        with torch.no_grad():
            trunc_normal_(head.weight, std=MAE_HEAD_STD)
            if head.bias is not None:
                head.bias.zero_()


def load_pretrained(model: nn.Module, path: str | Path, *, kind: Kind = "auto", reset_head: bool = False,
                    prefer_ema: bool = False) -> LoadReport:
    """Load an external checkpoint into ``model`` in place and report what was skipped or reset.

    ``kind="auto"`` picks ``"mae"`` for MAE pre-training files (see the module docstring) and
    ``"timm"`` otherwise. Everything not deliberately skipped must match by name and shape; the
    first mismatch raises :class:`CheckpointError` naming the key (and both shapes).
    """
    if kind not in ("auto", "timm", "mae"):
        raise ValueError(f"kind must be 'auto', 'timm' or 'mae', not {kind!r}")
    state, container = _select(_read_raw(path), path, prefer_ema)
    used = ("mae" if _is_mae(state, container) else "timm") if kind == "auto" else kind
    report = LoadReport(kind=used)
    own = model.state_dict()
    if used == "mae":
        _reset_mae_head(model)
        own = model.state_dict()
        _prepare_mae(model, state, own, report)
    else:
        _prepare_timm(model, state, own, reset_head, report)
    _resample_pos_embed(model, state, own, report)
    # keys deliberately left out keep the model's current values, so the strict load still checks the rest
    for key in report.reset + report.missing:
        if key in own and key not in state:
            state[key] = own[key]
    load_state_strict(model, state, str(path))
    return report


def load_teacher(checkpoint: str | Path, model_name: str | None, num_classes: int,
                 in_chans: int) -> tuple[nn.Module, dict[str, Any], str]:
    """The teacher as (model in eval mode, description, weights sha256).

    Without ``model_name`` the checkpoint is a model directory/file written by ``w2s train-teacher``;
    with it, an external timm-style checkpoint (e.g. timm's ``resnet50_a1_0-14fe96d1.pth``) loaded
    into ``timm.create_model(model_name)``, whose ``pretrained_cfg`` gives mean, std and input size.
    """
    from pipeline.models.files import file_sha256, load_model
    from pipeline.models import create

    if model_name is None:
        return load_model(checkpoint)
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"teacher checkpoint {checkpoint} not found")
    model = create(model_name, num_classes, in_chans)
    load_pretrained(model, checkpoint, kind="timm")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size", (in_chans, 224, 224))[-1]
    meta = {"model": model_name, "kwargs": {}, "num_classes": num_classes, "in_chans": in_chans,
            "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))), "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
            "input_size": int(size)}
    return model.eval(), meta, file_sha256(checkpoint)
