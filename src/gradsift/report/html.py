"""A self-contained HTML report: sections of text, figures, tables and sample galleries.

Everything a report shows is inside the one file: CSS is inline, figures are PNGs embedded
as ``data:`` URIs, and a Content-Security-Policy forbids loading anything from elsewhere,
so the file opens offline and looks the same on every machine.

Build one with::

    report = Report("Label noise in digits")
    sec = report.add_section("Detection", "How well each detector finds the flipped labels.")
    sec.add_figure(fig, caption="ROC curves")      # a matplotlib Figure
    sec.add_table(frame, caption="Metrics")         # a pandas DataFrame
    sec.add_gallery(items, caption="Top flagged")   # gradsift.report.gallery.GalleryItem
    report.save("report.html")

``Report.add_figure`` / ``add_table`` / ... append to the most recently added section (one
titled "Results" is created if there is none). To add a new kind of content, build its
HTML yourself and pass it to :meth:`Section.add_html` (escape user text with
:func:`escape`), or add CSS with :meth:`Report.add_css`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "CSP",
    "Report",
    "Section",
    "escape",
    "figure_to_png",
    "png_data_uri",
]

#: Content-Security-Policy of every report: inline CSS, ``data:`` images, inline scripts
#: only (no network, no external files).
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; font-src data:"
)

Tone = Literal["info", "good", "bad", "warn"]


class HtmlRenderable(Protocol):
    """Anything with ``to_html() -> str`` (e.g. a gallery item)."""

    def to_html(self) -> str: ...


def escape(text: Any) -> str:
    """HTML-escape ``str(text)`` (quotes included)."""
    return _html.escape(str(text), quote=True)


def figure_to_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes with the Agg renderer.

    A figure made with ``pyplot`` is closed afterwards (so it does not leak); a bare
    ``matplotlib.figure.Figure`` needs no closing.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig, "savefig"):
        raise TypeError(f"expected a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _close_pyplot_figure(fig)
    return buf.getvalue()


def _close_pyplot_figure(fig: Figure) -> None:
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and getattr(fig, "number", None) in plt.get_fignums():
        plt.close(fig)


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes (checked by their signature)."""
    if not isinstance(png, (bytes, bytearray)) or not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("expected PNG bytes (they must start with the PNG signature)")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


