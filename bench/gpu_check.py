"""GPU acceptance check: correctness of the pipeline's pieces on CUDA, and paired throughput ratios.

Run on a machine with a CUDA device: ``make gpu-check`` or
``.venv/bin/python bench/gpu_check.py [--quick] [--skip-compile] [--out FILE]``.
Without CUDA it prints one line and exits 0. It prints a JSON object, then a table; the exit code is 1
when a correctness check fails (throughput goals do not change it).

Correctness (pass/fail, each with the measured figure):
  objectives on CUDA == on CPU; cached float16 teacher logits vs online teacher logits give the same
  objective within float16 rounding; a few bf16-autocast steps and a few fp16 + GradScaler steps stay
  finite; two deterministic runs give bit-identical weights (a child process, CUBLAS_WORKSPACE_CONFIG set
  before CUDA starts); a checkpoint resumes GPU -> CPU and CPU -> GPU with the same next step; a store view
  read into pinned memory reaches the GPU unchanged; channels_last and torch.compile (inductor, a child
  process with a time cap) equal eager; a world-size-1 NCCL group does an all_reduce.
Throughput (paired: variants alternate in short slices, ratios are medians of per-round ratios):
  ``cifar_resnet56 <- cifar_resnet20`` (batch 256, 32x32, 100 classes) and ``vit_base_patch16_224 <- resnet50``
  (batch 128, 224x224, 1000 classes), bf16 autocast, channels_last, data already on the device: the student
  step alone (the limit), the stage-2 step with cached float16 logits (goal >= 0.97 of the limit), the same
  with the trainer's per-step host syncs, the online-teacher step, the teacher's forward; and the store's
  read rate against the logits rate the limit consumes.
NVIDIA DALI GPU operators are NOT covered: DALI is not installed on the GPU machine, and nothing here imports it.

Every check takes its device(s) as arguments so that the logic can also run on CPU (tests/experiments/test_gpu_check.py).
Only torch, timm, numpy, pyarrow, safetensors are needed (zarr for the store checks, which are skipped without it).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

NO_CUDA_LINE = "gpu_check: no CUDA device; nothing checked (DALI GPU operators are never covered by this script)"
NOT_COVERED = ("NVIDIA DALI GPU operators are NOT covered: DALI is not installed on the GPU machine; "
               "this script never imports DALI (pipeline.data.loader / pipeline.data.views are not used).")
CHILD_TAG = "@@gpu_check_result "
DETERMINISTIC_CUBLAS = ":4096:8"
BUDGET_S = 450.0  # the whole script stays under 8 minutes: later steps shrink or skip past this
COMPILE_CAP_S = 240.0
GOAL_CACHED = 0.97


@dataclass
class Result:
    """One row of the report: a check's status ("pass", "fail", "met", "not met", "info", "skipped")."""

    status: str
    figure: str
    data: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    kind: str = "correctness"
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def verdict(passed: bool) -> str:
    return "pass" if passed else "fail"


