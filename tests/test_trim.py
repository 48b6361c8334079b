"""Trimming experiments: identical controls, validation-only budget choice, resumption.

Ground truth is computed independently: direct ``train_classifier`` runs with the same
seed on the same rows, the known flipped indices, and fake training functions whose
validation and test accuracies are known by construction.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import gradsift.experiments.trimming as trim
import gradsift.experiments.trimming.pipeline as trim_pipeline
import gradsift.experiments.trimming.pool as trim_pool
from gradsift.detect.result import DetectionResult
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import LabeledData, load_digits
from gradsift.experiments.models import build_model
from gradsift.experiments.training import TrainConfig, accuracy, train_classifier
from gradsift.experiments.trimming import (
    Recipe,
    TrimConfig,
    ValidationRuns,
    choose_budgets,
    plan_jobs,
    random_removal,
    run_key,
    run_trim_experiment,
)

FAST = Recipe(model="logreg", epochs=4, batch_size=64)


@pytest.fixture(scope="module")
def digits() -> LabeledData:
    return load_digits(noise=0.2, seed=0)


@pytest.fixture(scope="module")
def noisy_truth(digits: LabeledData) -> np.ndarray:
    """A decent but imperfect ranking: the flip indicator plus Gaussian noise."""
    rng = np.random.default_rng(0)
    is_flipped = np.isin(np.arange(len(digits.train)), digits.train.flipped)
    return is_flipped.astype(float) + rng.normal(0.0, 0.6, len(digits.train))


def _direct_accuracy(
    data: LabeledData, keep: np.ndarray, seed: int, recipe: Recipe
) -> tuple[float, float]:
    """Train with plain gradsift.experiments.training, independent of gradsift.experiments.trimming."""
    torch.set_num_threads(1)
    model = build_model(recipe.model, (data.n_features,), data.n_classes, seed=seed)
    cfg = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed)
    train_classifier(model, data.train.X[keep], data.train.y[keep], cfg, progress=False)
    return accuracy(model, data.val.X, data.val.y), accuracy(model, data.test.X, data.test.y_clean)


# --------------------------------------------------------------------------- planning


def test_plan_controls_match_rankings(digits: LabeledData, noisy_truth: np.ndarray) -> None:
    n = len(digits.train)
    cfg = TrimConfig(budgets=(0.05, 0.2), seeds=(0, 1, 2))
    jobs = plan_jobs(n, {"det": noisy_truth}, cfg, digits.train.flipped)
    by = {(j.method, j.budget, j.seed): j for j in jobs}
    assert len(jobs) == 3 * (1 + 2 + 2 + 1)
    order = np.argsort(-noisy_truth, kind="stable")
    for seed in (0, 1, 2):
        assert by[("none", 0.0, seed)].removed.size == 0
        for b in (0.05, 0.2):
            det, rnd = by[("det", b, seed)], by[("random", b, seed)]
            k = round(b * n)
            assert det.removed.size == rnd.removed.size == k  # same count removed
            assert set(det.removed) == set(order[:k])  # the top-ranked ones
            assert np.unique(rnd.removed).size == k and rnd.removed.max() < n
        orc = [j for j in jobs if j.kind == "oracle" and j.seed == seed]
        assert len(orc) == 1 and np.array_equal(orc[0].removed, digits.train.flipped)
    # the random sets differ between seeds (a band, not one draw) but are reproducible
    r0, r1 = by[("random", 0.2, 0)].removed, by[("random", 0.2, 1)].removed
    assert not np.array_equal(r0, r1)
    assert np.array_equal(r0, random_removal(n, r0.size, 0))


def test_plan_rejects_bad_rankings(digits: LabeledData) -> None:
    n = len(digits.train)
    with pytest.raises(GradsiftError, match="shape"):
        plan_jobs(n, {"det": np.zeros(n - 1)}, TrimConfig())
    with pytest.raises(GradsiftError, match="reserved"):
        plan_jobs(n, {"random": np.zeros(n)}, TrimConfig())
    with pytest.raises(GradsiftError, match="NaN"):
        plan_jobs(n, {"det": np.full(n, np.nan)}, TrimConfig())
    with pytest.raises(ValueError, match="fractions"):
        TrimConfig(budgets=(0.1, 1.5))
    with pytest.raises(ValueError, match="duplicates"):
        TrimConfig(seeds=(0, 0))
    # a DetectionResult is accepted as a ranking
    res = DetectionResult(scores=np.arange(n, dtype=float), detector="x")
    jobs = plan_jobs(n, {"x": res}, TrimConfig(budgets=(0.1,), seeds=(0,), random_control=False))
    assert set(jobs[1].removed) == set(range(n - round(0.1 * n), n))


# --------------------------------------------------------------------------- identical recipe


def test_every_arm_trains_the_identical_recipe(
    digits: LabeledData, noisy_truth: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[dict, int, np.ndarray]] = []
    real = trim.train_run

    def spy(recipe: Recipe, seed: int, removed: np.ndarray, data: trim_pool.RunData) -> dict:
        calls.append((recipe.to_dict(), seed, removed.copy()))
        return real(recipe, seed, removed, data)

    monkeypatch.setattr(trim_pool, "train_run", spy)
    cfg = TrimConfig(budgets=(0.1,), seeds=(0, 1, 2), n_jobs=1, progress=False)
    res = run_trim_experiment(digits, {"det": noisy_truth}, FAST, cfg)
    assert len(calls) == 3 * 4 and res.info["n_trained"] == 12
    assert all(c[0] == FAST.to_dict() for c in calls)  # one recipe for every arm
    seeds = res.runs.groupby("method")["seed"].apply(lambda s: sorted(s))
    assert all(v == [0, 1, 2] for v in seeds)  # every arm on every seed

    # ground truth: the removed rows, derived independently, and direct training on the rest
    n = len(digits.train)
    order = np.argsort(-noisy_truth, kind="stable")
    for row in res.runs[res.runs["seed"] == 1].itertuples():
        k = row.n_removed
        removed = {
            "none": np.empty(0, dtype=np.int64),
            "det": order[:k],
            "random": random_removal(n, k, 1),
            "oracle": digits.train.flipped,
        }[row.method]
        assert any(c[1] == 1 and set(c[2]) == set(removed) for c in calls), row.method
        keep = np.ones(n, dtype=bool)
        keep[removed] = False
        val, test = _direct_accuracy(digits, keep, 1, FAST)
        assert (row.val_accuracy, row.test_accuracy) == (val, test), row.method


def test_same_removal_same_seed_is_bit_identical(digits: LabeledData) -> None:
    rd = trim_pool.run_data(digits)
    removed = random_removal(len(digits.train), 50, 7)
    a = trim.train_run(FAST, 3, removed, rd)
    b = trim.train_run(FAST, 3, removed, rd)
    assert (a["val_accuracy"], a["test_accuracy"]) == (b["val_accuracy"], b["test_accuracy"])
    c = trim.train_run(FAST, 4, removed, rd)  # another seed: other initial weights and order
    assert (a["val_accuracy"], a["test_accuracy"]) != (c["val_accuracy"], c["test_accuracy"])


# --------------------------------------------------------------------------- budget choice


def test_validation_runs_hold_no_test_numbers() -> None:
    names = [f.name for f in dataclasses.fields(ValidationRuns)]
    assert names == ["method", "budget", "seed", "val_accuracy"]
    assert not any("test" in n for n in names)
    runs = pd.DataFrame(
        {
            "method": ["a"],
            "budget": [0.1],
            "seed": [0],
            "val_accuracy": [0.5],
            "test_accuracy": [0.9],
        }
    )
    vr = ValidationRuns.from_runs(runs)
    assert not any("test" in n for n in vars(vr))
    with pytest.raises(TypeError, match="ValidationRuns"):
        choose_budgets(runs)  # type: ignore[arg-type]


def test_choose_budgets_by_mean_validation_accuracy() -> None:
    vr = ValidationRuns(
        method=("a",) * 6 + ("b",) * 4,
        budget=(0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.1, 0.1, 0.2, 0.2),
        seed=(0, 1) * 5,
        val_accuracy=(0.80, 0.90, 0.84, 0.87, 0.99, 0.60, 0.70, 0.72, 0.71, 0.71),
    )
    # a: means 0.85, 0.855, 0.795 -> 0.2 ; b: 0.71 and 0.71 tie -> the smaller budget 0.1
    assert choose_budgets(vr) == {"a": 0.2, "b": 0.1}


def test_experiment_chooses_on_validation_never_on_test(
    digits: LabeledData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fake runs whose validation favours 5% and whose test favours 20%."""
    n = len(digits.train)
    val_by_k = {0: 0.5, round(0.05 * n): 0.9, round(0.2 * n): 0.6}
    test_by_k = {0: 0.5, round(0.05 * n): 0.6, round(0.2 * n): 0.99}

    def fake(recipe: Recipe, seed: int, removed: np.ndarray, data: trim_pool.RunData) -> dict:
        k = len(removed)
        return {
            "val_accuracy": val_by_k.get(k, 0.1),
            "test_accuracy": test_by_k.get(k, 0.1),
            "epoch": 1,
            "seconds": 0.0,
        }

    seen: list[object] = []
    real_choose = trim.choose_budgets

    def spy_choose(val: object) -> dict[str, float]:
        seen.append(val)
        return real_choose(val)  # type: ignore[arg-type]

    monkeypatch.setattr(trim_pool, "train_run", fake)
    monkeypatch.setattr(trim_pipeline, "choose_budgets", spy_choose)
    cfg = TrimConfig(budgets=(0.05, 0.2), seeds=(0, 1, 2), n_jobs=1, progress=False)
    res = run_trim_experiment(digits, {"det": np.arange(n, dtype=float)}, FAST, cfg)
    assert len(seen) == 1 and isinstance(seen[0], ValidationRuns)
    assert res.chosen["det"] == 0.05 and res.chosen["random"] == 0.05
    row = res.summary.set_index("method").loc["det"]
    assert row["test_mean"] == pytest.approx(0.6)  # reported at the validation choice


