"""Load a user's own model and data from Python: ``--model pkg.module:factory``.

The factory is a zero-argument callable returning a :class:`UserSetup`, a tuple
``(model, dataset)`` / ``(model, dataset, task)``, or a dict with those keys. ``dataset``
is a torch ``Dataset`` yielding ``(x, y)`` pairs (or any batch the task understands) or a
tuple of equally long arrays. The spec may name a module on ``sys.path`` or a file:
``path/to/file.py:make``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from gradsift.errors import GradsiftError
from gradsift.task import ClassificationTask, Task, TrackSpec


@dataclass
class UserSetup:
    """A trained model, its training data, and the task (default: softmax CE)."""

    model: nn.Module
    dataset: Dataset | tuple[Any, ...]
    task: Task = field(default_factory=ClassificationTask)
    flipped: np.ndarray | None = None  # known corrupted indices, for evaluation only

    def with_tracked(self, tracked: TrackSpec | None) -> UserSetup:
        """This setup with its task tracking ``tracked`` (``None``: the task's own choice)."""
        if tracked is None:
            return self
        return dataclasses.replace(self, task=self.task.with_tracked(tracked))


def load_factory(spec: str) -> UserSetup:
    """Import ``module:function`` (or ``file.py:function``), call it, normalise the result."""
    if ":" not in spec:
        raise GradsiftError(f"--model must look like 'package.module:function', got {spec!r}")
    target, _, name = spec.rpartition(":")
    module = _import(target)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise GradsiftError(f"{target} has no callable {name!r}")
    return _normalise(factory(), spec)


def _import(target: str) -> Any:
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise GradsiftError(f"no such file: {target}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    try:
        return importlib.import_module(target)
    except ImportError as err:
        raise GradsiftError(f"cannot import {target!r}: {err}") from err


def _normalise(result: Any, spec: str) -> UserSetup:
    if isinstance(result, UserSetup):
        setup = result
    elif isinstance(result, dict):
        setup = UserSetup(**result)
    elif isinstance(result, tuple) and len(result) in (2, 3):
        setup = UserSetup(*result)
    else:
        raise GradsiftError(
            f"{spec} returned {type(result).__name__}; return (model, dataset[, task]) or a UserSetup"
        )
    if not isinstance(setup.model, nn.Module):
        raise GradsiftError(
            f"{spec}: the model must be a torch.nn.Module, got {type(setup.model).__name__}"
        )
    if not isinstance(setup.task, Task):
        raise GradsiftError(
            f"{spec}: the task must be a gradsift.task.Task, got {type(setup.task).__name__}"
        )
    return setup
