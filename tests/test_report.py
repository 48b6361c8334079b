"""HTML reports: builder, galleries, plots, the trimming report, and real headless Chromium.

Ground truth: PNGs are decoded back and compared with the input pixels, metrics in plot
legends are recomputed with scikit-learn, and Chromium (a real browser) loads the page.
A deliberately broken page checks that the browser test can fail.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from browser import check_report, find_chromium
from sklearn.metrics import average_precision_score, roc_auc_score

from gradsift.experiments.datasets import load_digits
from gradsift.experiments.trimming import Recipe, TrimConfig, trim_dataset
from gradsift.report import Report, SampleView, sample_items
from gradsift.report.detection import detection_section
from gradsift.report.gallery import GalleryItem, image_png, render_table_row, render_text
from gradsift.report.html import CSP, figure_to_png, png_data_uri
from gradsift.report.pages import trim_report
from gradsift.report.plots import (
    new_figure,
    roc_pr_curves,
    score_distribution,
    trimming_bars,
    trimming_curves,
)
from gradsift.report.trimming import trimming_verdict

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)"
)
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


pytestmark = pytest.mark.usefixtures("one_thread")


def _decode(b64: str) -> np.ndarray:
    return mpimg.imread(io.BytesIO(base64.b64decode(b64)), format="png")


# --------------------------------------------------------------------------- builder


def test_builder_escapes_embeds_and_is_self_contained(tmp_path: Path) -> None:
    rep = Report("Noise <in> digits", subtitle="a & b")
    sec = rep.add_section("First", "intro <b>")
    sec.add_text("para one\n\npara <two>")
    sec.add_table(
        pd.DataFrame({"name": ["<script>x</script>"], "value": [0.123456]}), caption="tbl"
    )
    fig, (ax,) = new_figure(3, 2)
    ax.plot([0, 1], [0, 1])
    sec.add_figure(fig, caption="a line")
    rep.add_section("Second").add_callout("careful", tone="warn")
    rep.add_key_values({"k": 1.23456789, "lst": [1, 2]})  # goes into the last section
    html = rep.to_html()

    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "Noise &lt;in&gt; digits" in html and "para &lt;two&gt;" in html
    assert "0.123" in html and "0.123456" not in html  # float format
    assert f'content="{CSP}"' in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing loaded from elsewhere
    assert html.count("<section") == 2 and 'href="#first"' in html and 'id="second"' in html
    assert "1.235" in html and "1, 2" in html
    pngs = DATA_URI.findall(html)
    assert len(pngs) == 1 and _decode(pngs[0]).ndim == 3
    out = rep.save(tmp_path / "sub" / "r.html")
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError, match="title"):
        Report("  ")
    with pytest.raises(ValueError, match="tone"):
        sec.add_callout("x", tone="loud")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PNG"):
        png_data_uri(b"GIF89a")
    with pytest.raises(TypeError, match="DataFrame"):
        sec.add_table([[1, 2]])  # type: ignore[arg-type]


def test_report_without_sections_gets_a_default_one() -> None:
    rep = Report("t")
    rep.add_text("hello")
    assert [s.title for s in rep.sections] == ["Results"]
    assert "<nav" not in rep.to_html()  # no table of contents for a single section


def test_figure_to_png_renders_at_the_requested_size() -> None:
    sizes = []
    for dpi in (50, 100):
        fig, (ax,) = new_figure(4, 3)
        ax.plot([0, 1], [0, 1])
        img = mpimg.imread(io.BytesIO(figure_to_png(fig, dpi=dpi)), format="png")
        sizes.append(img.shape[:2])
    (h1, w1), (h2, w2) = sizes
    assert 150 <= w1 <= 210 and 110 <= h1 <= 160  # about 4 x 3 inches at 50 dpi
    assert abs(w2 - 2 * w1) <= 4 and abs(h2 - 2 * h1) <= 4  # twice the dpi, twice the pixels


# --------------------------------------------------------------------------- gallery


@pytest.mark.parametrize(("side", "scale"), [(8, 14), (28, 4)])
def test_image_png_shows_the_pixels(side: int, scale: int) -> None:
    rng = np.random.default_rng(side)
    x = rng.uniform(0, 16, size=side * side)
    img = mpimg.imread(io.BytesIO(image_png(x, (side, side))), format="png")
    assert img.shape[:2] == (side * scale, side * scale)
    grey = img[::scale, ::scale, 0]  # one value per original pixel
    want = 1.0 - (x.reshape(side, side) - x.min()) / (x.max() - x.min())  # gray_r: ink is dark
    np.testing.assert_allclose(grey, want, atol=0.02)
    # every enlarged block is uniform (nearest neighbour)
    assert np.all(img[:scale, :scale, 0] == img[0, 0, 0])


def test_image_png_colour_layouts_and_errors() -> None:
    rgb = np.zeros((3, 6, 6))
    rgb[0] = 1.0  # a red CHW image
    img = mpimg.imread(io.BytesIO(image_png(rgb)), format="png")
    assert (
        img.shape[:2] == (108, 108) and np.allclose(img[..., 0], 1) and np.allclose(img[..., 1], 0)
    )
    hwc = np.moveaxis(rgb, 0, -1)
    np.testing.assert_array_equal(mpimg.imread(io.BytesIO(image_png(hwc)), format="png"), img)
    with pytest.raises(ValueError, match="square"):
        image_png(np.zeros(10))
    with pytest.raises(ValueError, match="image_shape"):
        image_png(np.zeros(10), (3, 3))


def test_tabular_and_text_rendering() -> None:
    html = render_table_row(np.array([1.5, -2.25]), ["height", "<w>"])
    assert "height" in html and "&lt;w&gt;" in html and "-2.25" in html
    row = np.zeros(30)
    row[[3, 17]] = [5.0, -9.0]
    many = render_table_row(row, max_features=2)
    assert "x3" in many and "x17" in many and "x4" not in many and "2 of 30 features" in many
    with pytest.raises(ValueError, match="feature names"):
        render_table_row(np.zeros(3), ["a"])
    text = render_text("<b>" + "a" * 1000, max_chars=50)
    assert "&lt;b&gt;" in text and text.count("a") < 60 and "…" in text


def test_sample_items_fields_and_highlights() -> None:
    X = np.arange(5 * 4, dtype=float).reshape(5, 4)
    y = np.array([0, 1, 2, 1, 0])
    y_true = np.array([0, 2, 2, 1, 1])
    items = sample_items(
        X,
        y,
        [4, 1, 0],
        "tabular",
        scores=np.array([0.1, 0.9, 0.2, 0.3, 0.8]),
        predicted=np.array([0, 2, 2, 1, 1]),
        flipped=np.array([1, 4]),
        y_true=y_true,
        class_names=["a", "b", "c"],
    )
    assert [it.title for it in items] == ["#4 (rank 1)", "#1 (rank 2)", "#0 (rank 3)"]
    assert [it.highlight for it in items] == ["flipped", "flipped", "clean"]
    f0 = dict(items[0].fields)
    assert f0 == {"given": "a", "predicted": "b", "true": "b", "score": "0.8"}
    assert "true" not in dict(items[2].fields)  # the true label only for flipped samples
    html = items[0].to_html()
    assert 'class="card flipped wide"' in html and "x3" in html
    with pytest.raises(IndexError):
        sample_items(X, y, [7], "tabular")
    assert "badge" not in GalleryItem(media="<i>m</i>").to_html()


# --------------------------------------------------------------------------- plots


def test_roc_pr_legends_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros(300, dtype=bool)
    y[:60] = True
    scores = {"good": y + rng.normal(0, 0.5, 300), "random": rng.normal(size=300)}
    fig = roc_pr_curves(scores, np.flatnonzero(y))
    roc_ax, pr_ax = fig.axes[:2]
    roc_labels = {t.get_text() for t in roc_ax.get_legend().get_texts()}
    pr_labels = {t.get_text() for t in pr_ax.get_legend().get_texts()}
    for name, s in scores.items():
        assert f"{name} ({roc_auc_score(y, s):.3f})" in roc_labels
        assert f"{name} ({average_precision_score(y, s):.3f})" in pr_labels
    with pytest.raises(ValueError, match="both"):
        roc_pr_curves(scores, np.arange(300))


def test_score_distribution_panels() -> None:
    s = np.linspace(0, 1, 100)
    assert len(score_distribution(s, s > 0.9).axes) == 1
    fig = score_distribution(s, s > 0.9, flipped=np.arange(90, 100), detector="l2")
    assert len(fig.axes) == 2 and "l2" in fig.axes[1].get_title()
    with pytest.raises(ValueError):
        score_distribution(np.array([]), np.array([], dtype=bool))


# --------------------------------------------------------------------------- trimming report


@pytest.fixture(scope="module")
def trim_run():
    """A real, small end-to-end run: digits, logistic regression, 3 seeds, 2 budgets."""
    return trim_dataset(
        "digits",
        noise=0.2,
        recipe=Recipe(model="logreg", epochs=4, batch_size=64),
        detectors=("l2", "loss"),
        config=TrimConfig(budgets=(0.1, 0.2), seeds=(0, 1, 2), n_jobs=1, progress=False),
    )


def test_trimming_plots_from_a_real_result(trim_run) -> None:
    res = trim_run.trim
    fig = trimming_curves(res.curve, res.chosen, 3)
    assert len(fig.axes) == 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"no trimming", "random removal (control)", "l2", "loss"} <= set(labels)
    assert any(lab.startswith("oracle") for lab in labels)
    bars = trimming_bars(res.summary, res.runs)
    from matplotlib.container import BarContainer

    bar_sets = [c for c in bars.axes[0].containers if isinstance(c, BarContainer)]
    heights = sorted(round(p.get_height(), 6) for c in bar_sets for p in c)
    want = []
    for m in ("l2", "loss"):
        b = res.chosen[m]
        for meth in (m, "random"):
            sel = res.runs[(res.runs.method == meth) & np.isclose(res.runs.budget, b)]
            want.append(round(sel.test_accuracy.mean(), 6))
    assert heights == sorted(want)


def test_verdict_follows_the_paired_seeds(trim_run) -> None:
    res = trim_run.trim
    for (tone, text), method in zip(trimming_verdict(res), ["l2", "loss"], strict=True):
        b = res.chosen[method]
        a = (
            res.runs[(res.runs.method == method) & (res.runs.budget == b)]
            .set_index("seed")
            .test_accuracy
        )
        r = (
            res.runs[(res.runs.method == "random") & (res.runs.budget == b)]
            .set_index("seed")
            .test_accuracy
        )
        wins = int((a > r).sum())
        assert f"better on {wins} of 3 seeds" in text
        expected = (
            "good"
            if wins == 3 and (a - r).mean() > 0
            else ("bad" if (a - r).mean() <= 0 else "warn")
        )
        assert tone == expected


def test_detection_section_with_images(trim_run) -> None:
    data = trim_run.data
    rep = Report("det")
    detection_section(
        rep,
        trim_run.detection,
        SampleView.from_split(data),
        flipped=data.train.flipped,
        predicted=trim_run.predicted,
        n_gallery=5,
    )
    html = rep.to_html()
    assert html.count('class="card') == 5
    imgs = DATA_URI.findall(html)
    assert len(imgs) == 2 + 5  # ROC/PR + histogram + five digits
    assert html.count("AUROC") >= 1
    with pytest.raises(ValueError, match="rows"):
        detection_section(
            Report("x"),
            trim_run.detection,
            SampleView.from_split(load_digits(noise=0.2, seed=0), "val"),
        )


@pytest.fixture(scope="module")
def report_path(trim_run, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "trim.html"
    trim_report(trim_run).save(path)
    return path


def test_trim_report_content(report_path: Path, trim_run) -> None:
    html = report_path.read_text(encoding="utf-8")
    assert [s for s in ("Overview", "Trimming", "Detection") if s in html] == [
        "Overview",
        "Trimming",
        "Detection",
    ]
    assert "Answer:" in html and "random removal" in html and "oracle" in html
    assert html.count('class="card') == 24
    for b64 in DATA_URI.findall(html):
        assert _decode(b64).size > 0


@needs_chromium
def test_report_renders_in_headless_chromium(report_path: Path) -> None:
    html = report_path.read_text(encoding="utf-8")
    check = check_report(report_path, CHROMIUM)
    assert check.probe_ran, "the page did not finish loading"
    assert check.console == [], check.console
    assert len(check.images) == html.count("<img ") == len(DATA_URI.findall(html)) > 24
    assert check.broken_images == []
    assert all(im["width"] >= 100 for im in check.images)
    assert check.sections == 3 and check.title.startswith("Does trimming help?")
    assert check.height > 3000


@needs_chromium
def test_browser_check_catches_a_broken_page(tmp_path: Path) -> None:
    """Negative control: the same check fails on a page with errors and a broken image."""
    rep = Report("broken")
    rep.add_html('<img src="data:image/png;base64,iVBORw0KGgoAAAA=" alt="truncated">')
    rep.add_html("<script>console.error('boom'); notAFunction();</script>")
    rep.add_html('<img src="https://example.com/x.png" alt="remote">')
    path = rep.save(tmp_path / "broken.html")
    check = check_report(path, CHROMIUM)
    assert check.probe_ran
    assert any("boom" in m for m in check.console)
    assert any("notAFunction" in m for m in check.console)
    assert any("Content Security Policy" in m for m in check.console)  # remote load blocked
    assert {im["alt"] for im in check.broken_images} == {"truncated", "remote"}


# --------------------------------------------------------------------------- demo / detect pages


def test_demo_report(tmp_path: Path) -> None:
    from gradsift.experiments.demo import run_demo
    from gradsift.report.pages import demo_report

    res = run_demo(epochs=5, detectors=("l2", "loss"), modes=("best", "final"))
    path = demo_report(res).save(tmp_path / "demo.html")
    html = path.read_text(encoding="utf-8")
    assert html.count("<section") == 3  # overview + one detection section per checkpoint mode
    assert html.count('class="card') == 24 + 12
    assert len(DATA_URI.findall(html)) == 2 * 2 + 36  # (ROC/PR + histogram) x 2 modes + digits
    if CHROMIUM is not None:
        check = check_report(path, CHROMIUM)
        assert check.probe_ran and check.console == [] and check.broken_images == []


@pytest.mark.parametrize("fmt", ["csv", "npz"])
def test_detect_report_renders_rows_as_they_are(tmp_path: Path, fmt: str) -> None:
    from sklearn.datasets import load_digits as sk_digits

    from gradsift.detect.oga import OGAConfig
    from gradsift.experiments.detect_run import detect_file
    from gradsift.experiments.training import TrainConfig
    from gradsift.report.pages import detect_report

    d = sk_digits()
    path = tmp_path / f"digits.{fmt}"
    if fmt == "npz":
        np.savez(path, X=d.images[:300], y=d.target[:300])
    else:
        frame = pd.DataFrame(d.data[:300], columns=[f"p{i}" for i in range(64)])
        frame["label"] = [f"d{v}" for v in d.target[:300]]  # string labels
        frame.to_csv(path, index=False)
    det = detect_file(
        path, classifier="logreg", train=TrainConfig(epochs=3), oga=OGAConfig(["l2", "loss"])
    )
    scores = det.scores
    names = det.table.class_names
    rep = detect_report(det)
    html = rep.to_html()
    top = int(np.argmax(scores["l2_score"].to_numpy()))
    assert f"#{top} (rank 1)" in html
    n_img = len(DATA_URI.findall(html))
    if fmt == "npz":
        assert n_img == 1 + 24  # histogram + the digits as images
    else:
        assert n_img == 1 and html.count('class="sample"') == 24  # rows as tables
        want = names[det.predicted[top]]
        assert f"<dt>predicted</dt><dd>{want}</dd>" in html
