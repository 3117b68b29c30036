"""No silent NaN runs: bad hyper-parameters are refused at load, a diverging run stops with the last good checkpoint.

Config checks run without data; the training cases use 512 Fashion-MNIST images (8 steps an epoch).
"""
from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file

from pipeline.engine.checkpoint import load_state
from pipeline.config.schema import Config, ConfigError, load_config
from pipeline.scenarios.few_shot import FewShotConfig, load_few_shot_config
from pipeline.engine.nonfinite import MAX_SKIPPED_STEPS, SkippedSteps, check_step
from pipeline.engine.runtime import RunError
from tests.cli_run import fails, invoke, ok
from tests.helpers import fmnist_config

ROOT = Path(__file__).resolve().parents[2]
FEW_SHOT_KEYS = ("meta", "episodes", "encoder")  # top-level sections only the few-shot schema has


# -- at load ------------------------------------------------------------------------------------

BAD = [  # (override, the key the error must name)
    ("optim.lr=.nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"), ("optim.lr=-.inf", "optim.lr"),
    ("optim.lr=0", "optim.lr"), ("optim.lr=-0.1", "optim.lr"), ("optim.epochs=0", "optim.epochs"),
    ("optim.momentum=1.0", "optim.momentum"), ("optim.weight_decay=-1e-4", "optim.weight_decay"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("optim.min_lr=-1", "optim.min_lr"), ("optim.decay_rate=0", "optim.decay_rate"),
    ("optim.decay_rate=1.5", "optim.decay_rate"), ("optim.milestones=[5, -1]", "optim.milestones[1]"),
    ("optim.milestones=[.nan]", "optim.milestones[0]"), ("optim.layer_decay=2", "optim.layer_decay"),
    ("optim.batch_size=0", "optim.batch_size"), ("optim.eval_batch_size=0", "optim.eval_batch_size"),
    ("optim.batch_per_process=-1", "optim.batch_per_process"),
    ("objective.kd_temperature=0", "objective.kd_temperature"), ("objective.threshold=0", "objective.threshold"),
    ("objective.gt_weight=-1", "objective.gt_weight"), ("objective.kd_weight=.nan", "objective.kd_weight"),
    ("objective.rate=0", "objective.rate"), ("objective.max_weight=1.5", "objective.max_weight"),
    ("objective.warmup_rate=-0.1", "objective.warmup_rate"),
    ("augment.random_erasing=1.5", "augment.random_erasing"), ("augment.mixup=-1", "augment.mixup"),
    ("augment.cutmix=.inf", "augment.cutmix"), ("augment.mix_prob=2", "augment.mix_prob"),
    ("augment.switch_prob=-0.5", "augment.switch_prob"), ("augment.label_smoothing=1", "augment.label_smoothing"),
    ("augment.magnitude=11", "augment.magnitude"), ("augment.magnitude_std=-1", "augment.magnitude_std"), ("augment.num_ops=0", "augment.num_ops"),
    ("data.noise_rate=1.5", "data.noise_rate"), ("data.val_fraction=1", "data.val_fraction"),
    ("data.limit=-1", "data.limit"), ("data.image_size=0", "data.image_size"), ("data.classes=[0, -1]", "data.classes[1]"),
    ("views.num_views=0", "views.num_views"), ("views.pad=-1", "views.pad"),
    ("views.scale=[1.0, 0.5]", "views.scale"), ("views.scale=[0, 1]", "views.scale[0]"),
    ("views.ratio=[0.75]", "views.ratio"), ("views.ratio=[-1, 2]", "views.ratio[0]"),
    ("views.crop_pct=0", "views.crop_pct"), ("views.crop_pct=1.2", "views.crop_pct"),
    ("model.mean=[0.5, .nan, 0.5]", "model.mean[1]"), ("model.std=[0]", "model.std[0]"),
    ("model.input_size=0", "model.input_size"), ("model.kwargs={drop_rate: .nan}", "model.kwargs.drop_rate"),
    ("teacher.batch_size=0", "teacher.batch_size"), ("teacher.chunk_samples=0", "teacher.chunk_samples"),
    ("teacher.top_k=-1", "teacher.top_k"), ("run.num_threads=0", "run.num_threads"), ("run.seed=-1", "run.seed"),
    # choices, checked at load rather than when the module that reads them runs
    ("data.subset=half_c", "data.subset"), ("data.noise_mode=pairflip", "data.noise_mode"),
    ("views.kind=cutout", "views.kind"), ("views.sampling=random", "views.sampling"),
    ("views.interpolation=nearest", "views.interpolation"), ("augment.policy=trivial", "augment.policy"),
    ("teacher.mode=cached", "teacher.mode"), ("teacher.layout=sparse", "teacher.layout"),
    ("teacher.dtype=bfloat16", "teacher.dtype"), ("teacher.read_order=random", "teacher.read_order"),
    ("teacher.read_buffer=triple", "teacher.read_buffer"), ("teacher.input=mine", "teacher.input"),
    ("optim.schedule=step", "optim.schedule"), ("run.amp=fp8", "run.amp"),
]
BAD_FEW_SHOT = [
    ("meta.lr=.nan", "meta.lr"), ("meta.lr=0", "meta.lr"), ("meta.epochs=0", "meta.epochs"),
    ("meta.batches_per_epoch=0", "meta.batches_per_epoch"), ("meta.episodes_per_batch=0", "meta.episodes_per_batch"),
    ("meta.n_way=1", "meta.n_way"), ("meta.k_shot=0", "meta.k_shot"), ("meta.n_query=0", "meta.n_query"),
    ("meta.momentum=1", "meta.momentum"), ("meta.weight_decay=-1", "meta.weight_decay"),
    ("meta.kd_temperature=.inf", "meta.kd_temperature"), ("meta.threshold=0", "meta.threshold"),
    ("meta.warmup_rate=2", "meta.warmup_rate"), ("meta.kd_weight=-1", "meta.kd_weight"),
    ("meta.gt_weight=-1", "meta.gt_weight"), ("meta.objective=dkd3", "meta.objective"),
    ("meta.warmup_style=linear", "meta.warmup_style"), ("episodes.n_way=1", "episodes.n_way"), ("episodes.shots=[]", "episodes.shots"),
    ("episodes.shots=[1, 0]", "episodes.shots[1]"), ("episodes.n_query=0", "episodes.n_query"),
    ("episodes.episodes=0", "episodes.episodes"), ("episodes.batch_size=0", "episodes.batch_size"),
    ("run.num_threads=0", "run.num_threads"), ("data.noise_rate=.nan", "data.noise_rate"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0] for b in BAD])
