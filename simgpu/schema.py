"""Checking the fields of a file a user wrote: one way for every reader.

A value read from a user's file is what it claims to be or the read fails, with one line
naming the file, the field's path (``ops[3].shape[2]``) and what was expected. Nothing is
coerced: ``8.9``, ``true`` and ``"8"`` are not the integer 8, ``"false"`` is not a
boolean, and a field nobody reads is reported rather than ignored, since a misspelt
``strid`` would otherwise silently mean the default stride.

:class:`Fields` reads one JSON object field by field and, in :meth:`Fields.done`, refuses
the fields it did not read; the functions below check single values. Readers keep their
own meaning (which fields, which ranges); this module keeps the rules.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterator, Mapping
from typing import Any

from simgpu.errors import FormatError, SimGPUError

_MISSING: Any = object()


def shown(v: Any, limit: int = 60) -> str:
    """A value as an error message shows it: short, on one line, control characters escaped."""
    text = repr(v)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def kind_of(v: Any) -> str:
    """The JSON name of a value's type, for 'expected X, got Y' messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list | tuple):
        return "a list"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


def join(path: str, key: str | int) -> str:
    """``ops`` + 3 -> ``ops[3]``; ``ops[3]`` + ``shape`` -> ``ops[3].shape``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class Checker:
    """Where values come from (the file, as ``where``) and which error a bad one raises."""

    def __init__(self, where: str, error: type[SimGPUError] = FormatError) -> None:
        self.where = where
        self.error = error

    def fail(self, path: str, msg: str) -> SimGPUError:
        return self.error(f"{self.where}: {path}: {msg}" if path else f"{self.where}: {msg}")

    def expected(self, path: str, what: str, v: Any) -> SimGPUError:
        return self.fail(path, f"expected {what}, got {shown(v)}")

    # -- single values ---------------------------------------------------------------

    def integer(self, v: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
        """An integer within ``[lo, hi]``: not a bool, not a float with an integer value."""
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.expected(path, _range_text("an integer", lo, hi), v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.expected(path, _range_text("an integer", lo, hi), v)
        return v

    def number(
        self,
        v: Any,
        path: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        lo_open: bool = False,
    ) -> float:
        """A finite number within the range (``lo`` excluded when ``lo_open``)."""
        what = _range_text("a number", lo, hi, lo_open=lo_open)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.expected(path, what, v)
        if not math.isfinite(v):
            raise self.expected(path, what, v)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise self.expected(path, what, v)
        if hi is not None and v > hi:
            raise self.expected(path, what, v)
        return float(v)

    def string(
        self, v: Any, path: str, choices: Container[str] | None = None, *, empty: bool = False
    ) -> str:
        """A string (a non-blank one unless ``empty``), one of ``choices`` if given."""
        if not isinstance(v, str) or (not empty and not v.strip()):
            raise self.expected(path, "a non-empty string" if not empty else "a string", v)
        if choices is not None and v not in choices:
            names = (
                ", ".join(sorted(choices)) if isinstance(choices, set | frozenset | dict) else ""
            )
            listed = f" (one of {names})" if names else ""
            raise self.fail(path, f"unknown value {shown(v)}{listed}")
        return v

    def boolean(self, v: Any, path: str) -> bool:
        """A JSON boolean: ``"false"``, ``0`` or ``[0]`` is not one."""
        if not isinstance(v, bool):
            raise self.expected(path, "true or false", v)
        return v

    def array(self, v: Any, path: str, min_len: int = 0, max_len: int | None = None) -> list[Any]:
        if not isinstance(v, list | tuple):
            raise self.expected(path, "a list", v)
        if len(v) < min_len or (max_len is not None and len(v) > max_len):
            n = f"{min_len}" if max_len == min_len else f"{min_len} to {max_len or 'any'}"
            raise self.fail(path, f"expected a list of {n} items, got {len(v)}")
        return list(v)

    def integers(
        self,
        v: Any,
        path: str,
        lo: int | None = None,
        hi: int | None = None,
        min_len: int = 0,
        max_len: int | None = None,
    ) -> list[int]:
        """A list of integers, each within ``[lo, hi]``."""
        items = self.array(v, path, min_len, max_len)
        return [self.integer(x, join(path, i), lo, hi) for i, x in enumerate(items)]

    def strings(self, v: Any, path: str) -> list[str]:
        return [self.string(x, join(path, i)) for i, x in enumerate(self.array(v, path))]

    def fields(self, v: Any, path: str = "") -> Fields:
        return Fields(v, self, path)


def _range_text(what: str, lo: float | None, hi: float | None, *, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{what} in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        if lo == 0:
            return (
                f"a positive {what.split()[-1]}"
                if lo_open
                else f"a non-negative {what.split()[-1]}"
            )
        if lo == 1 and what.endswith("integer"):
            return "a positive integer"
        return f"{what} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{what} <= {hi:g}"
    return what


class Fields:
    """One JSON object, read field by field; :meth:`done` refuses the fields not read.

    Each getter marks its field as read and checks it with the :class:`Checker`'s rules;
    a missing field without a default is an error naming it.
    """

    def __init__(self, data: Any, checker: Checker, path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise checker.expected(path, "an object", data)
        for k in data:
            if not isinstance(k, str):  # TOML and JSON keys are strings; a dict may not be
                raise checker.expected(path, "an object with string keys", k)
        self.data = data
        self.check = checker
        self.path = path
        self._read: set[str] = set()

    def at(self, key: str | int) -> str:
        return join(self.path, key)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The value as it is (marked read); for fields a reader checks itself."""
        self._read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.check.fail(self.at(key), "missing")
        return default

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        """(whether the default applies, the value): a field given as null counts as
        absent where the default is None, so ``"image_size": null`` means no size."""
        v = self.raw(key, default)
        return key not in self.data or (v is None and default is None), v

    def integer(
        self, key: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None
    ) -> Any:
        absent, v = self._get(key, default)
        return v if absent else self.check.integer(v, self.at(key), lo, hi)

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        lo: float | None = None,
        hi: float | None = None,
        *,
        lo_open: bool = False,
    ) -> Any:
        absent, v = self._get(key, default)
        return v if absent else self.check.number(v, self.at(key), lo, hi, lo_open=lo_open)

    def string(
        self,
        key: str,
        default: Any = _MISSING,
        choices: Container[str] | None = None,
        *,
        empty: bool = False,
    ) -> Any:
        absent, v = self._get(key, default)
        return v if absent else self.check.string(v, self.at(key), choices, empty=empty)

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        absent, v = self._get(key, default)
        return v if absent else self.check.boolean(v, self.at(key))

    def array(self, key: str, default: Any = _MISSING, **kw: Any) -> Any:
        absent, v = self._get(key, default)
        return v if absent else self.check.array(v, self.at(key), **kw)

    def integers(self, key: str, default: Any = _MISSING, **kw: Any) -> Any:
        absent, v = self._get(key, default)
        return v if absent else self.check.integers(v, self.at(key), **kw)

    def strings(self, key: str, default: Any = _MISSING) -> Any:
        absent, v = self._get(key, default)
        return v if absent else self.check.strings(v, self.at(key))

    def fields(self, key: str, default: Any = _MISSING) -> Any:
        absent, v = self._get(key, default)
        return v if absent else Fields(v, self.check, self.at(key))

    def items(self, key: str) -> Iterator[tuple[str, Any]]:
        """``(path, item)`` for each item of the list at ``key``."""
        for i, v in enumerate(self.array(key)):
            yield join(self.at(key), i), v

    def done(self, ignore: Container[str] = ()) -> None:
        """Refuse fields no getter read (a misspelt one would otherwise mean its default)."""
        extra = [k for k in self.data if k not in self._read and k not in ignore]
        if extra:
            known = ", ".join(sorted({*self._read, *ignore})) or "none"
            names = ", ".join(shown(k, 30) for k in extra)
            raise self.check.fail(
                self.path, f"unknown field{'s' if len(extra) > 1 else ''} {names} (known: {known})"
            )
