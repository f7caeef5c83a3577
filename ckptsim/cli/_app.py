"""The typer application and the helpers every command shares (errors, JSON output, progress)."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Simulate and tune llama-server context checkpoints for hybrid/recurrent LLMs.")

# Exit codes (README, "Exit codes"): 0 success, 1 the work failed (server unreachable, ...),
# 2 bad input or usage (a file that is not what was expected), 130 interrupted.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

err = Console(stderr=True, soft_wrap=True)
# Piped output gets a wide console so tables are not cut to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected exceptions into a one-line message and an exit code, never a traceback."""
    from ..trace import TraceError

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (UserError, TraceError, FileExistsError, FileNotFoundError, IsADirectoryError,
                ValueError) as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except (ConnectionError, TimeoutError, OSError, RuntimeError) as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(EXIT_FAILED) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
    return wrapper


def print_json(doc: Any) -> None:
    """Print one JSON document on stdout and nothing else."""
    sys.stdout.write(json.dumps(doc, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def progress(enabled: bool = True):
    """A rich progress display on stderr (callers add their tasks); hidden when disabled."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err, disable=not enabled, transient=False)


def int_list(text: str, flag: str) -> list[int]:
    """A comma-separated list of integers from a CLI flag; a bad item is a usage error."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None
