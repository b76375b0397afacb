"""Reading files a user names: bounded, strict, and every failure one line.

A path given on the command line may be a device, a FIFO, a directory or a file of any
size, and JSON may nest without limit; none of those may hang the program, exhaust its
memory or end in a traceback. Every reader of user files goes through :func:`read_bytes`
and :func:`parse_json`.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from simgpu.errors import FormatError, SimGPUError
from simgpu.output import printable

#: Largest file read, in bytes; ``SIMGPU_MAX_FILE_MB`` raises it.
DEFAULT_MAX_MB = 512
#: Deepest JSON nesting accepted: simgpu's own files nest fewer than 10 levels.
MAX_DEPTH = 64


def max_file_bytes() -> int:
    raw = os.environ.get("SIMGPU_MAX_FILE_MB")
    if raw is None:
        return DEFAULT_MAX_MB * 2**20
    try:
        mb = float(raw)
    except ValueError:
        raise SimGPUError(
            f"SIMGPU_MAX_FILE_MB must be a number of megabytes, got {raw!r}"
        ) from None
    if not mb > 0 or mb != mb:
        raise SimGPUError(f"SIMGPU_MAX_FILE_MB must be positive, got {raw!r}")
    return int(mb * 2**20)


def read_bytes(path: str | Path, error: type[SimGPUError] = FormatError) -> bytes:
    """The bytes of a regular file under the size limit; devices, FIFOs and directories
    are refused by what they are, before anything is read from them."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{p}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{p}: not a regular file (a device, FIFO or socket)")
    limit = max_file_bytes()
    if st.st_size > limit:
        raise error(
            f"{p}: {st.st_size / 2**20:.0f} MiB is larger than the {limit / 2**20:.0f} MiB "
            "limit (set SIMGPU_MAX_FILE_MB to raise it)"
        )
    try:
        with p.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror or e})") from None
    if len(data) > limit:  # it grew while being read
        raise error(f"{p}: larger than the {limit / 2**20:.0f} MiB limit")
    return data


def _depth_ok(text: str) -> int:
    """The deepest nesting of brackets outside strings: checked before parsing, so a
    deep document never reaches the parser's recursion."""
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(text: str, where: str, error: type[SimGPUError] = FormatError) -> Any:
    """JSON text to Python, every failure one line naming ``where``: invalid JSON, a
    nesting deeper than :data:`MAX_DEPTH`, NaN/Infinity (not JSON), a number too large
    for a float (``1e400`` would read as infinity), or a key given twice in one object
    (the last would silently win)."""
    if _depth_ok(text) > MAX_DEPTH:
        raise error(f"{where}: JSON nested deeper than {MAX_DEPTH} levels")

    def no_constant(name: str) -> Any:
        raise error(f"{where}: {name} is not a JSON number")

    def finite(literal: str) -> float:
        x = float(literal)
        if not math.isfinite(x):
            raise error(f"{where}: the number {literal[:40]} is too large")
        return x

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise error(f"{where}: key {printable(repr(k)[:60])} given twice in one object")
            out[k] = v
        return out

    try:
        return json.loads(
            text, parse_constant=no_constant, parse_float=finite, object_pairs_hook=no_duplicates
        )
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise error(f"{where}: {printable(str(e).splitlines()[0][:80])}") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise error(f"{where}: JSON nested too deeply") from None
