"""Error correction (FastIF's application): fine-tune on the samples that help the errors.

For one seed:

1. train a model (seeded) on the training split;
2. take the validation points it misclassifies (at most ``max_points``);
3. find, per misclassified point, its ``n_helpful`` most helpful training samples (FastIF
   or any :func:`gradsift.influence.explain.explain` method; the measurement is the point's loss
   under its true label) and pool them (distinct rows);
4. fine-tune a copy of the model for ``steps`` mini-batch steps on the pool (**helpful**),
   and another copy, with the *identical* recipe and seed, on as many training samples
   drawn at random (**control**);
5. report the change in accuracy on the held-out **test** split, and how many of the
   misclassified validation points each arm fixed.

:func:`error_correction` repeats this over ``seeds`` and
:meth:`CorrectionResult.summary` gives mean ± std. Validation picks the points to
correct; the test split is only ever measured.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import LabeledData
from gradsift.experiments.training import TrainConfig, accuracy, predict_proba, train_classifier
from gradsift.influence.explain import EXPLAIN_METHODS, explain
from gradsift.influence.fastif import FastIFConfig
from gradsift.influence.neighbors import IndexConfig
from gradsift.progress import track
from gradsift.task import ClassificationTask, Task

__all__ = [
    "CorrectionConfig",
    "CorrectionResult",
    "finetune",
    "correct_errors",
    "error_correction",
]


@dataclass(frozen=True)
class CorrectionConfig:
    """Settings of the error-correction experiment.

    Attributes:
        n_helpful: most helpful training samples taken per misclassified point.
        max_points: cap on misclassified validation points (the first ones, in order).
        steps, lr, batch_size, optimizer, weight_decay: the fine-tuning recipe, shared by
            both arms (mini-batches drawn without replacement, reshuffled each pass).
        method: how helpful samples are found (``fastif`` or an influence method).
        k: FastIF candidates per point. damping: of the inverse-HVP solver.
        seeds: one full run (training, control draw, fine-tuning order) per seed.
    """

    n_helpful: int = 10
    max_points: int | None = 50
    steps: int = 20
    lr: float = 1e-2
    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = 0.0
    method: str = "fastif"
    k: int = 1000
    damping: float = DEFAULT_DAMPING
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if self.n_helpful < 1 or self.steps < 1 or self.batch_size < 1:
            raise GradsiftError("n_helpful, steps and batch_size must be >= 1")
        if not self.lr > 0:
            raise GradsiftError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise GradsiftError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.method not in EXPLAIN_METHODS:
            raise GradsiftError(f"unknown method {self.method!r}; use one of {EXPLAIN_METHODS}")
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise GradsiftError(
                f"give distinct seeds (three or more for mean ± std), got {list(self.seeds)}"
            )
        if self.max_points is not None and self.max_points < 1:
            raise GradsiftError(f"max_points must be >= 1 or None, got {self.max_points}")


@dataclass
class CorrectionResult:
    """Per-seed rows and the settings.

    ``runs`` columns: ``seed``, ``n_misclassified`` (validation points corrected),
    ``n_samples`` (fine-tuning set size, both arms), ``test_acc_base``,
    ``test_acc_helpful``, ``test_acc_random``, ``delta_helpful`` / ``delta_random``
    (test accuracy change), ``fixed_helpful`` / ``fixed_random`` (fraction of the
    misclassified validation points now correct).
    """

    runs: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Mean and sample std over seeds of every numeric column but ``seed``."""
        cols = [c for c in self.runs.columns if c != "seed"]
        return pd.DataFrame({"mean": self.runs[cols].mean(), "std": self.runs[cols].std(ddof=1)})

    def to_markdown(self) -> str:
        """Table ``arm | Δ test accuracy | fixed`` as mean ± std over seeds."""
        s = self.summary()
        lines = [
            f"| arm | Δ test accuracy (mean ± std, {len(self.runs)} seeds) | "
            "misclassified val points fixed |",
            "|---|---|---|",
        ]
        for arm in ("helpful", "random"):
            d, f = s.loc[f"delta_{arm}"], s.loc[f"fixed_{arm}"]
            lines.append(
                f"| {arm} | {d['mean']:+.4f} ± {d['std']:.4f} | {f['mean']:.3f} ± {f['std']:.3f} |"
            )
        return "\n".join(lines)


