"""The few-shot scenario end to end through the CLI, on data in the real formats.

miniImageNet: generated ``miniImageNet_category_split_*.pickle`` files (a Python 3 pickle for the
base-class splits, a Python 2 era one for the novel split), the recipe configs of
``configs/few_shot/`` with small inputs: classifier stage (train-teacher, infer-teacher,
train-student with AdaptConf), ``few-shot meta`` (AdaptConf with warm-up, resume) and
``few-shot eval`` (CI fields, determinism). Fashion-MNIST: the class split of the embedded
default (base classes 0-5 for training, novel classes 6-9 for 4-way episodes).
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
from rich.console import Console
from safetensors.torch import load_file

from pipeline.models.files import load_model
from pipeline.config.schema import ConfigError
from pipeline.scenarios.few_shot import EpisodeLayout, MetaTrainer, epoch_batches, load_few_shot_config
from pipeline.engine.run_loop import RunLoop
from tests.cli_run import fails, ok
from tests.formats import dump_py2

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "few_shot"

BASE, NOVEL = 6, 5  # classes in the generated miniImageNet splits


def _ok(args: list[object]) -> dict:
    """``w2s ARGS`` (paths allowed) must succeed; its JSON result."""
    return ok([str(a) for a in args])


def _fails(args: list[object], pattern: str) -> None:
    """``w2s ARGS`` must fail with one line containing ``pattern``."""
    fails([str(a) for a in args], pattern)


def _sets(**kv: object) -> list[str]:
    """``--set`` overrides from keyword arguments: ``optim__epochs=1`` -> ``--set optim.epochs=1``."""
    out: list[str] = []
    for k, v in kv.items():
        out += ["--set", f"{k.replace('__', '.')}={json.dumps(v) if not isinstance(v, str) else v}"]
    return out


def _images(labels: np.ndarray, seed: int) -> np.ndarray:
    """84x84 RGB images whose mean colour depends on the class, plus noise."""
    rng = np.random.default_rng(seed)
    colour = (np.random.default_rng(99).integers(40, 216, size=(100, 3)))[labels]
    noise = rng.integers(-40, 41, size=(len(labels), 84, 84, 3))
    return np.clip(colour[:, None, None, :] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train_phase_train (6 base classes x 12), train_phase_val (6 x 4), test (5 novel classes 80..84 x 8)."""
    root = tmp_path_factory.mktemp("mini")
    for split, ids, per, seed in (("train_phase_train", range(BASE), 12, 0), ("train_phase_val", range(BASE), 4, 1),
                                  ("test", range(80, 80 + NOVEL), 8, 2)):
        labels = np.repeat(np.array(list(ids)), per)
        obj = {"data": _images(labels, seed), "labels": [int(x) for x in labels],
               "catname2label": {f"n{i:08d}": int(i) for i in ids}}
        path = root / f"miniImageNet_category_split_{split}.pickle"
        if split == "test":
            dump_py2(obj, path)  # as distributed with MetaOptNet
        else:
            with open(path, "wb") as f:  # a Python 3 pickle, as RFS-era re-exports are
                pickle.dump(obj, f, protocol=4)
    return root


CLASSIFIER_TINY = dict(run__device="cpu", run__amp="none", run__channels_last=False, optim__epochs=1,
                       optim__batch_size=24, optim__eval_batch_size=32, views__num_views=2)
TEACHER_MODEL = dict(model__kwargs={"img_size": 32}, model__input_size=32)  # Conv-4 at 32x32: 256-d features
STUDENT_MODEL = dict(model__input_size=16)  # ResNet-12 at 16x16: 640-d features


