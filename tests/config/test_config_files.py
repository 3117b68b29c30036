"""Config files: ``_base_`` variants, refused duplicate keys, and the paper rows' exact / cached variants."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.config.schema import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ONLINE = sorted(CONFIGS.glob("**/*_online.yaml"))


def test_base_merges_section_by_section(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.05, epochs: 3}\nmodel: {name: fmnist_cnn}\n")
    (tmp_path / "sub" / "v.yaml").write_text("_base_: ../base.yaml\noptim: {lr: 0.2}\n")
    cfg = load_config(tmp_path / "sub" / "v.yaml", ["optim.epochs=4"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.model.name) == (0.2, 4, "fmnist_cnn")


@pytest.mark.parametrize("text,message", [
    ("_base_: nope.yaml\n", "nope.yaml not found (the _base_ of"),
    ("_base_: v.yaml\n", "_base_ chain loops back"),
    ("_base_: [a.yaml, b.yaml]\n", "_base_ must be one file path"),
])
def test_bad_base_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "v.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(tmp_path / "v.yaml")


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys; ``optim: {lr: 0.05, lr: 50}`` would train at lr 50 silently."""
    (tmp_path / "c.yaml").write_text("model: {name: fmnist_cnn}\noptim:\n  lr: 0.05\n  epochs: 2\n  lr: 50\n")
    with pytest.raises(ConfigError, match=r"c.yaml: duplicate key 'lr' \(line 5, first on line 3\)"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("optim: {lr: 0.05}\noptim: {lr: 50}\n")
    with pytest.raises(ConfigError, match="duplicate key 'optim'"):
        load_config(tmp_path / "d.yaml")


def test_every_cached_paper_row_has_an_exact_variant() -> None:
    """The exact variant is the cached config with an online teacher and fresh views, nothing else changed."""
    assert len(ONLINE) == 16
    for variant in ONLINE:
        base_path = variant.with_name(variant.name.replace("_online", ""))
        exact, cached = load_config(variant), load_config(base_path)
        assert (cached.teacher.mode, cached.views.sampling) == ("store", "cycle"), base_path
        assert (exact.teacher.mode, exact.views.sampling) == ("online", "fresh"), variant
        assert exact.run.output == cached.run.output + "_online"
        changed = dataclasses.replace(exact, teacher=cached.teacher, views=cached.views, run=cached.run)
        assert changed == cached, variant
        assert f"each view replayed {cached.optim.epochs // cached.views.num_views} times" in base_path.read_text()


@pytest.mark.parametrize("override,message", [
    ("run.output=a #b", "the '#' in 'a #b' starts a YAML comment"),
    ("optim.lr=[1,", "--set optim.lr: '[1,' is not a YAML value"),
    ("optim.lr=!!python/object/apply:os.system [ls]", "is not a YAML value (could not determine a constructor"),
])
def test_bad_set_values_are_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])
    assert load_config(None, ["run.output=runs/a#b"]).run.output == "runs/a#b"  # no space: not a comment


def test_bad_grid_value_is_one_line(tmp_path: Path) -> None:
    from tests.cli_run import fails

    fails(["sweep", str(CONFIGS / "fmnist/student_kd.yaml"), "--grid", "optim.lr=[1,2", "--output", str(tmp_path)],
          "--grid optim.lr: '[1,2' holds a value that is not YAML")


def test_run_output_inside_the_store_is_refused(tmp_path: Path) -> None:
    for out in (tmp_path / "s", tmp_path / "s" / "run"):
        with pytest.raises(ConfigError, match="choose a run.output outside it"):
            load_config(None, [f"teacher.store={tmp_path / 's'}", f"run.output={out}"])
    load_config(None, [f"teacher.store={tmp_path / 's'}", f"run.output={tmp_path / 'run'}"])


def test_run_files_follow_the_umask(tmp_path: Path) -> None:
    """Atomic writes went through mkstemp's 0600; other tools give 0666 & ~umask."""
    import os

    from pipeline.engine.checkpoint import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
