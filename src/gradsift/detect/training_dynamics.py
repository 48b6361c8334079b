"""Training-dynamics detectors: area under the margin (``aum``) and forgetting (``forgetting``).

Both read how each training sample's prediction evolved over the checkpoints the
:class:`~gradsift.checkpoints.CheckpointRecorder` saved, so they cost no extra training:
one eval-mode forward pass over the training data per checkpoint. They read the model
(architecture), task, training data and checkpoints from the
:class:`~gradsift.detect.context.DetectionContext`;
:class:`~gradsift.detect.oga.OutlierGradientAnalysis` builds one, so
``OGAConfig(detectors=["aum", "l2"])`` needs nothing more. ``X`` / ``losses`` only give
the row count, which must equal the number of rows in ``context.data``.

The **margin** of sample *i* at checkpoint *k* is ``z_k[i, y_i] − max_{c≠y_i} z_k[i, c]``
(``z``: the logits, ``y_i``: the *given*, possibly wrong, label); for a one-logit binary
model the logits are read as ``[0, z]``. Scores (float64 ``[n]``, higher = more suspicious):

- ``aum`` (Pleiss et al. 2020, "Identifying mislabeled data using the area under the margin
  ranking"): ``−mean_k margin_k[i]``. A mislabeled sample's given label keeps losing to the
  class the rest of the data teaches, so its margin stays negative until it is memorised.
- ``forgetting`` (after Toneva et al. 2019): the number of forgetting events, epochs *k*
  where the sample was classified as its given label at *k − 1* (margin > 0) and is not at
  *k*. Samples never classified as their given label count as forgotten at every epoch
  (``never_learned="max"``, Toneva et al.'s convention: their count is the number of
  checkpoints, above any count a learned sample can reach), or as 0 with
  ``never_learned="count"``. Ties in the count (most samples have 0 or 1 events) are broken
  by the mean margin: the score is ``count + t`` with ``t ∈ [0, 1)`` the rank of
  ``−mean margin`` divided by ``n``, so the integer part is the count.

**Which checkpoints** (``window``): a model trained long enough memorises its noisy labels,
after which flipped samples have positive margins too; averaging over those epochs dilutes
the signal. ``window="early-stop"`` (the default) uses the epoch-end checkpoints up to the
epoch :func:`~gradsift.detect.checkpoint_choice.choose_epoch` picks from the validation
metrics the checkpoints carry (``val_accuracy``, and ``val_loss`` when recorded), or all of
them when the checkpoints carry no validation metrics (e.g. a run retrained for the chosen
number of epochs, as the detect path does). ``window="all"`` uses every epoch-end checkpoint;
an ``int`` uses epochs ``1..window``. Measured by ``benchmarks/detect_path.py`` (AUROC over a
50-epoch run that memorises, 3 seeds): AUM over epochs 1..e (e = the noisy-validation-loss
minimum) 0.988 / 0.966 / 0.996 on MNIST-8k symmetric / class-pair / digits, over all epochs
0.901 / 0.910 / 0.990; forgetting 0.988 / 0.959 / 0.995 vs 0.894 / 0.927 / 0.986, and with
never-learned samples counted as 0 instead of ``K`` 0.968 / 0.940 / 0.977 (epochs 1..e). Hence
the defaults ``window="early-stop"`` and ``never_learned="max"``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from gradsift.checkpoints import Checkpoint, CheckpointRecorder
from gradsift.influence.hessian import BatchSource
from gradsift.task import Task

from .checkpoint_choice import choose_epoch
from .registry import register
from .self_influence import _ModelDetector

__all__ = [
    "AUMDetector",
    "ForgettingDetector",
    "aum_scores",
    "checkpoint_margins",
    "epoch_checkpoints",
    "forgetting_events",
    "forgetting_scores",
    "label_margins",
]


def label_margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Assigned-label logit minus the largest other logit, float64 ``[B]``.

    ``logits``: ``[B, C]`` (``C >= 2``), or ``[B]`` / ``[B, 1]`` for a binary model (read
    as logits ``[0, z]``, so the margin is ``z`` for label 1 and ``−z`` for label 0).
    ``targets``: int ``[B]`` given labels.
    """
    z = logits.reshape(logits.shape[0], -1).double()
    y = targets.reshape(-1).long()
    if z.shape[1] == 1:
        return torch.where(y == 1, z[:, 0], -z[:, 0])
    assigned = z.gather(1, y[:, None])[:, 0]
    others = z.scatter(1, y[:, None], float("-inf"))
    return assigned - others.max(dim=1).values