def as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Turn TF32 off for convolutions and matmuls (new fp32_precision API only), restoring it after."""
    conv, mm = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = (conv.fp32_precision, mm.fp32_precision)
    conv.fp32_precision, mm.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, mm.fp32_precision = saved


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for "bf16" / "fp16", a no-op for None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def build_model(name: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """A timm model with random weights; ``pipeline.models`` registers the CIFAR zoo into timm."""
    from pipeline.models import create

    return create(name, num_classes, in_chans, pretrained=False)


def random_batch(seed: int, batch: int, size: int, classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Images, int64 labels and float16 teacher logits, drawn on the CPU (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    zt = (3 * torch.randn(batch, classes, generator=g)).half()
    return x, y, zt


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max()) if a.numel() else 0.0


def float_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's floating-point state (weights and BatchNorm statistics) on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def compare_states(a: dict[str, Tensor], b: dict[str, Tensor], rtol: float, atol: float) -> tuple[bool, float, int]:
    """(all close, max abs difference, number of tensors not close)."""
    worst, bad = 0.0, 0
    for k in a:
        worst = max(worst, max_abs_diff(a[k], b[k]))
        bad += not torch.allclose(a[k].double(), b[k].double(), rtol=rtol, atol=atol)
    return bad == 0, worst, bad


# -- correctness ------------------------------------------------------------------------------------------------

def check_objectives(device: torch.device | str, ref: torch.device | str = "cpu", batch: int = 64,
                     classes: int = 100, rtol: float = 1e-5, atol: float = 1e-5) -> Result:
    """Every registered objective gives the same total, terms, sample weight and d total / d student logits
    on ``device`` as on ``ref`` (float32 student logits; float32 and float16 teacher logits; hard and soft targets)."""
    from pipeline.objectives import OBJECTIVES, build_objective, objective_params

    device, ref = as_device(device), as_device(ref)
    known = objective_params()
    params = {k: v for k, v in {"kd_temperature": 2.0, "warmup_rate": 0.5}.items() if k in known}
    g = torch.Generator().manual_seed(0)
    zs = 2 * torch.randn(batch, classes, generator=g)
    zt32 = 3 * torch.randn(batch, classes, generator=g)
    hard = torch.randint(0, classes, (batch,), generator=g)
    soft = torch.softmax(torch.randn(batch, classes, generator=g), dim=1)
    cases = {"hard/fp32": (zt32, hard), "hard/fp16": (zt32.half(), hard), "soft/fp32": (zt32, soft),
             "soft/fp16": (zt32.half(), soft)}

    def evaluate(obj: Any, zt: Tensor, target: Tensor, dev: torch.device) -> dict[str, Tensor]:
        z = zs.detach().clone().to(dev).requires_grad_(True)  # a fresh leaf on every call
        out = obj(z, zt.to(dev), target.to(dev), epoch=1, epochs=4)
        out.total.backward()
        vals = {"total": out.total, "grad": z.grad, **{f"term.{k}": v for k, v in out.terms.items()}}
        if out.sample_weight is not None:
            vals["weight"] = out.sample_weight
        return {k: v.detach().double().cpu() for k, v in vals.items()}

    worst, failures = 0.0, []
    for name in OBJECTIVES:
        obj = build_objective(name, **params)
        for case, (zt, target) in cases.items():
            a, b = evaluate(obj, zt, target, ref), evaluate(obj, zt, target, device)
            for key in a:
                worst = max(worst, max_abs_diff(a[key], b[key]))
                if key not in b or not torch.allclose(a[key], b[key], rtol=rtol, atol=atol):
                    failures.append(f"{name} {case} {key}")
    n = len(OBJECTIVES) * len(cases)
    fig = (f"{len(OBJECTIVES)} objectives ({', '.join(OBJECTIVES)}) x {len(cases)} input kinds, {device} vs {ref}: "
           f"max |diff| {worst:.2e} (rtol {rtol:g}, atol {atol:g})")
    if failures:
        fig += f"; differ: {', '.join(failures[:4])}" + (" ..." if len(failures) > 4 else "")
    return Result(verdict(not failures), fig, {"max_abs_diff": worst, "comparisons": n, "failures": failures})


def check_cached_vs_online(device: torch.device | str, student: str = "cifar_resnet56",
                           teacher: str = "cifar_resnet20", batch: int = 64, size: int = 32, classes: int = 100,
                           amp: str | None = "bf16") -> Result:
    """The AdaptConf objective and the student's gradients from online teacher logits and from the same logits
    round-tripped through float16 (as ``SoftLabelStore.write_chunk`` stores them) agree within float16 rounding.

    The student runs under ``amp``; the teacher once in float32 (the rounding is then real) and once under ``amp``
    (bf16 logits are exact in float16, so that difference should be 0). The allowed difference is twice the
    first-order effect of the actual rounding, ``sum |dL/dz_t| |dz_t|``, plus 1e-5. Samples whose teacher argmax
    the rounding changes (two logits within one float16 step) are counted and left out of the comparison; at most
    5% of the batch may be such ties.
    """
    from pipeline.objectives import build_objective

    device = as_device(device)
    torch.manual_seed(0)
    s_model = build_model(student, classes).to(device, memory_format=torch.channels_last).train()
    t_model = build_model(teacher, classes).to(device, memory_format=torch.channels_last).eval()
    x, y, _ = random_batch(1, batch, size, classes)
    x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
    obj = build_objective("adaptconf")
    params = [p for p in s_model.parameters() if p.requires_grad]
    with autocast(device, amp):
        zs_all = s_model(x)
    passed, parts, data = True, [], {}
    for t_amp in dict.fromkeys((None, amp)):
        with torch.no_grad(), autocast(device, t_amp):
            zt_online = t_model(x).float()
        stored = zt_online.cpu().numpy().astype(np.float16)  # what the store writes
        zt_cached = torch.from_numpy(stored).to(device)  # float16 on the device; the objective converts it
        keep = zt_online.argmax(1) == zt_cached.float().argmax(1)
        ties = int((~keep).sum())
        zs = zs_all.float()[keep]
        zt_var = zt_online[keep].clone().requires_grad_(True)
        online = obj(zs, zt_var, y[keep])
        g_online = torch.autograd.grad(online.total, [zt_var, *params], retain_graph=True)
        cached = obj(zs, zt_cached[keep], y[keep])
        g_cached = torch.autograd.grad(cached.total, params, retain_graph=True)
        delta = (zt_online[keep] - zt_cached[keep].float()).abs()
        first_order = float((g_online[0].abs() * delta).sum())
        tol = 2 * first_order + 1e-5
        value = float(online.total.detach())
        diff = abs(value - float(cached.total.detach()))
        grad_rel = grad_rel_diff(g_online[1:], g_cached)
        passed &= diff <= tol and ties <= max(1, batch // 20)
        label = "fp32" if t_amp is None else t_amp
        parts.append(f"teacher {label}: |online - cached| {diff:.1e} (allowed {tol:.1e}, objective {value:.4f}), "
                     f"student grads rel. diff {grad_rel:.1e}, argmax ties {ties}/{batch}")
        data[f"teacher_{label}"] = {"diff": diff, "allowed": tol, "first_order": first_order, "objective": value,
                                    "grad_rel_diff": grad_rel, "argmax_ties": ties,
                                    "max_logit_rounding": float(delta.max()) if delta.numel() else 0.0}
    return Result(verdict(passed), "; ".join(parts), data)


def check_amp_epoch(device: torch.device | str, amp: str, model: str = "cifar_resnet56", steps: int = 8,
                    batch: int = 64, size: int = 32, classes: int = 100) -> Result:
    """A short epoch (``steps`` steps of AdaptConf on random data, channels_last) under ``amp`` autocast
    ("bf16", or "fp16" with ``torch.amp.GradScaler``) keeps the loss and the weights finite and updates them."""
    from pipeline.objectives import build_objective

    device = as_device(device)
    torch.manual_seed(0)
    net = build_model(model, classes).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    obj = build_objective("adaptconf")
    before = float_state(net)
    losses, skipped = [], 0
    for step in range(steps):
        x, y, zt = random_batch(100 + step, batch, size, classes)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            zs = net(x)
        out = obj(zs.float(), zt.to(device), y.to(device), epoch=0, epochs=1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(out.total).backward()
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(opt)
        scaler.update()
        skipped += scaler.is_enabled() and scaler.get_scale() < scale
        losses.append(float(out.total.detach()))
    after = float_state(net)
    finite_w = all(bool(torch.isfinite(v).all()) for v in after.values())
    finite_l = all(np.isfinite(losses))
    moved = any(not torch.equal(before[k], after[k]) for k in before)
    passed = finite_w and finite_l and moved and skipped < steps
    fig = (f"{steps} steps of {model}, loss {losses[0]:.3f} -> {losses[-1]:.3f}, losses finite {finite_l}, "
           f"weights finite {finite_w}, updated {moved}")
    if scaler.is_enabled():
        fig += f"; GradScaler skipped {skipped}/{steps} steps, scale {scaler.get_scale():g}"
    return Result(verdict(passed), fig, {"losses": losses, "skipped_steps": int(skipped), "weights_finite": finite_w})


def _deterministic_run(device: torch.device, model: str, steps: int, batch: int, size: int,
                       classes: int) -> dict[str, Tensor]:
    """Seed, build, train ``steps`` AdaptConf steps (bf16 autocast, channels_last); the weights after."""
    from pipeline.objectives import build_objective

    torch.manual_seed(1234)
    net = build_model(model, classes).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    obj = build_objective("adaptconf")
    for step in range(steps):
        x, y, zt = random_batch(200 + step, batch, size, classes)
        with autocast(device, "bf16"):
            zs = net(x.to(device).contiguous(memory_format=torch.channels_last))
        out = obj(zs.float(), zt.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
    sync(device)
    return float_state(net)


def check_determinism(device: torch.device | str, model: str = "cifar_resnet20", steps: int = 4, batch: int = 64,
                      size: int = 32, classes: int = 100) -> Result:
    """Two runs under ``torch.use_deterministic_algorithms(True)`` with the same seed give bit-identical weights.

    On CUDA, ``CUBLAS_WORKSPACE_CONFIG`` must be set before CUDA starts: :func:`main` runs this in a child
    process whose environment has it. The process-wide flags are restored afterwards.
    """
    device = as_device(device)
    if device.type == "cuda" and os.environ.get("CUBLAS_WORKSPACE_CONFIG") != DETERMINISTIC_CUBLAS:
        if torch.cuda.is_initialized():
            return Result("fail", "CUBLAS_WORKSPACE_CONFIG was not set before CUDA started (run it in a fresh process)")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = DETERMINISTIC_CUBLAS
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        a = _deterministic_run(device, model, steps, batch, size, classes)
        b = _deterministic_run(device, model, steps, batch, size, classes)
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark = saved[1]
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    worst = max(max_abs_diff(a[k], b[k]) for k in a)
    fig = (f"{model}, {steps} steps bf16 + channels_last, twice with seed 1234: {len(a) - len(differ)}/{len(a)} "
           f"tensors bit-identical, max |diff| {worst:.1e} "
           f"(CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG', 'unset')})")
    return Result(verdict(not differ), fig, {"tensors": len(a), "differing": differ[:10], "max_abs_diff": worst})


def _train_step(net: nn.Module, opt: torch.optim.Optimizer, obj: Any, batch: tuple[Tensor, Tensor, Tensor],
                device: torch.device) -> float:
    x, y, zt = batch
    out = obj(net(x.to(device)).float(), zt.to(device), y.to(device))
    opt.zero_grad(set_to_none=True)
    out.total.backward()
    opt.step()
    return float(out.total.detach())


def check_checkpoint_roundtrip(src: torch.device | str, dst: torch.device | str, model: str = "cifar_resnet20",
                               batch: int = 32, size: int = 32, classes: int = 100, rtol: float = 1e-4,
                               atol: float = 1e-5) -> Result:
    """Train two steps on ``src``, ``save_state`` the model and optimizer, ``load_state`` them into a fresh model
    on ``dst``; the next step on ``dst`` gives the same loss and weights as continuing on ``src`` (float32, no TF32)."""
    from pipeline.engine.checkpoint import load_state, save_state
    from pipeline.objectives import build_objective

    src, dst = as_device(src), as_device(dst)
    obj = build_objective("adaptconf")

    def fresh(dev: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(7)
        net = build_model(model, classes).to(dev).train()
        return net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    batches = [random_batch(300 + i, batch, size, classes) for i in range(3)]
    with exact_float32(), tempfile.TemporaryDirectory() as tmp:
        net, opt = fresh(src)
        for b in batches[:2]:
            _train_step(net, opt, obj, b, src)
        path = Path(tmp) / "state.pt"
        save_state(path, {"model": net.state_dict(), "optimizer": opt.state_dict()})
        state = load_state(path)  # map_location="cpu"
        on_cpu = all(v.device.type == "cpu" for v in state["model"].values())
        net2, opt2 = fresh(dst)
        net2.load_state_dict(state["model"])
        opt2.load_state_dict(state["optimizer"])
        loss_src = _train_step(net, opt, obj, batches[2], src)
        loss_dst = _train_step(net2, opt2, obj, batches[2], dst)
        sync(src), sync(dst)
    close, worst, bad = compare_states(float_state(net), float_state(net2), rtol, atol)
    loss_diff = abs(loss_src - loss_dst)
    passed = close and loss_diff <= atol + rtol * abs(loss_src) and on_cpu
    fig = (f"written on {src}, resumed on {dst}: next-step loss {loss_src:.6f} vs {loss_dst:.6f} "
           f"(|diff| {loss_diff:.1e}); weights after it max |diff| {worst:.1e}, {bad} tensors outside "
           f"rtol {rtol:g} / atol {atol:g}; loaded onto CPU first: {on_cpu}")
    return Result(verdict(passed), fig, {"loss_src": loss_src, "loss_dst": loss_dst, "loss_diff": loss_diff,
                                         "max_weight_diff": worst, "tensors_not_close": bad})


def zarr_missing() -> Result | None:
    """A "skipped" result when zarr (or fsspec, which writes the store's parquet tables) is not installed."""
    for name in ("zarr", "fsspec"):
        if importlib.util.find_spec(name) is None:
            return Result("skipped", f"skipped: {name} not installed")
    return None


def write_random_store(path: Path, num_samples: int, classes: int, chunk_samples: int = 4096,
                       seed: int = 0) -> Any:
    """A complete one-view full-layout store of random float16 logits (the stage-1 write path)."""
    from store.soft_label_store import SoftLabelStore

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, num_samples)
    store = SoftLabelStore.create(path, num_samples=num_samples, num_views=1, num_classes=classes, param_dim=4,
                                  chunk_samples=chunk_samples, labels=labels, attrs={"source": "gpu_check"})
    for c in store.chunks():
        n = c.stop - c.start
        store.write_chunk(c, 3 * rng.standard_normal((n, classes), dtype=np.float32),
                          rng.random((n, 4), dtype=np.float32))
    store.finalize([0.0])
    return store


