"""Choosing each method's trimming budget on validation accuracy only."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

__all__ = ["ValidationRuns", "choose_budgets"]


@dataclass(frozen=True)
class ValidationRuns:
    """What the budget chooser may see: one validation accuracy per (method, budget, seed).

    It has no test field by construction; build it with :meth:`from_runs`, which copies
    only the columns below.
    """

    method: tuple[str, ...]
    budget: tuple[float, ...]
    seed: tuple[int, ...]
    val_accuracy: tuple[float, ...]

    COLUMNS = ("method", "budget", "seed", "val_accuracy")

    @classmethod
    def from_runs(cls, runs: pd.DataFrame) -> ValidationRuns:
        """Copy the validation columns of a runs table (nothing else is read)."""
        cols = {c: runs[c].tolist() for c in cls.COLUMNS}
        return cls(
            method=tuple(map(str, cols["method"])),
            budget=tuple(map(float, cols["budget"])),
            seed=tuple(map(int, cols["seed"])),
            val_accuracy=tuple(map(float, cols["val_accuracy"])),
        )


def choose_budgets(val: ValidationRuns) -> dict[str, float]:
    """Per method, the budget with the highest mean validation accuracy over seeds.

    Ties go to the smaller budget (remove less). Only :class:`ValidationRuns` is accepted,
    so test accuracy cannot influence the choice.
    """
    if not isinstance(val, ValidationRuns):
        raise TypeError(
            f"choose_budgets takes ValidationRuns (validation accuracies only), "
            f"got {type(val).__name__}"
        )
    frame = pd.DataFrame({c: getattr(val, c) for c in ValidationRuns.COLUMNS})
    means = frame.groupby(["method", "budget"], sort=True)["val_accuracy"].mean().reset_index()
    chosen: dict[str, float] = {}
    for method, grp in means.groupby("method", sort=False):
        grp = grp.sort_values("budget", kind="stable")
        best = grp["val_accuracy"].max()
        chosen[str(method)] = float(grp.loc[grp["val_accuracy"] >= best - 1e-12, "budget"].iloc[0])
    return chosen
