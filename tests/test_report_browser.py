"""Open the pages in real headless Chromium: they render with no console errors, every image
loads, hostile prompt text stays text, and a screenshot is saved.

Each page marks <body> with data-report-ready / data-broken-images / data-js-errors from its own
load handler; ``--dump-dom`` returns the DOM after the load event (``--virtual-time-budget`` lets
it run), and ``--enable-logging=stderr`` shows every console message, which the pages never emit
on their own. Screenshots go to pytest's tmp dir, or to $ORTHRUS_SCREENSHOT_DIR when set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orthrus.report import render_index, render_run
from orthrus.report.commands import cmd_gate
from orthrus.report.compare import render_compare
from tests.report_synthetic import make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH; install it with: apt-get install -y chromium (.ci/run does this)",
)
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def check_page(page: Path, tmp_path: Path, shot_name: str) -> str:
    result = chromium(page, tmp_path / "profile", "--dump-dom")
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-report-ready="1"' in body, "the page's load handler did not run"
    assert 'data-js-errors="0"' in body, body
    assert 'data-broken-images="0"' in body, body
    assert console_messages(result.stderr) == []
    out_dir = Path(os.environ.get("ORTHRUS_SCREENSHOT_DIR") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / shot_name
    result = chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    return dom


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser") / "reports"
    a = make_run(root, "before", near_tie_at=2048, fail_engine_at=("dlm", 2048), prompt_text=HOSTILE)
    b = make_run(root, "after", timing_seed=3, orthrus_accepted=2.0)
    assert cmd_gate([str(a), "--quiet", "--no-report"]) == 1  # the near-tie and the failed cell fail gates
    report = render_run(a)
    compare, _ = render_compare(a, b)
    return {"report": report, "compare": compare, "index": render_index(root)}


def test_report_renders_in_chromium(pages, tmp_path):
    dom = check_page(pages["report"], tmp_path, "report.png")
    # contexts swept, one block size: the context plots, acceptance (by position, histogram), memory,
    # latency, quality and identity
    assert dom.count("<img ") == 9
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom  # shown as text
    assert "<title>synthetic / before</title>" in dom  # the prompt's script never ran
    assert 'id="gates"' in dom


def test_compare_and_index_render_in_chromium(pages, tmp_path):
    assert "tokens_per_forward_median" in check_page(pages["compare"], tmp_path, "compare.png")
    assert "before" in check_page(pages["index"], tmp_path, "index.png")


def test_a_broken_page_is_caught(pages, tmp_path):
    """The check itself works: a missing image and a script error are reported."""
    broken = tmp_path / "broken.html"
    html = pages["report"].read_text()
    html = html.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1)
    html = html.replace("</main>", "<script>undefinedFunction();</script></main>")
    broken.write_text(html)
    result = chromium(broken, tmp_path / "profile", "--dump-dom")
    body = re.search(r"<body([^>]*)>", result.stdout).group(1)
    assert 'data-broken-images="1"' in body and 'data-js-errors="0"' not in body and "undefinedFunction" in body
    assert any("undefinedFunction" in line for line in console_messages(result.stderr))