# --------------------------------------------------------------------------- caching / resumption


def test_cache_key_depends_on_everything_that_matters(digits: LabeledData) -> None:
    fp = trim.data_fingerprint(digits)
    r = np.arange(5)
    base = run_key(FAST, 0, r, fp)
    assert base == run_key(Recipe(model="logreg", epochs=4, batch_size=64), 0, r.copy(), fp)
    assert base != run_key(dataclasses.replace(FAST, epochs=5), 0, r, fp)
    assert base != run_key(FAST, 1, r, fp)
    assert base != run_key(FAST, 0, np.arange(1, 6), fp)
    other = load_digits(noise=0.2, seed=1)
    assert base != run_key(FAST, 0, r, trim.data_fingerprint(other))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_interrupted_experiment_resumes(
    digits: LabeledData, noisy_truth: np.ndarray, tmp_path: Path, n_jobs: int
) -> None:
    """Interrupt after 4 finished runs (in this process, or with a 2-process pool), resume."""
    cfg = TrimConfig(
        budgets=(0.05, 0.2), seeds=(0, 1, 2), n_jobs=n_jobs, cache_dir=tmp_path, progress=False
    )
    total = 3 * (1 + 2 + 2 + 1)
    done: list[str] = []

    def interrupt(job: trim.TrimJob, record: dict) -> None:
        done.append(job.method)
        if len(done) == 4:
            raise _Stop

    with pytest.raises(_Stop):
        run_trim_experiment(digits, {"det": noisy_truth}, FAST, cfg, on_run_done=interrupt)
    n_files = len(list(tmp_path.glob("run-*.json")))
    assert n_files >= 4  # each finished run was written as it finished
    (tmp_path / "run-garbage.json.123.tmp").write_text("{")  # a torn temporary file is ignored

    serial = dataclasses.replace(cfg, n_jobs=1)
    resumed = run_trim_experiment(digits, {"det": noisy_truth}, FAST, serial)
    assert resumed.info["n_cached"] == n_files
    assert resumed.info["n_trained"] == total - n_files
    assert int(resumed.runs["cached"].sum()) == n_files

    again = run_trim_experiment(digits, {"det": noisy_truth}, FAST, serial)
    assert again.info["n_trained"] == 0 and bool(again.runs["cached"].all())
    # cached runs (from the pool or this process) equal an uninterrupted, uncached experiment
    fresh = run_trim_experiment(
        digits, {"det": noisy_truth}, FAST, dataclasses.replace(serial, cache_dir=None)
    )
    cols = ["method", "budget", "seed", "val_accuracy", "test_accuracy"]
    pd.testing.assert_frame_equal(resumed.runs[cols], fresh.runs[cols])


