"""Self-contained HTML reports (embedded matplotlib figures, tables, sample galleries).

::

    from gradsift.report import Report
    report = Report("My data")
    report.add_section("Detection", "What was flagged").add_figure(fig, caption="...")
    report.save("report.html")

Modules: :mod:`~gradsift.report.html` (the builder), :mod:`~gradsift.report.plots`
(figures), :mod:`~gradsift.report.gallery` (samples as images / table rows / text),
:mod:`~gradsift.report.detection` and :mod:`~gradsift.report.trimming` (ready-made
sections), :mod:`~gradsift.report.pages` (the page of each command, built from the result
object the library returned).
"""

from gradsift.report.gallery import GalleryItem, SampleView, render_sample, sample_items
from gradsift.report.html import Report, Section, escape, figure_to_png

__all__ = [
    "GalleryItem",
    "Report",
    "SampleView",
    "Section",
    "escape",
    "figure_to_png",
    "render_sample",
    "sample_items",
]
