"""LoRA adapters (peft) for gradsift: settings, default target modules, seeded wrapping.

The adapter parameters are named ``...lora_A.default.weight`` / ``...lora_B.default.weight``
and are what ``tracked="lora"`` selects (:mod:`gradsift.hf.tasks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import gradsift.hf  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from gradsift.errors import GradsiftError

__all__ = ["LoraSettings", "add_lora", "default_lora_targets", "seeded"]


def seeded(seed: int, build: Callable[[], Any]) -> Any:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


_DEFAULT_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("c_attn",), ("qkv",))


def default_lora_targets(model: nn.Module) -> list[str]:
    """Attention query/value projections: ``query``/``value`` (BERT), ``q_proj``/``v_proj``
    (Llama and most decoders)."""
    leaf_names = {name.rpartition(".")[2] for name, m in model.named_modules()}
    for group in _DEFAULT_TARGETS:
        if all(g in leaf_names for g in group):
            return list(group)
    raise GradsiftError(
        f"cannot guess LoRA target modules for {type(model).__name__}; pass "
        "LoraSettings(target_modules=[...]) with the names of its attention projections"
    )


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA settings.

    Attributes:
        r: adapter rank; ``alpha``: scaling numerator (scale = alpha / r).
        dropout: LoRA dropout (0 keeps per-sample gradients deterministic in train mode).
        target_modules: module names to adapt; ``None`` = :func:`default_lora_targets`.
        modules_to_save: modules trained in full next to the adapters (e.g. ``["head"]``
            for a :class:`SentenceClassifier`).
        init_lora_weights: peft's option; ``True`` (B = 0 at start), ``False`` (random A
            and B, useful for tests), ``"gaussian"``, ...
        seed: seeds the adapter initialisation.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Sequence[str] | None = None
    modules_to_save: Sequence[str] | None = None
    init_lora_weights: bool | str = True
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def add_lora(model: nn.Module, settings: LoraSettings = LoraSettings()) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (``peft.get_peft_model``); returns the PeftModel.

    Only the adapters (and ``modules_to_save``) stay trainable. The adapter parameters are
    named ``...lora_A.default.weight`` / ``...lora_B.default.weight`` and are what
    ``tracked="lora"`` selects.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise GradsiftError("LoRA needs the `peft` package: pip install peft") from None
    if not isinstance(settings.r, int) or settings.r < 1:
        raise GradsiftError(f"LoRA rank r must be a positive integer, got {settings.r!r}")
    targets = list(settings.target_modules or default_lora_targets(model))
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        modules_to_save=list(settings.modules_to_save) if settings.modules_to_save else None,
        init_lora_weights=settings.init_lora_weights,
        **settings.extra,
    )
    was_training = model.training
    peft_model = seeded(settings.seed, lambda: get_peft_model(model, config))
    return peft_model.train(was_training)