def test_bad_value_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    msg = str(exc.value)
    assert msg.startswith(f"{key} must "), msg
    assert "\n" not in msg


@pytest.mark.parametrize("override,key", BAD_FEW_SHOT, ids=[b[0] for b in BAD_FEW_SHOT])
def test_bad_few_shot_value_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_few_shot_config(None, [override])
    assert str(exc.value).startswith(f"{key} must "), str(exc.value)


def test_bounds_and_conditions() -> None:
    assert load_config(None, ["views.kind=none", "views.num_views=0"]).views.num_views == 0  # no augmented views
    # a recipe shortened for a smoke run: warm-up and milestones past the end are never reached, not wrong
    assert load_config(None, ["optim.epochs=1", "optim.warmup_epochs=10", "optim.milestones=[90]"])
    assert load_config(None, ["optim.lr=1e30"]).optim.lr == 1e30  # finite: caught while training instead


def test_every_numeric_key_declares_its_range() -> None:
    """Rules live beside their fields: every int or float key declares its range with ``setting(check=...)``."""
    unchecked = []
    for cls in (Config, FewShotConfig):
        for section in dataclasses.fields(cls):
            if section.metadata.get("sections") or not dataclasses.is_dataclass(section.default_factory):  # type: ignore[arg-type]
                continue
            for f in dataclasses.fields(section.default_factory):  # type: ignore[arg-type]
                numeric = f.type in ("int", "float", "int | None", "float | None", "list[float]", "list[int]")
                if numeric and "check" not in f.metadata:
                    unchecked.append(f"{section.name}.{f.name}")
    assert unchecked == []


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_load(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    (load_few_shot_config if any(k in data for k in FEW_SHOT_KEYS) else load_config)(path)


def test_cli_refuses_non_finite_lr_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"output": str(tmp_path / "run")}}))
    for value in (".nan", ".inf"):
        line = fails(["train-teacher", str(cfg), "--set", f"optim.lr={value}"], "optim.lr must be a finite number")
        assert line.count("error:") == 1
    fails(["train-student", str(cfg), "--set", "optim.epochs=0"], "optim.epochs must be >= 1, got 0")
    fails(["few-shot", "meta", str(ROOT / "configs/few_shot/fmnist_meta_adaptconf.yaml"), "--set", "meta.lr=.inf"],
          "meta.lr must be a finite number, got inf")
    assert not (tmp_path / "run").exists()


