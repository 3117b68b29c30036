"""The ``w2s`` command line (Typer): train-teacher, infer-teacher, train-student, inspect, demo.

Bad input ends with one line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline.scenarios  # noqa: E402,F401  (registers the built-in scenarios: pipeline/scenario.py)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Weak-to-strong training with cached teacher soft labels (docs/design.md).")
console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())  # lines never wrap in logs
_state = {"debug": False}
T = TypeVar("T")

ConfigArg = typer.Argument(..., help="YAML config (see configs/)")
SetOpt = typer.Option(None, "--set", help="override a config key, e.g. --set optim.lr=0.1 (repeatable)")


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="show tracebacks on errors")) -> None:
    _state["debug"] = debug


RESUME_HINT = "rerun with --resume"
RERUN_HINT = "rerun the same command"


def _guard(fn: Callable[[], T], again: str | None = None) -> T:
    """Run ``fn``; turn the project's user-facing errors into one line and exit code 2 (docs/stages.md).

    ``again`` says how this command continues where it stopped (after Ctrl-C, exit 130, or a full
    disk), if it can. EOFError (a truncated file) and MemoryError are caught here too: click would print a bare
    "Aborted." for the first, and the second is a size the checks before any work did not foresee.
    """
    from pipeline.engine.checkpoint import NO_SPACE, CheckpointError
    from pipeline.config.schema import ConfigError
    from pipeline.engine.runtime import RunError
    from pipeline.data.sources.base import DataError
    from store.soft_label_store import StoreError

    try:
        return fn()
    except (ConfigError, DataError, StoreError, CheckpointError, RunError, ValueError, OSError) as exc:
        if _state["debug"]:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            msg = (f"no space left on device ({exc.strerror}) writing {exc.filename or 'a file'}; free space, then "
                   + (f"{again} to continue" if again else "rerun"))
        console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except ImportError as exc:  # an optional package a URL or launcher needs (s3fs for s3://, say)
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {str(exc).splitlines()[0]}; install it into this environment and rerun",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except (EOFError, MemoryError) as exc:
        if _state["debug"]:
            raise
        what = "a file ended early (truncated?)" if isinstance(exc, EOFError) else "out of memory"
        console.print(f"[red]error:[/red] {what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                      "rerun with --debug to see where", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        console.print(f"interrupted; {again} to continue" if again else "interrupted", highlight=False)
        raise typer.Exit(130)


def _load(config: Path, overrides: Optional[List[str]]):  # type: ignore[no-untyped-def]
    from pipeline.config.schema import load_config

    return load_config(config, overrides or [])


def _seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; a bad list is a one-line error."""
    from pipeline.config.schema import ConfigError

    try:
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must list distinct integers, got {text!r}")
    return seeds


DeterministicOpt = typer.Option(False, "--deterministic", help="deterministic algorithms (same as --set run.deterministic=true)")


@app.command("train-teacher")
def train_teacher(config: Path = ConfigArg, set_: Optional[List[str]] = SetOpt,
                  resume: bool = typer.Option(False, "--resume", help="continue an interrupted run"),
                  deterministic: bool = DeterministicOpt) -> None:
    """Supervised training with ground truth (weak teachers and strong ceilings)."""
    def go() -> None:
        from pipeline.train_student import train

        extra = ["run.deterministic=true"] if deterministic else []
        result = train(_load(config, (set_ or []) + extra), role="teacher", resume=resume, console=console)
        typer.echo(json.dumps(result))
    _guard(go, RESUME_HINT)


@app.command("pretrain")
def pretrain_cmd(config: Path = ConfigArg, set_: Optional[List[str]] = SetOpt,
                 resume: bool = typer.Option(False, "--resume", help="continue an interrupted run"),
                 deterministic: bool = DeterministicOpt) -> None:
    """Self-supervised pre-training (SimCLR) on the training images, labels unread: a prior for model.pretrained."""
    def go() -> None:
        from pipeline.pretrain import pretrain

        extra = ["run.deterministic=true"] if deterministic else []
        typer.echo(json.dumps(pretrain(_load(config, (set_ or []) + extra), resume=resume, console=console)))
    _guard(go, RESUME_HINT)


