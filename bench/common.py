"""What the benchmark scripts share: the model pairs they measure, their configs and teacher, CPU-time
windows that detect other processes' interference, and a description of the machine."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from rich.console import Console

import pipeline.scenarios  # noqa: F401  (registers the built-in scenarios, as the CLI does)
from pipeline.models.files import save_model
from pipeline.config.schema import Config, load_config
from pipeline.models import create
from pipeline.data.sources.registry import train_and_test
from pipeline.student.specs import dataset_record

# a timing is redone when other processes used more than BUSY of the machine's CPU time, or the
# hypervisor stole more than STEAL of it: on 2 cores, a stolen slice stalls both OpenMP threads
BUSY, STEAL = 0.03, 0.01


@dataclass(frozen=True)
class Pair:
    """A weak teacher / strong student pair, the recipes it comes from and the data it runs on."""

    dataset: str
    teacher: str
    student: str
    student_recipe: Path
    teacher_recipe: Path
    batch_size: int
    samples: int
    steps: int  # timed steps per slice in the stage-2 benchmark (a slice lasts a few seconds)
    full_samples: int  # training images of the real recipe (for the full-size store read)
    num_classes: int
    overrides: tuple[str, ...] = ()  # for every config of the pair (CPU-friendly settings)
    teacher_overrides: tuple[str, ...] = ()  # for the teacher's own training run (--train-teacher)
    generated: bool = False  # random images in the dataset's on-disk format, written to the temp dir
    notes: dict[str, Any] = field(default_factory=dict)

    def prepare(self, tmp: Path, samples: int, test_samples: int) -> None:
        """Write the generated dataset (CIFAR-100 pickles) when the pair has no real data here."""
        if self.generated:
            from tests.formats import write_cifar100

            write_cifar100(tmp / "cifar", samples, test_samples)

    def data_overrides(self, tmp: Path) -> list[str]:
        return [f"data.data_dir={tmp / 'cifar'}"] if self.generated else []


PAIRS = {
    "fmnist": Pair("Fashion-MNIST", "fmnist_linear", "fmnist_cnn",
                   ROOT / "configs" / "fmnist" / "student_adaptconf.yaml",
                   ROOT / "configs" / "fmnist" / "teacher_linear.yaml", 128, 4096, 20, 30_000, 10,
                   teacher_overrides=("data.subset=half_b",)),
    # the paper's CIFAR-100 row on random 32x32 pixels in CIFAR's pickle format (no real CIFAR here);
    # throughput does not depend on pixel values. AMP and channels_last are off: CPU float32.
    "cifar": Pair("CIFAR-100 (random pixels)", "cifar_resnet20", "cifar_resnet56",
                  ROOT / "configs" / "cifar100" / "res56_res20_adaptconf.yaml",
                  ROOT / "configs" / "cifar100" / "teacher_resnet20.yaml", 64, 1024, 6, 50_000, 100,
                  overrides=("run.amp=none", "run.channels_last=false"), generated=True),
}


QUIET = Console(quiet=True)


def base_config(args: argparse.Namespace, tmp: Path, mode: str, store: Path, samples: int = 0) -> Config:
    """The pair's adaptconf student recipe on the first ``--samples`` images of its training set."""
    pair = PAIRS[args.pair]
    return load_config(pair.student_recipe, [
        *pair.overrides, *pair.data_overrides(tmp),
        f"data.limit={samples or args.samples}", f"data.test_limit={args.test_limit}",
        f"model.name={args.student}",
        f"teacher.checkpoint={tmp / 'teacher'}", f"teacher.store={store}", f"teacher.mode={mode}",
        f"teacher.batch_size={args.infer_batch_size or args.batch_size}",
        f"optim.batch_size={args.batch_size}", "optim.batch_per_process=0",
        f"run.num_threads={args.threads}", f"run.device={args.device}", f"run.output={tmp / ('run_' + mode)}",
    ])


