"""Open a report in real headless Chromium: console messages, image checks, screenshots.

Used by the report tests and by ``scripts/screenshot_report.py``. Needs a Chromium binary
(Debian: ``apt-get install chromium``); nothing here is needed to *build* a report.

:func:`check_report` loads a copy of the page with a small probe script appended (the
report's Content-Security-Policy allows inline scripts), which records, after the
``load`` event, every ``<img>``'s decoded size and the page height into the DOM; Chromium
dumps the DOM (``--dump-dom``) and logs every console message to stderr
(``--enable-logging=stderr``), which are collected as ``console``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BrowserCheck", "check_report", "find_chromium", "screenshot"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
_PROBE = """
<script id="gradsift-probe">
window.addEventListener("load", function () {
  var imgs = Array.prototype.map.call(document.images, function (im) {
    return {alt: im.alt, complete: im.complete, width: im.naturalWidth, height: im.naturalHeight,
            inline: im.src.indexOf("data:image/") === 0};
  });
  var out = document.createElement("pre");
  out.id = "gradsift-probe-result";
  out.textContent = JSON.stringify({
    images: imgs, height: document.documentElement.scrollHeight,
    sections: document.querySelectorAll("section").length, title: document.title});
  document.body.appendChild(out);
});
</script>
"""
_CONSOLE_RE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)$")
_RESULT_RE = re.compile(r'<pre id="gradsift-probe-result">(.*?)</pre>', re.S)


def find_chromium() -> str | None:
    """Path of a Chromium / Chrome binary on ``PATH`` (or ``$GRADSIFT_CHROMIUM``), else None."""
    env = os.environ.get("GRADSIFT_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class BrowserCheck:
    """What Chromium saw when it loaded a report.

    Attributes:
        console: every console message (errors, warnings, logs, CSP violations).
        images: per ``<img>``: ``alt``, ``complete``, decoded ``width`` / ``height``,
            ``inline`` (a ``data:image/`` URI).
        height: document height in CSS pixels.
        sections: number of ``<section>`` elements.
        title: the document title.
        probe_ran: False when the probe did not report (the page did not finish loading).
    """

    console: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    height: int = 0
    sections: int = 0
    title: str = ""
    probe_ran: bool = False

    @property
    def broken_images(self) -> list[dict]:
        """Images that did not load or decode (zero size) or are not embedded."""
        return [
            im for im in self.images if not (im["complete"] and im["width"] > 0 and im["inline"])
        ]


def _run(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="gradsift-chromium-") as profile:
        cmd = [binary, *_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def check_report(
    path: str | os.PathLike[str], chromium: str | None = None, timeout: float = 90.0
) -> BrowserCheck:
    """Load the report at ``path`` in headless Chromium and report what happened.

    Raises:
        FileNotFoundError: no Chromium binary, or no report at ``path``.
        RuntimeError: Chromium failed (the message includes its stderr).
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found; install it (Debian: apt-get install chromium)")
    src = Path(path)
    html = src.read_text(encoding="utf-8")
    probed = html.replace("</body>", _PROBE + "</body>", 1) if "</body>" in html else html + _PROBE
    with tempfile.TemporaryDirectory(prefix="gradsift-report-") as tmp:
        page = Path(tmp) / src.name
        page.write_text(probed, encoding="utf-8")
        proc = _run(
            binary,
            [
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=5000",
                "--dump-dom",
                page.as_uri(),
            ],
            timeout,
        )
    if proc.returncode != 0 and not proc.stdout:
        raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    check = BrowserCheck()
    check.console = [
        m.group(1) for line in proc.stderr.splitlines() if (m := _CONSOLE_RE.search(line))
    ]
    found = _RESULT_RE.search(proc.stdout)
    if found:
        import html as _html

        data = json.loads(_html.unescape(found.group(1)))
        check.images = data["images"]
        check.height = int(data["height"])
        check.sections = int(data["sections"])
        check.title = str(data["title"])
        check.probe_ran = True
    return check


def screenshot(
    path: str | os.PathLike[str],
    png: str | os.PathLike[str],
    width: int = 1280,
    height: int | None = None,
    chromium: str | None = None,
    timeout: float = 90.0,
) -> Path:
    """Save a PNG screenshot of the report (the full page unless ``height`` is given)."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found; install it (Debian: apt-get install chromium)")
    if height is None:
        height = max(600, check_report(path, binary, timeout).height)
    out = Path(png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = _run(
        binary,
        [f"--window-size={width},{height}", f"--screenshot={out}", Path(path).resolve().as_uri()],
        timeout,
    )
    if not out.exists():
        raise RuntimeError(
            f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    return out
