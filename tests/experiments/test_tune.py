"""``w2s tune``: the space grammar and refusals, a 2-worker study on the journal file killed and continued, the same
study on a real PostgreSQL server, and ``w2s report`` on a tune directory."""
from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from pipeline.config.schema import ConfigError, load_config
from pipeline.engine.runtime import RunLock
from pipeline.experiments.tune_space import SPACE_FORM, parse_param
from pipeline.experiments.tune_storage import with_driver
from store.lock import flock_held
from tests.cli_run import invoke, ok, one_line_failure
from tests.helpers import fmnist_config, kill, one_thread_env, start, trained_teacher, w2s, w2s_cmd
from tests.postgres_server import PostgresUnavailable, postgres_server

SPACE = ["--space", "objective.kd_temperature=categorical:1,4,10", "--space", "optim.lr=float:0.01:0.2:log",
         "--space", "objective.gt_weight=float:0:1"]


@pytest.fixture(scope="module")
def config(fmnist_dir, tmp_path_factory) -> Path:
    """A 2-epoch KD student (MLP, 300 training and 100 validation images, one thread) and its complete store."""
    out = tmp_path_factory.mktemp("tune")
    data = {"limit": 400, "test_limit": 200, "val_fraction": 0.25}
    teacher = trained_teacher(out, fmnist_dir, data=data, teacher={"chunk_samples": 100},
                              optim={"batch_size": 50, "eval_batch_size": 200})
    student = fmnist_config(out / "student.yaml", fmnist_dir, yaml.safe_load(teacher.read_text()),
                            model={"name": "fmnist_mlp", "kwargs": {"hidden": 16}}, objective={"name": "kd"},
                            optim={"epochs": 2}, run={"output": str(out / "unused")})
    ok(["infer-teacher", str(student)])
    return student


@pytest.mark.parametrize("item, parsed", [
    ("optim.lr=float:1e-3:1e-1:log", ("float", 1e-3, 0.1, True, ())),
    ("optim.epochs=int:1:3", ("int", 1, 3, False, ())),
    ("objective.threshold=float:0.05:4:log", ("float", 0.05, 4.0, True, ())),
    ("objective.kd_temperature=categorical:1,4,10", ("categorical", 0.0, 0.0, False, (1, 4, 10))),
    ("objective.name=categorical:kd,adaptconf,kd", ("categorical", 0.0, 0.0, False, ("kd", "adaptconf"))),
])
def test_good_specs(item, parsed):
    p = parse_param(item)
    assert (p.kind, p.low, p.high, p.log, p.choices) == parsed
    assert parse_param(f"{p.key}={p.spec}") == p  # the canonical text tune.json records reads back the same


@pytest.mark.parametrize("item, why", [
    ("optim.lr", "not of the form key=spec"),
    ("optim.lr=float:0.1", "float takes LOW:HIGH or LOW:HIGH:log"),
    ("optim.lr=float:0.1:1:ln", "float takes LOW:HIGH or LOW:HIGH:log"),
    ("optim.lr=float:a:1", "LOW and HIGH must be numbers"),
    ("optim.lr=float:1:0.1", "LOW must be below HIGH"),
    ("optim.lr=float:0:1:log", "a log range needs LOW > 0"),
    ("optim.epochs=int:1.5:3", "LOW and HIGH must be integers"),
    ("optim.lr=normal:0:1", "unknown kind 'normal'"),
    ("objective.name=categorical:", "no values"),
    ("objective.name=categorical:kd,{a: 1}", "{'a': 1} is not a scalar"),
    ("run.output=categorical:a,b", "tune sets each trial's run.output"),
    ("data.val_fraction=float:0.1:0.2", "the validation split scores the trials"),
])
def test_bad_specs_are_one_line_errors(item, why):
    with pytest.raises(ConfigError) as exc:
        parse_param(item)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"--space {item!r}: ") and why in msg and msg.endswith(SPACE_FORM), msg