@app.command("sel-cl")
def sel_cl(config: Path = ConfigArg, set_: Optional[List[str]] = SetOpt,
           resume: bool = typer.Option(False, "--resume", help="continue an interrupted run"),
           deterministic: bool = DeterministicOpt) -> None:
    """Sel-CL pre-training on noisy labels: contrastive learning with kNN-selected confident examples and pairs."""
    def go() -> None:
        from pipeline.scenarios.sel_cl.pretrain import pretrain

        extra = ["run.deterministic=true"] if deterministic else []
        result = pretrain(_load(config, (set_ or []) + extra), resume=resume, console=console)
        typer.echo(json.dumps(result))
    _guard(go, RESUME_HINT)


@app.command("infer-teacher")
def infer_teacher(config: Path = ConfigArg, set_: Optional[List[str]] = SetOpt,
                  repair: bool = typer.Option(False, "--repair", help="verify every chunk and recompute the failing ones")
                  ) -> None:
    """Stage 1: cache the teacher's logits over the fixed and augmented views (resumes by itself)."""
    def go() -> None:
        from pipeline.infer_teacher import infer

        typer.echo(json.dumps(infer(_load(config, set_), console=console, repair=repair)))
    _guard(go, RERUN_HINT)


@app.command("train-student")
def train_student(config: Path = ConfigArg, set_: Optional[List[str]] = SetOpt,
                  resume: bool = typer.Option(False, "--resume", help="continue an interrupted run"),
                  teacher_mode: Optional[str] = typer.Option(None, "--teacher-mode",
                                                             help="store (cached logits) or online"),
                  deterministic: bool = DeterministicOpt) -> None:
    """Stage 2: train the student from the store (or an online teacher) with the configured objective."""
    def go() -> None:
        from pipeline.train_student import train

        extra = ([f"teacher.mode={teacher_mode}"] if teacher_mode else []) + (["run.deterministic=true"] if deterministic else [])
        cfg = _load(config, (set_ or []) + extra)
        typer.echo(json.dumps(train(cfg, role="student", resume=resume, console=console)))
    _guard(go, RESUME_HINT)


@app.command("sweep")
def sweep_cmd(config: Optional[Path] = typer.Argument(None, help="YAML config (see configs/)"),
              set_: Optional[List[str]] = SetOpt,
              grid: Optional[List[str]] = typer.Option(None, "--grid", help="key=v1,v2,... (repeatable; the product is swept)"),
              seeds: str = typer.Option("0", "--seeds", help="comma-separated seeds, e.g. 0,1,2"),
              parallel: int = typer.Option(1, "--parallel", help="runs at a time on this machine (separate processes when > 1)"),
              launcher: str = typer.Option("basic", "--launcher", help="basic | submitit_local | submitit_slurm (settings: the config's launcher section)"),
              status: Optional[Path] = typer.Option(None, "--status", help="show each run's state in this sweep directory, then exit"),
              output: Optional[Path] = typer.Option(None, "--output", help="sweep directory (default runs/sweep-<config>)")) -> None:
    """Many student runs on one store: every grid combination x seed, each in its own run directory."""
    def show() -> None:
        from pipeline.experiments.sweep_status import sweep_status

        rows = sweep_status(status)  # type: ignore[arg-type]
        for r in rows:
            typer.echo("  ".join(x for x in (f"{r['state']:<8}", r["name"], f"job {r['job']}" if r["job"] else "",
                                            r["detail"]) if x))
        counts = {s: sum(r["state"] == s for r in rows) for s in dict.fromkeys(r["state"] for r in rows)}
        typer.echo(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))

    def go() -> None:
        from pipeline.config.schema import ConfigError
        from pipeline.experiments.sweep import sweep

        if config is None or not grid:
            raise ConfigError("sweep needs a CONFIG and at least one --grid key=v1,v2 (or --status DIR to show a sweep)")
        out = output or Path("runs") / f"sweep-{config.stem}"
        sweep(config, grid, list(_seeds(seeds)), set_ or [], out, parallel, console=console, launcher=launcher)
        typer.echo(f"sweep finished: w2s report {out}")
    _guard(show if status is not None else go, RERUN_HINT)


