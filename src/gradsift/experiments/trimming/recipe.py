"""The seeded training recipe every run of a trimming experiment uses, and the experiment's settings."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import nn

from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import dataset_key
from gradsift.experiments.models import build_model
from gradsift.experiments.training import TrainConfig

__all__ = ["DEFAULT_BUDGETS", "DEFAULT_RECIPES", "Recipe", "TrimConfig", "recipe_for"]

#: Default trimming budgets (fractions of the training set).
DEFAULT_BUDGETS: tuple[float, ...] = (0.025, 0.05, 0.10, 0.20)
ModelFactory = Callable[[tuple[int, ...], int, int], nn.Module]


@dataclass(frozen=True)
class Recipe:
    """A seeded training recipe; every run of an experiment trains with it.

    The model of seed ``s`` is built with initialisation seed ``s`` and trained with
    ``TrainConfig(seed=s)`` (mini-batch order, dropout), so for a given seed every arm
    starts from the same weights and differs only in its training set.

    Attributes:
        model: a :func:`gradsift.experiments.models.build_model` name (``"mlp"``, ``"cnn"``,
            ``"logreg"``), or a module-level factory ``(in_shape, n_classes, seed) ->
            nn.Module`` (it must be importable by worker processes; the cache key uses its
            qualified name, so use a new cache folder after changing its code).
        model_kwargs: keyword arguments for ``build_model`` (e.g. ``{"hidden": (512,)}``).
        epochs, batch_size, lr, optimizer, momentum, weight_decay: as in
            :class:`~gradsift.experiments.training.TrainConfig`.
        select: ``"final"`` evaluates the model after the last epoch; ``"best_val"`` the
            epoch with the best validation accuracy (early stopping, on validation only).
    """

    model: str | ModelFactory = "mlp"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    select: Literal["final", "best_val"] = "final"

    def __post_init__(self) -> None:
        self.train_config(0)  # validates the optimiser settings
        if self.select not in ("final", "best_val"):
            raise ValueError(f"select must be 'final' or 'best_val', got {self.select!r}")
        if self.epochs < 1:
            raise ValueError(f"a trimming recipe needs epochs >= 1, got {self.epochs}")
        if not (isinstance(self.model, str) or callable(self.model)):
            raise TypeError(f"model must be a registry name or a factory, got {self.model!r}")

    def train_config(self, seed: int) -> TrainConfig:
        """The :class:`TrainConfig` of seed ``seed``."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            seed=seed,
        )

    def build(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> nn.Module:
        """A freshly initialised model for ``seed``."""
        if isinstance(self.model, str):
            return build_model(
                self.model, in_shape, n_classes, seed=seed, **dict(self.model_kwargs)
            )
        return self.model(in_shape, n_classes, seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (the factory by its qualified name)."""
        d = asdict(self)
        if not isinstance(self.model, str):
            d["model"] = f"{self.model.__module__}:{self.model.__qualname__}"
        d["model_kwargs"] = json.loads(json.dumps(dict(self.model_kwargs), default=list))
        return d


@dataclass(frozen=True)
class TrimConfig:
    """Settings of a trimming experiment.

    Attributes:
        budgets: fractions in ``(0, 1)`` of the training set to remove.
        seeds: training seeds (at least 3 for a mean ± std worth reporting).
        random_control: train the random-removal control at every budget.
        oracle: train the oracle (remove exactly the flipped samples), when known.
        n_jobs: worker processes (``0``: one per available core, capped by the number
            of runs; ``1``: run in this process).
        cache_dir: folder for finished runs (resumption); ``None`` disables caching.
        progress: show a progress bar.
    """

    budgets: Sequence[float] = DEFAULT_BUDGETS
    seeds: Sequence[int] = (0, 1, 2)
    random_control: bool = True
    oracle: bool = True
    n_jobs: int = 0
    cache_dir: str | os.PathLike[str] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ValueError("budgets is empty: give at least one fraction in (0, 1)")
        for b in self.budgets:
            if isinstance(b, bool) or not (isinstance(b, (float, int)) and 0 < float(b) < 1):
                raise ValueError(f"budgets must be fractions in (0, 1), got {b!r}")
        if len(set(map(float, self.budgets))) != len(self.budgets):
            raise ValueError(f"budgets has duplicates: {list(self.budgets)}")
        if not self.seeds:
            raise ValueError("seeds is empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has duplicates: {list(self.seeds)}")
        if self.n_jobs < 0:
            raise ValueError(f"n_jobs must be >= 0 (0 = one per core), got {self.n_jobs}")


DEFAULT_RECIPES: dict[str, Recipe] = {
    "mnist": Recipe(model="mlp", model_kwargs={"hidden": (256,)}, epochs=20, batch_size=128),
    "digits": Recipe(model="mlp", model_kwargs={"hidden": (128,)}, epochs=60, batch_size=32),
    "half_moons": Recipe(model="mlp", model_kwargs={"hidden": (32, 32)}, epochs=200, batch_size=32),
}


def recipe_for(
    dataset: str,
    model: str | None = None,
    hidden: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
) -> Recipe:
    """The data set's default recipe (:data:`DEFAULT_RECIPES`) with the given overrides.

    ``hidden`` sets one hidden layer of that width (MLP only).
    """
    base = DEFAULT_RECIPES.get(dataset_key(dataset), Recipe())
    changes: dict[str, Any] = {}
    if model is not None:
        changes["model"] = model
        if model != base.model:
            changes["model_kwargs"] = {}
    if hidden is not None:
        if (model or base.model) != "mlp":
            raise GradsiftError("hidden applies to the mlp model only")
        changes["model_kwargs"] = {"hidden": (int(hidden),)}
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            changes[name] = value
    return dataclasses.replace(base, **changes)
