"""Sweep runs on a Dask distributed cluster (``ckptsim sweep --cluster tcp://host:port``).

Optional: needs the ``cluster`` extra (``pip install 'ckptsim[cluster]'``). Without ``--cluster``
a sweep uses local processes and nothing here is imported.

What travels: the client loads each trace once and scatters it to every worker (``broadcast``),
so a task carries only its small ``SweepTask``, the cost profile and a reference to a trace the
worker already holds; workers need ckptsim installed, not the trace files. Each run comes back
as its result dict when it finishes (``as_completed``), which moves the progress bar.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator

CONNECT_TIMEOUT_S = 10
_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/:]+:\d{1,5}$")


class ClusterError(RuntimeError):
    """The cluster cannot be used: Dask is missing, or no scheduler answers at the address."""


def check_address(address: str) -> None:
    """Refuse an address that is not ``tcp://host:port`` (or ``tls://``) before connecting."""
    if not _ADDRESS.match(address):
        raise ClusterError(f"--cluster {address!r}: expected a Dask scheduler address, "
                           "tcp://HOST:PORT (what `dask scheduler` prints)")


def connect(address: str, timeout_s: float | None = None):
    """A Dask client connected to the scheduler at ``address`` (``CONNECT_TIMEOUT_S`` by default:
    Dask retries a refused connection until then)."""
    check_address(address)
    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError("--cluster needs Dask: pip install 'ckptsim[cluster]'") from None
    try:
        return Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"--cluster {address}: no Dask scheduler answered within {timeout_s:g} s "
                           f"({type(e).__name__}); expected a running `dask scheduler` there") from None


def run_on_cluster(runs: list, address: str, work: Callable[..., dict],
                   order: list[int]) -> Iterator[tuple[int, dict]]:
    """(index, result) of each run as it finishes on the cluster: ``work(run, trace, profile)``
    (``sweep.simulate_task``, handed in so that this module and ``sweep`` do not import each
    other), submitted in ``order`` (first: highest priority)."""
    from .cost import load_profile
    from .trace import load_trace
    client = connect(address)        # first: it says so in one line when Dask is missing
    from distributed import as_completed
    try:
        paths = sorted({t.trace_path for t in runs})
        # A list, not a dict: a dict's keys would become the data's names on the shared scheduler.
        traces = dict(zip(paths, client.scatter([load_trace(p) for p in paths], broadcast=True, hash=False)))
        profiles = {n: load_profile(n) for n in {t.profile for t in runs}}   # a few KB: sent per task
        futs = {}
        for rank, j in enumerate(order):
            t = runs[j]
            f = client.submit(work, t, traces[t.trace_path], profiles[t.profile],
                              pure=False, priority=len(order) - rank)
            futs[f] = j
        for f in as_completed(list(futs), loop=client.loop):   # loop: this client is not the default
            yield futs[f], f.result()
    finally:
        client.close()
