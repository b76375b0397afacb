"""Op and OpGraph: the operator DAG every scheduler and the simulator work on.

An OpGraph checks itself on construction (unique names, no dangling input, no cycle,
every declared shape equal to what the op's inputs imply) so that nothing downstream
has to guess. Its JSON form is versioned and round-trips losslessly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import networkx as nx

from simgpu.errors import FormatError, GraphError
from simgpu.limits import check
from simgpu.ops import COMMON_ATTRS, DTYPE_BYTES, KINDS, Counts, Shape, kind_of, numel
from simgpu.output import printable
from simgpu.schema import Checker, shown
from simgpu.userfiles import parse_json, read_bytes

FORMAT = "simgpu.opgraph"
#: an op attribute named ``x_<anything>`` is the user's note: kept, never read
NOTE = "x_"
VERSION = 1


def _freeze(v: Any) -> Any:
    """Lists become tuples (recursively) so attrs compare equal after a JSON round trip."""
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, Mapping):
        return {str(k): _freeze(x) for k, x in v.items()}
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    if isinstance(v, dict):
        return {k: _thaw(x) for k, x in v.items()}
    return v


@dataclass(frozen=True, eq=True)
class Op:
    """One operator: a node of the graph. ``inputs`` name the ops it reads."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    output_shape: Shape
    dtype: str = "fp32"
    attrs: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "output_shape", tuple(int(d) for d in self.output_shape))
        object.__setattr__(self, "attrs", _freeze(dict(self.attrs)))
        if not self.name or not isinstance(self.name, str):
            raise GraphError(f"op name must be a non-empty string, got {self.name!r}")
        if self.dtype not in DTYPE_BYTES:
            raise GraphError(
                f"op '{self.name}': unknown dtype {self.dtype!r} (known: {', '.join(DTYPE_BYTES)})"
            )
        if not self.output_shape or any(d <= 0 for d in self.output_shape):
            raise GraphError(
                f"op '{self.name}': shape {list(self.output_shape)} must be non-empty and positive"
            )

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
            "shape": list(self.output_shape),
            "dtype": self.dtype,
        }
        if self.attrs:
            d["attrs"] = _thaw(self.attrs)
        return d

    @classmethod
    def from_dict(cls, d: Any, checker: Checker | None = None, path: str = "op") -> Op:
        """An op read from a file, strictly: a name and kind that are strings, inputs that
        are op names, a shape of integers (8.9, true or "8" is an error, not 8, 1 or 8),
        and only the fields and attributes its kind knows (a misspelt ``strid`` is an
        error, not the default stride)."""
        checker = checker or Checker("op graph")
        f = checker.fields(d, path)
        name = f.string("name")
        at = f"{path} ('{printable(name)}')"
        f.path = at
        kind = f.string("kind")
        inputs = tuple(f.strings("inputs", []))
        shape = f.integers("shape", min_len=1, max_len=8, lo=1)
        dtype = f.string("dtype", "fp32", DTYPE_BYTES)
        attrs = f.fields("attrs", None)
        f.done()
        info = KINDS.get(kind)  # an unknown kind is reported, with the known ones, later
        if attrs is not None and info is not None:
            known = info.attrs | COMMON_ATTRS
            unknown = [
                shown(k, 30) for k in attrs.data if k not in known and not k.startswith(NOTE)
            ]
            if unknown:
                raise checker.fail(
                    attrs.path,
                    f"unknown attribute(s) {', '.join(unknown)} of a {kind} op "
                    f"(known: {', '.join(sorted(known)) or 'none'}; {NOTE}<name> for notes)",
                )
        try:
            return cls(
                name=name,
                kind=kind,
                inputs=inputs,
                output_shape=tuple(shape),
                dtype=dtype,
                attrs=dict(attrs.data) if attrs is not None else {},
            )
        except GraphError as e:
            raise checker.fail(at, str(e)) from None


@dataclass(frozen=True)
class OpStats:
    """Derived per-op figures: work counts plus the bytes the op must move."""

    macs: int
    flops: int
    params: int
    bytes_read: int
    bytes_written: int


