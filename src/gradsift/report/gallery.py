"""Render training samples as they are: images as images, tabular rows as tables, text as text.

A :class:`GalleryItem` is one card of a gallery (see :meth:`Report.add_gallery`): the
rendered sample plus a few labelled fields (given label, predicted label, score, ...).
:func:`sample_items` builds the cards for chosen rows of a :class:`~gradsift.experiments.datasets.Split`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gradsift.report.html import escape, png_data_uri

__all__ = [
    "GalleryItem",
    "SampleView",
    "image_png",
    "render_image",
    "render_table_row",
    "render_text",
    "render_sample",
    "sample_items",
]

Highlight = Literal["flipped", "clean"] | None


@dataclass
class GalleryItem:
    """One card: a rendered sample with labelled fields.

    Attributes:
        media: trusted HTML of the sample (from :func:`render_sample` and friends).
        title: heading of the card (plain text), e.g. ``"#1234"``.
        fields: ``(name, value)`` pairs shown under the sample (plain text).
        highlight: ``"flipped"`` (red frame and badge), ``"clean"`` (green) or ``None``.
        wide: use a wider card (tables and text).
    """

    media: str
    title: str = ""
    fields: Sequence[tuple[str, str]] = field(default_factory=tuple)
    highlight: Highlight = None
    wide: bool = False

    def to_html(self) -> str:
        classes = (
            ["card"]
            + ([self.highlight] if self.highlight else [])
            + (["wide"] if self.wide else [])
        )
        badge = (
            f' <span class="badge {self.highlight}">{escape(self.highlight)}</span>'
            if self.highlight
            else ""
        )
        rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in self.fields)
        return (
            f'<div class="{" ".join(classes)}"><div class="media">{self.media}</div>'
            f'<div class="title">{escape(self.title)}{badge}</div><dl>{rows}</dl></div>'
        )


@dataclass
class SampleView:
    """Training samples to render, with their labels and rendering hints.

    Attributes:
        X: samples ``[n, ...]`` (raw pixel values preferred for images) or ``n`` strings.
        y: int ``[n]`` given labels.
        kind: ``"image"``, ``"tabular"`` or ``"text"``.
        y_true: optional int ``[n]`` true labels (shown for flipped samples).
        image_shape, feature_names, class_names: rendering hints.
    """

    X: Any
    y: np.ndarray
    kind: Literal["image", "tabular", "text"]
    y_true: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = None
    feature_names: Sequence[str] | None = None
    class_names: Sequence[str] | None = None

    @classmethod
    def from_split(cls, data: Any, split: str = "train") -> SampleView:
        """From a :class:`~gradsift.experiments.datasets.LabeledData` (``X_raw`` when available)."""
        part = getattr(data, split)
        return cls(
            X=part.X_raw if part.X_raw is not None else part.X,
            y=part.y,
            kind=data.kind,
            y_true=part.y_clean,
            image_shape=data.image_shape,
            feature_names=data.feature_names,
            class_names=data.class_names,
        )

    @classmethod
    def from_table(cls, table: Any) -> SampleView:
        """From a :class:`~gradsift.experiments.tabular.Table` as read from its file: images
        (an NPZ array ``[n, H, W]`` / ``[n, C, H, W]``) or table rows with column names."""
        if table.image_shape is not None:
            X = table.X.reshape(len(table.X), *table.image_shape)
            return cls(X=X, y=table.y, kind="image", class_names=table.class_names)
        return cls(
            X=table.X,
            y=table.y,
            kind="tabular",
            feature_names=table.feature_names,
            class_names=table.class_names,
        )


def _as_image(x: np.ndarray, image_shape: tuple[int, ...] | None) -> np.ndarray:
    """``x`` as ``[H, W]`` (grey) or ``[H, W, 3|4]`` (colour), float64."""
    a = np.asarray(x, dtype=np.float64)
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if a.size != math.prod(shape):
            raise ValueError(
                f"sample has {a.size} values, image_shape {shape} needs {math.prod(shape)}"
            )
        a = a.reshape(shape)
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side != a.size:
            raise ValueError(
                f"cannot render a flat sample of {a.size} values as a square image; "
                "pass image_shape=(H, W)"
            )
        a = a.reshape(side, side)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
        return a
    raise ValueError(f"cannot render an array of shape {np.shape(x)} as an image")


def image_png(
    x: np.ndarray,
    image_shape: tuple[int, ...] | None = None,
    cmap: str = "gray_r",
    target_px: int = 112,
) -> bytes:
    """PNG bytes of one image, min-max scaled and enlarged by an integer factor.

    Args:
        x: ``[H*W]``, ``[H, W]``, ``[C, H, W]`` or ``[H, W, C]`` (C = 1, 3 or 4) pixel values.
        image_shape: reshape ``x`` to this first (e.g. ``(28, 28)``).
        cmap: matplotlib colour map for grey images (``"gray_r"``: dark ink on white).
        target_px: the longer side is enlarged to about this many pixels (nearest neighbour,
            so pixels stay crisp in every viewer).
    """
    import matplotlib.image as mpimg

    a = _as_image(x, image_shape)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    a = np.nan_to_num((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a))
    k = max(1, target_px // max(a.shape[0], a.shape[1]))
    a = np.repeat(np.repeat(a, k, axis=0), k, axis=1)
    buf = io.BytesIO()
    if a.ndim == 2:
        mpimg.imsave(buf, a, cmap=cmap, vmin=0.0, vmax=1.0, format="png")
    else:
        mpimg.imsave(buf, np.clip(a, 0.0, 1.0), format="png")
    return buf.getvalue()


def render_image(
    x: np.ndarray, image_shape: tuple[int, ...] | None = None, alt: str = "sample"
) -> str:
    """``<img>`` tag with the image embedded as a PNG data URI."""
    return f'<img src="{png_data_uri(image_png(x, image_shape))}" alt="{escape(alt)}">'


def render_table_row(
    x: np.ndarray, feature_names: Sequence[str] | None = None, max_features: int = 12
) -> str:
    """A small ``feature | value`` table of one tabular row.

    With more than ``max_features`` features, the ``max_features`` largest in absolute
    value are shown (in their original order) with a note.
    """
    row = np.asarray(x).reshape(-1)
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(row.size)]
    if len(names) != row.size:
        raise ValueError(f"{len(names)} feature names for a row of {row.size} values")
    keep = np.arange(row.size)
    note = ""
    if row.size > max_features:
        vals = np.abs(np.nan_to_num(row.astype(np.float64)))
        keep = np.sort(np.argsort(-vals, kind="stable")[:max_features])
        note = f'<tr><td colspan="2" class="note">{max_features} of {row.size} features (largest |value|)</td></tr>'
    cells = "".join(
        f"<tr><td>{escape(names[j])}</td><td>{escape(_num(row[j]))}</td></tr>" for j in keep
    )
    return f'<table class="sample"><tbody>{cells}{note}</tbody></table>'


def render_text(text: str, max_chars: int = 600) -> str:
    """Escaped text in a scrollable monospace box, cut to ``max_chars`` characters."""
    s = str(text)
    if len(s) > max_chars:
        s = s[:max_chars] + " …"
    return f'<div class="sample-text">{escape(s)}</div>'


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{f:.4g}"


def render_sample(
    x: Any,
    kind: Literal["image", "tabular", "text"],
    image_shape: tuple[int, ...] | None = None,
    feature_names: Sequence[str] | None = None,
) -> str:
    """HTML for one sample of the given ``kind`` (``"image"``, ``"tabular"``, ``"text"``)."""
    if kind == "image":
        return render_image(np.asarray(x), image_shape)
    if kind == "tabular":
        return render_table_row(np.asarray(x), feature_names)
    if kind == "text":
        return render_text(x)
    raise ValueError(f"kind must be 'image', 'tabular' or 'text', got {kind!r}")


def _label(y: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= int(y) < len(class_names):
        return str(class_names[int(y)])
    return str(int(y))


def sample_items(
    X: Sequence[Any] | np.ndarray,
    y: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    kind: Literal["image", "tabular", "text"],
    scores: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    flipped: np.ndarray | None = None,
    y_true: np.ndarray | None = None,
    image_shape: tuple[int, ...] | None = None,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    score_name: str = "score",
    extra: Mapping[str, np.ndarray] | None = None,
) -> list[GalleryItem]:
    """Gallery cards for rows ``indices`` of a data set.

    Args:
        X: the samples (``[n, ...]`` array, or a sequence of strings for text).
            Prefer raw pixel values for images (e.g. ``Split.X_raw``).
        y: int ``[n]`` the given labels.
        indices: which rows, in display order (e.g. most suspicious first).
        kind: how to render a sample.
        scores: optional float ``[n]`` detection scores (higher = more suspicious).
        predicted: optional int ``[n]`` predicted labels.
        flipped: optional flipped indices (int) or mask ``[n]``: cards are marked
            ``flipped`` / ``clean`` when given.
        y_true: optional int ``[n]`` true labels, shown for flipped samples.
        image_shape, feature_names, class_names: rendering hints.
        score_name: label of the score field.
        extra: more ``{field name: [n] values}`` to show.
    """
    n = len(y)
    mask = None
    if flipped is not None:
        f = np.asarray(flipped)
        mask = f.astype(bool) if f.dtype == bool else np.isin(np.arange(n), f)
        if mask.shape != (n,):
            raise ValueError(f"flipped mask has shape {mask.shape}, expected ({n},)")
    items = []
    for rank, i in enumerate(np.asarray(indices, dtype=np.int64).tolist(), start=1):
        if not 0 <= i < n:
            raise IndexError(f"sample index {i} is outside [0, {n})")
        fields: list[tuple[str, str]] = [("given", _label(y[i], class_names))]
        if predicted is not None:
            fields.append(("predicted", _label(predicted[i], class_names)))
        if y_true is not None and mask is not None and mask[i]:
            fields.append(("true", _label(y_true[i], class_names)))
        if scores is not None:
            fields.append((score_name, _num(scores[i])))
        for name, values in (extra or {}).items():
            fields.append((name, _num(values[i])))
        highlight: Highlight = None if mask is None else ("flipped" if mask[i] else "clean")
        items.append(
            GalleryItem(
                media=render_sample(X[i], kind, image_shape, feature_names),
                title=f"#{i} (rank {rank})",
                fields=tuple(fields),
                highlight=highlight,
                wide=kind != "image",
            )
        )
    return items
