"""gradsift's detectors against cleanlab (used correctly) and the per-sample loss, on MNIST.

For each noise setting (20% symmetric and 20% class-pair asymmetric by default) on a
20k-sample MNIST training subset:

1. **Detection** against the known flipped labels: AUROC, AP, precision@m, recall within
   the top 10% / 20%, and the wall time of each method including the training it needs.
   - gradsift: one training run with a checkpoint per epoch, then last-layer per-sample
     gradients at the best-validation checkpoint (and, for contrast, the final one) and
     every detector. Time = training + gradients + detector.
   - cleanlab: the given noisy labels and *out-of-sample* predicted probabilities from
     5-fold cross-validation with the same model class and recipe;
     score = 1 − ``cleanlab.rank.get_label_quality_scores`` (self-confidence).
     Time = 5 trainings + cleanlab.
   - loss: the per-sample loss (gradsift's ``loss`` detector) at the same checkpoints.
2. **Trimming** with the budget chosen on validation (gradsift.experiments.trimming): a few rankings fixed
   in advance, random removal of the same count, no trimming and the oracle, over 3 seeds.

cleanlab is a benchmark-only extra (``pip install cleanlab``). Everything trains with one
torch thread, so the wall times are comparable. Run (about half an hour on 2 cores):

    nice -n 10 .venv/bin/python benchmarks/cleanlab_compare.py --out benchmarks/results/cleanlab_compare.md

``--quick`` runs a tiny version (a few minutes) to check the script.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from markdown_out import emit  # benchmarks/ is on sys.path when run as a script
from sklearn.model_selection import StratifiedKFold

from gradsift.checkpoints import CheckpointRecorder
from gradsift.detect.metrics import detection_metrics
from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis
from gradsift.experiments.datasets import LabeledData, load_mnist
from gradsift.experiments.training import accuracy, predict_proba, train_classifier
from gradsift.experiments.trimming import Recipe, TrimConfig, run_trim_experiment, summary_markdown
from gradsift.task import ClassificationTask

ALL_DETECTORS = ("l1", "l2", "iforest", "ecod", "knn", "lof", "loss", "random")


def cleanlab_scores(
    data: LabeledData, recipe: Recipe, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """1 − cleanlab label quality (self-confidence) from out-of-sample CV probabilities.

    Returns ``(scores [n] higher = more suspicious, info)`` where info holds the wall time
    (including the ``folds`` trainings) and cleanlab's own issue estimate.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    t0 = time.perf_counter()
    X, y = data.train.X, data.train.y
    pred = np.zeros((len(y), data.n_classes), dtype=np.float64)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit_idx, out_idx) in enumerate(skf.split(X, y)):
        model = recipe.build(tuple(X.shape[1:]), data.n_classes, seed + 1000 * (k + 1))
        train_classifier(
            model, X[fit_idx], y[fit_idx], recipe.train_config(seed + k), progress=False
        )
        pred[out_idx] = predict_proba(model, X[out_idx])
    t_cv = time.perf_counter() - t0
    t1 = time.perf_counter()
    quality = get_label_quality_scores(y, pred)
    issues = find_label_issues(y, pred)
    t_cl = time.perf_counter() - t1
    flipped = np.zeros(len(y), dtype=bool)
    flipped[data.train.flipped] = True
    info = {
        "seconds": t_cv + t_cl,
        "cv_seconds": t_cv,
        "cv_accuracy_on_given_labels": float(np.mean(pred.argmax(1) == y)),
        "n_issues": int(issues.sum()),
        "issues_precision": float(flipped[issues].mean()) if issues.any() else float("nan"),
    }
    return 1.0 - quality, info


