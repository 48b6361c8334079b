"""What a detector may know besides the gradient matrix: the shared detection context.

Every detector is fitted and scored through one contract::

    det.fit(G, losses=None, *, context=None)        # or fit_score / score

Most detectors read only ``G`` and ``losses``. The self-influence detectors also need the
model that produced ``G`` (``self-if-*``: the Hessian of its training loss;
``self-tracin``: its checkpoints), and read it from a :class:`DetectionContext`;
:class:`~gradsift.detect.oga.OutlierGradientAnalysis` builds one per checkpoint and passes
it to every detector, so ``OGAConfig(detectors=["l2", "self-if-cg"])`` needs nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from gradsift.checkpoints import Checkpoint, CheckpointRecorder
    from gradsift.grads.layout import Block
    from gradsift.task import Task

__all__ = ["DetectionContext"]


@dataclass
class DetectionContext:
    """The data and model a detection run shares between its detectors.

    Attributes:
        gradients: per-sample gradients ``G`` ``[n, D]`` (float32/float64, possibly a
            memmap), row *i* = training sample *i*; used when ``fit``/``score`` get
            ``X=None``.
        losses: per-sample training losses float64 ``[n]``; used when ``losses=None``.
        model: the model ``G`` was computed from (at the checkpoint ``G`` was taken at).
        task: the loss and tracked parameters ``G`` was computed with.
        data: the training data (a ``Dataset`` or a tuple of arrays), row *i* = sample *i*.
        checkpoints: saved checkpoints (a :class:`~gradsift.checkpoints.CheckpointRecorder`
            or its checkpoints) with learning rates, for ``self-tracin``.
        weight_decay: the coupled L2 coefficient the model was trained with (enters the
            Hessian of ``self-if-*`` and DataInf's damping).
        layout: the blocks of ``G``'s columns (``GradientComputer(model, task).layout``,
            or a projector's ``out_blocks`` for projected ``G``); for ``self-datainf``.
    """

    gradients: np.ndarray | None = None
    losses: np.ndarray | None = None
    model: nn.Module | None = None
    task: Task | None = None
    data: Any = None
    checkpoints: Sequence[Checkpoint] | CheckpointRecorder | None = None
    weight_decay: float = 0.0
    layout: Sequence[Block] | None = None

    def missing(self, *names: str) -> list[str]:
        """The attributes among ``names`` that are unset (None, or no checkpoints)."""
        out = []
        for name in names:
            value = getattr(self, name)  # AttributeError names a typo
            if name == "checkpoints" and value is not None:
                value = getattr(value, "checkpoints", value) or None  # a recorder or a list
            if value is None:
                out.append(name)
        return out
