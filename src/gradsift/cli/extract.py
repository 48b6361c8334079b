"""``gradsift extract``: per-sample gradients into an on-disk store (sharded under torchrun)."""

from __future__ import annotations

from pathlib import Path

import typer

from gradsift.cli.app import (
    app,
    emit_json,
    fail,
    out,
    shown,
    user_errors,
)


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
        0,
        "--project-dim",
        "--proj-dim",
        help="Random projection dimension per tracked block (0: none); for kronecker, k_in per layer.",
    ),
    projection_kind: str = typer.Option(
        "rademacher",
        "--projection-kind",
        "--projection",
        help="gaussian, rademacher, sparse, or kronecker: each Linear/Conv2d layer's gradient "
        "projected as P_out^T G P_in (k_out x k_in numbers) from its inputs and output "
        "gradients, without forming G.",
    ),
    proj_dim_out: int = typer.Option(
        0,
        "--proj-dim-out",
        "--project-dim-out",
        help="kronecker only: k_out per layer (0: same as --proj-dim).",
    ),
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
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Discard a store made with other settings."
    ),
    device: str = typer.Option(
        "auto", help="auto (the rank's GPU under nccl, else CPU), cpu, cuda:N."
    ),
    verify: str = typer.Option(
        "full",
        help="Check of the shards of an earlier run before resuming: full (sha256) or header (sizes and headers).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Per-sample gradients into a sharded store. Run under torchrun to split the shards over processes and nodes."""
    from gradsift.distributed.jobs import run_extract
    from gradsift.task import parse_tracked

    if verify not in ("full", "header"):
        fail(f"--verify must be full or header, got {verify!r}")
    _check_projection(project_dim, projection_kind, proj_dim_out)
    builtin = None
    with user_errors():
        if dataset:  # the built-in data sets need scikit-learn: import only when asked for
            from gradsift.experiments.pipeline import BuiltinModel

            ckpt = str(checkpoint) if checkpoint else None
            builtin = BuiltinModel(dataset, arch, ckpt, epochs, noise, seed, split)
        summary = run_extract(
            str(store),
            model=model,
            builtin=builtin,
            tracked=parse_tracked(tracked) if tracked else None,
            project_dim=project_dim,
            projection_kind=projection_kind,
            projection_seed=projection_seed,
            projection_dim_out=proj_dim_out or None,
            rows_per_shard=rows_per_shard,
            batch_size=batch_size,
            dtype=dtype,
            method=method,
            measurement=measurement,
            overwrite=overwrite,
            device=device,
            verify=verify,  # type: ignore[arg-type]
        )
    if summary["is_main"]:
        if as_json:
            emit_json(summary)
        else:
            repaired = f" {shown(summary['shards_repaired'])}" if summary["shards_repaired"] else ""
            out.print(
                f"{shown(summary['store'])}: {summary['rows']} rows × {summary['dim']} ({summary['dtype']}), {summary['shards']} shards: "
                f"{summary['shards_written']} written, {summary['shards_resumed']} resumed, "
                f"{len(summary['shards_repaired'])} repaired{repaired}; {summary['world_size']} process(es), "
                f"backend {summary['backend']}, {summary['seconds']:.1f} s"
            )


KINDS = ("gaussian", "rademacher", "sparse", "kronecker")


def _check_projection(dim: int, kind: str, dim_out: int) -> None:
    """Refuse an impossible projection before any work (one line, exit 2)."""
    if kind not in KINDS:
        fail(f"--projection-kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if dim < 0 or dim_out < 0:
        fail("--proj-dim and --proj-dim-out must be >= 0")
    if kind == "kronecker" and dim == 0:
        fail("--projection kronecker needs --proj-dim K (k_in per layer)")
    if dim_out and kind != "kronecker":
        fail(f"--proj-dim-out is a setting of --projection kronecker, not of {kind!r}")