def gradsift_scores(
    data: LabeledData, recipe: Recipe, detectors: tuple[str, ...], seed: int = 0
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Detector scores at the best-validation and the final checkpoint, with wall times."""
    t0 = time.perf_counter()
    model = recipe.build(tuple(data.train.X.shape[1:]), data.n_classes, seed)
    rec = CheckpointRecorder(every=1)
    train_classifier(
        model,
        data.train.X,
        data.train.y,
        recipe.train_config(seed),
        val=(data.val.X, data.val.y),
        recorder=rec,
        progress=False,
    )
    t_train = time.perf_counter() - t0
    info = {
        "train_seconds": t_train,
        "best_epoch": rec.best().epoch,
        "final_train_acc_on_given_labels": accuracy(model, data.train.X, data.train.y),
        "final_test_acc": accuracy(model, data.test.X, data.test.y_clean),
    }
    best_model = CheckpointRecorder.load_into(copy.deepcopy(model), rec.best())
    info["best_test_acc"] = accuracy(best_model, data.test.X, data.test.y_clean)
    out: dict[str, dict[str, Any]] = {}
    for ckpt in ("best", "final"):
        cfg = OGAConfig(detectors=detectors, checkpoint=ckpt, seed=seed)
        res = OutlierGradientAnalysis(model, ClassificationTask(), cfg).run(
            (data.train.X, data.train.y), rec
        )
        for name, r in res.results.items():
            out[f"{name} @ {ckpt}"] = {
                "scores": r.scores,
                "seconds": t_train + res.timings["gradients"] + res.timings[name],
                "extra": f"1 training ({recipe.epochs} ep.)",
                "epoch": res.checkpoints[0]["epoch"],
            }
    return out, info


def warm_up() -> None:
    """One tiny training run so that one-off start-up costs do not count as method time."""
    X = np.random.default_rng(0).normal(size=(256, 784)).astype(np.float32)
    y = np.arange(256) % 10
    recipe = Recipe(model="mlp", epochs=1)
    train_classifier(recipe.build((784,), 10, 0), X, y, recipe.train_config(0), progress=False)


def detection_rows(methods: dict[str, dict[str, Any]], flipped: np.ndarray) -> pd.DataFrame:
    rows = []
    for name, m in methods.items():
        met = detection_metrics(m["scores"], flipped)
        rows.append(
            {
                "method": name,
                "extra training": m["extra"],
                "AUROC": met["auroc"],
                "AP": met["average_precision"],
                "P@m": met["precision_at_m"],
                "R@10%": met["recall_at_10pct"],
                "R@20%": met["recall_at_20pct"],
                "wall s": m["seconds"],
            }
        )
    return pd.DataFrame(rows).sort_values("AUROC", ascending=False, kind="stable")


def to_markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if c in ("method", "extra training") else "---:" for c in cols) + "|",
    ]
    for row in frame.itertuples(index=False):
        cells = []
        for c, v in zip(cols, row, strict=True):
            if isinstance(v, float):
                cells.append(f"{v:.1f}" if c == "wall s" else f"{v:.3f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-val", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--kinds", default="symmetric,asymmetric")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budgets", default="0.1,0.2")
    ap.add_argument(
        "--trim",
        default="l2 @ best,cleanlab,loss @ best",
        help="rankings retrained in the trimming part",
    )
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--cache-dir", default="runs/cleanlab_compare")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    ap.add_argument("--quick", action="store_true", help="tiny sizes to check the script")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_val, a.n_test, a.epochs, a.seeds, a.budgets = (
            2000,
            500,
            2000,
            4,
            "0,1,2",
            "0.1,0.2",
        )
    torch.set_num_threads(1)
    warm_up()
    recipe = Recipe(
        model="mlp", model_kwargs={"hidden": (a.hidden,)}, epochs=a.epochs, batch_size=a.batch_size
    )
    seeds = tuple(int(s) for s in a.seeds.split(","))
    budgets = tuple(float(b) for b in a.budgets.split(","))
    out: list[str] = [
        "# gradsift vs cleanlab on MNIST",
        "",
        f"MNIST training subset of {a.n_train} (validation {a.n_val}, test {a.n_test}), "
        f"{a.noise:.0%} label noise; MLP 784-{a.hidden}-10, Adam lr 1e-3, {a.epochs} epochs, "
        f"batch {a.batch_size}; one torch thread. Command: `{' '.join(sys.argv)}`",
        "",
    ]
    t_all = time.perf_counter()
    for kind in a.kinds.split(","):
        data = load_mnist(
            noise=a.noise,
            noise_kind=kind,
            n_train=a.n_train,
            n_val=a.n_val,
            n_test=a.n_test,
            seed=0,
        )
        flipped = data.train.flipped
        print(f"[{kind}] {len(flipped)} of {len(data.train)} labels flipped", flush=True)
        methods, info = gradsift_scores(data, recipe, ALL_DETECTORS)
        print(f"[{kind}] gradsift done ({info})", flush=True)
        cl_scores, cl_info = cleanlab_scores(data, recipe, a.folds)
        print(f"[{kind}] cleanlab done ({cl_info})", flush=True)
        methods["cleanlab"] = {
            "scores": cl_scores,
            "seconds": cl_info["seconds"],
            "extra": f"{a.folds} trainings (CV)",
        }
        table = detection_rows(methods, flipped)
        out += [
            f"## {a.noise:.0%} {kind} noise",
            "",
            f"Detection of the {len(flipped)} flipped labels (gradsift model: best validation epoch "
            f"{info['best_epoch']}, final train accuracy on the noisy labels "
            f"{info['final_train_acc_on_given_labels']:.3f}, test accuracy best/final "
            f"{info['best_test_acc']:.3f}/{info['final_test_acc']:.3f}; cleanlab CV accuracy on the "
            f"given labels {cl_info['cv_accuracy_on_given_labels']:.3f}, its own issue estimate "
            f"{cl_info['n_issues']} samples with precision {cl_info['issues_precision']:.3f}):",
            "",
            to_markdown(table),
            "",
        ]
        print("\n".join(out[-6:]), flush=True)
        rankings = {name: methods[name]["scores"] for name in a.trim.split(",")}
        cfg = TrimConfig(
            budgets=budgets, seeds=seeds, n_jobs=a.jobs, cache_dir=Path(a.cache_dir) / kind
        )
        res = run_trim_experiment(data, rankings, recipe, cfg)
        out += [
            f"Trimming (budget chosen on validation among {', '.join(f'{b:.1%}' for b in budgets)}; "
            f"{len(seeds)} seeds; mean ± std; Δ paired by seed; {res.info['n_runs']} runs, "
            f"{res.info['wall_seconds']:.0f} s):",
            "",
            summary_markdown(res.summary),
            "",
        ]
        print("\n".join(out[-4:]), flush=True)
    out.append(f"Total wall time: {time.perf_counter() - t_all:.0f} s.")
    emit(out, a.out)


if __name__ == "__main__":
    main()