def make_teacher(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """An untrained teacher saved as `w2s train-teacher` would (or trained for one epoch with --train-teacher)."""
    if args.train_teacher:
        from pipeline.train_student import train

        pair = PAIRS[args.pair]
        cfg = load_config(pair.teacher_recipe, [
            *pair.overrides, *pair.data_overrides(tmp), *pair.teacher_overrides, f"data.limit={args.samples}", f"data.test_limit={args.test_limit}",
            f"model.name={args.teacher}", "optim.epochs=1", f"optim.batch_size={args.batch_size}",
            "optim.batch_per_process=0", f"run.num_threads={args.threads}", f"run.device={args.device}", f"run.output={tmp / 'teacher'}"])
        t0 = time.perf_counter()
        result = train(cfg, role="teacher", console=QUIET)
        return {"trained_epochs": 1, "test_acc": result["test_acc"], "train_s": time.perf_counter() - t0}
    cfg = base_config(args, tmp, "store", tmp / "unused")
    src, _ = train_and_test(**dataclasses.asdict(cfg.data))
    torch.manual_seed(0)
    model = create(args.teacher, src.num_classes, src.channels)
    meta = {"model": args.teacher, "kwargs": {}, "num_classes": src.num_classes, "in_chans": src.channels,
            "mean": list(src.mean), "std": list(src.std), "input_size": src.image_hw[0],
            "dataset": dataset_record(src)}
    save_model(model, tmp / "teacher", meta)
    return {"trained_epochs": 0}


def emit(run: Callable[[argparse.Namespace], dict[str, Any]], table: Callable[[dict[str, Any]], str],
         args: argparse.Namespace) -> None:
    """Run a benchmark; print its JSON object (with ``total_s``), then its markdown table."""
    t0 = time.perf_counter()
    res = run(args)
    res["total_s"] = time.perf_counter() - t0
    print(json.dumps(res, indent=2))
    print()
    print(table(res))


def noisy(r: dict[str, Any]) -> bool:
    """Whether other processes or the hypervisor took enough CPU during a timing to distort it."""
    return r["foreign_cpu_fraction"] > BUSY or r["steal_fraction"] > STEAL


REDO_BUDGET = {"seconds_left": 60.0}  # total time a run may spend redoing disturbed timings (--redo-budget)


def clean(fn: Callable[[], dict[str, Any]], retries: int) -> tuple[dict[str, Any], int]:
    """``fn()``, redone up to ``retries`` times while the machine was busy with others, as long as the
    run's redo budget lasts; (result, redos)."""
    r, redo = fn(), 0
    while noisy(r) and redo < retries and REDO_BUDGET["seconds_left"] > 0:
        redo += 1
        t0 = time.perf_counter()
        time.sleep(0.5)
        r = fn()
        REDO_BUDGET["seconds_left"] -= time.perf_counter() - t0
    return r, redo


def cpu_window() -> Callable[[], dict[str, float]]:
    """Start a window; calling the result ends it: wall seconds, own CPU seconds, and the shares of
    the machine's CPU time used by other processes and stolen by the hypervisor."""
    (busy0, steal0), own0, t0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()

    def end() -> dict[str, float]:
        dt = time.perf_counter() - t0
        own = _own_cpu_s() - own0
        busy1, steal1 = _busy_cpu_s()
        capacity = dt * (os.cpu_count() or 1)
        return {"seconds": dt, "cpu_s": own, "foreign_cpu_fraction": max(0.0, busy1 - busy0 - own) / capacity,
                "steal_fraction": (steal1 - steal0) / capacity}
    return end


def machine() -> dict[str, Any]:
    """CPU model, cores, cgroup quota and library versions."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    quota = None
    try:
        q, p = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        quota = None if q == "max" else int(q) / int(p)
    except (OSError, ValueError):
        pass
    import timm
    import zarr
    from nvidia import dali

    info = {"cpu_model": cpu, "cpu_count": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
            "cgroup_cpu_quota": quota, "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "dali": dali.__version__,
            "timm": timm.__version__, "zarr": zarr.__version__, "numpy": np.__version__,
            "loadavg_1min_at_start": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_line(m: dict[str, Any]) -> str:
    return "machine: " + ", ".join(f"{k} {m.get(k)}" for k in ("cpu_model", "cpus_available", "cgroup_cpu_quota",
                                                               "torch", "dali"))


def _busy_cpu_s() -> tuple[float, float]:
    """CPU seconds of the whole machine: busy (user+nice+system+irq+softirq) and stolen by the hypervisor."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f[:8])
        tick = os.sysconf("SC_CLK_TCK")
        return (user + nice + system + irq + softirq) / tick, steal / tick
    except (OSError, ValueError):
        return 0.0, 0.0


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system
