"""End to end through the CLI on 2,000 real Fashion-MNIST images, and one-line errors on bad input."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.files import load_model
from pipeline.config.schema import load_config
from pipeline.data.loader import ViewReplayer, crop_size_for
from pipeline.objectives import build_objective
from pipeline.data.sources.registry import train_and_test
from pipeline.student.specs import teacher_spec, view_policy
from store.soft_label_store import SoftLabelStore
from tests.cli_run import fails, ok
from tests.helpers import fmnist_config


def _write_config(path: Path, data_dir: Path, out: Path, **sections) -> Path:
    base = {"views": {"kind": "pad_crop", "num_views": 2, "pad": 2, "seed": 0},
            "teacher": {"checkpoint": str(out / "teacher"), "store": str(out / "store"), "chunk_samples": 512,
                        "batch_size": 256},
            "optim": {"epochs": 2, "batch_size": 100, "eval_batch_size": 500, "lr": 0.05},
            "run": {"output": str(out / "run")}}
    return fmnist_config(path, data_dir, base, **sections)






@pytest.fixture(scope="module")
def pipeline_run(fmnist_dir, tmp_path_factory):
    """train-teacher -> infer-teacher -> train-student (adaptconf) through the CLI."""
    out = tmp_path_factory.mktemp("e2e")
    t0 = time.perf_counter()
    tcfg = _write_config(out / "teacher.yaml", fmnist_dir, out, model={"name": "fmnist_linear"},
                         run={"output": str(out / "teacher")})
    teacher = ok(["train-teacher", str(tcfg)])
    scfg = _write_config(out / "student.yaml", fmnist_dir, out, model={"name": "fmnist_cnn", "kwargs": {"width": 8}},
                         objective={"name": "adaptconf", "gt_weight": 0.0})
    infer = ok(["infer-teacher", str(scfg)])
    student = ok(["train-student", str(scfg)])
    return {"out": out, "teacher": teacher, "infer": infer, "student": student, "seconds": time.perf_counter() - t0,
            "student_cfg": scfg}


def test_end_to_end_under_a_minute(pipeline_run):
    out = pipeline_run["out"]
    assert pipeline_run["seconds"] < 60
    assert pipeline_run["teacher"]["test_acc"] > 0.6
    assert pipeline_run["infer"]["computed_chunks"] == 4 * 3
    assert len(pipeline_run["infer"]["teacher_accuracy"]) == 3
    s = pipeline_run["student"]
    assert s["objective"] == "adaptconf" and s["teacher_mode"] == "store" and 0 <= s["test_acc"] <= 1
    run = out / "run"
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "model.safetensors", "model.json", "result.json",
                 "checkpoints/state.pt"):
        assert (run / name).exists(), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("loss", "gt", "kd", "align", "weight_mean", "train_acc", "test_acc", "train_agreement",
                "test_agreement", "images_per_s"):
        assert key in rows[0], key
    assert 0 < rows[0]["weight_mean"] <= 0.5
    assert all(0 < r["store_read_s"] < r["epoch_s"] for r in rows)  # reading the view is part of the epoch
    store = SoftLabelStore.open(out / "store")
    assert store.group["logits"].dtype == np.float16 and store.group["logits"].shape == (2000, 3, 10)
    assert store.attrs["teacher"]["sha256"] and store.attrs["dataset"]["fingerprint"]


def test_infer_teacher_again_computes_nothing(pipeline_run):
    again = ok(["infer-teacher", str(pipeline_run["student_cfg"])])
    assert again["computed_chunks"] == 0


def test_infer_teacher_resumes_interrupted_store(pipeline_run, monkeypatch, tmp_path):
    """Kill stage 1 after 5 chunks; the rerun computes only the rest and ends with identical arrays."""
    import pipeline.infer_teacher as it
    cfg = pipeline_run["student_cfg"]
    target = tmp_path / "store"
    calls = {"n": 0}
    real = SoftLabelStore.write_chunk

    def dying(self, chunk, logits, params):
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        real(self, chunk, logits, params)

    monkeypatch.setattr(SoftLabelStore, "write_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        it.infer(load_config(cfg, [f"teacher.store={target}"]))
    monkeypatch.setattr(SoftLabelStore, "write_chunk", real)
    assert SoftLabelStore.open(target).done_mask().sum() == 5
    res = ok(["infer-teacher", str(cfg), "--set", f"teacher.store={target}"])
    assert res["computed_chunks"] == 12 - 5
    a, b = SoftLabelStore.open(target), SoftLabelStore.open(pipeline_run["out"] / "store")
    np.testing.assert_array_equal(a.group["logits"][:], b.group["logits"][:])
    np.testing.assert_array_equal(a.group["view_params"][:], b.group["view_params"][:])


def test_online_teacher_matches_store_on_the_same_batch(pipeline_run):
    """The objective from cached float16 logits equals the one from the online teacher on the same views."""
    cfg = load_config(pipeline_run["student_cfg"])
    train_src, _ = train_and_test(**dataclasses.asdict(cfg.data))
    teacher, meta, _ = load_model(cfg.teacher.checkpoint)
    store = SoftLabelStore.open(cfg.teacher.store)
    policy = view_policy(cfg)
    view = policy.epoch_view(1)
    idx = np.arange(300, 428)
    cached, params = store.read_view(view, idx)
    spec = teacher_spec(train_src, meta)
    rep = ViewReplayer(train_src.image_hw, [spec], len(idx), crop_size_for(policy, train_src))
    with torch.no_grad():
        online = teacher(rep(train_src.images[idx], params)[0])
    zs = torch.randn(len(idx), 10, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.from_numpy(train_src.labels[idx])
    for name in ("kd", "augconf", "adaptconf"):
        obj = build_objective(name, gt_weight=0.0)
        a = obj(zs, torch.from_numpy(cached), y, epoch=1, epochs=2).total.item()
        b = obj(zs, online, y, epoch=1, epochs=2).total.item()
        assert a == pytest.approx(b, rel=2e-3, abs=2e-3), name
    torch.testing.assert_close(torch.from_numpy(cached).float(), online, rtol=1e-3, atol=1e-2)


def test_train_student_online_mode_runs(pipeline_run, tmp_path):
    res = ok(["train-student", str(pipeline_run["student_cfg"]), "--teacher-mode", "online",
               "--set", "optim.epochs=1", "--set", f"run.output={tmp_path / 'online'}"])
    assert res["teacher_mode"] == "online"


def test_finished_run_is_not_overwritten(pipeline_run):
    fails(["train-student", str(pipeline_run["student_cfg"])], "already holds a finished run")


# -- bad input ------------------------------------------------------------------------------

def test_missing_data(pipeline_run, tmp_path):
    msg = fails(["train-teacher", str(pipeline_run["student_cfg"]), "--set", f"data.data_dir={tmp_path / 'none'}",
                  "--set", f"run.output={tmp_path / 'r'}"], "Fashion-MNIST train not found")
    assert "apt-get install dataset-fashion-mnist" in msg


def test_unknown_config_key_lists_valid_keys(pipeline_run, tmp_path):
    msg = fails(["train-student", str(pipeline_run["student_cfg"]), "--set", "optim.lrr=0.1"], "unknown config key 'optim.lrr'")
    assert "lr, momentum, nesterov" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: {name: x}\n")
    fails(["train-student", str(bad)], "valid keys in the top level: data, views, augment, model")


def test_store_that_does_not_match_view_policy(pipeline_run, tmp_path):
    fails(["train-student", str(pipeline_run["student_cfg"]), "--set", "views.seed=3",
            "--set", f"run.output={tmp_path / 'r'}"], "view_policy.seed is 0 in the store but 3 here")


def test_store_that_does_not_match_dataset(pipeline_run, tmp_path):
    fails(["train-student", str(pipeline_run["student_cfg"]), "--set", "data.limit=1500",
            "--set", f"run.output={tmp_path / 'r'}"], "dataset.")


def test_missing_checkpoint(pipeline_run, tmp_path):
    fails(["infer-teacher", str(pipeline_run["student_cfg"]), "--set", f"teacher.checkpoint={tmp_path / 'nope'}",
            "--set", f"teacher.store={tmp_path / 's'}"], "teacher checkpoint")


def test_missing_store(pipeline_run, tmp_path):
    fails(["train-student", str(pipeline_run["student_cfg"]), "--set", f"teacher.store={tmp_path / 'nostore'}",
            "--set", f"run.output={tmp_path / 'r'}"], "no store at")


def test_missing_config_file(tmp_path):
    fails(["train-teacher", str(tmp_path / "nope.yaml")], "not found")


def test_bad_override_type(pipeline_run):
    fails(["train-student", str(pipeline_run["student_cfg"]), "--set", "optim.epochs=two"],
           "optim.epochs: expected an integer")


def test_top_k_store_trains_a_student(pipeline_run, tmp_path):
    cfg = str(pipeline_run["student_cfg"])
    where = ["--set", f"teacher.store={tmp_path / 'topk'}", "--set", "teacher.layout=top_k", "--set", "teacher.top_k=3"]
    info = ok(["infer-teacher", cfg, *where])
    full = pipeline_run["infer"]["teacher_accuracy"]
    assert info["teacher_accuracy"] == full  # hard labels are exact in the top_k layout
    res = ok(["train-student", cfg, *where, "--set", "optim.epochs=1", "--set", f"run.output={tmp_path / 'r'}"])
    assert res["teacher_mode"] == "store"