def test_refusals_before_any_trial(config, tmp_path):
    out = tmp_path / "refused"
    base = ["tune", str(config), "--trials", "2", "--output", str(out)]
    one_line_failure([*base, *SPACE, "--set", "data.val_fraction=0"], "tune chooses on validation accuracy",
                     "--set data.val_fraction=0.1")
    one_line_failure([*base, "--space", "optim.lrr=float:0.01:0.1"],
                     "--space optim.lrr=float:0.01:0.1: unknown config key 'optim.lrr'")
    one_line_failure([*base, "--space", "optim.epochs=float:1:3"], "--space optim.epochs=float:1.0:3.0:",
                     "expected an integer")
    one_line_failure([*base, "--space", "optim.lr=float:1:0"], "--space 'optim.lr=float:1:0'", SPACE_FORM)
    one_line_failure([*base, *SPACE, "--pruner", "hyperband"], "--pruner must be one of median, none")
    assert not out.exists()  # nothing written, no study started


def _trials(storage, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def _journal(out: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(out / "study.journal")))


def _check_finished_study(out: Path, trials: list[optuna.trial.FrozenTrial], n: int) -> None:
    """At least ``n`` finished trials, none left RUNNING, each complete one a finished run scored by its last val_acc."""
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) >= n
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in trials:
        run_dir = out / "trials" / f"{t.number:04d}"
        assert t.user_attrs["run_dir"] == str(run_dir.resolve())
        if t.state == TrialState.COMPLETE:
            assert (run_dir / "result.json").exists()
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            assert t.value == rows[-1]["val_acc"] and len(rows) == 2
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert cfg["optim"]["lr"] == t.params["optim.lr"]
            assert cfg["objective"]["kd_temperature"] == t.params["objective.kd_temperature"]


@pytest.fixture(scope="module")
def killed_and_continued(config, tmp_path_factory) -> tuple[Path, str]:
    """A 6-trial study with 2 worker processes, SIGKILLed (the CLI and its workers) while a trial runs after one
    has finished, then continued by the same command; returns the tune directory and the second run's output."""
    out = tmp_path_factory.mktemp("tune_study") / "study"
    args = ["tune", str(config), *SPACE, "--trials", "6", "--parallel", "2", "--output", str(out)]
    proc = start(w2s_cmd(*args), env=one_thread_env())

    def one_done_one_running() -> bool:
        runs = list((out / "trials").glob("*"))
        return (any((r / "result.json").exists() for r in runs)
                and any(RunLock.is_held(r) and not (r / "result.json").exists() for r in runs))

    deadline = time.monotonic() + 240
    while not one_done_one_running():
        assert proc.poll() is None, "the study ended before it was killed"
        assert time.monotonic() < deadline, "no trial finished in 240 s"
        time.sleep(0.05)
    kill(proc, tree=True)  # the CLI and both workers, at once
    left = _trials(_journal(out), "study")
    assert any(t.state == TrialState.RUNNING for t in left)
    again = w2s(*args, env=one_thread_env(), timeout=300, check=True)
    return out, again.stderr


def test_killed_study_continues_to_n_trials(killed_and_continued):
    out, log = killed_and_continued
    trials = _trials(_journal(out), "study")
    _check_finished_study(out, trials, 6)
    retried = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert retried and "its worker died): marked FAIL, its parameters queued again" in " ".join(log.split())
    by_number = {t.number: t for t in trials}
    for number, retry in retried.items():
        killed = by_number[number]
        # a worker killed between two suggest calls leaves a trial with some parameters: the retry keeps
        # those and samples the rest
        assert killed.state == TrialState.FAIL and killed.params.items() <= retry.params.items()
        assert sorted(retry.params) == sorted(spec.split("=")[0] for spec in SPACE[1::2])
    assert sorted(p.name for p in (out / "workers").glob("*.log")) == ["0.log", "1.log"]
    assert not any(flock_held(p) for p in (out / "workers").glob("*.lock"))  # no worker is left behind
    assert "best trial" in log
    settings = json.loads((out / "tune.json").read_text())
    assert "optim.lr=float:0.01:0.2:log" in settings["space"] and settings["storage"] is None


