"""``python -m ckptsim.live.serve -m MODEL --port P ...``: xllamacpp's server with llama-server's flags.

xllamacpp has no command line: flags are fields of ``CommonParams``. This maps the subset of
llama-server flags that :class:`ckptsim.live.server.ServerFlags` emits, starts the server (it
serves HTTP from its own threads) and waits until SIGTERM/SIGINT. The server log goes to stderr.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ckptsim.live.serve",
                                description="Run xllamacpp's llama.cpp HTTP server with llama-server flags.")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-c", "--ctx-size", type=int, default=8192)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("-b", "--batch-size", type=int, default=2048)
    p.add_argument("-ub", "--ubatch-size", type=int, default=512)
    p.add_argument("-t", "--threads", type=int, default=-1)
    p.add_argument("-tb", "--threads-batch", type=int, default=-1)
    p.add_argument("--ctx-checkpoints", type=int, default=32)
    p.add_argument("--checkpoint-min-step", type=int, default=8192)
    p.add_argument("--cache-ram", type=int, default=8192)
    p.add_argument("--metrics", action="store_true")
    p.add_argument("-lv", "--verbosity", type=int, default=4)
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=None)
    p.add_argument("--checkpoint-every-n-tokens", type=int, default=None)
    return p


def _set(p, name: str, value, flag: str) -> None:
    if hasattr(p, name):
        setattr(p, name, value)
    else:
        print(f"ckptsim.live.serve: this build has no {name}; {flag} ignored", file=sys.stderr, flush=True)


def params_for(a: argparse.Namespace, p):
    """Fill xllamacpp's ``CommonParams`` ``p`` from the parsed flags ``a``; returns ``p``."""
    p.model.path = a.model
    # CommonParams follows llama.cpp's common_params, whose fields were renamed over the builds
    # (hostname -> hostnames, checkpoint_every_nt -> checkpoint_min_step): set what this one has.
    if hasattr(p, "hostnames"):
        p.hostnames = [a.host]
    else:
        p.hostname = a.host
    p.port = a.port
    p.n_ctx = a.ctx_size
    p.n_parallel = a.parallel
    if a.parallel == 1 and hasattr(p, "kv_unified"):
        # b6931-b7443 (#16736, seen in xllamacpp 0.2.7, b7376) turn -np 1 into 4 unified slots
        # unless -kvu is given; with one slot unified KV changes nothing
        p.kv_unified = True
    p.n_batch = a.batch_size
    p.n_ubatch = a.ubatch_size
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads_batch if a.threads_batch > 0 else a.threads
    _set(p, "n_ctx_checkpoints", a.ctx_checkpoints, "--ctx-checkpoints")
    if a.checkpoint_every_n_tokens is not None:
        _set(p, "checkpoint_every_nt", a.checkpoint_every_n_tokens, "--checkpoint-every-n-tokens")
    if hasattr(p, "checkpoint_min_step"):
        p.checkpoint_min_step = a.checkpoint_min_step
    _set(p, "cache_ram_mib", a.cache_ram, "--cache-ram")
    p.endpoint_metrics = a.metrics
    p.verbosity = a.verbosity
    if a.n_gpu_layers is not None:
        p.n_gpu_layers = a.n_gpu_layers
    return p


def main(argv: list[str] | None = None) -> int:
    """Start the server and block until a termination signal."""
    a = _parser().parse_args(argv)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print("ckptsim serves on loopback only", file=sys.stderr)
        return 2
    import xllamacpp

    p = params_for(a, xllamacpp.CommonParams())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xllamacpp.Server(p)  # noqa: F841  (keeps the server alive until we return)
    http = None
    if not hasattr(server, "listening_address"):
        # xllamacpp before 0.2.7 (llama.cpp b6751-b7079) has no HTTP server, only handle_*()
        # calls: serve the endpoints the harness uses from here
        http = python_http(server, a.host, a.port)
        threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"ckptsim.live.serve: listening on http://{a.host}:{a.port}", file=sys.stderr, flush=True)
    stop.wait()
    if http is not None:
        http.shutdown()
        http.server_close()
    return 0


def python_http(server, host: str, port: int):
    """An HTTP front for an xllamacpp ``Server`` without one: /health, /metrics, /completion and
    /v1/chat/completions, answered by its ``handle_*`` methods (one request at a time, as the
    harness sends them). An answer carrying an error code is sent with that HTTP status."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, doc) -> None:
            body = (doc if isinstance(doc, (bytes, str)) else json.dumps(doc))
            body = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/metrics":
                self._send(200, server.handle_metrics())
            else:
                self._send(404, {"error": {"code": 404, "message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            calls = {"/completion": server.handle_completions, "/completions": server.handle_completions,
                     "/v1/chat/completions": server.handle_chat_completions}
            if self.path not in calls:
                self._send(404, {"error": {"code": 404, "message": "not found"}})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            out = calls[self.path](body)
            err = out.get("error", out) if isinstance(out, dict) else {}
            code = err.get("code") if isinstance(err, dict) else None
            self._send(int(code) if isinstance(code, int) and code >= 400 else 200, out)

        def log_message(self, *args) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


if __name__ == "__main__":
    sys.exit(main())
