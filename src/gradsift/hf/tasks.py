"""Hugging Face models as gradsift :class:`~gradsift.task.Task`\\ s.

Batches:

- :class:`SequenceClassificationTask`: ``(inputs, labels)`` where ``inputs`` is a dict of
  ``[B, T]`` tensors (``input_ids``, ``attention_mask``, optionally ``token_type_ids``)
  and ``labels`` is int64 ``[B]``. ``ℓ_i = −log softmax(logits_i)[y_i]``.
- :class:`CausalLMTask`: a dict with ``input_ids``, ``attention_mask`` and ``labels``
  (all ``[B, T]``); ``labels`` is ``-100`` on prompt and padding tokens and equals
  ``input_ids`` on the answer tokens. ``ℓ_i`` is the mean (or sum) over sample *i*'s
  answer tokens of ``−log p(token_t | tokens_<t)``; prompt tokens are context only.

Padding: the 2-D ``attention_mask`` is turned into a 4-D additive mask before it reaches
a transformers model (see :func:`gradsift.hf.models.attention_bias`), which keeps
``torch.func.vmap`` working and makes a padded sample's loss, and so its gradient, equal
to the unpadded sample's (pad on the right: position ids then match too).

Tracked parameters (``tracked=``):

- ``"head"``: the last ``nn.Linear`` (the classifier head); refused when its weight is
  tied to the input embeddings;
- ``"lora"``: the LoRA adapter matrices of a peft model (``lora_A``/``lora_B``/...);
- ``"linear"``: the weight and bias (those with ``requires_grad``) of every ``nn.Linear``
  whose weight is trainable and not tied to another parameter (every linear layer of a
  transformer, LoRA adapters included, frozen base layers and a tied ``lm_head``
  excluded): what the factored projection
  (``ProjectionConfig(kind="kronecker")``, :mod:`gradsift.grads.kronecker`) takes;
- ``"all"``: every parameter with ``requires_grad``;
- ``"auto"``: ``"lora"`` if the model has LoRA adapters, else ``"head"`` (classification)
  or ``"all"`` (causal LM);
- a list of module or parameter names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gradsift.errors import GradientError
from gradsift.grads.kronecker import factorable_modules
from gradsift.hf.models import attention_bias
from gradsift.task import ClassificationTask, Task, last_linear, select_tracked

__all__ = [
    "IGNORE_INDEX",
    "CausalLMTask",
    "HFTrackSpec",
    "SequenceClassificationTask",
    "has_lora",
    "linear_parameters",
    "lora_parameters",
    "model_inputs",
    "resolve_tracked",
]

#: Label value of tokens that are not scored (prompt and padding), as in transformers.
IGNORE_INDEX = -100

HFTrackSpec = Literal["head", "lora", "linear", "all", "auto"] | Sequence[str]

_LORA_MARKERS = ("lora_A.", "lora_B.", "lora_embedding_A.", "lora_embedding_B.", "lora_magnitude")


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """LoRA adapter parameters of a peft model, in ``named_parameters`` order."""
    return {
        n: p
        for n, p in model.named_parameters()
        if p.requires_grad and any(marker in n for marker in _LORA_MARKERS)
    }


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds trainable LoRA adapters (e.g. from ``peft.get_peft_model``)."""
    return bool(lora_parameters(model))