@app.command("tune")
def tune_cmd(config: Path = ConfigArg, set_: Optional[List[str]] = SetOpt,
             space: List[str] = typer.Option(..., "--space", help="key=float:LOW:HIGH[:log], key=int:LOW:HIGH[:log] "
                                             "or key=categorical:v1,v2,... (repeatable)"),
             trials: int = typer.Option(..., "--trials", help="finished (complete or pruned) trials the study reaches"),
             parallel: int = typer.Option(1, "--parallel", help="workers (basic: processes here; 1: trials run in this process)"),
             launcher: str = typer.Option("basic", "--launcher", help="basic | submitit_local | submitit_slurm: where the "
                                          "workers run (settings: the config's launcher section)"),
             storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL, e.g. postgresql://user@host/db "
                                                   "(default: the journal file <output>/study.journal)"),
             study: Optional[str] = typer.Option(None, "--study", help="study name (default: the output directory's name)"),
             pruner: str = typer.Option("median", "--pruner", help="median or none"),
             output: Optional[Path] = typer.Option(None, "--output", help="tune directory (default runs/tune-<config>)")) -> None:
    """Optuna study over objective and optimizer keys on one store, scored by the last epoch's validation accuracy."""
    def go() -> None:
        from pipeline.experiments.tune import tune

        out = output or Path("runs") / f"tune-{config.stem}"
        tune(config, space, trials, set_ or [], out, parallel, storage, study, pruner, console=console, launcher=launcher)
        typer.echo(f"tune finished: w2s report {out}")
    _guard(go, RERUN_HINT)


@app.command("report")
def report_cmd(run_dirs: List[Path] = typer.Argument(..., help="run or sweep directories"),
               weak: Optional[List[Path]] = typer.Option(None, "--weak", help="weak teacher run(s) (default: the accuracy each student recorded)"),
               ceiling: Optional[List[Path]] = typer.Option(None, "--ceiling", help="strong ceiling run(s), for PGR"),
               output: Optional[Path] = typer.Option(None, "--output", help="where tables and figures go (default <first dir>/report)")) -> None:
    """Table (markdown, CSV, Parquet) with mean +- std over seeds, PGR and agreement; PNG figures."""
    def go() -> None:
        from pipeline.experiments.report import report

        out = output or run_dirs[0] / "report"
        if len(run_dirs) == 1 and (run_dirs[0] / "tune.json").is_file():  # a w2s tune directory: its trials
            from pipeline.experiments.tune_report import tune_report

            typer.echo(tune_report(run_dirs[0], out, console))
            console.print(f"tables and figures in {out}")
            return
        table, _ = report(run_dirs, out, weak or [], ceiling or [])
        typer.echo(table)
        console.print(f"tables and figures in {out}")
    _guard(go)


@app.command("inspect")
def inspect(store: str = typer.Argument(..., help="store: a directory or an fsspec URL (s3://bucket/store)"),
            verify: bool = typer.Option(False, "--verify", help="check every chunk's checksum")) -> None:
    """Summarize a store; with --verify, name any chunk whose bytes changed since it was written."""
    def go() -> None:
        from store.inspect import summarize, verify_store

        typer.echo(summarize(str(store)))
        if verify:
            problems = verify_store(str(store))
            for p in problems:
                console.print(f"[red]corrupt:[/red] {p}", highlight=False)
            if problems:
                raise typer.Exit(1)
            typer.echo("all chunks verified")
    _guard(go)


@app.command("select-settings")
def select_settings_cmd(output: Optional[Path] = typer.Option(None, "--output", help="where the selection's runs go "
                                                              "(runs/demo/selection; few_shot: runs/few_shot/selection; noisy: "
                                                              "runs/noisy_demo/selection; regimes: runs, the root of the "
                                                              "demos' folders)"),
                        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder with the Fashion-MNIST idx files"),
                        scenario: str = typer.Option("paper", "--scenario",
                                                     help="paper (the main demo's paper regime, rule 1), few_shot (rule 4), "
                                                          "noisy (rule 4 as amended: seeds 0-4, both noise modes) "
                                                          "or regimes (seed 0's teacher and ceiling of every other "
                                                          "setting, checked)")) -> None:
    """Teachers and ceilings only, no student: a setting's teacher (and epochs) by the rule of docs/demo.md."""
    def go() -> None:
        d = str(data_dir) if data_dir else None
        if scenario == "paper":
            from pipeline.experiments.settings_selection import select_settings

            select_settings(output or Path("runs/demo/selection"), d, console=console)
        elif scenario == "few_shot":
            from pipeline.experiments.few_shot_selection import select_few_shot_teacher

            select_few_shot_teacher(output or Path("runs/few_shot/selection"), d, console=console)
        elif scenario == "noisy":
            from pipeline.experiments.noisy_selection import select_noisy_teacher

            select_noisy_teacher(output or Path("runs/noisy_demo/selection"), data_dir=d, console=console)
        elif scenario == "regimes":
            from pipeline.experiments.rule_checks import check_regimes

            check_regimes(output or Path("runs"), d, console=console)
        else:
            raise ValueError(f"--scenario {scenario!r}: choose paper, few_shot, noisy or regimes")
    _guard(go, RERUN_HINT)