# -- while training -----------------------------------------------------------------------------

def _config(tmp_path: Path, data_dir: Path, **optim: object) -> Path:
    return fmnist_config(tmp_path / "cfg.yaml", data_dir,
                         data={"limit": 512, "test_limit": 200},
                         model={"name": "fmnist_mlp", "kwargs": {"hidden": 32}},
                         optim={"epochs": 2, "batch_size": 64, "eval_batch_size": 200, "lr": 0.05, **optim},
                         run={"output": str(tmp_path / "run"), "num_threads": 1})


def _error_line(res) -> str:  # type: ignore[no-untyped-def]
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    return lines[-1]


def test_diverging_lr_stops_at_the_first_nan(fmnist_dir: Path, tmp_path: Path) -> None:
    res = invoke(["train-teacher", str(_config(tmp_path, fmnist_dir)), "--set", "optim.lr=1e30"])
    line = _error_line(res)
    assert "training diverged at epoch 1/2, step " in line and "/8 (loss " in line, line
    assert "no checkpoint was written" in line
    run = tmp_path / "run"
    assert not (run / "result.json").exists() and not (run / "checkpoints" / "state.pt").exists()
    assert not (run / "model.safetensors").exists()


@pytest.mark.parametrize("where", ["loss", "weights"])
def test_divergence_in_epoch_two_keeps_epoch_one(fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 where: str) -> None:
    """Epoch 1 trains normally; in epoch 2 the weights turn NaN (at step 3 with a NaN loss, or after the last
    step with a finite one). The run fails naming the place, epoch 1's checkpoint stays intact and resumes."""
    from pipeline.student.step import StudentStep

    step_of = StudentStep.optimizer_step

    def poisoned(self, b, epoch, step):  # type: ignore[no-untyped-def]
        out, zs, zt = step_of(self, b, epoch, step)
        if epoch == 1 and step == (2 if where == "loss" else 7):
            with torch.no_grad():
                next(self.net.parameters()).fill_(math.nan)
            if where == "loss":
                out.total = out.total * math.nan
        return out, zs, zt

    cfg = _config(tmp_path, fmnist_dir)
    run = tmp_path / "run"
    monkeypatch.setattr(StudentStep, "optimizer_step", poisoned)
    line = _error_line(invoke(["train-teacher", str(cfg)]))
    if where == "loss":
        assert "training diverged at epoch 2/2, step 3/8 (loss nan)" in line, line
    else:
        assert "training diverged in epoch 2/2: the weights are not finite" in line, line
    assert "the checkpoint of epoch 1/2 is kept" in line
    assert not (run / "result.json").exists() and not (run / "model.safetensors").exists()
    state = load_state(run / "checkpoints" / "state.pt")
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    monkeypatch.setattr(StudentStep, "optimizer_step", step_of)
    result = ok(["train-teacher", str(cfg), "--resume"])
    assert result["epochs"] == 2 and (run / "result.json").exists()
    assert all(np.isfinite(v).all() for v in load_file(str(run / "model.safetensors")).values())


