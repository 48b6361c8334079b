"""Load a user's own model and data from Python: ``--model pkg.module:factory``.

The factory is a zero-argument callable returning a :class:`UserSetup`, a tuple
``(model, dataset)`` / ``(model, dataset, task)``, or a dict with those keys. ``dataset``
is a torch ``Dataset`` yielding ``(x, y)`` pairs (or any batch the task understands) or a
tuple of equally long arrays. The spec may name a module on ``sys.path`` or a file:
``path/to/file.py:make``.

:func:`load_factory` checks what the factory returned before any work: the types, and a
forward pass and loss of the model on the first two samples (so a feature-shape mismatch
or float class labels are one clear sentence, not a traceback deep inside extraction).
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
import torch
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.data import Dataset, default_collate

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
    """Import ``module:function`` (or ``file.py:function``), call it, normalise the result
    and check that the model runs on the data (:func:`check_fits`).

    Raises:
        GradsiftError: a bad spec, a failed import, or a result that does not fit.
    """
    if ":" not in spec:
        raise GradsiftError(
            f"--model must look like 'package.module:function' or 'file.py:function', got {spec!r}"
        )
    target, _, name = spec.rpartition(":")
    module = _import(target)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise GradsiftError(f"{target} has no callable {name!r}")
    setup = _normalise(factory(), spec)
    check_fits(setup, spec)
    return setup


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
        hint = ""
        if "/" not in target and Path(target.replace(".", "/") + ".py").exists():
            hint = f"; for the file, give its path: --model {target.replace('.', '/')}.py:NAME"
        elif Path(target).suffix == "":
            hint = "; for a file, give its path ending in .py (e.g. --model mymodel.py:make)"
        raise GradsiftError(f"cannot import {target!r}: {err}{hint}") from None


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
    _check_dataset(setup.dataset, spec)
    return setup


def _check_dataset(data: Any, spec: str) -> None:
    if isinstance(data, tuple):
        lengths = [len(a) if hasattr(a, "__len__") else None for a in data]
        if not data or None in lengths or len(set(lengths)) != 1:
            raise GradsiftError(
                f"{spec}: the dataset tuple must hold equally long arrays, got lengths {lengths}"
            )
        return
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise GradsiftError(
            f"{spec}: the dataset must be a torch Dataset yielding (x, y) or a tuple of equally "
            f"long arrays (X, y), got {type(data).__name__}"
        )
    if len(data) == 0:
        raise GradsiftError(f"{spec}: the dataset is empty")


def check_fits(setup: UserSetup, spec: str = "the factory") -> None:
    """Run the model and the task's loss on the first two samples of the data set.

    Raises:
        GradsiftError: float class labels for a :class:`ClassificationTask`, or the model
            cannot take the inputs (e.g. a feature-shape mismatch).
    """
    data = setup.dataset
    if isinstance(data, tuple):
        n = len(data[0])
        items = [tuple(_item(a, i) for a in data) for i in range(min(n, 2))]
    else:
        items = [data[i] for i in range(min(len(data), 2))]  # type: ignore[arg-type]
    try:
        batch = default_collate(items)
    except (TypeError, RuntimeError) as err:
        raise GradsiftError(
            f"{spec}: cannot batch the dataset's samples ({_first_line(err)})"
        ) from None
    param = next(setup.model.parameters(), None)
    if param is not None:
        batch = tree_map(lambda t: t.to(param.device) if isinstance(t, torch.Tensor) else t, batch)
    if isinstance(setup.task, ClassificationTask):
        y = setup.task.targets(batch)
        if isinstance(y, torch.Tensor) and y.is_floating_point():
            raise GradsiftError(
                f"{spec}: the labels are {str(y.dtype).replace('torch.', '')}; classification "
                "needs integer class indices: return y.long() from the factory"
            )
    training = setup.model.training
    setup.model.eval()  # no batch-norm statistics are updated by the check
    try:
        with torch.no_grad():
            outputs = setup.task.forward(setup.model, batch)
            setup.task.validate(outputs, batch)
            setup.task.loss(outputs, batch)
    except (RuntimeError, IndexError, TypeError) as err:
        raise GradsiftError(
            f"{spec}: the model cannot run on the dataset's first samples "
            f"({_first_line(err)}); check that the model's input size matches the data"
        ) from None
    finally:
        setup.model.train(training)


def _item(array: Any, i: int) -> Any:
    value = array[i]
    return torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