@app.command("demo")
def demo(quick: bool = typer.Option(False, "--quick", help="a smaller run that finishes in about 3 minutes"),
         output: Path = typer.Option(Path("runs/demo"), "--output", help="where runs, table and figure go"),
         data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder with the Fashion-MNIST idx files"),
         seeds: str = typer.Option("0", "--seeds", help="comma-separated seeds, e.g. 0,1,2 (mean +- std, paired tests)"),
         regime: str = typer.Option("teacher_only", "--regime",
                                    help="teacher_only (OpenAI's: the teacher's labels alone), paper (ground truth + a "
                                         "teacher 1.1-1.45 times the ceiling's error), finetune / probe (the SimCLR "
                                         "prior from the teacher alone), objectives (every objective and two teachers "
                                         "beside teacher_only), comma-separated, or all; docs/demo.md")) -> None:
    """Weak teacher -> KD / AugConf / AdaptConf students vs. a strong ceiling on Fashion-MNIST, with PGR."""
    def go() -> None:
        from pipeline.experiments.demo import REGIMES, run_demo

        names = list(REGIMES) if regime == "all" else [r.strip() for r in regime.split(",")]
        for name in names:
            run_demo(output, quick=quick, data_dir=str(data_dir) if data_dir else None, seeds=_seeds(seeds),
                     console=console, regime=name)
    _guard(go, RERUN_HINT)


@app.command("noisy-demo")
def noisy_demo(output: Path = typer.Option(Path("runs/noisy_demo"), "--output", help="where runs, report and figure go"),
               data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder with the Fashion-MNIST idx files"),
               seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="comma-separated seeds (5: rule 5 of docs/demo.md)")) -> None:
    """Noisy labels on Fashion-MNIST (40% symmetric and asym_next): CE vs Sel-CL -> Sel-CL+ vs Sel-CL+ with AdaptConf."""
    def go() -> None:
        from pipeline.experiments.noisy_demo import run_noisy_demo

        print(run_noisy_demo(output, seeds=_seeds(seeds), data_dir=str(data_dir) if data_dir else None,
                             console=console))
    _guard(go, RERUN_HINT)


# -- few-shot scenario (pipeline/scenarios/few_shot/, configs/few_shot/) -------------------------------------

few_shot_app = typer.Typer(no_args_is_help=True,
                           help="Few-shot scenario: episodic evaluation and Meta-Baseline training with a weak teacher.")
app.add_typer(few_shot_app, name="few-shot")


@few_shot_app.command("eval")
def few_shot_eval(config: Path = ConfigArg, set_: Optional[List[str]] = SetOpt) -> None:
    """Cosine nearest-centroid accuracy +- 95% CI over seeded N-way K-shot episodes of the test split."""
    def go() -> None:
        from pipeline.scenarios.few_shot import evaluate, load_few_shot_config

        typer.echo(json.dumps(evaluate(load_few_shot_config(config, set_ or []), console=console)))
    _guard(go)


@few_shot_app.command("meta")
def few_shot_meta(config: Path = ConfigArg, set_: Optional[List[str]] = SetOpt,
                  resume: bool = typer.Option(False, "--resume", help="continue an interrupted run")) -> None:
    """Meta-Baseline episodic fine-tuning of an encoder, learning from a weak teacher with KD or AdaptConf."""
    def go() -> None:
        from pipeline.scenarios.few_shot import load_few_shot_config, meta_train

        typer.echo(json.dumps(meta_train(load_few_shot_config(config, set_ or []), resume=resume, console=console)))
    _guard(go, RESUME_HINT)


@few_shot_app.command("demo")
def few_shot_demo(output: Path = typer.Option(Path("runs/few_shot_demo"), "--output", help="where runs, report and record go"),
                  data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder with the Fashion-MNIST idx files"),
                  seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="comma-separated seeds (5: rule 5 of docs/demo.md)")) -> None:
    """The few-shot default over seeds: weak MLP teacher -> CNN (classifier and meta stage), 4-way 1/5-shot, PGR."""
    def go() -> None:
        from pipeline.experiments.few_shot_demo import run_few_shot_demo

        print(run_few_shot_demo(output, seeds=_seeds(seeds), data_dir=str(data_dir) if data_dir else None,
                                console=console))
    _guard(go, RERUN_HINT)


if __name__ == "__main__":
    app()