def check_pinned_store(device: torch.device | str, num_samples: int = 8192, classes: int = 100) -> Result:
    """A store view (``read_view``) goes ``torch.from_numpy`` (no copy) -> ``pin_memory()`` (the one host copy)
    -> ``.to(device, non_blocking=True)`` and arrives bit-identical. Pinning needs CUDA; on CPU it is left out."""
    skipped = zarr_missing()
    if skipped:
        return skipped
    device = as_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        write_random_store(Path(tmp) / "store", num_samples, classes)
        from store.soft_label_store import SoftLabelStore

        arr, _ = SoftLabelStore.open(Path(tmp) / "store").read_view(0, verify=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host = torch.from_numpy(arr)
    shares = bool(np.shares_memory(arr, host.numpy())) and host.data_ptr() == arr.__array_interface__["data"][0]
    data: dict[str, Any] = {"bytes": int(arr.nbytes), "dtype": str(arr.dtype), "c_contiguous": bool(arr.flags.c_contiguous),
                            "writeable": bool(arr.flags.writeable), "from_numpy_shares_memory": shares,
                            "from_numpy_warnings": [str(w.message) for w in caught]}
    pinned_ok = True
    if device.type == "cuda":
        t0 = time.perf_counter()
        pinned = host.pin_memory()
        data["pin_s"] = time.perf_counter() - t0
        pinned_ok = pinned.is_pinned() and pinned.data_ptr() != host.data_ptr()
        data["pinned"] = pinned.is_pinned()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        moved = pinned.to(device, non_blocking=True)
        end.record()
        torch.cuda.synchronize(device)
        data["h2d_gb_per_s"] = arr.nbytes / (start.elapsed_time(end) / 1e3) / 1e9
        host_copies = "1 (pin_memory)"
    else:
        moved = host.to(device)
        host_copies = "0 (no pinning on cpu)"
    back = moved.cpu().numpy()
    identical = back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back.view(np.uint16),
                                                                                          arr.view(np.uint16))
    data.update(identical=identical, host_copies_after_read_view=host_copies)
    passed = identical and shares and pinned_ok and arr.dtype == np.float16
    fig = (f"{num_samples:,} x {classes} float16 view ({arr.nbytes / 1e6:.1f} MB): bit-identical on {device}: {identical}; "
           f"from_numpy shares the array's memory: {shares}; host copies after read_view: {host_copies}")
    if device.type == "cuda":
        fig += f" ({data['pin_s'] * 1e3:.1f} ms), pinned {data['pinned']}, H2D {data['h2d_gb_per_s']:.1f} GB/s"
    fig += " (zarr's decode into the array it returns is not counted)"
    return Result(verdict(passed), fig, data)