def epoch_checkpoints(checkpoints: Any) -> list[Checkpoint]:
    """The epoch-end checkpoints (those with metrics) of a recorder or list, by epoch;
    all of them when none carries metrics."""
    ckpts = list(getattr(checkpoints, "checkpoints", checkpoints) or [])
    ends = [c for c in ckpts if c.metrics] or ckpts
    return sorted(ends, key=lambda c: (c.epoch, c.step))


def _window(ckpts: list[Checkpoint], window: str | int) -> tuple[list[Checkpoint], str]:
    """The checkpoints of ``window`` and a one-line reason."""
    if isinstance(window, int) and not isinstance(window, bool):
        kept = [c for c in ckpts if c.epoch <= window]
        return kept, f"epochs 1–{window}"
    if window == "all":
        return ckpts, f"all {len(ckpts)} recorded epochs"
    if window != "early-stop":
        raise ValueError(f"window must be 'early-stop', 'all' or an epoch, got {window!r}")
    if not all("val_accuracy" in c.metrics for c in ckpts):
        return ckpts, f"all {len(ckpts)} recorded epochs (no validation metrics to stop on)"
    metrics = {k: [c.metrics.get(k) for c in ckpts] for k in ("val_accuracy", "val_loss")}
    loss = None if None in metrics["val_loss"] else metrics["val_loss"]
    choice = choose_epoch(val_accuracy=metrics["val_accuracy"], val_loss=loss)
    stop = ckpts[choice.epoch - 1].epoch
    kept = [c for c in ckpts if c.epoch <= stop]
    return kept, f"epochs up to the early-stopping point; {choice.reason}"