def linear_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable weights and biases of every untied ``nn.Linear`` with a trainable weight
    (see :func:`gradsift.grads.kronecker.factorable_modules`), in ``named_parameters``
    order."""
    modules = {
        name
        for name in factorable_modules(model)
        if isinstance(model.get_submodule(name), nn.Linear)
    }
    found = {
        n: p
        for n, p in model.named_parameters()
        if p.requires_grad and n.rpartition(".")[0] in modules
    }
    if not found:
        raise GradientError(f"{type(model).__name__} has no trainable, untied nn.Linear layer")
    return found


def _head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    prefix, head = last_linear(model)
    by_id = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, nn.Parameter] = {}
    for local, p in head.named_parameters():
        name = by_id.get(id(p))
        if name is None:
            continue
        if name != f"{prefix}.{local}":
            raise GradientError(
                f"the head {prefix!r} shares its {local} with {name!r} (tied embeddings), so "
                "its gradient would mix both uses; track 'lora', 'all' or named modules instead"
            )
        out[name] = p
    if not out:
        raise GradientError(f"the head {prefix!r} has no parameters to track")
    return out


def resolve_tracked(
    model: nn.Module, spec: HFTrackSpec, auto_fallback: Literal["head", "all"] = "head"
) -> dict[str, nn.Parameter]:
    """Ordered ``{parameter name: parameter}`` for a tracking spec (see module docs)."""
    if isinstance(spec, str):
        if spec == "auto":
            spec = "lora" if has_lora(model) else auto_fallback
        if spec == "head":
            return _head_parameters(model)
        if spec == "lora":
            found = lora_parameters(model)
            if not found:
                raise GradientError(
                    f"{type(model).__name__} has no trainable LoRA adapters: wrap it with "
                    "gradsift.hf.models.add_lora(model) or peft.get_peft_model(model, "
                    "LoraConfig(...)), or track 'head'/'all'/named modules"
                )
            return found
        if spec == "linear":
            return linear_parameters(model)
        if spec in ("all", "last_linear"):
            return select_tracked(model, spec)
        raise GradientError(
            f"unknown tracking spec {spec!r}: use 'head', 'lora', 'linear', 'all', 'auto' or a list of "
            "module/parameter names"
        )
    return select_tracked(model, list(spec))


def model_inputs(
    model: Callable[..., Any], inputs: Mapping[str, torch.Tensor], causal: bool
) -> dict[str, torch.Tensor]:
    """``inputs`` with a 2-D ``attention_mask`` replaced by the 4-D additive mask.

    Models that set ``expects_2d_attention_mask = True`` (e.g.
    :class:`~gradsift.hf.models.SentenceClassifier`, which needs the 2-D mask for pooling)
    get the inputs unchanged.
    """
    if not isinstance(inputs, Mapping):
        raise GradientError(
            f"expected a dict of model inputs (input_ids, attention_mask, ...), got "
            f"{type(inputs).__name__}"
        )
    if "input_ids" not in inputs:
        raise GradientError(f"model inputs lack 'input_ids' (have {sorted(inputs)})")
    out = dict(inputs)
    mask = out.get("attention_mask")
    if mask is None or mask.dim() != 2 or getattr(model, "expects_2d_attention_mask", False):
        return out
    dtype = _float_dtype(model)
    out["attention_mask"] = attention_bias(mask, dtype, causal=causal)
    return out


def _float_dtype(model: Callable[..., Any]) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, tuple):
        logits = out[0]
    return out if logits is None else logits


def _check_ids(inputs: Mapping[str, torch.Tensor]) -> None:
    ids = inputs["input_ids"]
    if ids.dim() != 2:
        raise GradientError(f"input_ids must be [B, T], got shape {tuple(ids.shape)}")
    mask = inputs.get("attention_mask")
    if mask is not None:
        if mask.shape != ids.shape:
            raise GradientError(
                f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}"
            )
        empty = (mask.sum(dim=1) == 0).nonzero().flatten()
        if len(empty):
            raise GradientError("sample has no unmasked token", empty.tolist())


class SequenceClassificationTask(ClassificationTask):
    """Softmax cross-entropy for a sequence classifier on batches ``(inputs, labels)``.

    Works with :class:`~gradsift.hf.models.SentenceClassifier`, any
    ``AutoModelForSequenceClassification`` (the ``.logits`` of its output) and their peft
    wrappers. With ``tracked="head"`` the engine's exact closed form applies.

    Args:
        tracked: see :func:`resolve_tracked`; ``"auto"`` (default) = LoRA adapters when
            present, else the head.
    """

    #: Rows are independent in eval mode, so the hooks path of
    #: :mod:`gradsift.grads.hooks` is exact for ``nn.Linear`` parameters (``method="auto"``
    #: takes it for LoRA adapters).
    rows_independent = True

    def __init__(self, tracked: HFTrackSpec = "auto") -> None:
        self.tracked = tracked  # type: ignore[assignment]

    def forward(self, model: Callable[..., Any], batch: Any) -> torch.Tensor:
        inputs = batch[0]
        return _logits(model(**model_inputs(model, inputs, causal=False)))

    def validate(self, outputs: torch.Tensor, batch: Any) -> None:
        _check_ids(batch[0])
        if outputs.dim() != 2:
            raise GradientError(f"expected logits [B, C], got shape {tuple(outputs.shape)}")
        super().validate(outputs, batch)

    def tracked_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return resolve_tracked(model, self.tracked, auto_fallback="head")


class CausalLMTask(Task):
    """Next-token cross-entropy over answer tokens only (prompt tokens masked).

    ``ℓ_i = (1/|A_i|) Σ_{t∈A_i} −log softmax(logits_{i,t−1})[x_{i,t}]`` where ``A_i`` are
    the positions with ``labels != -100`` (``reduction="sum"`` drops the ``1/|A_i|``).

    Args:
        tracked: see :func:`resolve_tracked`; ``"auto"`` = LoRA adapters when present,
            else every trainable parameter.
        reduction: ``"mean"`` (default, as transformers' training loss for one sample) or
            ``"sum"`` over the answer tokens.
    """

    rows_independent = True

    def __init__(
        self, tracked: HFTrackSpec = "auto", reduction: Literal["mean", "sum"] = "mean"
    ) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.tracked = tracked  # type: ignore[assignment]
        self.reduction = reduction

    def forward(self, model: Callable[..., Any], batch: Any) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return _logits(model(**model_inputs(model, inputs, causal=True)))

    def token_losses(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """Per-token losses ``[B, T−1]`` (0 where not scored) for predicting token t+1."""
        labels = batch["labels"][:, 1:]
        logits = outputs[:, :-1, :]
        n, width, vocab = logits.shape
        # log-softmax over the contiguous last axis, at least in float32: the class-axis-1
        # form (transpose) loses about 1e-4 absolute for large vocabularies in float32
        dtype = torch.promote_types(logits.dtype, torch.float32)
        flat = F.cross_entropy(
            logits.reshape(n * width, vocab).to(dtype),
            labels.reshape(n * width),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        return flat.reshape(n, width)

    def loss(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        per_token = self.token_losses(outputs, batch)
        total = per_token.sum(dim=1)
        if self.reduction == "sum":
            return total
        count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
        return total / count.to(total.dtype)

    def validate(self, outputs: torch.Tensor, batch: Any) -> None:
        if not isinstance(batch, Mapping) or "labels" not in batch:
            raise GradientError(
                "a causal-LM batch is a dict with input_ids, attention_mask, labels"
            )
        _check_ids(batch)
        labels = batch["labels"]
        if labels.shape != batch["input_ids"].shape:
            raise GradientError(
                f"labels {tuple(labels.shape)} must match input_ids {tuple(batch['input_ids'].shape)}"
            )
        if outputs.dim() != 3:
            raise GradientError(f"expected logits [B, T, V], got shape {tuple(outputs.shape)}")
        scored = labels[:, 1:] != IGNORE_INDEX
        none = (~scored.any(dim=1)).nonzero().flatten()
        if len(none):
            raise GradientError(
                "sample has no answer token to score (labels are all -100 after the first "
                "position; was the answer truncated by max_length?)",
                none.tolist(),
            )
        vocab = outputs.shape[-1]
        bad = ((labels[:, 1:] >= vocab) | ((labels[:, 1:] < 0) & scored)).any(dim=1)
        if bad.any():
            raise GradientError(
                f"label token id out of range [0, {vocab})", bad.nonzero().flatten().tolist()
            )
        mask = batch.get("attention_mask")
        if mask is not None:
            unmasked = scored & (mask[:, 1:] == 0)
            rows = unmasked.any(dim=1).nonzero().flatten()
            if len(rows):
                raise GradientError("answer token under a zero attention_mask", rows.tolist())

    def tracked_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return resolve_tracked(model, self.tracked, auto_fallback="all")
