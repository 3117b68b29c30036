"""Distributed runs (torchrun, gloo), resume after SIGKILL, store integrity and bad input.

These tests start real subprocesses: ``python cli.py`` and ``python -m torch.distributed.run``.
"""
from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from pipeline.engine.runtime import RunLock
from store.soft_label_store import SoftLabelStore
from tests.cli_run import invoke, ok
from tests.conftest import write_idx
from tests.helpers import (corrupt_chunk, fmnist_config, kill_when, mid_epoch, one_thread_env, start,
                           store_has_chunks, w2s, w2s_cmd, wait_unlocked)


def _weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "model.safetensors"))


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s"), r.pop("epoch_s"), r.pop("store_read_s", None)
    return rows


@pytest.fixture(scope="module")
def base(fmnist_dir, tmp_path_factory):
    """A weak teacher and a complete store made by one process."""
    out = tmp_path_factory.mktemp("robust")
    cfg = fmnist_config(out / "cfg.yaml", fmnist_dir,
                        data={"limit": 1024, "test_limit": 500},
                        views={"kind": "pad_crop", "num_views": 2, "pad": 2, "seed": 0},
                        model={"name": "fmnist_mlp", "kwargs": {"hidden": 64}},
                        teacher={"checkpoint": str(out / "teacher"), "store": str(out / "store"), "chunk_samples": 128,
                                 "batch_size": 128},
                        objective={"name": "adaptconf", "gt_weight": 0.5},
                        optim={"epochs": 3, "batch_size": 64, "eval_batch_size": 250, "lr": 0.05},
                        run={"output": str(out / "run"), "num_threads": 1})
    ok(["train-teacher", str(cfg), "--set", "model.name=fmnist_linear", "--set", "model.kwargs={}", "--set",
        "objective.name=vanilla", "--set", "optim.epochs=1", "--set", f"run.output={out / 'teacher'}"])
    ok(["infer-teacher", str(cfg)])
    return out, cfg


def test_ddp_two_ranks_match_one_process(base, tmp_path):
    """torchrun --nproc_per_node=2 (gloo): same weights as one process with the same global batch."""
    out, cfg = base
    same = ("--set", "optim.epochs=2", "--set", "optim.sched_on_updates=true")  # the tolerance below was set for this lr
    ok(["train-student", str(cfg), *same, "--set", f"run.output={tmp_path / 'single'}"])
    w2s("train-student", str(cfg), *same, "--set", f"run.output={tmp_path / 'ddp'}", nproc=2, env=one_thread_env(),
        check=True)
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)
    sm, dm = _metrics(tmp_path / "single"), _metrics(tmp_path / "ddp")
    assert [r["test_acc"] for r in sm] == [r["test_acc"] for r in dm]
    assert sm[-1]["loss"] == pytest.approx(dm[-1]["loss"], rel=1e-4)


def test_parallel_infer_teacher_equals_single_process(base, tmp_path):
    out, cfg = base
    w2s("infer-teacher", str(cfg), "--set", f"teacher.store={tmp_path / 'par'}", nproc=2, env=one_thread_env(),
        check=True)
    a, b = SoftLabelStore.open(out / "store"), SoftLabelStore.open(tmp_path / "par")
    assert b.is_complete
    for name in ("logits", "view_params", "labels", "chunk_crc"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])


def test_train_student_resume_after_sigkill(base, tmp_path):
    out, cfg = base
    args = ["train-student", str(cfg), "--set", "optim.epochs=8"]  # enough epochs left to be killed in
    ok([*args, "--set", f"run.output={tmp_path / 'clean'}"])
    killed = tmp_path / "killed"
    metrics = killed / "metrics.jsonl"
    kill_when(start(w2s_cmd(*args, "--set", f"run.output={killed}")),
              lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 1,
              jitter=random.Random(7), strict=False)
    assert not (killed / "result.json").exists(), "the run finished before it was killed"
    res = w2s(*args, "--set", f"run.output={killed}", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(tmp_path / "clean"), _weights(killed)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)
    assert _metrics(tmp_path / "clean") == _metrics(killed)


