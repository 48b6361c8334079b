"""Model zoo for classification.

Every builder returns an ``nn.Module`` whose **final module is an ``nn.Linear`` head**
producing logits ``[B, C]``, so closed-form last-layer gradients apply (see
METHODS.md). Models are built deterministically from ``seed`` without disturbing the
global torch RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "logistic_regression",
    "mlp",
    "small_cnn",
    "build_model",
    "head",
    "MODELS",
    "ToImage",
]


class ToImage(nn.Module):
    """Reshape inputs to ``[B, C, H, W]``.

    Accepts ``[B, C*H*W]`` (flattened), ``[B, H, W]`` (when ``C == 1``) or
    ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.channels, self.height, self.width = channels, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.channels, self.height, self.width)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, height={self.height}, width={self.width}"


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build`` with the torch CPU RNG seeded, restoring the global RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _check_positive(**kw: int) -> None:
    for k, v in kw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


def logistic_regression(in_features: int, n_classes: int, seed: int = 0) -> nn.Sequential:
    """Multinomial logistic regression: ``Flatten → Linear(in_features, n_classes)``.

    Input float ``[B, *shape]`` with ``prod(shape) == in_features``; output logits
    ``[B, n_classes]``.
    """
    _check_positive(in_features=in_features, n_classes=n_classes)
    return _seeded(seed, lambda: nn.Sequential(nn.Flatten(), nn.Linear(in_features, n_classes)))  # type: ignore[return-value]


def mlp(
    in_features: int,
    n_classes: int,
    hidden: Sequence[int] = (128,),
    seed: int = 0,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Multi-layer perceptron ``Flatten → [Linear → ReLU → (Dropout)]* → Linear``.

    Input float ``[B, *shape]`` with ``prod(shape) == in_features`` (so flattened images
    work too); output logits ``[B, n_classes]``.
    """
    _check_positive(in_features=in_features, n_classes=n_classes)
    hidden = tuple(hidden)
    for h in hidden:
        _check_positive(hidden=h)
    if not (0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")

    def build() -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)

    return _seeded(seed, build)  # type: ignore[return-value]


def small_cnn(
    in_channels: int,
    n_classes: int,
    image_size: int | tuple[int, int],
    seed: int = 0,
    batch_norm: bool = False,
    channels: tuple[int, int] = (16, 32),
) -> nn.Sequential:
    """Small CNN: two ``3×3 conv (+BN) → ReLU → 2×2 max-pool`` stages, then a Linear head.

    Works for 8×8 digits (→ 2×2 feature maps) and 28×28 MNIST (→ 7×7). Input float
    ``[B, C*H*W]``, ``[B, H, W]`` (C = 1) or ``[B, C, H, W]``; output logits
    ``[B, n_classes]``.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    _check_positive(in_channels=in_channels, n_classes=n_classes, height=h, width=w)
    if h < 4 or w < 4:
        raise ValueError(f"image_size must be at least 4x4 (two 2x2 poolings), got {h}x{w}")
    c1, c2 = channels
    _check_positive(c1=c1, c2=c2)
    out_h, out_w = h // 2 // 2, w // 2 // 2

    def stage(cin: int, cout: int) -> list[nn.Module]:
        mods: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            mods.append(nn.BatchNorm2d(cout))
        mods += [nn.ReLU(), nn.MaxPool2d(2)]
        return mods

    def build() -> nn.Module:
        return nn.Sequential(
            ToImage(in_channels, h, w),
            *stage(in_channels, c1),
            *stage(c1, c2),
            nn.Flatten(),
            nn.Linear(c2 * out_h * out_w, n_classes),
        )

    return _seeded(seed, build)  # type: ignore[return-value]


def _build_logreg(in_shape: tuple[int, ...], n_classes: int, seed: int, **kw: Any) -> nn.Module:
    return logistic_regression(math.prod(in_shape), n_classes, seed=seed, **kw)


def _build_mlp(in_shape: tuple[int, ...], n_classes: int, seed: int, **kw: Any) -> nn.Module:
    return mlp(math.prod(in_shape), n_classes, seed=seed, **kw)


def _build_cnn(in_shape: tuple[int, ...], n_classes: int, seed: int, **kw: Any) -> nn.Module:
    image_size = kw.pop("image_size", None)
    in_channels = kw.pop("in_channels", None)
    if len(in_shape) == 3:
        c, hh, ww = in_shape
    elif len(in_shape) == 2:
        c, (hh, ww) = 1, in_shape
    elif len(in_shape) == 1:
        c = in_channels or 1
        if image_size is not None:
            hh, ww = (image_size, image_size) if isinstance(image_size, int) else image_size
        else:
            side = math.isqrt(in_shape[0] // c)
            if c * side * side != in_shape[0]:
                raise ValueError(
                    f"cnn: cannot infer an image shape from flat input of {in_shape[0]} features; "
                    "pass image_size=(H, W) (and in_channels)"
                )
            hh = ww = side
        if c * hh * ww != in_shape[0]:
            raise ValueError(f"cnn: {c}x{hh}x{ww} does not match {in_shape[0]} input features")
    else:
        raise ValueError(f"cnn: in_shape must be (F,), (H, W) or (C, H, W), got {in_shape}")
    return small_cnn(c, n_classes, (hh, ww), seed=seed, **kw)


#: Registry of model builders ``(in_shape, n_classes, seed, **kw) -> nn.Module``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": _build_logreg,
    "mlp": _build_mlp,
    "cnn": _build_cnn,
}


def build_model(
    name: str, in_shape: tuple[int, ...], n_classes: int, seed: int = 0, **kw: Any
) -> nn.Module:
    """Build a model by registry name (``"logreg"``, ``"mlp"``, ``"cnn"``).

    Args:
        name: registry name.
        in_shape: shape of one input sample (without the batch axis), e.g. ``(64,)``,
            ``(8, 8)`` or ``(1, 28, 28)``. For ``"cnn"`` with a flat shape the image is
            assumed square with one channel unless ``image_size`` / ``in_channels`` given.
        n_classes: number of output logits ``C``.
        seed: initialisation seed.
        **kw: passed to the builder (e.g. ``hidden``, ``dropout``, ``batch_norm``).
    """
    key = name.strip().lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    in_shape = tuple(int(s) for s in in_shape)
    if not in_shape or any(s < 1 for s in in_shape):
        raise ValueError(f"in_shape must be a non-empty tuple of positive sizes, got {in_shape}")
    return MODELS[key](in_shape, n_classes, seed, **kw)


def head(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` module of ``model`` (in ``model.modules()`` order)."""
    last: nn.Linear | None = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"model {type(model).__name__} has no nn.Linear module")
    return last