def test_corrupt_cache_entry_is_retrained(digits: LabeledData, tmp_path: Path) -> None:
    cfg = TrimConfig(
        budgets=(0.1,), seeds=(0,), n_jobs=1, cache_dir=tmp_path, progress=False, oracle=False
    )
    first = run_trim_experiment(digits, {}, FAST, cfg)
    files = sorted(tmp_path.glob("run-*.json"))
    assert len(files) == 2
    files[0].write_text(files[0].read_text()[:20])  # truncated by a crash
    second = run_trim_experiment(digits, {}, FAST, cfg)
    assert second.info["n_trained"] == 1 and second.info["n_cached"] == 1
    assert np.array_equal(first.runs["test_accuracy"], second.runs["test_accuracy"])
    assert json.loads(files[0].read_text())["key"] == files[0].stem.removeprefix("run-")


def test_killed_process_resumes(tmp_path: Path) -> None:
    """A real SIGKILL in the middle of an experiment, then a resumed run.

    The child sleeps one second after each finished run, so the kill reliably lands
    mid-experiment (after at least two runs were cached).
    """
    setup = textwrap.dedent(
        f"""
        from gradsift.experiments.datasets import load_digits
        from gradsift.experiments.trimming import Recipe, TrimConfig
        d = load_digits(noise=0.2, seed=0)
        recipe = Recipe(model="mlp", epochs=10, batch_size=32, model_kwargs={{"hidden": [32]}})
        cfg = TrimConfig(budgets=(0.05, 0.1), seeds=(0, 1, 2), n_jobs=1, cache_dir={str(tmp_path)!r},
                         progress=False, oracle=False)
        """
    )
    script = setup + textwrap.dedent(
        """
        import time
        from gradsift.experiments.trimming import run_trim_experiment
        run_trim_experiment(d, {}, recipe, cfg, on_run_done=lambda job, rec: time.sleep(1.0))
        """
    )
    env = dict(os.environ, GRADSIFT_PROGRESS="0")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.time() + 120
    try:
        while len(list(tmp_path.glob("run-*.json"))) < 2:
            assert proc.poll() is None, "the experiment ended before it could be interrupted"
            assert time.time() < deadline, "no run finished in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    n_files = len(list(tmp_path.glob("run-*.json")))
    assert 2 <= n_files < 9
    scope: dict = {}
    exec(setup, scope)
    d, recipe, cfg = scope["d"], scope["recipe"], scope["cfg"]
    calls: list[int] = []
    res = run_trim_experiment(d, {}, recipe, cfg, on_run_done=lambda j, r: calls.append(j.seed))
    assert res.info["n_cached"] == n_files and len(calls) == 9 - n_files
    # a cached run is exactly what training it again gives
    row = res.runs[res.runs["cached"]].iloc[0]
    job = next(
        j
        for j in plan_jobs(len(d.train), {}, cfg)
        if (j.method, j.budget, j.seed) == (row["method"], row["budget"], row["seed"])
    )
    direct = trim.train_run(recipe, job.seed, job.removed, trim_pool.run_data(d))
    assert direct["test_accuracy"] == row["test_accuracy"]