@pytest.mark.parametrize("mode,nproc,every", [("store", 1, 3), ("online", 1, 7), ("store", 2, 5), ("online", 2, 11)])
def test_student_step_checkpoint_sigkill_resume_is_exact(base, tmp_path, mode, nproc, every):
    """A student (store or online teacher; one process or torchrun x2) killed inside epoch 2, at a different
    point per case, resumes from its step checkpoint and ends with exactly the weights and metrics of an
    uninterrupted run."""
    out, cfg = base
    args = ["train-student", str(cfg), "--set", f"teacher.mode={mode}", "--set", "optim.epochs=2",
            "--set", "optim.batch_size=16", "--set", f"run.checkpoint_every_steps={every}",
            "--set", "run.deterministic=true",
            "--set", "augment.mixup=0.4"]
    env = one_thread_env()
    ref = start(w2s_cmd(*args, "--set", f"run.output={tmp_path / 'ref'}", nproc=nproc), env=env,
                stderr=subprocess.PIPE, text=True)
    cut = tmp_path / "cut"
    ckpt = cut / "checkpoints"
    kill_when(start(w2s_cmd(*args, "--set", f"run.output={cut}", nproc=nproc), env=env), mid_epoch(ckpt),
              interval=0.002, tree=True)  # inside epoch 2 of 2
    wait_unlocked(cut)
    assert not (cut / "result.json").exists()
    from pipeline.engine.checkpoint import load_state

    done = int(load_state(ckpt / "step.pt")["step"])
    assert done % every == 0 and 0 < done < 64  # 1024 samples / 16 per step
    if nproc == 2:
        res = invoke([*args, "--set", f"run.output={cut}", "--resume"])
        assert res.exit_code != 0 and "written by 2 processes but this run has 1" in " ".join(res.stderr.split())
    res = w2s(*args, "--set", f"run.output={cut}", "--resume", nproc=nproc, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(step checkpoint)" in res.stderr
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    a, b = _weights(tmp_path / "ref"), _weights(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _metrics(tmp_path / "ref") == _metrics(cut)
    assert not (ckpt / "step.pt").exists()  # superseded by the epoch checkpoint


def test_chunked_bounded_reads_train_and_two_ranks_share_the_chunks(base, tmp_path):
    """The opt-in chunked order with bounded read-ahead trains to a finished run; under torchrun x2 it
    still runs (each rank on its own chunks); with a validation hold-out it is refused in one line."""
    out, cfg = base
    opts = ["--set", "teacher.read_order=chunked", "--set", "teacher.read_buffer=bounded", "--set", "optim.epochs=2"]
    assert ok(["train-student", str(cfg), *opts, "--set", f"run.output={tmp_path / 'one'}"])["epochs"] == 2
    w2s("train-student", str(cfg), *opts, "--set", f"run.output={tmp_path / 'two'}", nproc=2, env=one_thread_env(),
        check=True)
    assert (tmp_path / "two" / "result.json").exists()
    bad = invoke(["train-student", str(cfg), *opts, "--set", "data.val_fraction=0.1", "--set",
                  f"run.output={tmp_path / 'bad'}"])
    assert bad.exit_code == 2 and "read_order chunked needs the whole store" in bad.stderr


def test_infer_teacher_resume_after_sigkill(base, tmp_path):
    out, cfg = base
    target = tmp_path / "store"
    # 8-sample chunks (384 of them): writing them all takes long enough that a kill after 3 lands before the
    # end even on a loaded machine, where the poll that sees the third chunk may come late
    args = ["infer-teacher", str(cfg), "--set", f"teacher.store={target}", "--set", "teacher.chunk_samples=8",
            "--set", "teacher.batch_size=8"]
    kill_when(start(w2s_cmd(*args)), store_has_chunks(target, 3), jitter=random.Random(3), strict=False)
    partial = SoftLabelStore.open(target)
    assert not partial.is_complete
    done_before = int(partial.done_mask().sum())
    res = w2s(*args)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["computed_chunks"] == partial.done_mask().size - done_before
    ref = tmp_path / "ref"
    ok(["infer-teacher", str(cfg), "--set", f"teacher.store={ref}", "--set", "teacher.chunk_samples=32"])
    a, b = SoftLabelStore.open(target), SoftLabelStore.open(ref)
    for name in ("logits", "view_params", "labels"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])


def test_corrupt_chunk_found_by_inspect_and_refused_for_training(base, tmp_path):
    out, cfg = base
    store = tmp_path / "store"
    ok(["infer-teacher", str(cfg), "--set", f"teacher.store={store}"])
    corrupt_chunk(store, 2, 1)
    res = invoke(["inspect", str(store), "--verify"])
    assert res.exit_code == 1 and "block 2, view 1" in res.stderr
    res = invoke(["train-student", str(cfg), "--set", f"teacher.store={store}", "--set",
                  f"run.output={tmp_path / 'r'}"])
    assert res.exit_code == 2 and "view 1" in res.stderr and "Traceback" not in res.stderr


def test_corrupt_chunk_found_by_the_read_ahead_stops_before_its_epoch(base, tmp_path):
    """Epoch 2 replays view 2, read in the background during epoch 1: its corrupt chunk stops the run with
    the one-line error before epoch 2 starts (epoch 1's checkpoint kept), not with a hang."""
    out, cfg = base
    store = tmp_path / "store"
    ok(["infer-teacher", str(cfg), "--set", f"teacher.store={store}"])
    corrupt_chunk(store, 3, 2)
    run = tmp_path / "r"
    began = time.time()
    res = invoke(["train-student", str(cfg), "--set", f"teacher.store={store}", "--set", "optim.epochs=2",
                  "--set", f"run.output={run}"])
    assert res.exit_code == 2 and "block 3, view 2" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 or "error:" in res.stderr.strip().splitlines()[-1]
    assert time.time() - began < 300
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    assert not (run / "result.json").exists()


def test_non_finite_logits_refused(base, tmp_path):
    out, cfg = base
    store = tmp_path / "store"
    ok(["infer-teacher", str(cfg), "--set", f"teacher.store={store}"])
    s = SoftLabelStore.open(store, mode="r+")
    block = s.group["logits"][0:128, 1, :]
    block[5, 3] = np.inf
    s.group["logits"][0:128, 1, :] = block
    res = invoke(["train-student", str(cfg), "--set", f"teacher.store={store}", "--set",
                  f"run.output={tmp_path / 'r'}"])
    assert res.exit_code == 2 and "block 0, view 1" in res.stderr


def test_empty_dataset_and_labels_out_of_range(base, tmp_path):
    out, cfg = base
    empty = tmp_path / "empty"
    empty.mkdir()
    for stem in ("train", "t10k"):
        write_idx(empty / f"{stem}-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
        write_idx(empty / f"{stem}-labels-idx1-ubyte.gz", np.zeros((0,), np.uint8))
    res = invoke(["infer-teacher", str(cfg), "--set", f"data.data_dir={empty}", "--set",
                  f"teacher.store={tmp_path / 's'}"])
    assert res.exit_code == 2 and "is empty" in res.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    for stem in ("train", "t10k"):
        write_idx(bad / f"{stem}-images-idx3-ubyte.gz", np.zeros((20, 28, 28), np.uint8))
        write_idx(bad / f"{stem}-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8))
    res = invoke(["infer-teacher", str(cfg), "--set", f"data.data_dir={bad}", "--set",
                  f"teacher.store={tmp_path / 's2'}"])
    assert res.exit_code == 2 and "labels 0..19 fall outside the 10 classes" in res.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "s2").exists()


def test_checkpoint_of_another_architecture(base, tmp_path):
    out, cfg = base
    res = invoke(["train-student", str(cfg), "--set", f"model.pretrained={out / 'teacher' / 'model.safetensors'}",
                  "--set", f"run.output={tmp_path / 'r'}"])
    assert res.exit_code == 2
    assert "shape mismatch at 'head.weight': checkpoint (10, 784), model (10, 64)" in res.stderr


def test_unwritable_output_directory(base, tmp_path):
    out, cfg = base
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = invoke(["train-student", str(cfg), "--set", f"run.output={blocker / 'run'}"])
    assert res.exit_code == 2 and res.stderr.strip().count("\n") == 0
    assert blocker.read_text() == "not a directory"


def test_full_disk_leaves_previous_checkpoint_intact(base, tmp_path, monkeypatch):
    """A write that fails half-way (ENOSPC) leaves no temporary file and the old file untouched."""
    import errno

    import torch

    from pipeline.engine.checkpoint import save_state

    path = tmp_path / "state.pt"
    save_state(path, {"epoch": 1})
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError):
        save_state(path, {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_second_run_in_the_same_directory_is_refused(base, tmp_path):
    out, cfg = base
    run = tmp_path / "busy"
    with RunLock(run):
        res = invoke(["train-student", str(cfg), "--set", f"run.output={run}"])
    assert res.exit_code == 2 and "in use by another run" in res.stderr
    assert not (run / "config.yaml").exists()


def test_deterministic_runs_repeat_exactly(base, tmp_path):
    out, cfg = base
    for name in ("a", "b"):
        ok(["train-student", str(cfg), "--deterministic", "--set", "optim.epochs=2", "--set", "model.name=fmnist_cnn",
            "--set", "model.kwargs={}", "--set", "model.kwargs={width: 4}", "--set", f"run.output={tmp_path / name}"])
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_store_at_an_fsspec_url(base, tmp_path):
    out, cfg = base
    url = f"file://{tmp_path / 'remote' / 'store'}"
    ok(["infer-teacher", str(cfg), "--set", f"teacher.store={url}"])
    res = ok(["train-student", str(cfg), "--set", f"teacher.store={url}", "--set", "optim.epochs=1",
              "--set", f"run.output={tmp_path / 'r'}"])
    assert res["teacher_mode"] == "store"
    a, b = SoftLabelStore.open(out / "store"), SoftLabelStore.open(url)
    np.testing.assert_array_equal(a.group["logits"][:], b.group["logits"][:])