@torch.no_grad()
def checkpoint_margins(
    model: torch.nn.Module,
    task: Task,
    data: Any,
    checkpoints: Sequence[Checkpoint],
    batch_size: int = 1024,
) -> np.ndarray:
    """Margins float64 ``[K, n]``: row *k* = :func:`label_margins` of every sample of
    ``data`` under ``checkpoints[k]`` (loaded into a copy of ``model``, eval mode)."""
    net = copy.deepcopy(model)
    param = next(iter(net.parameters()), None)
    device = None if param is None else param.device
    dtype = None if param is None else param.dtype
    source = BatchSource(data, device=device, dtype=dtype)
    out = np.empty((len(checkpoints), len(source)), dtype=np.float64)
    for k, ckpt in enumerate(checkpoints):
        CheckpointRecorder.load_into(net, ckpt).eval()
        for start, batch in source.batches(batch_size):
            m = label_margins(task.forward(net, batch), task.targets(batch))
            out[k, start : start + m.shape[0]] = m.cpu().numpy()
    return out


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Forgetting events int64 ``[n]`` from ``correct`` bool ``[K, n]`` (epoch order):
    the number of *k* with ``correct[k−1] & ~correct[k]``."""
    c = np.asarray(correct, dtype=bool)
    return (c[:-1] & ~c[1:]).sum(axis=0).astype(np.int64)


def aum_scores(margins: np.ndarray) -> np.ndarray:
    """AUM detection scores float64 ``[n]``: ``−mean_k margins[k]`` (``margins`` ``[K, n]``)."""
    return -np.asarray(margins, dtype=np.float64).mean(axis=0)


def forgetting_scores(margins: np.ndarray, never_learned: str = "max") -> np.ndarray:
    """Forgetting detection scores float64 ``[n]`` from margins ``[K, n]`` (epoch order):
    the count of forgetting events (``K`` for never-learned samples with
    ``never_learned="max"``) plus the mean-margin tie-break in ``[0, 1)``."""
    if never_learned not in ("max", "count"):
        raise ValueError(f"never_learned must be 'max' or 'count', got {never_learned!r}")
    m = np.asarray(margins, dtype=np.float64)
    correct = m > 0
    counts = forgetting_events(correct).astype(np.float64)
    if never_learned == "max":
        counts[~correct.any(axis=0)] = m.shape[0]
    return counts + (rankdata(-m.mean(axis=0), method="average") - 1.0) / m.shape[1]


class _DynamicsDetector(_ModelDetector):
    """Reads the margins of ``context.data`` at the context's checkpoints (cached)."""

    needs_gradients = False
    context_needs = ("model", "task", "data", "checkpoints")

    def __init__(self, *, window: str | int = "early-stop", batch_size: int = 1024) -> None:
        if not (isinstance(window, int) or window in ("early-stop", "all")):
            raise ValueError(f"window must be 'early-stop', 'all' or an epoch, got {window!r}")
        self.window, self.batch_size = window, batch_size
        self._margins: np.ndarray | None = None
        self._epochs: list[int] = []
        self._why = ""

    def _use_context(self, context: Any) -> None:
        if context is not self.context:
            self._margins = None
        super()._use_context(context)

    def margins(self) -> np.ndarray:
        """Margins float64 ``[K, n]`` at the window's checkpoints."""
        if self._margins is None:
            ctx = self._required_context()
            ckpts, self._why = _window(epoch_checkpoints(ctx.checkpoints), self.window)
            if not ckpts:
                raise ValueError(f"detector {self.name!r}: no checkpoint in window {self.window!r}")
            self._epochs = [c.epoch for c in ckpts]
            self._margins = checkpoint_margins(
                ctx.model,  # type: ignore[arg-type]
                ctx.task,  # type: ignore[arg-type]
                ctx.data,
                ckpts,
                self.batch_size,
            )
        return self._margins

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        n = X.shape[0] if X is not None else len(losses)  # type: ignore[arg-type]
        margins = self.margins()
        if margins.shape[1] != n:
            raise ValueError(
                f"detector {self.name!r} scores the {margins.shape[1]} rows of the context's "
                f"data, but X has {n}"
            )
        return self._from_margins(margins)

    def _from_margins(self, margins: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "window": self.window,
            "epochs": self._epochs,
            "why": self._why,
        }


@register("aum")
class AUMDetector(_DynamicsDetector):
    """Area under the margin: ``score_i = −mean_k margin_k[i]`` over the window's epochs.

    Args:
        window: ``"early-stop"`` (default), ``"all"`` or the last epoch to include.
        batch_size: rows per forward pass.
    """

    def _from_margins(self, margins: np.ndarray) -> np.ndarray:
        return aum_scores(margins)


@register("forgetting")
class ForgettingDetector(_DynamicsDetector):
    """Forgetting events plus a mean-margin tie-break in ``[0, 1)`` (see the module doc).

    Args:
        window: ``"early-stop"`` (default), ``"all"`` or the last epoch to include.
        never_learned: ``"max"`` (default, Toneva et al.): a sample never classified as
            its given label gets the count ``K`` (number of checkpoints); ``"count"``: 0.
        batch_size: rows per forward pass.
    """

    def __init__(
        self,
        *,
        window: str | int = "early-stop",
        never_learned: str = "max",
        batch_size: int = 1024,
    ) -> None:
        forgetting_scores(np.ones((1, 1)), never_learned)  # validates never_learned
        super().__init__(window=window, batch_size=batch_size)
        self.never_learned = never_learned

    def _from_margins(self, margins: np.ndarray) -> np.ndarray:
        return forgetting_scores(margins, self.never_learned)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "never_learned": self.never_learned}
