"""What gradsift needs to know about a model: the ``Task``.

A task says how to run the model on a batch, how to turn the outputs into one loss
per sample, what to measure on the test side, and which parameters are tracked.
The engine only *calls* the model (``task.forward(model, batch)``), so a
``torch.func.functional_call`` proxy can stand in for it during ``vmap``.

Subclass :class:`Task` for your own model (a Hugging Face causal LM with LoRA
adapters is a task whose ``forward`` calls ``model(**batch).logits`` and whose
``loss`` masks the prompt tokens, with ``tracked = "lora"``).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gradsift.errors import GradientError

TrackSpec = Literal["last_linear", "all", "lora"] | Sequence[str]
HeadLoss = Literal["softmax_ce", "bce"]

#: Tracking keywords the built-in tasks understand (``head``, ``linear`` and ``auto``: the
#: Hugging Face tasks of :mod:`gradsift.hf.tasks`); any other word names a module or parameter.
TRACK_KEYWORDS: frozenset[str] = frozenset({"last_linear", "all", "lora", "head", "linear", "auto"})


def parse_tracked(text: str) -> TrackSpec:
    """A tracking spec from its command-line form (the one parser for ``--tracked``).

    ``"all"`` (one of :data:`TRACK_KEYWORDS`) stays a keyword; anything else is a
    comma-separated list of module or parameter names (``"fc1,fc2"`` → ``["fc1", "fc2"]``).

    Raises:
        ValueError: ``text`` names nothing, or mixes a keyword with names.
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--tracked names no parameters: {text!r}")
    keywords = [n for n in names if n in TRACK_KEYWORDS]
    if keywords and len(names) > 1:
        raise ValueError(
            f"--tracked {text!r}: use the keyword {keywords[0]!r} alone, or names only"
        )
    return names[0] if keywords else names


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` in ``model.named_modules()`` order, with its name."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear module, so 'last_linear' tracking is "
            "impossible; track named modules or 'all' instead."
        )
    return found[-1]


def select_tracked(model: nn.Module, spec: TrackSpec = "last_linear") -> dict[str, nn.Parameter]:
    """Resolve a tracking spec to an ordered ``{parameter name: parameter}`` dict.

    ``spec`` is ``"last_linear"`` (the last ``nn.Linear``'s weight and bias, the OGA
    default), ``"all"`` (every parameter with ``requires_grad``), ``"lora"`` (parameters
    whose name contains ``lora_``), or a list of module or parameter names. Order follows
    ``model.named_parameters()`` so the flattened gradient layout is stable.
    """
    named = dict(model.named_parameters())
    if isinstance(spec, str):
        if spec == "last_linear":
            prefix, _ = last_linear(model)
            wanted = {n for n in named if n.rpartition(".")[0] == prefix}
        elif spec == "all":
            wanted = {n for n, p in named.items() if p.requires_grad}
        elif spec == "lora":
            wanted = {n for n, p in named.items() if "lora_" in n and p.requires_grad}
        else:
            raise ValueError(
                f"unknown tracking spec {spec!r}: use 'last_linear', 'all', 'lora' or a list of names "
                "('head', 'linear' and 'auto' are for the Hugging Face tasks of gradsift.hf.tasks)"
            )
    else:
        wanted = set()
        for item in spec:
            hits = {n for n in named if n == item or n.startswith(item + ".")}
            if not hits:
                raise ValueError(
                    f"tracked name {item!r} matches no parameter or module of {type(model).__name__}"
                )
            wanted |= hits
    tracked = {n: p for n, p in named.items() if n in wanted}
    if not tracked:
        raise ValueError(f"tracking spec {spec!r} selects no parameters")
    return tracked


class Task(ABC):
    """How to get per-sample losses (and test-side measurements) from ``(model, batch)``.

    A batch is any pytree (tuple, dict, ...) whose tensor leaves share a leading batch
    dimension ``B``. Sign: losses are to be *minimised*; gradients are of each sample's
    own loss, never divided by the batch size.
    """

    #: Which parameters gradients are taken with respect to (see :func:`select_tracked`).
    tracked: TrackSpec = "last_linear"
    #: Set by tasks whose loss is an exact function of a final linear head's output, so
    #: the engine may use the closed-form per-sample gradient.
    head_loss: ClassVar[HeadLoss | None] = None
    #: Set by tasks whose model never mixes the rows of a batch (in eval mode), so
    #: ``method="auto"`` may take the hooks path for linear parameters
    #: (:mod:`gradsift.grads.hooks`), which is wrong for models that mix rows.
    rows_independent: ClassVar[bool] = False

    @abstractmethod
    def forward(self, model: Callable[..., Any], batch: Any) -> torch.Tensor:
        """Model outputs for ``batch`` (e.g. logits ``[B, C]``). Only call ``model``."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """Per-sample losses, shape ``[B]``, from the outputs of :meth:`forward`."""

    def validate(self, outputs: torch.Tensor, batch: Any) -> None:
        """Raise ``ValueError`` for bad input (e.g. labels out of range). Called by the
        engine once per batch, outside ``vmap``; the default accepts everything."""
        return None

    def targets(self, batch: Any) -> torch.Tensor:
        """Integer (or 0/1 float) targets ``[B]``; needed by the closed-form head path."""
        raise NotImplementedError(f"{type(self).__name__} does not expose targets")

    def per_sample_loss(self, model: Callable[..., Any], batch: Any) -> torch.Tensor:
        """``loss(forward(model, batch), batch)``: shape ``[B]``."""
        return self.loss(self.forward(model, batch), batch)

    def measurement(self, model: Callable[..., Any], batch: Any) -> torch.Tensor:
        """Test-side quantity whose gradient influence explains, shape ``[B]``.

        Default: the per-sample loss (so positive influence = helpful, per METHODS.md).
        """
        return self.per_sample_loss(model, batch)

    def tracked_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return select_tracked(model, self.tracked)

    def with_tracked(self, tracked: TrackSpec) -> Task:
        """A copy of this task that tracks ``tracked`` (this task is left unchanged)."""
        task = copy.copy(self)
        task.tracked = tracked
        return task

    def closed_form_exact(self) -> bool:
        """True when :meth:`loss` is this class's built-in loss (not overridden)."""
        return self.head_loss is not None and type(self).loss is _BUILTIN_LOSS.get(self.head_loss)


def _check_labels(y: torch.Tensor, n_classes: int) -> None:
    bad = ((y < 0) | (y >= n_classes)).nonzero().flatten()
    if len(bad):
        raise GradientError(
            f"label out of range [0, {n_classes}) (values {y[bad[:10]].tolist()})", bad.tolist()
        )


class ClassificationTask(Task):
    """Softmax cross-entropy on batches ``(x, y)``: ``ℓ_i = -log softmax(f(x_i))[y_i]``."""

    head_loss = "softmax_ce"

    def __init__(self, tracked: TrackSpec = "last_linear") -> None:
        self.tracked = tracked

    def forward(self, model: Callable[..., Any], batch: Any) -> torch.Tensor:
        return model(batch[0])

    def loss(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        return F.cross_entropy(outputs, batch[1], reduction="none")

    def validate(self, outputs: torch.Tensor, batch: Any) -> None:
        _check_labels(batch[1], outputs.shape[-1])

    def targets(self, batch: Any) -> torch.Tensor:
        return batch[1]


class BinaryClassificationTask(Task):
    """Sigmoid binary cross-entropy on ``(x, y)``, logits ``[B]`` or ``[B, 1]``, y in {0, 1}."""

    head_loss = "bce"

    def __init__(self, tracked: TrackSpec = "last_linear") -> None:
        self.tracked = tracked

    def forward(self, model: Callable[..., Any], batch: Any) -> torch.Tensor:
        return model(batch[0])

    def loss(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        y = batch[1].to(outputs.dtype)
        return F.binary_cross_entropy_with_logits(outputs.reshape(y.shape), y, reduction="none")

    def validate(self, outputs: torch.Tensor, batch: Any) -> None:
        _check_labels(batch[1], 2)
        if outputs.reshape(len(batch[1]), -1).shape[1] != 1:
            raise ValueError(
                f"binary task expects one logit per sample, got outputs {tuple(outputs.shape)}"
            )

    def targets(self, batch: Any) -> torch.Tensor:
        return batch[1]


_BUILTIN_LOSS = {"softmax_ce": ClassificationTask.loss, "bce": BinaryClassificationTask.loss}
