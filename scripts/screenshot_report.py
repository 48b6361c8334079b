"""Screenshot a gradsift HTML report with headless Chromium, for humans to look at.

    # an existing report
    .venv/bin/python scripts/screenshot_report.py out.html --png out.png
    # make a small digits trimming report first (about a minute), then screenshot it
    .venv/bin/python scripts/screenshot_report.py --make-digits runs/digits.html --png runs/digits.png

``--split N`` also writes the page cut into N-pixel-tall PNGs (``out-0.png``, ...), which
are easier to read in an image viewer. Needs Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from browser import check_report, find_chromium, screenshot


def make_digits_report(path: Path) -> Path:
    """A trimming report on digits with 20% flipped labels (l2 and loss, 3 seeds)."""
    from gradsift.report.pages import trim_report
    from gradsift.experiments.trimming import TrimConfig, trim_dataset

    run = trim_dataset(
        "digits", noise=0.2, detectors=("l2", "loss", "iforest"), config=TrimConfig(n_jobs=0)
    )
    return trim_report(run).save(path)


def split_png(png: Path, height: int) -> list[Path]:
    """Cut a tall PNG into ``height``-pixel pieces next to it."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    parts = []
    for i, top in enumerate(range(0, img.shape[0], height)):
        part = png.with_name(f"{png.stem}-{i}{png.suffix}")
        mpimg.imsave(part, img[top : top + height])
        parts.append(part)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("html", nargs="?", help="the report to screenshot")
    ap.add_argument(
        "--make-digits", metavar="HTML", help="first write a digits trimming report here"
    )
    ap.add_argument("--png", required=True, help="where to write the screenshot")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--split", type=int, default=0, help="also cut the page into pieces this tall")
    a = ap.parse_args()
    if find_chromium() is None:
        raise SystemExit("Chromium not found: apt-get install -y chromium")
    if a.make_digits:
        html = make_digits_report(Path(a.make_digits))
    elif a.html:
        html = Path(a.html)
    else:
        raise SystemExit("give a report path or --make-digits PATH")
    check = check_report(html)
    if check.console or check.broken_images:
        print(f"warning: console messages {check.console}, broken images {check.broken_images}")
    png = screenshot(html, a.png, width=a.width)
    print(f"{png} ({check.height} px tall page, {len(check.images)} images)")
    if a.split:
        for part in split_png(png, a.split):
            print(part)


if __name__ == "__main__":
    main()
