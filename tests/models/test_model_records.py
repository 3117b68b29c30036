"""Model kwargs and teacher model records a user may have got wrong or crafted: one line naming the key or file.

``model.kwargs`` is checked by building the model on the meta device (no allocation), and a teacher's
``model.json`` / ``model.safetensors`` are checked before anything is built from them; a record never
makes timm read a path or reach a host. Each case runs through the real CLI.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from pipeline.models.files import load_model
from tests.cli_run import invoke, ok
from tests.helpers import trained_teacher


def _one_line(args: list[str], pattern: str) -> str:
    """Run ``w2s ARGS``: exit 2, ``pattern`` in its message, at most three lines, no traceback."""
    res = invoke(args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    joined = " ".join(lines)
    assert res.exit_code == 2, res.output
    assert pattern in joined, joined
    assert len(lines) <= 3 and "Traceback" not in res.output, res.output
    return joined


@pytest.fixture(scope="module")
def base(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A config on 1,024 images and a one-epoch linear teacher trained from it: (config, teacher directory)."""
    out = tmp_path_factory.mktemp("records")
    path = trained_teacher(out, fmnist_dir, data={"limit": 1024, "test_limit": 500}, views={"num_views": 1},
                           teacher={"chunk_samples": 256, "batch_size": 256},
                           optim={"batch_size": 128, "eval_batch_size": 250, "lr": 0.05})
    return path, out / "teacher"


# -- 1. model.kwargs the model rejects ---------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ("{num_classes: 10}", "model.kwargs.num_classes: remove it; num_classes is set separately (num_classes=10)"),
    ("{hidden: 0}", "model.kwargs.hidden=0: gives fmnist_mlp an empty layer (features.1.weight of shape (0, 784))"),
    ("{hidden: wide}", "model.kwargs.hidden must be a number like its default 256, got 'wide'"),
    ("{hidden: -3}", "model.kwargs.hidden=-3: fmnist_mlp cannot be built with it"),
    ("{hiden: 64}", "model.kwargs.hiden: fmnist_mlp takes no such argument; valid: hidden, img_size"),
    ("{checkpoint_path: /etc/hostname}", "model.kwargs.checkpoint_path is not allowed"),
    ("{pretrained: true}", "model.kwargs.pretrained is not allowed"),
])
def test_model_kwargs_the_model_rejects(base, tmp_path, kwargs, message):
    cfg, _ = base
    _one_line(["train-teacher", str(cfg), "--set", "model.name=fmnist_mlp", "--set", f"model.kwargs={kwargs}",
               "--set", f"run.output={tmp_path / 'r'}"], message)


def test_a_huge_model_is_refused_before_allocating(base, tmp_path):
    cfg, _ = base
    t0 = time.perf_counter()
    msg = _one_line(["train-teacher", str(cfg), "--set", "model.name=fmnist_mlp",
                     "--set", "model.kwargs={hidden: 1000000000000}", "--set", f"run.output={tmp_path / 'r'}"],
                    "model.kwargs.hidden=1000000000000: fmnist_mlp would have 7.95e+14 parameters")
    assert "GiB of memory: use smaller sizes" in msg
    assert time.perf_counter() - t0 < 30


def test_a_refused_kwarg_leaves_nothing_that_blocks_the_rerun(base, tmp_path):
    cfg, _ = base
    run = tmp_path / "r"
    _one_line(["train-teacher", str(cfg), "--set", "model.name=fmnist_mlp", "--set", "model.kwargs={hiden: 8}",
               "--set", f"run.output={run}"], "model.kwargs.hiden")
    ok(["train-teacher", str(cfg), "--set", "model.name=fmnist_mlp", "--set", "model.kwargs={hidden: 8}",
        "--set", f"run.output={run}"])
    assert json.loads((run / "model.json").read_text())["kwargs"] == {"hidden": 8}


# -- 2. a crafted teacher model.json ------------------------------------------------------------

def _teacher_copy(teacher: Path, dest: Path, edit: dict | None = None, text: str | None = None) -> Path:
    """A copy of ``teacher`` whose model.json has ``edit`` applied (a None value removes the key) or is ``text``."""
    shutil.copytree(teacher, dest)
    meta = dest / "model.json"
    if text is None:
        record = json.loads(meta.read_text())
        for key, value in (edit or {}).items():
            if value is None:
                del record[key]
            else:
                record[key] = value
        text = json.dumps(record)
    meta.write_text(text)
    return dest