# --------------------------------------------------------------------------- results


def test_summary_and_curve_numbers(digits: LabeledData, noisy_truth: np.ndarray) -> None:
    cfg = TrimConfig(budgets=(0.05, 0.2), seeds=(0, 1, 2), n_jobs=1, progress=False)
    res = run_trim_experiment(digits, {"det": noisy_truth}, FAST, cfg)
    runs = res.runs
    flipped = set(digits.train.flipped.tolist())
    # precision of the removed set against the known flips
    order = np.argsort(-noisy_truth, kind="stable")
    for b in (0.05, 0.2):
        k = round(b * len(digits.train))
        want = sum(int(i) in flipped for i in order[:k]) / k
        got = res.curve.set_index(["method", "budget"]).loc[("det", b), "precision"]
        assert got == pytest.approx(want)
    assert res.curve.set_index("method").loc["oracle", "precision"] == 1.0
    # summary = mean ± std (ddof=1) at the chosen budget, paired differences per seed
    s = res.summary.set_index("method")
    b = res.chosen["det"]
    det = runs[(runs.method == "det") & (runs.budget == b)].set_index("seed")["test_accuracy"]
    rnd = runs[(runs.method == "random") & (runs.budget == b)].set_index("seed")["test_accuracy"]
    non = runs[runs.method == "none"].set_index("seed")["test_accuracy"]
    assert s.loc["det", "test_mean"] == pytest.approx(det.mean())
    assert s.loc["det", "test_std"] == pytest.approx(det.std(ddof=1))
    assert s.loc["det", "vs_random_mean"] == pytest.approx((det - rnd).mean())
    assert s.loc["det", "vs_none_std"] == pytest.approx((det - non).std(ddof=1))
    assert list(s.index) == ["none", "random", "det", "oracle"]
    md = res.to_markdown()
    assert md.count("\n") == 5 and "± " in md and "| det |" in md