def _forward_backward(net: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    out = net(x)
    F.cross_entropy(out.float(), torch.arange(len(x), device=x.device) % out.shape[1]).backward()
    return out.detach().float(), [p.grad.detach().clone() for p in net.parameters() if p.grad is not None]


def grad_rel_diff(ref: list[Tensor] | tuple[Tensor, ...], got: list[Tensor] | tuple[Tensor, ...]) -> float:
    """``||g_ref - g_got|| / ||g_ref||`` over all parameters' gradients together (a per-tensor ratio would blow
    up on parameters whose gradient nearly cancels)."""
    num = sum(float((a.double() - b.double()).norm() ** 2) for a, b in zip(ref, got))
    den = sum(float(a.double().norm() ** 2) for a in ref)
    return (num / max(den, 1e-30)) ** 0.5


def compare_to_float64(ref64: tuple[Tensor, list[Tensor]], eager: tuple[Tensor, list[Tensor]],
                       got: tuple[Tensor, list[Tensor]], tol: float, grad_factor: float) -> tuple[bool, dict[str, float]]:
    """Judge a float32 variant against eager float32, both measured against a float64 run of the same model.

    Logits: max |diff| to eager, relative to max |logit|, within ``tol``. Gradients: train-mode gradients of a deep
    net at init are ill-conditioned (eager float32 itself is ~1e-3 from float64), so the variant's relative error
    to float64 must be within ``grad_factor`` times eager's own (or ``tol``); a wrong kernel is off by O(1).
    """
    out_err = max_abs_diff(eager[0], got[0]) / max(float(eager[0].abs().max()), 1e-12)
    eager_err, got_err = grad_rel_diff(ref64[1], eager[1]), grad_rel_diff(ref64[1], got[1])
    allowed = max(tol, grad_factor * eager_err)
    ok = out_err <= tol and got_err <= allowed and len(got[1]) == len(eager[1])
    return ok, {"logits_rel_diff": out_err, "grad_err_vs_fp64": got_err, "eager_grad_err_vs_fp64": eager_err,
                "grad_err_allowed": allowed}


def _describe(d: dict[str, float], tol: float) -> str:
    return (f"logits rel. max diff {d['logits_rel_diff']:.1e} (tol {tol:g}); grads rel. error vs float64 "
            f"{d['grad_err_vs_fp64']:.1e}, eager float32's {d['eager_grad_err_vs_fp64']:.1e} "
            f"(allowed {d['grad_err_allowed']:.1e})")


def check_channels_last(device: torch.device | str, model: str = "cifar_resnet56", batch: int = 64, size: int = 32,
                        classes: int = 100, tol: float = 1e-3, grad_factor: float = 4.0) -> Result:
    """The student in channels_last gives contiguous eager's logits and gradients (float32, no TF32, train mode;
    see :func:`compare_to_float64`)."""
    device = as_device(device)
    torch.manual_seed(0)
    base = build_model(model, classes).train()
    x = random_batch(400, batch, size, classes)[0].to(device)
    with exact_float32():
        ref64 = _forward_backward(copy.deepcopy(base).to(device, torch.float64), x.double())
        eager = _forward_backward(copy.deepcopy(base).to(device), x)
        cl = _forward_backward(copy.deepcopy(base).to(device, memory_format=torch.channels_last),
                               x.contiguous(memory_format=torch.channels_last))
    ok, data = compare_to_float64(ref64, eager, cl, tol, grad_factor)
    return Result(verdict(ok), f"{model}, batch {batch}, channels_last vs contiguous: {_describe(data, tol)}", data)


def check_compile(device: torch.device | str, model: str = "cifar_resnet20", batch: int = 64, size: int = 32,
                  classes: int = 100, tol: float = 1e-3, grad_factor: float = 4.0) -> Result:
    """``torch.compile(backend="inductor")`` of the channels_last student gives eager's logits and gradients
    (float32, no TF32, train mode; see :func:`compare_to_float64`); a compile error is a fail with its message.
    :func:`run_all` runs it in a child process with a time cap."""
    device = as_device(device)
    torch.manual_seed(0)
    base = build_model(model, classes).train()
    x = random_batch(500, batch, size, classes)[0].to(device)
    xc = x.contiguous(memory_format=torch.channels_last)
    with exact_float32():
        ref64 = _forward_backward(copy.deepcopy(base).to(device, torch.float64), x.double())
        eager = _forward_backward(copy.deepcopy(base).to(device, memory_format=torch.channels_last), xc)
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(copy.deepcopy(base).to(device, memory_format=torch.channels_last),
                                     backend="inductor")
            got = _forward_backward(compiled, xc)  # type: ignore[arg-type]
            sync(device)
        except Exception as exc:  # noqa: BLE001  (any compiler error is the finding)
            msg = " ".join(str(exc).split())[:400]
            return Result("fail", f"torch.compile (inductor) failed: {type(exc).__name__}: {msg}")
        seconds = time.perf_counter() - t0
    ok, data = compare_to_float64(ref64, eager, got, tol, grad_factor)
    data["compile_s"] = seconds
    return Result(verdict(ok), f"{model}, batch {batch}, channels_last, inductor vs eager: {_describe(data, tol)}; "
                  f"first compiled step {seconds:.0f} s", data)


def check_process_group(device: torch.device | str, backend: str = "nccl") -> Result:
    """A world-size-1 process group (``file://`` rendezvous in a temp dir) all-reduces a tensor, then is destroyed."""
    import datetime

    import torch.distributed as dist

    device = as_device(device)
    if not dist.is_available():
        return Result("fail", "torch.distributed is not available in this torch build")
    if dist.is_initialized():
        return Result("fail", "a process group already exists in this process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{Path(tmp) / 'rendezvous'}", rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=60))
        try:
            t = torch.arange(1, 5, dtype=torch.float32, device=device)
            dist.all_reduce(t)
            sync(device)
            ok = torch.equal(t.cpu(), torch.arange(1, 5, dtype=torch.float32))
            used = dist.get_backend()
        finally:
            dist.destroy_process_group()
    version = f" (NCCL {nccl_version()})" if backend == "nccl" else ""
    fig = f"backend {used}{version}, world size 1, all_reduce of 4 floats on {device}: correct {ok}; destroyed"
    return Result(verdict(ok and not dist.is_initialized()), fig, {"backend": used})