def finetune(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    optimizer: Literal["sgd", "adam"] = "sgd",
    weight_decay: float = 0.0,
) -> nn.Module:
    """A fine-tuned **copy** of ``model``: ``steps`` mini-batch steps of mean cross-entropy
    on ``(X [r, ...], y [r])``; batches are seeded passes over a permutation of the rows.

    Same inputs and seed give bit-identical weights. The copy is returned in eval mode.
    """
    if len(X) == 0 or len(X) != len(y):
        raise GradsiftError(
            f"fine-tuning needs equally many rows and labels, got {len(X)}, {len(y)}"
        )
    tuned = copy.deepcopy(model)
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
        if optimizer == "sgd"
        else torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    )
    first = next(iter(tuned.parameters()))
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32)).to(first.device, first.dtype)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64)).to(first.device)
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.int64)
    tuned.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            if len(order) < min(batch_size, len(Xt)):
                order = torch.cat([order, torch.randperm(len(Xt), generator=gen)])
            idx, order = order[:batch_size], order[batch_size:]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(tuned(Xt[idx]), yt[idx]).backward()
            opt.step()
    return tuned.eval()


def correct_errors(
    model: nn.Module,
    data: LabeledData,
    config: CorrectionConfig,
    seed: int,
    task: Task | None = None,
    train_weight_decay: float = 0.0,
) -> dict[str, Any]:
    """One run on a trained ``model``: helpful vs random fine-tuning (see the module doc).

    Returns a row of :attr:`CorrectionResult.runs` plus ``helpful_rows`` / ``random_rows``
    (the fine-tuning sets, int64 arrays).
    """
    task = task or ClassificationTask()
    model.eval()
    val_pred = predict_proba(model, data.val.X).argmax(1)
    wrong = np.flatnonzero(val_pred != data.val.y)
    if config.max_points is not None:
        wrong = wrong[: config.max_points]
    if len(wrong) == 0:
        raise GradsiftError("the model misclassifies no validation point: nothing to correct")
    train = (torch.as_tensor(data.train.X), torch.as_tensor(data.train.y))
    val = (torch.as_tensor(data.val.X), torch.as_tensor(data.val.y))
    expl = explain(
        model,
        task,
        train,
        val,
        wrong,
        method=config.method,
        top=config.n_helpful,
        heatmap_top=0,
        damping=config.damping,
        weight_decay=train_weight_decay,
        fastif_config=FastIFConfig(k=config.k, index=IndexConfig(backend="flat", metric="l2")),
    )
    helpful = np.unique(expl.helpful_indices[expl.helpful_indices >= 0])
    rng = np.random.default_rng(seed)
    control = np.sort(rng.choice(len(data.train), size=len(helpful), replace=False))
    recipe = {
        "steps": config.steps,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "seed": seed,
        "optimizer": config.optimizer,
        "weight_decay": config.weight_decay,
    }
    arms = {
        arm: finetune(model, data.train.X[rows], data.train.y[rows], **recipe)  # type: ignore[arg-type]
        for arm, rows in (("helpful", helpful), ("random", control))
    }
    base = accuracy(model, data.test.X, data.test.y)
    row: dict[str, Any] = {
        "seed": seed,
        "n_misclassified": len(wrong),
        "n_samples": len(helpful),
        "test_acc_base": base,
    }
    for arm, tuned in arms.items():
        row[f"test_acc_{arm}"] = accuracy(tuned, data.test.X, data.test.y)
    for arm, tuned in arms.items():
        row[f"delta_{arm}"] = row[f"test_acc_{arm}"] - base
        fixed = predict_proba(tuned, data.val.X[wrong]).argmax(1) == data.val.y[wrong]
        row[f"fixed_{arm}"] = float(fixed.mean())
    row["helpful_rows"], row["random_rows"] = helpful, control
    return row


def error_correction(
    data: LabeledData,
    build_model: Callable[[int], nn.Module],
    train_config: TrainConfig,
    config: CorrectionConfig = CorrectionConfig(),
    task: Task | None = None,
) -> CorrectionResult:
    """The experiment over ``config.seeds``: per seed, train ``build_model(seed)`` with
    ``train_config`` (its seed replaced) and run :func:`correct_errors`."""
    rows = []
    for seed in track(list(config.seeds), "error correction seeds"):
        model = build_model(seed)
        tc = TrainConfig(**{**asdict(train_config), "seed": seed})
        train_classifier(model, data.train.X, data.train.y, tc, progress=False)
        row = correct_errors(model, data, config, seed, task, tc.weight_decay)
        rows.append({k: v for k, v in row.items() if not k.endswith("_rows")})
    return CorrectionResult(
        runs=pd.DataFrame(rows),
        settings={"correction": asdict(config), "train": asdict(train_config)},
    )
