"""`ckptsim serve-tiny` stops its server (its own process group) when it is stopped itself:
SIGTERM -> server stopped, exit 143; Ctrl-C (SIGINT) -> server stopped, exit 130."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.live
pytest.importorskip("xllamacpp", reason="xllamacpp (the 'live' extra) is not installed: no llama.cpp server")
pytest.importorskip("gguf", reason="gguf (the 'live' extra) is not installed: cannot write the tiny model")

from ckptsim.live.server import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-tiny-cache")


def _start(cache_dir: Path, tmp_path: Path) -> tuple[subprocess.Popen, dict, int, threading.Thread]:
    port = free_port()
    cmd = [sys.executable, "-m", "ckptsim", "serve-tiny", "--port", str(port), "-c", "1024",
           "--log", str(tmp_path / "server.log"), "--cache-dir", str(cache_dir), "--json"]
    with open(tmp_path / "stderr.txt", "wb") as errf:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=errf, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in p.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    text, deadline = "", time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        text += line
        try:
            return p, json.loads(text), port, reader
        except ValueError:
            continue
    p.kill()
    p.wait()
    reader.join(5)
    p.stdout.close()
    pytest.fail(f"serve-tiny printed no JSON document: {text!r} {_stderr(tmp_path)!r}")


def _stderr(tmp_path: Path) -> str:
    return (tmp_path / "stderr.txt").read_text(errors="replace")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2):
            return True
    except OSError:
        return False


def _processes_with_port(port: int) -> list[str]:
    """Command lines of live processes that carry ``--port PORT`` (the server and serve-tiny)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            state = next((x for x in (d / "status").read_text().splitlines() if x.startswith("State:")), "")
        except OSError:
            continue
        if "zombie" in state:
            continue
        for a, b in zip(argv, argv[1:]):
            if a == b"--port" and b == str(port).encode():
                found.append(b" ".join(argv).decode(errors="replace"))
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server(cache_dir, tmp_path, sig, code):
    p, doc, port, reader = _start(cache_dir, tmp_path)
    url = doc["url"]
    try:
        assert url == f"http://127.0.0.1:{port}" and _answers(url)
        p.send_signal(sig)
        assert p.wait(timeout=60) == code, _stderr(tmp_path)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        reader.join(5)
        p.stdout.close()
    assert "server stopped" in _stderr(tmp_path)
    assert not _answers(url)
    assert _processes_with_port(port) == []
