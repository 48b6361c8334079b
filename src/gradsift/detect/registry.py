"""The detector registry: names → :class:`~gradsift.detect.base.Detector` classes.

The built-in detectors register themselves when their modules are imported, which
``gradsift.detect``'s ``__init__`` does; so any import of ``gradsift.detect...`` fills it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from gradsift.detect.base import Detector

__all__ = ["available_detectors", "get_detector", "register", "register_prefix"]

_REGISTRY: dict[str, type[Detector]] = {}
#: ``"prefix:"`` → factory(rest, **kwargs), e.g. ``"pyod:"`` → any pyod model.
_PREFIXES: dict[str, Callable[..., Detector]] = {}

_DetT = TypeVar("_DetT", bound="type[Detector]")


def register(name: str) -> Callable[[_DetT], _DetT]:
    """Class decorator: register a :class:`Detector` subclass under ``name`` (lower-case).

    Example::

        @register("my_norm")
        class MyNorm(Detector): ...
    """
    key = name.lower()

    def deco(cls: _DetT) -> _DetT:
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            raise TypeError(f"@register({name!r}) expects a Detector subclass, got {cls!r}")
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"detector name {key!r} is already registered to {_REGISTRY[key]!r}")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return deco


def register_prefix(prefix: str, factory: Callable[..., Detector]) -> None:
    """Route every name ``"<prefix>:<rest>"`` to ``factory(rest, **kwargs)``."""
    _PREFIXES[prefix.lower().rstrip(":") + ":"] = factory


def available_detectors() -> list[str]:
    """Sorted registered names. Any pyod model is also available as ``"pyod:<model>"``."""
    return sorted(_REGISTRY)


def get_detector(name: str, **kwargs: Any) -> Detector:
    """Instantiate a detector by name, e.g. ``get_detector("iforest", seed=1)``.

    ``name`` is a registered name (see :func:`available_detectors`, case-insensitive) or
    ``"pyod:<ClassName or module>"`` for any pyod model (``"pyod:copod"``, ``"pyod:HBOS"``).

    Raises:
        ValueError: unknown name (the message lists the available names).
    """
    for prefix, factory in _PREFIXES.items():
        if name.lower().startswith(prefix):
            return factory(name[len(prefix) :], **kwargs)
    cls = _REGISTRY.get(name.lower())
    if cls is None:
        raise ValueError(
            f"unknown detector {name!r}; available: {', '.join(sorted(_REGISTRY))}, "
            f"or 'pyod:<model>' for any pyod model (e.g. 'pyod:copod')"
        )
    return cls(**kwargs)
