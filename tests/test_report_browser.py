"""report.html as a reader sees it: loaded in headless Chromium, every image decodes, every table has rows,
no markdown is left unrendered, and failed points are coloured.

Needs Debian's `chromium` (/usr/bin/chromium); skipped with the reason where it is absent, except in CI,
which installs it and sets ATTNBENCH_REQUIRE_BROWSER=1 so a missing browser fails instead.
"""
import html
import os
import re
import shutil
import subprocess

import pytest

from attnbench.perf import records
from attnbench.perf.report import render

from perf_helpers import synthetic

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("ATTNBENCH_REQUIRE_BROWSER") != "1":
    pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI installs it",
                allow_module_level=True)

# Appended to a copy of the page: after load, mark each image and table with what the browser made of it.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images)
    img.setAttribute("data-decoded", img.complete && img.naturalWidth > 0 ? "yes" : "no");
  for (const table of document.querySelectorAll("table"))
    table.setAttribute("data-body-rows", table.querySelectorAll("tbody tr").length);
  document.body.setAttribute("data-probed", "yes");
});
</script>"""


def chromium(*args, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def run_with_everything(run_dir):
    """A run holding what the page must show: ok points, a zero-memory point, oom, error, inaccurate."""
    run_dir.mkdir()
    path = run_dir / "results.jsonl"
    for n in (256, 512, 1024):
        records.append(path, synthetic("fast", n, [1e-3 * (n / 256) ** 2] * 5, peak_bytes=0))
        records.append(path, synthetic("slow", n, [3e-3 * (n / 256) ** 2] * 5))
    records.append(path, synthetic("wrong", 256, [1e-3] * 5, accurate=False, error_vs_ref=3.0))
    gone = dict(time_median_s=None, time_iqr_s=None, peak_bytes=None, tflops=None, accurate=None,
                error_vs_ref=None, fraction_of_peak=None)
    records.append(path, synthetic("crashes", 512, [1.0], status="error", message="RuntimeError: exploded", **gone))
    records.append(path, synthetic("hog", 1024, [1.0], status="oom", message="MemoryError", **gone))
    return run_dir


def test_report_renders_in_a_browser(tmp_path):
    run_dir = run_with_everything(tmp_path / "run-browser")
    render(run_dir)
    page = (run_dir / "report.html").read_text()
    probe = tmp_path / "probed.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))

    done = chromium("--dump-dom", probe.as_uri(), tmp_path=tmp_path)
    dom = done.stdout
    assert 'data-probed="yes"' in dom, done.stderr[-2000:]
    decoded = re.findall(r'data-decoded="(\w+)"', dom)
    assert decoded and set(decoded) == {"yes"}, f"broken images: {decoded}"
    rows = [int(n) for n in re.findall(r'data-body-rows="(\d+)"', dom)]
    assert rows and min(rows) > 0, f"a table with no rows: {rows}"
    text = html.unescape(re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", dom, flags=re.S))
    assert "`" not in text and "**" not in text, "unrendered markdown in the page"
    assert "<code>ru_maxrss</code>" in dom
    # failures come first and are coloured; the page says what went wrong
    assert dom.index("Implausible, inaccurate, suspicious or failed") < dom.index("Points")
    for status in ("inaccurate", "error", "oom"):
        assert re.search(rf"<td class=\"(bad|warn)\">{status}</td>", dom), status

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1400,3000", (run_dir / "report.html").as_uri(), tmp_path=tmp_path)
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.getextrema()[0] < 100, "the screenshot is blank"
