"""report: files, config.json, no silent overwrite, and the HTML checked in a real headless chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.report import ReportSpec, build_report
from ckptsim.sim import ServerConfig

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "traces" / "chat-edit.jsonl"
pytestmark = pytest.mark.skipif(not TRACE.exists(), reason="bundled traces/ not generated yet")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rep") / "chat"
    spec = ReportSpec((str(TRACE),), ("fifo", "llama-server", "oracle"), (4, 32),
                      ServerConfig(ctx_checkpoints=8), timeline_requests=60)
    build_report(spec, out, jobs=1)
    return out


def test_report_files(report_dir: Path) -> None:
    """HTML, markdown, CSVs, config.json, and every PNG the markdown names exists beside it."""
    names = {p.name for p in report_dir.iterdir()}
    assert {"report.html", "report.md", "config.json", "sweep.csv", "summary.csv"} <= names
    cfg = json.loads((report_dir / "config.json").read_text())
    assert cfg["config"]["ctx_checkpoints"] == 8 and cfg["ctx_checkpoints"] == [4, 32]
    md = (report_dir / "report.md").read_text()
    pngs = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert len(pngs) >= 6 and all((report_dir / p).exists() for p in pngs)
    assert any("timeline" in p for p in pngs) and any("ttft-cdf" in p for p in pngs)
    html = (report_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)   # self-contained
    assert "lower bound" in html


def test_report_refuses_to_overwrite(report_dir: Path) -> None:
    r = CliRunner().invoke(app, ["report", str(TRACE), "--out", str(report_dir)])
    assert r.exit_code == 2 and "--force" in r.output


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.browser
def test_report_opens_in_headless_chromium(report_dir: Path) -> None:
    """Every image loads in a real browser (onload sets data attributes); a screenshot is taken."""
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    url = (report_dir / "report.html").resolve().as_uri()
    common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--virtual-time-budget=10000"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    total = int(re.search(r'data-images-total="(\d+)"', body.group(0)).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body.group(0)).group(1))
    assert total >= 6 and loaded == total
    assert dom.count("data-loaded=\"1\"") == total and "data-failed" not in dom
    shot = report_dir / "screenshot.png"
    subprocess.run(common + ["--window-size=1200,3000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=180)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
