"""Choosing the early-stopping epoch from a *noisy* validation curve.

``gradsift detect`` has no clean labels: its validation rows carry the same label noise as
the training rows, so the per-epoch validation accuracy is small, flat and tied (a 20%-noisy
split of 1,600 rows has a standard error of about 1 point, larger than the differences
between epochs), and its first maximum is often epoch 1–6, long before the model has
learned the clean structure. Gradients taken there separate flipped from clean samples
worse than at the checkpoint a clean validation set would pick.

The rules (all take per-epoch arrays; epoch ``k`` is index ``k − 1``):

=====================  ======================================================================
``max-accuracy``       first maximum of the raw accuracy (what the detect path did before)
``min-loss``           minimum of the noisy-validation cross-entropy (needs the loss curve)
``smoothed-accuracy``  maximum of the accuracy averaged over a centred window of ``smooth``
                       epochs, ties (within ``tie_tol``) broken toward the *later* epoch
``window``             the epoch of ``window_of`` (default ``min-loss``) and its
                       ``half_width`` neighbours on each side (a checkpoint ensemble)
=====================  ======================================================================

Every rule returns an :class:`EpochChoice`: the epoch to take gradients at (or to retrain
for), the window of epochs for an ensemble, the rule's name and a one-line reason that the
detect table, JSON and report show as they are.

The default (:data:`DEFAULT_RULE` = ``window``) was measured by ``benchmarks/detect_path.py``
(MNIST-8k with 20% symmetric and 20% class-pair noise, digits with 20% symmetric noise; 3
seeds; l2 AUROC of the user path minus that of the clean-validation choice, mean and worst
seed): ``window`` +0.013 / +0.010 / +0.001 (worst −0.0003), ``min-loss`` +0.005 / −0.011 /
+0.001 (worst −0.032), ``max-accuracy`` +0.006 / −0.021 / +0.001 (worst −0.032),
``smoothed-accuracy`` −0.000 / −0.026 / +0.001 (worst −0.080). Only ``window`` stays within
0.005 of the clean-validation path on every setting and seed: a single epoch chosen on a
noisy curve is off by a few epochs, and the l2 scores of neighbouring epochs average out
that error (the ensemble is also better than any single epoch on MNIST). The noisy-validation
loss places the window better than the accuracy does: under class-pair noise the noisy
accuracy keeps rising while the model learns the flips, the loss turns up when it starts to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_RULE", "RULES", "EpochChoice", "choose_epoch", "smoothed"]

RULES = ("max-accuracy", "min-loss", "smoothed-accuracy", "window")
#: The rule the detect path uses (measured in ``benchmarks/detect_path.py``, see above).
DEFAULT_RULE = "window"


@dataclass(frozen=True)
class EpochChoice:
    """The chosen early-stopping epoch and why.

    Attributes:
        epoch: the 1-based epoch to take gradients at (or retrain for).
        epochs: the epochs to score (``(epoch,)``; for ``window`` the ensemble window,
            ascending, containing ``epoch``). Retrain for ``max(epochs)`` epochs.
        rule: the rule that chose it (one of :data:`RULES`).
        reason: one line for tables and reports, e.g. ``"epoch 12: highest 5-epoch
            smoothed noisy-validation accuracy (0.781; later epoch kept on ties)"``.
    """

    epoch: int
    epochs: tuple[int, ...]
    rule: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"epoch", "epochs", "rule", "reason"}``."""
        out = asdict(self)
        out["epochs"] = list(self.epochs)
        return out


def smoothed(values: Sequence[float], width: int) -> np.ndarray:
    """Centred moving average float64 ``[E]``; the window shrinks at both ends.

    ``width`` (odd, >= 1) epochs are averaged around each epoch; near the ends only the
    epochs that exist are, so a curve of length ``E`` stays length ``E``.
    """
    v = np.asarray(values, dtype=np.float64)
    if width < 1 or width % 2 == 0:
        raise ValueError(f"smoothing width must be an odd integer >= 1, got {width}")
    half = width // 2
    csum = np.concatenate([[0.0], np.cumsum(v)])
    lo = np.clip(np.arange(v.size) - half, 0, v.size)
    hi = np.clip(np.arange(v.size) + half + 1, 0, v.size)
    return (csum[hi] - csum[lo]) / (hi - lo)


def _curve(values: Any, name: str, length: int | None = None) -> np.ndarray | None:
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return None
    if not np.isfinite(v).all():
        raise ValueError(f"{name} has NaN/Inf at epochs {(np.flatnonzero(~np.isfinite(v)) + 1)}")
    if length is not None and v.size != length:
        raise ValueError(f"{name} has {v.size} epochs but the accuracy curve has {length}")
    return v