def test_few_shot_meta_stops_at_a_nan_loss(fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.scenarios.few_shot.meta as fs

    data = ["--set", f"data.data_dir={fmnist_dir}", "--set", "data.limit=600", "--set", "run.num_threads=1"]
    ok(["train-teacher", str(ROOT / "configs/few_shot/fmnist_teacher_mlp.yaml"), *data, "--set", "optim.epochs=1",
        "--set", "model.kwargs={hidden: 32}", "--set", f"run.output={tmp_path / 'enc'}"])
    build = fs.build_objective

    def poisoned_objective(*args, **kwargs):  # type: ignore[no-untyped-def]
        inner, calls = build(*args, **kwargs), []

        class Poisoned:
            name, needs_teacher, sample_weight, terms = inner.name, inner.needs_teacher, inner.sample_weight, inner.terms

            def __call__(self, *a, epoch, **k):  # type: ignore[no-untyped-def]
                out = inner(*a, epoch=epoch, **k)
                calls.append(epoch)
                if epoch == 1 and calls.count(1) == 2:
                    out.total = out.total * math.nan
                return out

        return Poisoned()

    monkeypatch.setattr(fs, "build_objective", poisoned_objective)
    cfg = tmp_path / "meta.yaml"
    cfg.write_text("data: {source: fashion_mnist, classes: [0, 1, 2, 3, 4, 5]}\n")
    run = tmp_path / "meta"
    line = _error_line(invoke(["few-shot", "meta", str(cfg), *data, "--set", f"encoder.checkpoint={tmp_path / 'enc'}",
                               "--set", f"run.output={run}", "--set", "meta.epochs=2", "--set", "meta.batches_per_epoch=3",
                               "--set", "meta.n_way=4", "--set", "meta.objective=none"]))
    assert "training diverged at epoch 2/2, step 2/3 (loss nan)" in line and "lower meta.lr" in line, line
    assert "the checkpoint of epoch 1/2 is kept" in line
    assert not (run / "result.json").exists()
    state = load_state(run / "checkpoints" / "state.pt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())


# -- fp16 skipped steps and agreement across ranks ----------------------------------------------

class _Scaler:
    """A GradScaler stand-in whose scale follows a script (halved on a skipped step)."""

    def __init__(self, scales: list[float]) -> None:
        self.scales = scales

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self.scales[0]

    def step(self, skipped: bool) -> None:
        self.scales = [self.scales[0] / 2 if skipped else self.scales[0]]


def test_fp16_stops_after_a_run_of_skipped_steps() -> None:
    scaler = _Scaler([65536.0])
    skipped = SkippedSteps(scaler)  # type: ignore[arg-type]
    cpu = torch.device("cpu")
    for i in range(3 * MAX_SKIPPED_STEPS):  # isolated skips are normal
        scaler.step(skipped=i % 3 == 0)
        skipped.update()
        check_step(1.0, skipped, 0, 1, i, 100, cpu)
    for i in range(MAX_SKIPPED_STEPS - 1):
        scaler.step(skipped=True)
        skipped.update()
        check_step(1.0, skipped, 1, 3, i, 100, cpu)
    scaler.step(skipped=True)
    skipped.update()
    with pytest.raises(RunError, match=f"{MAX_SKIPPED_STEPS} consecutive fp16 steps skipped .* at epoch 2/3, "
                                       f"step {MAX_SKIPPED_STEPS}/100 .*the checkpoint of epoch 1/3 is kept"):
        check_step(1.0, skipped, 1, 3, MAX_SKIPPED_STEPS - 1, 100, cpu)


def _rank(rank: int, port: int, results) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    from pipeline.engine.runtime import Dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for step in range(3):
            loss = math.nan if (rank == 1 and step == 1) else 1.0  # only rank 1 sees it
            check_step(loss, None, 0, 1, step, 3, torch.device("cpu"), Dist(rank, 2, rank))
        results.put((rank, "finished"))
    except RunError as exc:
        results.put((rank, str(exc)))
    finally:
        dist.destroy_process_group()


def test_all_ranks_stop_at_the_same_step() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    got = dict(results.get(timeout=5) for _ in procs)
    assert got[1].startswith("training diverged at epoch 1/1, step 2/3 (loss nan)"), got
    assert got[0].startswith("training diverged at epoch 1/1, step 2/3 (loss not finite or exploded on 1 of 2 processes)"), got


def test_an_exploding_finite_loss_stops_the_run(fmnist_dir, tmp_path):
    """``optim.lr=1e30`` trained to a finite loss of 1.8e31 and exited 0; now it stops at step 2 like a nan."""
    path = fmnist_config(tmp_path / "c.yaml", fmnist_dir,
                         data={"limit": 300, "test_limit": 100},
                         views={"kind": "pad_crop", "num_views": 1, "pad": 2, "seed": 0},
                         model={"name": "fmnist_linear"},
                         optim={"epochs": 2, "batch_size": 100, "eval_batch_size": 100, "lr": 1.0e+30},
                         run={"output": str(tmp_path / "run")})
    msg = fails(["train-teacher", str(path)], "training diverged at epoch 1/2, step 2/3 (loss ")
    assert "over 10000 x the first step's" in msg and "lower optim.lr" in msg
    assert not (tmp_path / "run" / "result.json").exists()