def nccl_version() -> str:
    """The NCCL version torch was built with ("unknown" when it cannot say)."""
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001
        return "unknown"
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


# -- throughput -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """A student <- teacher pair timed at one batch size."""

    key: str
    student: str
    teacher: str
    batch: int
    size: int
    classes: int
    optimizer: str
    store_samples: int = 50_000


PAIRS = (Pair("cifar", "cifar_resnet56", "cifar_resnet20", 256, 32, 100, "sgd"),
         Pair("imagenet", "vit_base_patch16_224", "resnet50", 128, 224, 1000, "adamw"))


class Timer:
    """Wall time of a slice of work: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, work: Callable[[], None]) -> float:
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            work()
            return time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(self.device)
        start.record()
        work()
        end.record()
        torch.cuda.synchronize(self.device)
        return start.elapsed_time(end) / 1e3


def paired_timing(variants: dict[str, Callable[[int], None]], device: torch.device, rounds: int, steps: int,
                  warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, per round; variants alternate in slices of ``steps`` steps
    (their order rotating from round to round) after ``warmup`` untimed steps each."""
    timer = Timer(device)
    for fn in variants.values():
        timer(lambda: [fn(i) for i in range(warmup)])  # type: ignore[func-returns-value]
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            fn = variants[n]
            out[n].append(timer(lambda: [fn(i) for i in range(steps)]) / steps)  # type: ignore[func-returns-value]
    return out


