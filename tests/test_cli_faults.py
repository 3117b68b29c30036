"""Hostile input that used to hang, abort without a word, or give the wrong advice: one line each, nothing left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import typer

import cli
from pipeline.config.schema import ConfigError, load_config
from pipeline.config.yaml_files import MAX_YAML_NODES
from pipeline.engine.resource_checks import max_threads
from store.soft_label_store import SoftLabelStore
from tests.cli_run import fails, ok
from tests.helpers import start, store_has_chunks, trained_teacher, w2s, w2s_cmd, wait_for
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_an_alias_bomb_in_a_config_file_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + "optim: {lr: 0.1}\n")
    assert len(BOMB) < 1024
    start = time.monotonic()
    line = fails(["train-teacher", str(path)], f"{path}: its aliases expand to")
    assert time.monotonic() - start < 30 and f"{MAX_YAML_NODES:,}" in line


def test_an_alias_bomb_in_a_set_value_is_refused():
    value = BOMB.replace("\n", ", ").rstrip(", ")
    with pytest.raises(ConfigError, match="aliases expand to"):
        load_config(None, [f"model.kwargs={{{value}}}"])


def test_a_normal_config_with_anchors_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("optim: &o {lr: 0.2, epochs: 3}\n")
    assert load_config(path).optim.lr == 0.2


@pytest.mark.parametrize("error,pattern", [(EOFError("Compressed file ended"), "a file ended early"),
                                           (MemoryError(), "out of memory")])
def test_eof_and_memory_errors_are_one_line_not_aborted(error, pattern, capsys):
    def boom() -> None:
        raise error

    with pytest.raises(typer.Exit) as exit_info:
        cli._guard(boom)
    assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err
    assert pattern in err and "Aborted" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def teacher(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_faults")
    return out, trained_teacher(out, fmnist_dir, data={"limit": 512, "test_limit": 100},
                                teacher={"chunk_samples": 16, "batch_size": 16},
                                optim={"batch_size": 64, "eval_batch_size": 100})


def test_ctrl_c_in_infer_teacher_says_how_it_continues(teacher, tmp_path):
    """infer-teacher has no --resume: Ctrl-C says to rerun the same command, and the rerun finishes the store."""
    _, cfg = teacher
    store = tmp_path / "store"
    args = ["infer-teacher", str(cfg), "--set", f"teacher.store={store}", "--set", "data.limit=2000",
            "--set", "teacher.chunk_samples=8", "--set", "teacher.batch_size=8"]  # 750 chunks: time to interrupt
    # SIGINT back to its default in the child: a shell that starts the suite in the background (`pytest &`) hands
    # its children an ignored SIGINT, and Python then never raises KeyboardInterrupt (the run would just finish)
    proc = start(w2s_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(store_has_chunks(store, 2), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command to continue" in err and "--resume" not in err
    res = w2s(*args, timeout=300)
    assert res.returncode == 0, res.stderr
    assert SoftLabelStore.open(store).is_complete


def test_sizes_beyond_the_machine_are_refused_before_any_work(teacher, tmp_path):
    _, cfg = teacher
    store, run = tmp_path / "store", tmp_path / "run"
    fails(["infer-teacher", str(cfg), "--set", "views.num_views=1000000", "--set", f"teacher.store={store}"],
          "views.num_views=1000000: the store would hold")
    assert not store.exists()
    fails(["train-teacher", str(cfg), "--set", "optim.eval_batch_size=1000000000", "--set", f"run.output={run}"],
          "optim.eval_batch_size=1000000000: one batch of 1x28x28 images needs")
    fails(["train-teacher", str(cfg), "--set", "run.num_threads=100000", "--set", f"run.output={run}"],
          f"run.num_threads=100000 is far more than this machine's {os.cpu_count()} CPUs; use at most {max_threads()}")
    # nothing half-written blocks the corrected command
    assert ok(["train-teacher", str(cfg), "--set", f"run.output={run}"])["epochs"] == 1