def test_rerun_with_another_space_is_refused(killed_and_continued, config):
    out, _ = killed_and_continued
    before = (out / "tune.json").read_text()
    one_line_failure(["tune", str(config), *SPACE[:4], "--space", "objective.gt_weight=float:0:0.5", "--trials", "6",
                      "--output", str(out)],
                     f"tune {out} was started with --space objective.gt_weight=float:0.0:1.0 but this command gives "
                     "--space objective.gt_weight=float:0.0:0.5")
    one_line_failure(["tune", str(config), *SPACE, "--set", "optim.momentum=0.5", "--trials", "6", "--output", str(out)],
                     "was started with optim.momentum=0.9 but this command gives 0.5")
    assert (out / "tune.json").read_text() == before


def test_report_on_a_tune_directory(killed_and_continued):
    out, _ = killed_and_continued
    res = invoke(["report", str(out)])
    assert res.exit_code == 0, res.output
    rep = out / "report"
    for f in ("report.md", "trials.csv", "best.yaml", "optimization_history.png", "param_importances.png"):
        assert (rep / f).exists(), f
    header = (rep / "report.md").read_text().splitlines()[0]
    assert header == ("| number | state | objective.kd_temperature | optim.lr | objective.gt_weight | val_acc | test_acc "
                      "| epochs |")
    trials = _trials(_journal(out), "study")
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"best trial {best.number}: val_acc {best.value:.4f}" in res.stdout
    cfg = load_config(rep / "best.yaml")
    assert cfg.optim.lr == best.params["optim.lr"] and cfg.run.output == "runs/study-best"
    assert cfg.objective.kd_temperature == best.params["objective.kd_temperature"]


@pytest.fixture
def postgres_url(tmp_path) -> str:
    """A PostgreSQL server of this test's own (skipped, saying why, where the machine cannot start one)."""
    try:
        with postgres_server(tmp_path) as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def test_study_on_a_postgresql_server(config, postgres_url, tmp_path):
    out = tmp_path / "pg"
    res = w2s("tune", str(config), "--space", "optim.lr=float:0.01:0.2:log", "--space", "optim.epochs=int:1:2",
              "--trials", "2", "--storage", postgres_url, "--study", "pg-study", "--output", str(out),
              env=one_thread_env(), timeout=300, check=True)
    assert "best trial" in res.stderr
    trials = _trials(with_driver(postgres_url), "pg-study")
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        rows = (out / "trials" / f"{t.number:04d}" / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == t.params["optim.epochs"] and t.value == json.loads(rows[-1])["val_acc"]
    assert not (out / "study.journal").exists()
    assert json.loads((out / "tune.json").read_text())["storage"] == postgres_url
    rep = w2s("report", str(out), timeout=120, check=True)
    assert (out / "report" / "best.yaml").exists() and "| number | state |" in rep.stdout


def test_workers_as_submitit_jobs(config, tmp_path):
    out = tmp_path / "sub"
    res = w2s("tune", str(config), "--space", "optim.lr=float:0.01:0.2:log", "--set", "optim.epochs=1",
              "--trials", "2", "--parallel", "2", "--launcher", "submitit_local", "--output", str(out),
              env=one_thread_env(), timeout=300, check=True)
    assert "submitted 2 workers (submitit_local)" in res.stderr and "best trial" in res.stderr
    trials = _trials(_journal(out), "sub")
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2
    assert all(t.state.is_finished() for t in trials)
    logs = " ".join(p.read_text() for p in (out / "workers" / "submitit").glob("*_log.err"))
    assert all(f"trial {t.number} COMPLETE" in logs for t in trials)  # each trial ran in a worker job