def test_missing_validation_or_test_split_is_an_error(digits: LabeledData) -> None:
    empty = digits.val.subset(np.zeros(len(digits.val), dtype=bool))
    no_val = dataclasses.replace(digits, val=empty)
    with pytest.raises(GradsiftError, match="validation"):
        run_trim_experiment(no_val, {}, FAST, TrimConfig(n_jobs=1))
    no_test = dataclasses.replace(digits, test=empty)
    with pytest.raises(GradsiftError, match="test split"):
        run_trim_experiment(no_test, {}, FAST, TrimConfig(n_jobs=1))


def test_best_val_recipe_reports_the_best_validation_epoch(digits: LabeledData) -> None:
    from gradsift.checkpoints import CheckpointRecorder

    recipe = Recipe(model="logreg", epochs=6, batch_size=64, select="best_val")
    removed = random_removal(len(digits.train), 30, 0)
    got = trim.train_run(recipe, 2, removed, trim_pool.run_data(digits))
    # ground truth: the same training with a checkpoint recorder, best by validation accuracy
    torch.set_num_threads(1)
    keep = np.ones(len(digits.train), dtype=bool)
    keep[removed] = False
    model = build_model("logreg", (64,), 10, seed=2)
    rec = CheckpointRecorder(every=1)
    train_classifier(
        model,
        digits.train.X[keep],
        digits.train.y[keep],
        recipe.train_config(2),
        val=(digits.val.X, digits.val.y),
        recorder=rec,
        progress=False,
    )
    best = rec.best()
    CheckpointRecorder.load_into(model, best)
    assert got["epoch"] == best.epoch
    assert got["val_accuracy"] == best.metrics["val_accuracy"]
    assert got["test_accuracy"] == accuracy(model, digits.test.X, digits.test.y_clean)


def test_recipe_overrides_and_validation() -> None:
    r = trim.recipe_for("mnist", hidden=64, epochs=3)
    assert r.model == "mlp" and dict(r.model_kwargs) == {"hidden": (64,)} and r.epochs == 3
    assert r.batch_size == trim.DEFAULT_RECIPES["mnist"].batch_size
    c = trim.recipe_for("mnist", model="cnn")
    assert c.model == "cnn" and dict(c.model_kwargs) == {}
    with pytest.raises(GradsiftError, match="mlp"):
        trim.recipe_for("mnist", model="cnn", hidden=8)
    with pytest.raises(ValueError, match="select"):
        Recipe(select="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        Recipe(epochs=0)
    assert json.loads(json.dumps(Recipe(model_kwargs={"hidden": (8, 4)}).to_dict()))[
        "model_kwargs"
    ] == {"hidden": [8, 4]}


def test_trim_cli_writes_report_csv_and_resumes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gradsift.cli import app

    args = [
        "trim",
        "--dataset",
        "digits",
        "--model",
        "logreg",
        "--epochs",
        "3",
        "--detectors",
        "l2",
        "--budgets",
        "0.1,0.2",
        "--seeds",
        "0,1,2",
        "--jobs",
        "1",
        "--cache-dir",
        str(tmp_path / "c"),
        "--report",
        str(tmp_path / "r.html"),
        "--out",
        str(tmp_path / "runs.csv"),
        "--json",
    ]
    runner = CliRunner()
    first = runner.invoke(app, args, env={"GRADSIFT_PROGRESS": "0"})
    assert first.exit_code == 0, first.output
    payload = json.loads(first.stdout)
    assert payload["info"]["n_runs"] == 3 * (1 + 2 + 2 + 1) == payload["info"]["n_trained"]
    assert (tmp_path / "r.html").read_text().count("<section") == 3
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 18 and set(runs["method"]) == {"none", "l2", "random", "oracle"}
    refused = runner.invoke(app, args, env={"GRADSIFT_PROGRESS": "0"})
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    again = runner.invoke(app, [*args, "--overwrite"], env={"GRADSIFT_PROGRESS": "0"})
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["info"]["n_cached"] == 18
    bad = runner.invoke(app, ["trim", "--dataset", "nope", "--jobs", "1"])
    assert bad.exit_code == 2 and "unknown data set" in bad.output