def _infer(cfg: Path, teacher: Path, tmp_path: Path, pattern: str) -> str:
    return _one_line(["infer-teacher", str(cfg), "--set", f"teacher.checkpoint={teacher}",
                      "--set", f"teacher.store={tmp_path / 'store'}"], pattern)


def test_the_trained_record_passes_the_schema(base):
    _, teacher = base
    model, meta, _ = load_model(teacher)
    assert meta["model"] == "fmnist_linear" and meta["kwargs"] == {} and meta["in_chans"] == 1


@pytest.mark.parametrize("text, message", [
    ("", "is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ("[1, 2]", "model.json: a model record is a JSON object, not a list"),
])
def test_model_json_that_is_not_a_record(base, tmp_path, text, message):
    cfg, teacher = base
    bad = _teacher_copy(teacher, tmp_path / "t", text=text)
    msg = _infer(cfg, bad, tmp_path, message)
    assert str(bad / "model.json") in msg


@pytest.mark.parametrize("edit, message", [
    ({"in_chans": None}, "model.json: in_chans is missing (it must be an integer > 0)"),
    ({"num_classes": "10"}, "model.json: num_classes must be an integer > 0, got '10'"),
    ({"kwargs": [["hidden", 64]]}, "model.json: kwargs must be a mapping of keyword arguments, got [['hidden', 64]]"),
    ({"kwargs": {"hidden": {"a": 1}}}, "model.json: kwargs.hidden must be a number, string, boolean, null or a list"),
    ({"kwargs": {"hidden": 64}}, "model.json: kwargs.hidden: fmnist_linear takes no such argument; valid: img_size"),
    ({"kwargs": {"img_size": "28"}}, "model.json: kwargs.img_size must be a number like its default 28, got '28'"),
    ({"kwargs": {"pretrained": True}}, "model.json: kwargs.pretrained is not allowed"),
    ({"kwargs": {"cache_dir": "/tmp"}}, "model.json: kwargs.cache_dir is not allowed"),
    ({"kwargs": {"pretrained_cfg_overlay": {"url": "http://example.com/w.pth"}}},
     "model.json: kwargs.pretrained_cfg_overlay must be a number, string, boolean, null or a list"),
    ({"pretrained": True}, "model.json: unknown key 'pretrained'; a model record holds model, num_classes"),
    ({"model": "hf-hub:timm/resnet18.a1_in1k"}, "model must be a registered timm model name"),
    ({"mean": [0.5, 0.5, 0.5]}, "model.json: mean must be a list of in_chans numbers, got [0.5, 0.5, 0.5]"),
    ({"input_size": 0}, "model.json: input_size must be an integer > 0, got 0"),
])
def test_crafted_model_json_is_refused_naming_file_and_key(base, tmp_path, edit, message):
    cfg, teacher = base
    bad = _teacher_copy(teacher, tmp_path / "t", edit)
    msg = _infer(cfg, bad, tmp_path, message)
    assert msg.count(str(bad / "model.json")) == 1


def test_a_record_naming_a_file_never_reads_it(base, tmp_path, monkeypatch):
    """``kwargs.checkpoint_path`` is refused before timm is called, so the named file is never opened."""
    import timm.models._factory as factory

    cfg, teacher = base
    secret = tmp_path / "weights.pth"
    secret.write_bytes(b"not a checkpoint")

    def never(*args, **kwargs):
        raise AssertionError("timm was asked to load a checkpoint named by a model record")

    monkeypatch.setattr(factory, "load_checkpoint", never)
    bad = _teacher_copy(teacher, tmp_path / "t", {"kwargs": {"checkpoint_path": str(secret)}})
    _infer(cfg, bad, tmp_path, "kwargs.checkpoint_path is not allowed: it makes timm load weights, read a file")


# -- 3. a truncated or empty model.safetensors -------------------------------------------------

@pytest.mark.parametrize("keep", [0, 100, -40])
def test_damaged_teacher_weights(base, tmp_path, keep):
    """Empty, cut inside the header, and cut inside the tensors."""
    cfg, teacher = base
    bad = _teacher_copy(teacher, tmp_path / "t")
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep])
    msg = _infer(cfg, bad, tmp_path, f"{weights} is damaged or truncated")
    assert "retrain with `w2s train-teacher` or point teacher.checkpoint at a good one" in msg