def stage2_variants(pair: Pair, device: torch.device, pool: int = 2) -> tuple[dict[str, Callable[[int], None]], Callable[[], None]]:
    """The step variants on preloaded device tensors (bf16 autocast, channels_last), and a cleanup callable.

    ``limit``: student forward + cross-entropy + backward + optimizer step. ``cached``: the same with the
    AdaptConf objective on float16 teacher logits (converted on the device). ``trainer_sync``: ``cached`` plus
    the host reads ``Trainer.train_epoch`` does every step (``.item()`` of loss and terms, accuracy and agreement
    counts, beta histogram). ``online``: the teacher's forward, then ``cached`` on its logits. ``teacher``: the
    teacher's forward alone.
    """
    from pipeline.objectives import build_objective

    cl = torch.channels_last
    torch.manual_seed(0)
    student = build_model(pair.student, pair.classes).to(device, memory_format=cl).train()
    teacher = build_model(pair.teacher, pair.classes).to(device, memory_format=cl).eval()
    if pair.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                                     weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.05)
    obj = build_objective("adaptconf")
    data = [random_batch(600 + i, pair.batch, pair.size, pair.classes) for i in range(pool)]
    xs = [x.to(device).contiguous(memory_format=cl) for x, _, _ in data]
    ys = [y.to(device) for _, y, _ in data]
    zts = [zt.to(device) for _, _, zt in data]
    bins = np.linspace(0.0, 0.5, 11)

    def step(i: int, zt: Tensor | None, bookkeeping: bool = False) -> None:
        x, y = xs[i % pool], ys[i % pool]
        with autocast(device, "bf16"):
            zs = student(x)
        if zt is None:
            loss = F.cross_entropy(zs.float(), y)
        else:
            out = obj(zs.float(), zt, y)
            loss = out.total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bookkeeping and zt is not None:  # what Trainer.train_epoch reads back after every step
            pred = zs.detach().argmax(1)
            beta = out.sample_weight
            assert beta is not None
            sums = [loss.item(), *(v.item() for v in out.terms.values()), beta.sum().item(),
                    (pred == y).sum().item(), (pred == zt.argmax(1)).sum().item()]
            sums.extend(np.histogram(beta.detach().float().cpu().numpy(), bins=bins)[0])

    def teacher_forward(i: int) -> Tensor:
        with torch.no_grad(), autocast(device, "bf16"):
            return teacher(xs[i % pool]).float()

    def teacher_only(i: int) -> None:
        teacher_forward(i)

    variants: dict[str, Callable[[int], None]] = {
        "limit": lambda i: step(i, None),
        "cached": lambda i: step(i, zts[i % pool]),
        "trainer_sync": lambda i: step(i, zts[i % pool], bookkeeping=True),
        "online": lambda i: step(i, teacher_forward(i)),
        "teacher": teacher_only,
    }

    def cleanup() -> None:
        nonlocal student, teacher, opt
        del student, teacher, opt
        xs.clear(), ys.clear(), zts.clear()

    return variants, cleanup


