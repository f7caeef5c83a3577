"""Tables that fit: the full layout when piped or with ``--wide``, a compact one in a terminal.

A table is described once (its columns, each with a full and a compact header) and laid out at
print time:

- **full**: every column, full headers, at its natural width. Used when stdout is not a terminal
  (a file or a pipe gets every column, never cut), with ``--wide``, and in a terminal wide enough.
- **compact**: in a terminal too narrow for the full layout, only the columns marked compact,
  with short headers that wrap over lines; numbers keep their own width and are never cut, text
  columns (policy names, paths) fold to what is left. A legend under the table says what the short
  headers mean and which columns were left out.
- **stacked**: where even the compact layout does not fit (a very narrow terminal), one block of
  ``label: value`` lines per row.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import ckptsim.cli._app as _app  # the module, not the package (whose __init__ imports the commands)

# Narrowest a folding text column (a policy name) may get in the compact layout before the
# stacked layout reads better.
MIN_TEXT_WIDTH = 14


@dataclass(frozen=True)
class Col:
    """One column: ``key`` into the row dicts; ``label`` the full header; ``short`` the compact
    header (None: left out of the compact layout); ``legend`` what the short header means."""

    key: str
    label: str
    short: str | None = None
    text: bool = False          # left-aligned text that may wrap (names, paths); else a number
    legend: str = ""

    @property
    def compact(self) -> bool:
        return self.short is not None


def table_width(console: Console | None = None) -> int | None:
    """Columns a table may take: the terminal's width, or None (no limit) when stdout is not a
    terminal, so a file or a pipe gets the full layout."""
    console = console or _app.out
    return console.width if console.is_terminal else None


def layout_for(cols: Sequence[Col], rows: Sequence[dict], width: int | None, wide: bool = False) -> str:
    """Which layout fits: 'full', 'compact' or 'stacked' (module docstring)."""
    if wide or width is None or _natural_width(cols, rows, full=True) <= width:
        return "full"
    if _compact_min_width([c for c in cols if c.compact], rows) <= width:
        return "compact"
    return "stacked"


def show_table(title: str, cols: Sequence[Col], rows: Sequence[dict], *, wide: bool = False,
               styles: Sequence[str | None] | None = None, console: Console | None = None,
               show_header: bool = True) -> str:
    """Print ``rows`` (dicts of already formatted cells) in the layout that fits; returns it."""
    console = console or _app.out
    width = table_width(console)
    layout = layout_for(cols, rows, width, wide)
    styles = list(styles) if styles is not None else [None] * len(rows)
    if title and layout != "stacked":
        # above the table, not as its title: a title is wrapped to the table's width, and a
        # long path in it would be broken mid-name
        console.print(title, style="italic", highlight=False, markup=False)
    if layout == "full":
        table = _build(title, cols, rows, styles, full=True, show_header=show_header)
        _at_least(console, _natural_width(cols, rows, full=True)).print(table)
    elif layout == "compact":
        shown = [c for c in cols if c.compact]
        # headers on one line where that fits, else wrapped over lines
        whole = _compact_min_width(shown, rows, whole_header=True) <= width
        text_widths = _text_widths(shown, rows, width, whole)
        console.print(_build(title, shown, rows, styles, full=False, show_header=show_header,
                             text_widths=text_widths, whole_header=whole))
        legend = _legend(cols, shown)
        if legend:
            console.print(legend, style="dim", highlight=False, markup=False)
    else:
        _print_stacked(console, title, cols, rows)
    return layout


def _cells(col: Col, rows: Sequence[dict]) -> list[str]:
    return [str(r.get(col.key, "")) for r in rows]


def _natural_width(cols: Sequence[Col], rows: Sequence[dict], full: bool) -> int:
    """Width of the table with every cell on one line (box borders and padding included)."""
    widths = [max([cell_len(col.label if full else (col.short or ""))]
                  + [cell_len(x) for x in _cells(col, rows)]) for col in cols]
    return sum(widths) + 3 * len(cols) + 1


def _num_width(col: Col, rows: Sequence[dict], whole_header: bool = False) -> int:
    """A number column's width in the compact layout: its widest cell, or its header (whole, or
    its longest word when the header may wrap over lines)."""
    header = [col.short or ""] if whole_header else ((col.short or "").split() or [""])
    return max([cell_len(w) for w in header] + [cell_len(x) for x in _cells(col, rows)])


def _compact_min_width(cols: Sequence[Col], rows: Sequence[dict], whole_header: bool = False) -> int:
    total = 0
    for c in cols:
        if c.text:
            longest = max([cell_len(x) for x in _cells(c, rows)] + [cell_len(c.short or "")])
            total += min(longest, MIN_TEXT_WIDTH)
        else:
            total += _num_width(c, rows, whole_header)
    return total + 3 * len(cols) + 1


def _text_widths(cols: Sequence[Col], rows: Sequence[dict], width: int,
                 whole_header: bool = False) -> dict[str, int]:
    """What is left of ``width`` after the number columns, for the text columns: one that needs
    less than an even share gets what it needs, the others share the rest evenly (each at least
    MIN_TEXT_WIDTH)."""
    texts = [c for c in cols if c.text]
    fixed = sum(_num_width(c, rows, whole_header) for c in cols if not c.text) + 3 * len(cols) + 1
    left = max(width - fixed, MIN_TEXT_WIDTH * len(texts))
    need = {c.key: max([cell_len(x) for x in _cells(c, rows)] + [cell_len(c.short or "")]) for c in texts}
    out: dict[str, int] = {}
    for key in sorted(need, key=need.get):
        share = max(MIN_TEXT_WIDTH, left // (len(need) - len(out)))
        out[key] = min(need[key], share)
        left -= out[key]
    return out


_BREAK = re.compile(r"(?<=[,:+ /;])")


def wrap_text(text: str, width: int) -> str:
    """``text`` in lines of at most ``width``, broken after ',', ':', '+', '/', ';' or a space, so a
    policy spec breaks between its parameters and never inside a number; a piece longer than the
    whole width is split where it must."""
    lines: list[str] = []
    line = ""
    for piece in _BREAK.split(text):
        if cell_len(line) + cell_len(piece) <= width:
            line += piece
            continue
        if line:
            lines.append(line.rstrip())
        piece = piece.lstrip()
        while cell_len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        line = piece
    if line or not lines:
        lines.append(line.rstrip())
    return "\n".join(lines)


def _build(title: str, cols: Sequence[Col], rows: Sequence[dict], styles: Sequence[str | None],
           full: bool, show_header: bool, text_widths: dict[str, int] | None = None,
           whole_header: bool = False) -> Table:
    t = Table(show_header=show_header)
    text_widths = text_widths or {}
    for c in cols:
        header = c.label if full else (c.short or "")
        if c.text and c.key in text_widths:
            t.add_column(escape(header), justify="left", width=text_widths[c.key], overflow="fold")
        elif c.text or full:
            t.add_column(escape(header), justify="left" if c.text else "right", no_wrap=True)
        else:
            t.add_column(escape(header), justify="right", width=_num_width(c, rows, whole_header))
    for r, style in zip(rows, styles):
        cells = []
        for c in cols:
            x = str(r.get(c.key, ""))
            cells.append(escape(wrap_text(x, text_widths[c.key]) if c.key in text_widths else x))
        t.add_row(*cells, style=style)
    return t


def _legend(cols: Sequence[Col], shown: Sequence[Col]) -> str:
    parts = [f"{c.short}: {c.legend}" for c in shown if c.legend]
    left_out = [c.label for c in cols if not c.compact]
    if left_out:
        parts.append("not shown: " + ", ".join(left_out) + " (--wide, or pipe the output, for all columns)")
    return "; ".join(parts)


def _print_stacked(console: Console, title: str, cols: Sequence[Col], rows: Sequence[dict]) -> None:
    if title:
        console.print(title, style="italic", highlight=False, markup=False)
    names = [c for c in cols if c.text]
    values = [c for c in cols if not c.text]
    for r in rows:
        head = " · ".join(str(r.get(c.key, "")) for c in names if str(r.get(c.key, "")))
        if head:
            console.print(head, style="bold", highlight=False, markup=False)
        for c in values:
            v = str(r.get(c.key, ""))
            if v:
                console.print(f"  {c.label}: {v}", highlight=False, markup=False)


def _at_least(console: Console, width: int) -> Console:
    """A console as ``console`` but ``width`` columns wide or more: a full table is never cut to
    the console's width (a terminal wraps its lines; a file keeps them whole)."""
    if console.width >= width:
        return console
    return Console(file=console.file, width=width, force_terminal=console.is_terminal,
                   color_system=console.color_system, no_color=console.no_color)