def _plateau(acc: np.ndarray, tol: float) -> str:
    """``"accuracy plateau a–b"``: the epochs (a contiguous run around the best) within
    ``tol`` of the best raw accuracy."""
    best = int(np.argmax(acc))
    near = acc >= acc[best] - tol
    a = b = best
    while a > 0 and near[a - 1]:
        a -= 1
    while b < acc.size - 1 and near[b + 1]:
        b += 1
    return f"accuracy plateau {a + 1}–{b + 1}"


def choose_epoch(
    history: Any = None,
    *,
    val_accuracy: Sequence[float] | None = None,
    val_loss: Sequence[float] | None = None,
    rule: str = DEFAULT_RULE,
    smooth: int = 5,
    half_width: int = 2,
    tie_tol: float = 1e-9,
    window_of: str = "min-loss",
) -> EpochChoice:
    """Choose the early-stopping epoch from noisy per-epoch validation metrics.

    Args:
        history: a :class:`~gradsift.experiments.training.History` (its
            ``val_accuracy`` and, when it has one, ``val_loss``), or None.
        val_accuracy: per-epoch validation accuracy ``[E]`` (overrides ``history``'s).
        val_loss: per-epoch mean validation cross-entropy ``[E]`` (overrides
            ``history``'s); only ``min-loss`` reads it.
        rule: one of :data:`RULES`. ``min-loss`` without a loss curve falls back to
            ``smoothed-accuracy`` and says so in the reason.
        smooth: odd width of the moving average of ``smoothed-accuracy`` / ``window``.
        half_width: epochs on each side of the chosen one in the ``window`` ensemble.
        tie_tol: smoothed accuracies within ``tie_tol`` of the best count as tied.
        window_of: the single-epoch rule whose epoch the ``window`` rule centres on.

    Returns:
        :class:`EpochChoice` (1-based epochs).

    Raises:
        ValueError: unknown rule, no accuracy curve, or curves of different lengths.
    """
    if rule not in RULES:
        raise ValueError(f"unknown checkpoint rule {rule!r}; choose one of {', '.join(RULES)}")
    if val_accuracy is None and history is not None:
        val_accuracy = getattr(history, "val_accuracy", None)
    if val_loss is None and history is not None:
        val_loss = getattr(history, "val_loss", None)
    acc = _curve(val_accuracy, "val_accuracy")
    if acc is None:
        raise ValueError("choosing an epoch needs the per-epoch validation accuracy")
    loss = _curve(val_loss, "val_loss", acc.size)
    plateau = _plateau(acc, 1.0 / 200)  # half a point: the plateau shown in the reason

    e, chosen_by, why = _single(window_of if rule == "window" else rule, acc, loss, smooth, tie_tol)
    if rule != "window":
        return EpochChoice(e, (e,), chosen_by, f"epoch {e}: {why}; {plateau}")
    window = tuple(range(max(1, e - half_width), min(acc.size, e + half_width) + 1))
    return EpochChoice(
        e, window, rule, f"epochs {window[0]}–{window[-1]} around epoch {e}: {why}; {plateau}"
    )


def _single(
    rule: str, acc: np.ndarray, loss: np.ndarray | None, smooth: int, tie_tol: float
) -> tuple[int, str, str]:
    """``(epoch, rule that chose it, reason)`` for a single-epoch rule."""
    if rule == "max-accuracy":
        e = int(np.argmax(acc)) + 1
        return e, rule, f"first highest noisy-validation accuracy ({acc[e - 1]:.3f})"
    if rule == "min-loss" and loss is not None:
        e = int(np.argmin(loss)) + 1
        return e, rule, f"lowest noisy-validation loss ({loss[e - 1]:.3f})"
    if rule not in ("min-loss", "smoothed-accuracy"):
        raise ValueError(f"window_of must be a single-epoch rule, got {rule!r}")
    width = min(smooth, acc.size if acc.size % 2 else acc.size - 1)
    s = smoothed(acc, width)
    e = int(np.flatnonzero(s >= s.max() - tie_tol)[-1]) + 1
    note = " (no validation loss recorded)" if rule == "min-loss" else ""
    why = (
        f"highest {width}-epoch smoothed noisy-validation accuracy ({s[e - 1]:.3f}; "
        f"later epoch kept on ties){note}"
    )
    return e, "smoothed-accuracy", why