def measure_pair(pair: Pair, device: torch.device | str, rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    """Paired stage-2 throughput of ``pair``: images/s of each variant and per-round-median ratios to the limit."""
    device = as_device(device)
    variants, cleanup = stage2_variants(pair, device)
    try:
        times = paired_timing(variants, device, rounds, steps, warmup)
    finally:
        cleanup()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    res: dict[str, Any] = {"pair": f"{pair.student} <- {pair.teacher}", "batch": pair.batch, "size": pair.size,
                           "classes": pair.classes, "amp": "bf16", "channels_last": True, "rounds": rounds,
                           "steps_per_slice": steps, "seconds_per_step": times}
    for name, ts in times.items():
        res[f"{name}_images_per_s"] = pair.batch / statistics.median(ts)
    for name in ("cached", "trainer_sync", "online"):
        res[f"{name}_ratio"] = statistics.median(lim / t for lim, t in zip(times["limit"], times[name]))
    res["teacher_over_student_step"] = statistics.median(t / lim for lim, t in zip(times["limit"], times["teacher"]))
    return res


def throughput_rows(pair: Pair, res: dict[str, Any]) -> list[Result]:
    """The report rows of one pair's throughput."""
    lim = res["limit_images_per_s"]
    tag = f"{pair.key}: {pair.student} <- {pair.teacher}, batch {pair.batch}"
    goal = res["cached_ratio"] >= GOAL_CACHED
    return [
        Result("met" if goal else "not met",
               f"{res['cached_ratio']:.3f} of the limit (goal >= {GOAL_CACHED}); cached {res['cached_images_per_s']:,.0f} "
               f"img/s, limit (student alone) {lim:,.0f} img/s", {}, f"{tag}: cached-logits step / student limit",
               "throughput"),
        Result("info", f"{res['trainer_sync_ratio']:.3f} of the limit ({res['trainer_sync_images_per_s']:,.0f} img/s): "
               "the per-step .item() reads of Trainer.train_epoch", {}, f"{tag}: cached step + trainer's host syncs",
               "throughput"),
        Result("info", f"{res['online_ratio']:.3f} of the limit ({res['online_images_per_s']:,.0f} img/s)", {},
               f"{tag}: online-teacher step / student limit", "throughput"),
        Result("info", f"{res['teacher_images_per_s']:,.0f} img/s = {res['teacher_over_student_step']:.3f}x the "
               "student step's time", {}, f"{tag}: teacher forward", "throughput"),
    ]


def measure_store_read(num_samples: int, classes: int, limit_images_per_s: float | None,
                       repeats: int = 3) -> Result:
    """Read rate (GB/s of float16 logits) of a full-layout store view written to a temp dir, with the trainer's
    ``verify=True`` and without, against the logits rate the student limit consumes (img/s x 2 bytes x classes)."""
    skipped = zarr_missing()
    if skipped:
        return Result("skipped", skipped.figure, {}, kind="throughput")
    from store.soft_label_store import SoftLabelStore

    nbytes = num_samples * classes * 2
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_random_store(Path(tmp) / "store", num_samples, classes)
        write_s = time.perf_counter() - t0
        store = SoftLabelStore.open(Path(tmp) / "store")
        rates: dict[str, float] = {}
        for verify in (True, False):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                store.read_view(0, verify=verify)
                ts.append(time.perf_counter() - t0)
            rates["verify" if verify else "plain"] = nbytes / statistics.median(ts) / 1e9
    data: dict[str, Any] = {"samples": num_samples, "classes": classes, "bytes": nbytes, "write_s": write_s,
                            "read_gb_per_s": rates["verify"], "read_gb_per_s_no_verify": rates["plain"],
                            "note": "read from the page cache right after writing; random logits (compress poorly)"}
    fig = (f"{num_samples:,} x {classes} ({nbytes / 1e6:.0f} MB): {rates['verify']:.2f} GB/s with verify "
           f"({rates['plain']:.2f} without)")
    if limit_images_per_s:
        need = limit_images_per_s * classes * 2 / 1e9
        ratio = rates["verify"] / need
        data.update(needed_gb_per_s=need, ratio=ratio, epoch_share=1 / ratio)
        fig += (f" vs {need * 1e3:.2f} MB/s consumed at the limit's {limit_images_per_s:,.0f} img/s: ratio {ratio:,.0f}x "
                f"(the once-per-epoch read = {100 / ratio:.2f}% of an epoch at the limit)")
    return Result("info", fig, data, kind="throughput")


# -- running ----------------------------------------------------------------------------------------------------

def run_check(name: str, fn: Callable[[], Result], kind: str = "correctness") -> Result:
    """Run one check; an exception becomes a failed row with its message, and never stops the others."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as exc:  # noqa: BLE001  (the report is the point)
        msg = " ".join(str(exc).split())[:400]
        res = Result("fail" if kind == "correctness" else "error", f"{type(exc).__name__}: {msg}")
    res.name, res.kind, res.seconds = name, kind, time.perf_counter() - t0
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return res


CHILD_CHECKS: dict[str, Callable[[torch.device, bool], Result]] = {
    "determinism": lambda dev, quick: check_determinism(dev, steps=3 if quick else 5),
    "compile": lambda dev, quick: check_compile(dev),
}


def run_in_child(check: str, cap_s: float, quick: bool, env: dict[str, str] | None = None) -> Result:
    """Run ``CHILD_CHECKS[check]`` in a fresh process (its own CUDA context and environment), killed after ``cap_s``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", check] + (["--quick"] if quick else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=cap_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child and the compile workers it started
        proc.communicate()
        return Result("fail", f"timed out after {cap_s:.0f} s (the cap); no result")
    for line in reversed(out.splitlines()):
        if line.startswith(CHILD_TAG):
            return Result(**json.loads(line[len(CHILD_TAG):]))
    tail = " | ".join(err.strip().splitlines()[-3:])[:400]
    return Result("fail", f"child process exited {proc.returncode} without a result: {tail}")


def child_main(check: str, quick: bool) -> int:
    """The ``--child`` entry: run one check on cuda and print its result as one tagged JSON line."""
    if not torch.cuda.is_available():
        res = Result("fail", "no CUDA device in the child process")
    else:
        res = run_check(check, lambda: CHILD_CHECKS[check](torch.device("cuda"), quick))
    print(CHILD_TAG + json.dumps({k: v for k, v in asdict(res).items() if k in ("status", "figure", "data")},
                                 default=str), flush=True)
    return 0


def machine() -> dict[str, Any]:
    """The GPU and the library versions."""
    import timm

    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                            "memory_gib": round(props.total_memory / 2**30, 1), "gpus": torch.cuda.device_count(),
                            "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(), "timm": timm.__version__,
                            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cpus": os.cpu_count()}
    info["nccl"] = nccl_version()
    return info


def correctness_plan(dev: torch.device, quick: bool) -> list[tuple[str, Callable[[], Result]]]:
    """The in-process correctness checks, in order (the child-process ones are added by :func:`main`)."""
    cpu = torch.device("cpu")
    steps = 4 if quick else 8
    return [
        ("objectives: cuda == cpu", lambda: check_objectives(dev, cpu)),
        ("cached fp16 logits vs online teacher: same objective", lambda: check_cached_vs_online(dev)),
        ("short epoch, bf16 autocast: finite", lambda: check_amp_epoch(dev, "bf16", steps=steps)),
        ("short epoch, fp16 autocast + GradScaler: finite", lambda: check_amp_epoch(dev, "fp16", steps=steps)),
        ("checkpoint written on GPU resumes on CPU", lambda: check_checkpoint_roundtrip(dev, cpu)),
        ("checkpoint written on CPU resumes on GPU", lambda: check_checkpoint_roundtrip(cpu, dev)),
        ("store view -> pinned memory -> GPU (non_blocking)", lambda: check_pinned_store(dev)),
        ("channels_last == contiguous (student)", lambda: check_channels_last(dev)),
        ("NCCL process group, world size 1: all_reduce", lambda: check_process_group(dev, "nccl")),
    ]


def print_table(rows: list[Result], elapsed: float) -> None:
    """The rows as a rich table (a plain one without rich), then what is not covered."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in rows:
            print(f"{r.kind:<11} {r.status:<8} {r.name}: {r.figure}")
    else:
        table = Table(title="GPU acceptance check", show_lines=True)
        for col in ("kind", "check", "status", "measured"):
            table.add_column(col)
        colors = {"pass": "green", "met": "green", "fail": "red", "not met": "yellow", "error": "red"}
        for r in rows:
            c = colors.get(r.status)
            table.add_row(r.kind, r.name, f"[{c}]{r.status}[/{c}]" if c else r.status, r.figure)
        Console(width=170).print(table)
    print(f"{NOT_COVERED}\nelapsed {elapsed:.0f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, rounds and a shorter compile cap")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile check")
    p.add_argument("--child", choices=sorted(CHILD_CHECKS), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_all(dev: torch.device, args: argparse.Namespace, pairs: tuple[Pair, ...] = PAIRS) -> tuple[list[Result], dict[str, Any]]:
    """Every check and measurement on ``dev``, each isolated; (report rows, throughput figures by pair)."""
    start = time.perf_counter()

    def left() -> float:
        return BUDGET_S - (time.perf_counter() - start)

    rows = [run_check(name, fn) for name, fn in correctness_plan(dev, args.quick)]
    rows.insert(4, run_check("deterministic runs: bit-identical weights", lambda: run_in_child(
        "determinism", max(60.0, min(180.0, left())), args.quick, {"CUBLAS_WORKSPACE_CONFIG": DETERMINISTIC_CUBLAS})))
    rounds, steps, warmup = (3, 5, 5) if args.quick else (5, 10, 10)
    throughput: dict[str, Any] = {}
    for pair in pairs:
        if left() < 60:
            rows.append(Result("skipped", "skipped: time budget spent", {}, f"{pair.key}: throughput", "throughput"))
            continue
        res = run_check(f"{pair.key}: throughput",
                        lambda: Result("info", "", measure_pair(pair, dev, rounds, steps, warmup)), "throughput")
        if res.status == "error":
            rows.append(res)
            continue
        throughput[pair.key] = res.data
        limit = res.data["limit_images_per_s"]
        rows.extend(throughput_rows(pair, res.data))
        rows.append(run_check(f"{pair.key}: store read ({pair.store_samples:,} x {pair.classes}) vs the limit's logits rate",
                              lambda: measure_store_read(pair.store_samples, pair.classes, limit, 2 if args.quick else 3),
                              "throughput"))
    compile_name = "torch.compile (inductor) == eager (student, channels_last)"
    if args.skip_compile:
        rows.append(Result("skipped", "skipped: --skip-compile", {}, compile_name))
    elif left() < 45:
        rows.append(Result("skipped", "skipped: time budget spent", {}, compile_name))
    else:
        cap = min(150.0 if args.quick else COMPILE_CAP_S, max(45.0, left()))
        rows.append(run_check(compile_name, lambda: run_in_child("compile", cap, args.quick)))
    return rows, throughput


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.quick)
    if not torch.cuda.is_available():
        print(NO_CUDA_LINE)
        return 0
    start = time.perf_counter()
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    try:
        info = machine()
    except Exception as exc:  # noqa: BLE001
        info = {"error": f"{type(exc).__name__}: {exc}"}
    rows, throughput = run_all(dev, args)
    elapsed = time.perf_counter() - start
    failed = [r.name for r in rows if r.kind == "correctness" and r.status == "fail"]
    report = {"script": "bench/gpu_check.py", "quick": args.quick, "machine": info, "not_covered": NOT_COVERED,
              "goal_cached_ratio": GOAL_CACHED, "checks": [asdict(r) for r in rows], "throughput": throughput,
              "correctness_failed": failed, "elapsed_s": elapsed}
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print_table(rows, elapsed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