@dataclass
class Section:
    """One titled part of a report; its ``add_*`` methods return the section (chainable).

    Attributes:
        title: heading text (plain text, escaped on output).
        intro: optional paragraph under the heading (plain text).
        anchor: HTML id used by the table of contents.
        blocks: rendered HTML fragments, in order.
    """

    title: str
    intro: str | None = None
    anchor: str = ""
    blocks: list[str] = field(default_factory=list)

    def add_html(self, fragment: str) -> Section:
        """Append trusted, already-built HTML (escape any user text with :func:`escape`)."""
        if not isinstance(fragment, str):
            raise TypeError(f"fragment must be a str, got {type(fragment).__name__}")
        self.blocks.append(fragment)
        return self

    def add_text(self, text: str) -> Section:
        """Append a paragraph of plain text (escaped; blank lines start new paragraphs)."""
        for para in re.split(r"\n\s*\n", str(text).strip()):
            if para:
                self.blocks.append(f"<p>{escape(para)}</p>")
        return self

    def add_callout(self, text: str, tone: Tone = "info", title: str | None = None) -> Section:
        """Append a highlighted box (``tone``: info / good / bad / warn) with plain text."""
        if tone not in ("info", "good", "bad", "warn"):
            raise ValueError(f"tone must be info, good, bad or warn, got {tone!r}")
        head = f"<strong>{escape(title)}</strong> " if title else ""
        self.blocks.append(f'<div class="callout {tone}">{head}{escape(text)}</div>')
        return self

    def add_key_values(self, items: Mapping[str, Any], caption: str | None = None) -> Section:
        """Append a two-column table of ``name: value`` (floats shown with 4 significant digits)."""
        rows = "".join(
            f"<tr><th>{escape(k)}</th><td>{escape(_fmt(v))}</td></tr>" for k, v in items.items()
        )
        cap = f"<caption>{escape(caption)}</caption>" if caption else ""
        self.blocks.append(f'<table class="kv">{cap}<tbody>{rows}</tbody></table>')
        return self

    def add_image(self, png: bytes, caption: str | None = None, alt: str | None = None) -> Section:
        """Append PNG bytes as an embedded image with an optional caption."""
        alt_text = alt if alt is not None else (caption or "figure")
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(
            f'<figure><img src="{png_data_uri(png)}" alt="{escape(alt_text)}">{cap}</figure>'
        )
        return self

    def add_figure(
        self, fig: Figure, caption: str | None = None, alt: str | None = None, dpi: int = 110
    ) -> Section:
        """Append a matplotlib figure, rendered to an embedded PNG (Agg)."""
        return self.add_image(figure_to_png(fig, dpi=dpi), caption=caption, alt=alt)

    def add_table(
        self,
        frame: pd.DataFrame,
        caption: str | None = None,
        index: bool = False,
        float_format: str = "{:.3f}",
        max_rows: int = 200,
    ) -> Section:
        """Append a pandas DataFrame as an HTML table (cells escaped; floats formatted).

        Args:
            frame: the table; column names and cells are escaped.
            caption: optional caption above the table.
            index: show the index column.
            float_format: ``str.format`` pattern for float cells.
            max_rows: rows beyond this are dropped with a note.
        """
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
        shown = frame.head(max_rows)
        body = shown.to_html(
            index=index,
            escape=True,
            border=0,
            classes="data",
            float_format=float_format.format,
            na_rep="–",
        )
        note = ""
        if len(frame) > max_rows:
            note = f'<p class="note">showing {max_rows} of {len(frame)} rows</p>'
        cap = f'<div class="caption">{escape(caption)}</div>' if caption else ""
        self.blocks.append(f'<div class="table-wrap">{cap}{body}{note}</div>')
        return self

    def add_gallery(self, items: Iterable[HtmlRenderable], caption: str | None = None) -> Section:
        """Append a grid of samples (objects with ``to_html()``, e.g. ``GalleryItem``)."""
        cells = "".join(item.to_html() for item in items)
        cap = f'<div class="caption">{escape(caption)}</div>' if caption else ""
        self.blocks.append(
            f'<div class="gallery-wrap">{cap}<div class="gallery">{cells}</div></div>'
        )
        return self

    def to_html(self) -> str:
        intro = f'<p class="intro">{escape(self.intro)}</p>' if self.intro else ""
        return (
            f'<section id="{escape(self.anchor)}"><h2>{escape(self.title)}</h2>{intro}'
            + "\n".join(self.blocks)
            + "</section>"
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


class Report:
    """A self-contained HTML report (see the module docstring).

    Args:
        title: page title and top heading (plain text).
        subtitle: optional line under the title (plain text).
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        if not str(title).strip():
            raise ValueError("a report needs a non-empty title")
        self.title = str(title)
        self.subtitle = subtitle
        self.sections: list[Section] = []
        self.extra_css: list[str] = []
        self._anchors: set[str] = set()

    # ------------------------------------------------------------------ building
    def add_section(self, title: str, intro: str | None = None) -> Section:
        """Start a new section and return it; later ``Report.add_*`` calls go into it."""
        sec = Section(title=str(title), intro=intro, anchor=_slug(str(title), self._anchors))
        self.sections.append(sec)
        return sec

    @property
    def current(self) -> Section:
        """The most recently added section (a "Results" section is created if none)."""
        if not self.sections:
            self.add_section("Results")
        return self.sections[-1]

    def add_text(self, text: str) -> Report:
        self.current.add_text(text)
        return self

    def add_html(self, fragment: str) -> Report:
        self.current.add_html(fragment)
        return self

    def add_callout(self, text: str, tone: Tone = "info", title: str | None = None) -> Report:
        self.current.add_callout(text, tone, title)
        return self

    def add_key_values(self, items: Mapping[str, Any], caption: str | None = None) -> Report:
        self.current.add_key_values(items, caption)
        return self

    def add_figure(self, fig: Figure, caption: str | None = None, alt: str | None = None) -> Report:
        self.current.add_figure(fig, caption, alt)
        return self

    def add_image(self, png: bytes, caption: str | None = None, alt: str | None = None) -> Report:
        self.current.add_image(png, caption, alt)
        return self

    def add_table(self, frame: pd.DataFrame, caption: str | None = None, **kw: Any) -> Report:
        self.current.add_table(frame, caption, **kw)
        return self

    def add_gallery(self, items: Iterable[HtmlRenderable], caption: str | None = None) -> Report:
        self.current.add_gallery(items, caption)
        return self

    def add_css(self, css: str) -> Report:
        """Add CSS rules (for new kinds of content) to the page's inline style sheet."""
        if "</style" in css.lower():
            raise ValueError("css must not contain '</style'")
        self.extra_css.append(css)
        return self

    # ------------------------------------------------------------------ output
    def to_html(self) -> str:
        """The whole page as one string."""
        toc = ""
        if len(self.sections) > 1:
            links = "".join(
                f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a></li>'
                for s in self.sections
            )
            toc = f'<nav class="toc"><ol>{links}</ol></nav>'
        sub = f'<p class="subtitle">{escape(self.subtitle)}</p>' if self.subtitle else ""
        body = "\n".join(s.to_html() for s in self.sections)
        css = _CSS + "\n".join(self.extra_css)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="gradsift {escape(_version())}">'
            f"<title>{escape(self.title)}</title><style>{css}</style></head>\n<body><main>"
            f"<header><h1>{escape(self.title)}</h1>{sub}</header>{toc}\n{body}\n"
            f"<footer>Generated by gradsift {escape(_version())} on "
            f"{escape(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))}. "
            "Self-contained: this file loads nothing from the network.</footer>"
            "</main></body></html>\n"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` (parent folders created; written atomically)."""
        out = Path(path)
        if out.exists() and out.is_dir():
            raise IsADirectoryError(f"report path {out} is a directory; give a file name")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(self.to_html(), encoding="utf-8")
        os.replace(tmp, out)
        return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradsift")
    except PackageNotFoundError:
        return "dev"


_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dde2ea; --bg:#ffffff; --panel:#f6f8fb;
  --good:#1a7f37; --bad:#c2291f; --warn:#9a6700; --info:#0b5cad; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { margin: 0 0 4px; font-size: 28px; }
.subtitle { margin: 0; color: var(--muted); }
nav.toc { margin: 14px 0 6px; padding: 8px 14px; background: var(--panel); border-radius: 8px; }
nav.toc ol { margin: 0; padding-left: 20px; columns: 2; }
nav.toc a { color: var(--info); text-decoration: none; }
section { margin-top: 28px; padding-top: 8px; border-top: 1px solid var(--line); }
h2 { font-size: 21px; margin: 8px 0 6px; }
p.intro { color: var(--muted); margin-top: 0; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption, .caption { color: var(--muted); font-size: 13px; margin: 4px 0 6px; }
.table-wrap { overflow-x: auto; margin: 12px 0; }
table.data, table.kv { border-collapse: collapse; font-size: 13.5px; }
table.data th, table.data td, table.kv th, table.kv td { padding: 5px 10px;
  border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
table.data th { background: var(--panel); }
table.data td:first-child, table.data th:first-child, table.kv th { text-align: left; }
table.data tbody tr:hover { background: #eef3fb; }
.callout { padding: 10px 14px; border-radius: 8px; margin: 12px 0; border-left: 5px solid; }
.callout.info { background: #eaf2fc; border-color: var(--info); }
.callout.good { background: #e8f6ec; border-color: var(--good); }
.callout.bad { background: #fcebea; border-color: var(--bad); }
.callout.warn { background: #fdf6e3; border-color: var(--warn); }
.note { color: var(--muted); font-size: 12px; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px; width: 150px;
  background: #fff; font-size: 12px; }
.card.flipped { border-color: var(--bad); box-shadow: inset 0 0 0 1px var(--bad); }
.card.clean { border-color: var(--good); }
.card .media { display: flex; justify-content: center; align-items: center; min-height: 60px; }
.card .media img { width: 112px; height: 112px; image-rendering: pixelated; }
.card .title { font-weight: 600; margin: 4px 0 2px; }
.card dl { margin: 0; display: grid; grid-template-columns: auto 1fr; column-gap: 6px; }
.card dt { color: var(--muted); } .card dd { margin: 0; text-align: right; }
.card.wide { width: 260px; }
.card table.sample { font-size: 11px; border-collapse: collapse; width: 100%; }
.card table.sample td { padding: 1px 4px; border-bottom: 1px solid var(--line); }
.card .sample-text { white-space: pre-wrap; font-family: ui-monospace, Menlo, monospace;
  font-size: 11.5px; max-height: 180px; overflow: auto; text-align: left; width: 100%; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11px;
  color: #fff; background: var(--muted); }
.badge.flipped { background: var(--bad); } .badge.clean { background: var(--good); }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"""
