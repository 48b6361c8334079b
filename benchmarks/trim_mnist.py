"""Does trimming help on MNIST? Every detector, cleanlab, random removal and the oracle.

The setting of issue 4: an 8k-sample MNIST training subset with 20% symmetric label noise,
an MLP trained long enough to memorise the noise, 3 seeds, the budget chosen on the
validation split (never on test). Rankings:

- gradsift detectors on last-layer gradients at the best-validation checkpoint (the
  default) and, for contrast, l2 at the final (memorised) checkpoint;
- cleanlab with out-of-sample probabilities from 5-fold cross-validation (same recipe);

each retrained against random removal of the same count, no trimming and the oracle that
removes exactly the flipped samples (gradsift.experiments.trimming). Run:

    nice -n 10 .venv/bin/python benchmarks/trim_mnist.py --out benchmarks/results/trim_mnist.md

and it also writes an HTML report (``--report``). ``--quick`` checks the script on a tiny
version.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from cleanlab_compare import cleanlab_scores, detection_rows, gradsift_scores, to_markdown, warm_up

from gradsift.experiments.datasets import load_mnist
from gradsift.experiments.trimming import Recipe, TrimConfig, run_trim_experiment, summary_markdown

DETECTORS = ("l2", "iforest", "loss")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-val", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--kind", default="symmetric")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budgets", default="0.025,0.05,0.1,0.2")
    ap.add_argument("--no-cleanlab", action="store_true")
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--cache-dir", default="runs/trim_mnist")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", default=None, help="write an HTML report here")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_val, a.n_test, a.epochs, a.budgets, a.hidden = (
            1500,
            500,
            2000,
            4,
            "0.1,0.2",
            64,
        )
    torch.set_num_threads(1)
    warm_up()
    t0 = time.perf_counter()
    recipe = Recipe(
        model="mlp", model_kwargs={"hidden": (a.hidden,)}, epochs=a.epochs, batch_size=a.batch_size
    )
    data = load_mnist(
        noise=a.noise, noise_kind=a.kind, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, seed=0
    )
    methods, info = gradsift_scores(data, recipe, DETECTORS)
    rankings = {
        name.replace(" @ best", ""): methods[name]["scores"]
        for name in methods
        if name.endswith("@ best")
    }
    rankings["l2 @ final"] = methods["l2 @ final"]["scores"]
    table_methods = {k: methods[k] for k in methods if k.endswith("@ best") or k == "l2 @ final"}
    if not a.no_cleanlab:
        scores, cl = cleanlab_scores(data, recipe)
        rankings["cleanlab"] = scores
        table_methods["cleanlab"] = {
            "scores": scores,
            "seconds": cl["seconds"],
            "extra": "5 trainings (CV)",
        }
    det = detection_rows(table_methods, data.train.flipped)
    cfg = TrimConfig(
        budgets=tuple(float(b) for b in a.budgets.split(",")),
        seeds=tuple(int(s) for s in a.seeds.split(",")),
        n_jobs=a.jobs,
        cache_dir=Path(a.cache_dir),
    )
    res = run_trim_experiment(data, rankings, recipe, cfg)
    text = "\n".join(
        [
            "# Trimming on MNIST",
            "",
            f"{a.n_train} training samples ({len(data.train.flipped)} flipped, {a.noise:.0%} {a.kind}), "
            f"validation {a.n_val}, test {a.n_test}; MLP 784-{a.hidden}-10, Adam lr 1e-3, {a.epochs} "
            f"epochs, batch {a.batch_size}, evaluated at the final epoch. The detection model's "
            f"best validation epoch: {info['best_epoch']}; final train accuracy on the noisy labels "
            f"{info['final_train_acc_on_given_labels']:.3f}. Command: `{' '.join(sys.argv)}`",
            "",
            "Detection (wall time includes the training each method needs):",
            "",
            to_markdown(det),
            "",
            f"Trimming ({len(cfg.seeds)} seeds, mean ± std, budget chosen on validation, Δ paired by "
            f"seed; {res.info['n_runs']} runs):",
            "",
            summary_markdown(res.summary),
            "",
            f"Total wall time: {time.perf_counter() - t0:.0f} s.",
        ]
    )
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    if a.report:
        from gradsift.report import Report, SampleView
        from gradsift.report.detection import detection_section
        from gradsift.report.trimming import headline, trimming_section

        rep = Report(f"Does trimming help? MNIST, {a.noise:.0%} {a.kind} label noise")
        tone, line = headline(res)
        rep.add_section("Overview").add_callout(line, tone=tone, title="Answer:")  # type: ignore[arg-type]
        trimming_section(rep, res)
        detection_section(
            rep,
            {k: v["scores"] for k, v in table_methods.items()},
            SampleView.from_split(data),
            flipped=data.train.flipped,
            title="Detection",
        )
        rep.save(a.report)
        print(f"report: {a.report}")


if __name__ == "__main__":
    main()