@pytest.fixture(scope="module")
def mini_runs(mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Classifier stage (teacher, store, AdaptConf student) and a 2-epoch AdaptConf meta stage, all via the CLI."""
    out = tmp_path_factory.mktemp("mini_runs")
    runs = {"teacher": out / "teacher", "store": out / "store", "student": out / "student", "meta": out / "meta"}
    data = _sets(data__data_dir=str(mini_dir))
    t = _ok(["train-teacher", CONFIGS / "mini_classifier_teacher.yaml", *data,
             *_sets(**CLASSIFIER_TINY, **TEACHER_MODEL, run__output=str(runs["teacher"]))])
    assert t["train_samples"] == BASE * 12 and t["test_samples"] == BASE * 4
    teacher = _sets(teacher__checkpoint=str(runs["teacher"]), teacher__store=str(runs["store"]),
                    teacher__chunk_samples=32, teacher__batch_size=32)
    _ok(["infer-teacher", CONFIGS / "mini_classifier_adaptconf.yaml", *data, *teacher, *_sets(**CLASSIFIER_TINY)])
    s = _ok(["train-student", CONFIGS / "mini_classifier_adaptconf.yaml", *data, *teacher,
             *_sets(**CLASSIFIER_TINY, **STUDENT_MODEL, run__output=str(runs["student"]))])
    assert s["objective"] == "adaptconf" and s["model"] == "fs_resnet12"
    _ok(["few-shot", "meta", CONFIGS / "mini_meta_adaptconf.yaml", *data, *META_TINY,
         *_sets(encoder__checkpoint=str(runs["student"]), teacher__checkpoint=str(runs["teacher"]),
                run__output=str(runs["meta"]))])
    return runs


META_TINY = _sets(run__device="cpu", meta__epochs=2, meta__batches_per_epoch=2, meta__episodes_per_batch=2,
                  meta__n_way=3, meta__k_shot=1, meta__n_query=2)
EVAL_TINY = _sets(run__device="cpu", episodes__n_way=3, episodes__shots=[1, 2], episodes__n_query=3,
                  episodes__episodes=30, episodes__batch_size=16)


def test_meta_stage_writes_a_loadable_model_and_warms_up_adaptconf(mini_runs: dict[str, Path]) -> None:
    meta_dir = mini_runs["meta"]
    result = json.loads((meta_dir / "result.json").read_text())
    assert result["objective"] == "adaptconf" and result["episodes"] == 2 * 2 * 2
    assert result["train_classes"] == BASE and result["teacher_sha256"]
    rows = [json.loads(line) for line in (meta_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    # the paper's warm-up r_w = 0.25 (epochs from 1, beta x n/(E r_w) while n < int(E r_w)): int(2 x 0.25) = 0,
    # so over 2 epochs beta is never scaled down (beta in (0, 0.5]); the ramp itself: tests/objectives/test_paper_objectives.py
    assert all(0.0 < r["weight_mean"] <= 0.5 for r in rows)
    assert all(math.isfinite(r["loss"]) and 0.0 <= r["train_agreement"] <= 1.0 for r in rows)
    model, meta, _ = load_model(meta_dir)
    assert meta["model"] == "fs_resnet12" and meta["stage"] == "meta"
    assert meta["cosine_scale"] == pytest.approx(result["cosine_scale"])
    assert meta["input_size"] == 16  # the encoder's own input spec is kept
    before = load_file(str(mini_runs["student"] / "model.safetensors"))
    after = model.state_dict()
    assert not torch.equal(before["stages.0.0.conv1.weight"], after["stages.0.0.conv1.weight"])
    assert torch.equal(before["fc.weight"], after["fc.weight"])  # the classifier head is not used by episodes


def test_meta_refuses_to_overwrite_and_resumes_to_the_same_weights(mini_dir: Path, mini_runs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    common = [CONFIGS / "mini_meta_adaptconf.yaml", *_sets(data__data_dir=str(mini_dir)), *META_TINY,
              *_sets(encoder__checkpoint=str(mini_runs["student"]), teacher__checkpoint=str(mini_runs["teacher"]))]
    _fails(["few-shot", "meta", *common, *_sets(run__output=str(mini_runs["meta"]))], "already holds a finished run")
    out = tmp_path / "interrupted"
    cfg = load_few_shot_config(common[0], [str(a) for a in common[1:] if a != "--set"] + [f"run.output={out}"])
    loop = RunLoop(MetaTrainer(cfg, console=Console(quiet=True)), resume=False, console=Console(quiet=True))
    original = loop.run_dir.save_epoch_state

    def stop_after_first(epoch: int, state: dict, history: list) -> None:
        original(epoch, state, history)
        raise KeyboardInterrupt

    loop.run_dir.save_epoch_state = stop_after_first  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert not (out / "result.json").exists()
    _fails(["few-shot", "meta", *common, *_sets(run__output=str(out))], "pass --resume")
    _ok(["few-shot", "meta", *common, *_sets(run__output=str(out)), "--resume"])
    a = load_file(str(mini_runs["meta"] / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_reports_ci_per_shot_and_is_deterministic(mini_dir: Path, mini_runs: dict[str, Path],
                                                       tmp_path: Path) -> None:
    base = ["few-shot", "eval", CONFIGS / "mini_eval.yaml", *_sets(data__data_dir=str(mini_dir)), *EVAL_TINY,
            *_sets(encoder__checkpoint=str(mini_runs["meta"]))]
    r1 = _ok([*base, *_sets(run__output=str(tmp_path / "e1"))])
    r2 = _ok([*base, *_sets(run__output=str(tmp_path / "e2"))])
    r3 = _ok([*base, *_sets(run__output=str(tmp_path / "e3"), episodes__seed=1)])
    assert set(r1["shots"]) == {"1", "2"}
    for shot in r1["shots"].values():
        assert 0.0 <= shot["mean"] <= 1.0 and 0.0 < shot["ci95"] < 0.5
    assert r1["shots"] == r2["shots"]
    assert r1["shots"] != r3["shots"]
    assert r1["dataset"] == {"source": "mini_imagenet", "split": "test", "num_samples": NOVEL * 8,
                             "num_classes": NOVEL}
    assert r1["feature_dim"] == 640 and r1["episodes"] == 30
    assert json.loads((tmp_path / "e1" / "result.json").read_text()) == r1
    # the classifier-stage encoders evaluate the same way (Conv-4: flattened 2x2x64 map at 32x32)
    t = _ok([*base, *_sets(encoder__checkpoint=str(mini_runs["teacher"]), run__output=str(tmp_path / "et"))])
    assert t["feature_dim"] == 256 and t["model"] == "fs_convnet4"


def test_episode_batches_are_fixed_per_epoch_and_batch() -> None:
    by_class = {c: np.arange(c * 10, c * 10 + 10) for c in range(6)}
    layout = EpisodeLayout(episodes=2, n_way=3, k_shot=1, n_query=2)
    a = epoch_batches(by_class, layout, batches=3, seed=0, epoch=4)
    b = epoch_batches(by_class, layout, batches=3, seed=0, epoch=4)
    c = epoch_batches(by_class, layout, batches=3, seed=0, epoch=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(len(x) == layout.images == 18 for x in a)
    support = a[0][:3]  # first episode: one support image per class, then its queries class-major
    queries = a[0][3:9].reshape(3, 2)
    assert all(set(queries[i] // 10) == {support[i] // 10} for i in range(3))
    feats = torch.arange(18.0).unsqueeze(1)
    s, q = layout.split(feats)
    assert s.shape == (2, 3, 1) and q.shape == (2, 6, 1) and q[1, 0, 0].item() == 12.0
    assert layout.query_labels(torch.device("cpu")).tolist() == [0, 0, 1, 1, 2, 2] * 2


def test_config_is_strict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid keys in section 'meta'"):
        load_few_shot_config(CONFIGS / "mini_meta_adaptconf.yaml", ["meta.lr_decay=0.1"])
    with pytest.raises(ConfigError, match="noise"):
        load_few_shot_config(None, ["data.noise_mode=symmetric"])
    # one run section for every command: the keys these commands would ignore are refused
    with pytest.raises(ConfigError, match="run.amp: the few-shot commands do not use it"):
        load_few_shot_config(None, ["run.amp=bf16"])
    assert load_few_shot_config(None, []).run.output == "runs/few_shot/default"
    _fails(["few-shot", "meta", CONFIGS / "mini_meta_adaptconf.yaml", "--set", "meta.objective=dkd3"],
           "meta.objective must be one of none, kd, augconf, adaptconf, logconf, product, bootstrap_soft, bootstrap_hard, dkd")
    _fails(["few-shot", "meta", CONFIGS / "mini_meta_adaptconf.yaml", "--set", "meta.warmup_style=linear"],
           "meta.warmup_style must be one of few_shot, sel_cl")
    _fails(["few-shot", "eval", CONFIGS / "mini_eval.yaml", "--set", "episodes.shots=[]"], "episodes.shots")
    _fails(["few-shot", "eval", CONFIGS / "mini_eval.yaml",
            *_sets(data__data_dir=str(tmp_path), run__device="cpu", run__output=str(tmp_path / "out"))],
           "miniImageNet_category_split_test.pickle")


# -- Fashion-MNIST: the embedded default's class split -------------------------------------------

def test_fmnist_base_classes_train_and_novel_classes_evaluate(fmnist_dir: Path, tmp_path: Path) -> None:
    data = _sets(data__data_dir=str(fmnist_dir))
    # the default teacher's hidden width is 4 (rule 4); 256 gives this check of the split a margin over chance
    teacher = _ok(["train-teacher", CONFIGS / "fmnist_teacher_mlp.yaml", *data, "--set", "model.kwargs={hidden: 256}",
                   *_sets(optim__epochs=1, run__output=str(tmp_path / "teacher"))])
    from pipeline.data.sources.fashion_mnist import load_fashion_mnist

    train = load_fashion_mnist("train", fmnist_dir)
    test = load_fashion_mnist("test", fmnist_dir)
    base = int(np.isin(train.labels, range(6)).sum())
    assert teacher["train_samples"] == base // 2  # half A of the base-class images
    assert teacher["test_samples"] == int(np.isin(test.labels, range(6)).sum())
    _, meta, _ = load_model(tmp_path / "teacher")
    assert meta["num_classes"] == 6
    ev = _ok(["few-shot", "eval", CONFIGS / "fmnist_eval.yaml", *data,
              *_sets(encoder__checkpoint=str(tmp_path / "teacher"), run__output=str(tmp_path / "eval"),
                     episodes__episodes=200)])
    assert ev["n_way"] == 4 and ev["dataset"]["num_classes"] == 4
    assert ev["dataset"]["num_samples"] == int(np.isin(test.labels, [6, 7, 8, 9]).sum())
    assert ev["feature_dim"] == 256
    for shot in ev["shots"].values():  # far above the 25% of chance on 4-way episodes
        assert shot["mean"] > 0.5 and 0.0 < shot["ci95"] < 0.05
    assert ev["shots"]["5"]["mean"] > ev["shots"]["1"]["mean"]
    _fails(["few-shot", "eval", CONFIGS / "fmnist_eval.yaml", *data, "--set", "episodes.n_way=5",
            *_sets(encoder__checkpoint=str(tmp_path / "teacher"), run__output=str(tmp_path / "eval5"))],
           "5-way episodes need at least 5 classes")
    # the meta stage on the base classes, plain Meta-Baseline (no teacher)
    cfg = tmp_path / "meta.yaml"
    cfg.write_text("data: {source: fashion_mnist, classes: [0, 1, 2, 3, 4, 5]}\n")
    m = _ok(["few-shot", "meta", cfg, *data, *_sets(encoder__checkpoint=str(tmp_path / "teacher"), run__output=str(tmp_path / "meta"),
                    meta__epochs=1, meta__batches_per_epoch=3, meta__n_way=4, meta__objective="none")])
    assert m["teacher_sha256"] is None and m["train_classes"] == 6 and m["train_agreement"] is None
    # every registered objective reaches the meta stage (here AugConf, which it had no own code for)
    a = _ok(["few-shot", "meta", cfg, *data, *_sets(encoder__checkpoint=str(tmp_path / "teacher"),
                                                      teacher__checkpoint=str(tmp_path / "teacher"),
                                                      run__output=str(tmp_path / "meta_augconf"), meta__epochs=1,
                                                      meta__batches_per_epoch=3, meta__n_way=4,
                                                      meta__objective="augconf")])
    assert a["objective"] == "augconf" and a["teacher_sha256"] is not None and a["train_agreement"] is not None


def test_meta_stage_takes_a_comparison_objective_with_its_params(mini_dir: Path, mini_runs: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    """``meta.objective`` is any registered objective; ``meta.params`` reaches its own parameters."""
    common = [CONFIGS / "mini_meta_adaptconf.yaml", *_sets(data__data_dir=str(mini_dir)), *META_TINY,
              *_sets(encoder__checkpoint=str(mini_runs["student"]), teacher__checkpoint=str(mini_runs["teacher"]))]
    out = tmp_path / "dkd"
    res = _ok(["few-shot", "meta", *common, "--set", "meta.objective=dkd", "--set", "meta.params={dkd_beta: 2.0}",
               *_sets(run__output=str(out))])
    assert res["objective"] == "dkd"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"tckd", "nckd"} <= set(rows[-1])  # DKD's own logged terms
    assert yaml.safe_load((out / "config.yaml").read_text())["meta"]["params"] == {"dkd_beta": 2.0}
    _fails(["few-shot", "meta", *common, "--set", "meta.params={tau: 1}", *_sets(run__output=str(tmp_path / "x"))],
           "meta.params: unknown objective parameter 'tau'")
