"""What the commands write: JSON that is always valid JSON."""

from __future__ import annotations

import json
from typing import Any

from simgpu.errors import SimGPUError


def dumps(obj: Any) -> str:
    """JSON as every command prints or writes it. A non-finite figure (a GPU file's costs
    large enough to overflow, say) is an error, never ``Infinity`` or ``NaN``, which no
    JSON reader accepts."""
    try:
        return json.dumps(obj, indent=1, allow_nan=False)
    except ValueError:
        raise SimGPUError(
            "a result is not a finite number (inf or nan): check the GPU file's figures "
            "and the inputs' sizes"
        ) from None


def save_figure(fig: Any, path: Any, **kw: Any) -> None:
    """Save a matplotlib figure to exactly ``path``: the format comes from its suffix,
    PNG when it has none, and no suffix is ever appended (``--gantt /dev/full`` must
    fail on /dev/full, not write /dev/full.png)."""
    from pathlib import Path

    suffix = Path(str(path)).suffix.lower().lstrip(".")
    if suffix and suffix not in ("png", "pdf", "svg", "jpg", "jpeg"):
        raise ValueError(f"{path}: unsupported chart format '{suffix}' (png, pdf, svg, jpg)")
    fmt = suffix or "png"
    with open(path, "wb") as f:
        fig.savefig(f, format=fmt, **kw)


def printable(text: str) -> str:
    """``text`` with control characters escaped: names from a file must not reach the
    terminal raw (a newline, an escape sequence)."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def text_table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    """A plain-text table, columns two spaces apart; ``right`` are the right-aligned
    columns (default: every column but the first)."""
    right = right if right is not None else set(range(1, len(header)))
    cols = [header, *rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])
