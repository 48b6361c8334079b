"""``gradsift score``: top-k influence or detector scores over a gradient store."""

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
    user_errors,
)


@app.command("score")
def score_cmd(
    store: Path = typer.Argument(..., help="Gradient store of the training rows."),
    detector: str = typer.Option(
        "l2", help="l1, l2, loss, random, iforest, ecod, knn, lof, pyod:<name>, or self-influence."
    ),
    out_path: Path | None = typer.Option(
        None,
        "--out",
        help="Output: .csv (scores, 1-based ranks, flags) or .npy (scores), .npz (top-k). "
        "Written by rank 0. Default: scores.csv or topk.npz.",
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
    verify: str = typer.Option(
        "full",
        help="Store check on open: full (sha256 of every shard, on rank 0 only) or header (sizes and headers).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Stream detector scores or pairwise top-k over a store in bounded memory; run under torchrun to split the rows."""
    from gradsift.config import parse_budget
    from gradsift.distributed.jobs import run_score

    if verify not in ("full", "header"):
        fail(f"--verify must be full or header, got {verify!r}")
    default = "topk.npz" if test is not None else "scores.csv"
    check_output(out_path or Path(default), "--out", overwrite)
    with user_errors():
        summary = run_score(
            str(store),
            out=str(out_path) if out_path else None,
            detector=detector,
            sample_size=sample_size,
            seed=seed,
            budget=parse_budget(budget),
            test=str(test) if test else None,
            k=k,
            metric=metric,
            preconditioner=str(preconditioner) if preconditioner else None,
            block_rows=block_rows,
            verify=verify,  # type: ignore[arg-type]
        )
    if summary["is_main"]:
        if as_json:
            emit_json(summary)
        else:
            what = (
                f"top-{summary['k']} ({summary['metric']}) of {summary['n_test']} test rows"
                if summary["mode"] == "topk"
                else f"{shown(summary['detector'])} scores, {summary['n_flagged']} flagged"
            )
            out.print(
                f"{what} over {summary.get('rows', summary.get('n'))} rows → {shown(summary['out'])} ({summary['world_size']} process(es), {summary['seconds']:.1f} s)"
            )