class OpGraph:
    """A validated DAG of ops. Iteration order is the order ops were given."""

    def __init__(self, ops: Iterable[Op], name: str = "graph") -> None:
        self.name = name
        self.ops: dict[str, Op] = {}
        for op in ops:
            if op.name in self.ops:
                raise GraphError(f"op '{op.name}' is defined twice")
            self.ops[op.name] = op
        if not self.ops:
            raise GraphError(f"graph '{name}' has no ops")
        check("ops", len(self.ops), f"graph '{name}': the number of ops")
        for op in self.ops.values():  # before any shape inference or lowering of it
            check("op_elements", numel(op.output_shape), f"op '{op.name}': its output's elements")
        g = nx.DiGraph()
        g.add_nodes_from(self.ops)
        for op in self.ops.values():
            k = kind_of(op)
            lo, hi = k.arity
            if len(op.inputs) < lo or (hi is not None and len(op.inputs) > hi):
                want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
                raise GraphError(
                    f"op '{op.name}' ({op.kind}): takes {want} inputs, got {len(op.inputs)}"
                )
            for src in op.inputs:
                if src not in self.ops:
                    raise GraphError(f"op '{op.name}': input '{src}' is not an op of the graph")
                g.add_edge(src, op.name)
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            raise GraphError(f"graph '{name}' has a cycle: {path}")
        self.nx = g
        for op in self.ops.values():
            try:
                implied = kind_of(op).infer(op, self.input_shapes(op.name))
            except (KeyError, TypeError, ValueError) as e:
                what = (
                    f"missing attribute {e}" if isinstance(e, KeyError) else f"bad attribute ({e})"
                )
                raise GraphError(f"op '{op.name}' ({op.kind}): {what}") from None
            if tuple(implied) != op.output_shape:
                raise GraphError(
                    f"op '{op.name}' ({op.kind}): declared shape {list(op.output_shape)} but "
                    f"inputs imply {list(implied)}"
                )

    # -- structure ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops.values())

    def __contains__(self, name: object) -> bool:
        return name in self.ops

    def __getitem__(self, name: str) -> Op:
        return self.ops[name]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, OpGraph)
            and self.name == other.name
            and list(self.ops.values()) == list(other.ops.values())
        )

    def __repr__(self) -> str:
        return f"OpGraph({self.name!r}, {len(self)} ops)"

    def input_shapes(self, name: str) -> list[Shape]:
        return [self.ops[i].output_shape for i in self.ops[name].inputs]

    def predecessors(self, name: str) -> list[str]:
        return list(dict.fromkeys(self.ops[name].inputs))

    def successors(self, name: str) -> list[str]:
        return list(self.nx.successors(name))

    @cached_property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.ops)}

    @cached_property
    def topo_order(self) -> list[str]:
        """A topological order, ties broken by definition order: deterministic."""
        idx = self.index
        return list(nx.lexicographical_topological_sort(self.nx, key=idx.__getitem__))

    def edges(self) -> list[tuple[str, str]]:
        return list(self.nx.edges())

    # -- figures ------------------------------------------------------------------------

    def stats(self, name: str) -> OpStats:
        return self._stats[name]

    @cached_property
    def _stats(self) -> dict[str, OpStats]:
        out = {}
        for op in self.ops.values():
            k = kind_of(op)
            ins = self.input_shapes(op.name)
            c: Counts = k.count(op, ins)
            b = op.dtype_bytes
            if k.view or (op.kind == "slice" and op.attrs.get("view") is True):
                read = written = 0
            else:
                read = sum(numel(s) for s in ins) * b + c.params * b
                written = numel(op.output_shape) * b
            out[op.name] = OpStats(c.macs, c.flops, c.params, read, written)
        return out

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self._stats.values())

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self._stats.values())

    @property
    def params(self) -> int:
        return sum(s.params for s in self._stats.values())

    @property
    def inputs(self) -> list[Op]:
        return [op for op in self.ops.values() if op.kind == "input"]

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "ops": [op.to_dict() for op in self.ops.values()],
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "<json>") -> OpGraph:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FormatError(f'{source}: not a simgpu op graph (missing "format": "{FORMAT}")')
        if data.get("version") != VERSION or isinstance(data.get("version"), bool):
            raise FormatError(
                f"{source}: op graph version {shown(data.get('version'))} not supported "
                f"(this simgpu reads version {VERSION})"
            )
        checker = Checker(source)
        f = checker.fields(data)
        f.raw("format"), f.raw("version")
        name = f.string("name", "graph")
        ops = [Op.from_dict(o, checker, at) for at, o in f.items("ops")]
        f.done()
        return cls(ops, name=name)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> OpGraph:
        return cls.from_json(read_json(path), source=str(path))


def read_json(path: str | Path) -> Any:
    """Read a JSON file a user named, turning every way it can fail into a one-line
    FormatError (:mod:`simgpu.userfiles`: a regular file under the size limit, bounded
    nesting, no NaN)."""
    p = Path(path)
    raw = read_bytes(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{p}: not UTF-8 text at byte {e.start}") from None
    return parse_json(text, str(p))
