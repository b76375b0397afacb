"""The IOS scheduler's JSON graph format: read it into an OpGraph (and its stages into a
StageSchedule), and write OpGraphs and stage schedules back out.

So that anyone with IOS graphs or IOS-optimised schedules can simulate them, and so that
our schedules can be handed to IOS tooling. Format (as in the IOS repository's files):
``{"name", "input": node, "blocks": [{"enter_name", "enter_node", "inner_nodes": [...],
"exit_node": node, "stages": [[[names of group 1], [group 2], ...], ...]}]}``; a node has
``type``, ``name``, ``inputs`` and ``output_shape`` (C, H, W: no batch). ``inputs`` is a
list of *terms*, each a list of ``[node, c_begin, c_end]`` channel slices: slices of a
term are summed, terms are concatenated along channels — except for ``element`` nodes,
whose terms are the operands of the add/mul (a single term's slices, if only one).

Mapping, each choice so that the written file reads back as the same OpGraph:

- every IOS node becomes one op named after it; a ``sequential`` node's chain becomes
  one op per inner node (``N.inner``; the last is named ``N``), marked ``ios_seq: N``;
- a slice that is not a whole tensor becomes a ``slice`` op marked ``view`` (IOS reads
  channel ranges in place, through strided descriptors: no copy), a term of several
  slices an ``add`` op, several terms a ``concat`` op — each named ``N.t<i>.s<j>`` /
  ``N.t<i>.sum`` / ``N.cat`` and marked ``ios_term: N`` (the op whose input it builds);
  a term that is one whole tensor creates no op;
- ``conv`` is a conv with BatchNorm folded (IOS convs carry a bias) and its activation
  fused; ``pool`` is max/avg ``pool`` or (``global_avg``) ``global_pool``; a multi-term
  ``identity`` is the ``concat`` itself;
- a conv IOS merged from several (its ``hint_name`` lists them: ``"41 45"``) names
  them in ``replaces``, as our own merge rewrite does; consumers of its parts read
  channel slices of it.

The file's stages name IOS nodes; each node expands, in place, to its ops in order
(term ops first); the input op runs first (in the first group when the first stage
has only one, else in a stage of its own).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simgpu.errors import FormatError, GraphError, ScheduleError
from simgpu.graph import Op, OpGraph, read_json
from simgpu.models.builder import GraphBuilder
from simgpu.ops import DTYPE_BYTES
from simgpu.output import printable
from simgpu.schedule import Schedule, StageSchedule, validate_schedule
from simgpu.schema import shown

TERM = "ios_term"  # op built only to assemble the input of the op it names
SEQ = "ios_seq"  # op is an inner node of the sequential node it names
INNER_NAME = "ios_name"  # a sequential's last inner node's own name (the op carries N's)
ONE_TERM = "ios_one_term"  # element node whose operands were the slices of one term
HINT = "ios_hint"  # a node's hint_name, where it differs from its name
MERGED = "replaces"  # a merged conv names the convs it replaces (as schedulers/_merge does)

NODE_TYPES = ("conv", "pool", "identity", "element", "relu", "activation", "sequential")
# the fields of IOS's JSON this reader knows; another is a misspelling or a feature it
# does not simulate, and either way an error rather than silently ignored
_NODE_FIELDS = frozenset({"type", "name", "hint_name", "inputs", "output_shape"})
_KNOWN = {
    "graph": frozenset({"name", "input", "blocks"}),
    "block": frozenset({"enter_name", "enter_node", "inner_nodes", "exit_node", "stages"}),
    "placeholder": frozenset({"type", "name", "hint_name", "output_shape"}),
    "conv": _NODE_FIELDS | {"out_channels", "kernel", "stride", "padding", "groups", "act"},
    "pool": _NODE_FIELDS | {"pool_type", "kernel", "stride", "padding"},
    "element": _NODE_FIELDS | {"op_type"},
    "activation": _NODE_FIELDS | {"act_type"},
    "sequential": _NODE_FIELDS | {"nodes"},
    "identity": _NODE_FIELDS,
    "relu": _NODE_FIELDS,
}
ACTIVATIONS = ("relu", "sigmoid", "tanh")
CONV_ACTS = ("identity", "relu", "sigmoid", "tanh")


def is_ios(data: Any) -> bool:
    """Does parsed JSON look like an IOS graph (rather than a simgpu file)?"""
    return (
        isinstance(data, dict)
        and isinstance(data.get("blocks"), list)
        and isinstance(data.get("input"), dict)
    )


def ios_nodes(graph: OpGraph) -> list[str]:
    """The ops of a graph read from IOS that stand for its nodes (input included): what
    the file counts, without the slice/sum/concat ops that assemble node inputs."""
    return [
        op.name
        for op in graph
        if TERM not in op.attrs and (SEQ not in op.attrs or op.attrs[SEQ] == op.name)
    ]


# --- reading ----------------------------------------------------------------------------


def read_ios(
    src: str | Path | Mapping[str, Any],
    batch: int = 1,
    dtype: str = "fp32",
    *,
    source: str | None = None,
) -> tuple[OpGraph, StageSchedule | None]:
    """An IOS graph file (or its parsed dict) as an OpGraph for ``batch`` inputs, plus
    the file's stages as a StageSchedule (None when its blocks carry no stages).
    ``source`` names a parsed dict in error messages (default ``<ios>``)."""
    if isinstance(src, Mapping):
        data, source = src, source or "<ios>"
    else:
        data, source = read_json(src), str(src)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise GraphError(f"{source}: batch must be a positive integer, got {batch!r}")
    if dtype not in DTYPE_BYTES:
        raise GraphError(f"{source}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    if not is_ios(data):
        raise FormatError(f'{source}: not an IOS graph (needs an "input" node and "blocks")')
    return _Reader(source, batch, dtype).read(data)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(v: Any) -> tuple[int, int] | None:
    if _int(v):
        return (v, v)
    if isinstance(v, list | tuple) and len(v) == 2 and all(_int(x) for x in v):
        return (v[0], v[1])
    return None


class _Reader:
    """One pass over the file: nodes in order (every input defined before its reader)."""

    def __init__(self, source: str, batch: int, dtype: str) -> None:
        self.source = source
        self.batch = batch
        self.dtype = dtype
        self.input_name = ""
        self.b: GraphBuilder
        self.ops_of: dict[str, list[str]] = {}  # top-level IOS node -> its ops, in order
        self.deps: dict[str, list[str]] = {}  # top-level IOS node -> nodes it reads
        self.block_of: dict[str, int] = {}
        self._node = ""  # top-level node being read (for deps and messages)
        self._where = ""

    def fail(self, msg: str, node: str | None = None) -> FormatError:
        name = node if node is not None else self._node
        at = f" ({self._where})" if self._where else ""
        return FormatError(f"{self.source}: IOS node '{printable(str(name))}'{at}: {msg}")

    def known(self, obj: Mapping[str, Any], what: str, where: str) -> None:
        """Refuse fields IOS's format does not have for ``what`` (a node type, a block,
        the graph)."""
        known = _KNOWN.get(what)
        extra = [k for k in obj if known is not None and k not in known]
        if extra:
            names = ", ".join(shown(k, 30) for k in extra)
            raise FormatError(
                f"{self.source}: {where}: unknown field(s) {names} for {what} "
                f"(known: {', '.join(sorted(known or ()))})"
            )

    # -- structure ----------------------------------------------------------------------

    def read(self, data: Mapping[str, Any]) -> tuple[OpGraph, StageSchedule | None]:
        self.known(data, "graph", "the graph")
        gname = data.get("name", "ios_graph")
        if not isinstance(gname, str):
            raise FormatError(f"{self.source}: the graph's name must be a string, got {gname!r}")
        self.b = GraphBuilder(gname, self.dtype)
        inp = data["input"]
        name = inp.get("name")
        if not isinstance(name, str) or not name:
            raise FormatError(f"{self.source}: the input node needs a non-empty string name")
        self._node = name
        if inp.get("type") != "placeholder":
            raise self.fail(f"the graph input must be a placeholder, not {inp.get('type')!r}")
        self.known(inp, "placeholder", f"IOS node '{printable(name)}'")
        self.b.input((self.batch, *self._shape(inp)), name=name)
        self.input_name = name
        blocks = data["blocks"]
        stages: list[tuple[int, Any]] = []
        with_stages = []
        for bi, block in enumerate(blocks):
            self._where = f"block {bi}"
            if not isinstance(block, dict):
                raise FormatError(f"{self.source}: block {bi} must be an object")
            self.known(block, "block", f"block {bi}")
            if "enter_node" in block and not isinstance(block["enter_node"], dict):
                raise FormatError(f"{self.source}: block {bi}: enter_node must be an object")
            enter = block.get("enter_name")
            if enter is None and isinstance(block.get("enter_node"), dict):
                enter = block["enter_node"].get("name")
            if enter is not None and not isinstance(enter, str):
                raise FormatError(f"{self.source}: block {bi}: enter_name must be a string")
            if enter is not None and enter not in self.ops_of and enter != self.input_name:
                raise FormatError(f"{self.source}: block {bi} enters at unknown node {enter!r}")
            inner, exit_node = block.get("inner_nodes", []), block.get("exit_node")
            if not isinstance(inner, list) or not isinstance(exit_node, dict):
                raise FormatError(
                    f'{self.source}: block {bi} needs "inner_nodes" (a list) and "exit_node"'
                )
            for node in [*inner, exit_node]:
                self._top_node(node, bi)
            with_stages.append("stages" in block)
            if "stages" in block:
                stages.append((bi, block["stages"]))
        self._where = ""
        try:
            graph = self.b.build()
        except GraphError as e:
            raise GraphError(f"{self.source}: {e}") from None
        if not any(with_stages):
            return graph, None
        if not all(with_stages):
            bad = with_stages.index(False)
            raise FormatError(f"{self.source}: block {bad} has no stages but other blocks do")
        return graph, self._schedule(graph, stages)

    def _top_node(self, node: Any, block: int) -> None:
        if not isinstance(node, dict):
            raise FormatError(f"{self.source}: block {block}: a node must be an object")
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise FormatError(f"{self.source}: block {block}: a node has no string name")
        self._node = name
        if name in self.ops_of or name == self.input_name:
            raise self.fail("defined twice")
        self.ops_of[name] = []
        self.deps[name] = []
        self.block_of[name] = block
        if node.get("type") == "sequential":
            self.known(node, "sequential", f"IOS node '{printable(name)}' (block {block})")
            inner = node.get("nodes")
            if not isinstance(inner, list) or not inner:
                raise self.fail('a sequential node needs a non-empty "nodes" list')
            local: dict[str, str] = {}
            for i, sub in enumerate(inner):
                if not isinstance(sub, dict) or not isinstance(sub.get("name"), str):
                    raise self.fail(f"inner node {i} must be an object with a string name")
                if sub.get("type") == "sequential":
                    raise self.fail("a sequential node cannot nest another")
                last = i == len(inner) - 1
                op_name = name if last else f"{name}.{sub['name']}"
                extra: dict[str, Any] = {SEQ: name}
                if last and sub["name"] != name:
                    extra[INNER_NAME] = sub["name"]
                self._single(sub, op_name, local, extra)
                local[sub["name"]] = op_name
            got = list(self.b.shape(name)[1:])
            if "output_shape" in node and list(self._shape(node)) != got:
                raise self.fail(
                    f"output_shape {node['output_shape']} but its last node gives {got}"
                )
        else:
            self._single(node, name, {}, {})

    def _shape(self, node: Mapping[str, Any]) -> tuple[int, int, int]:
        s = node.get("output_shape")
        if not isinstance(s, list) or len(s) != 3 or not all(_int(d) and d > 0 for d in s):
            raise self.fail(f"output_shape must be [C, H, W] of positive integers, got {s!r}")
        return (s[0], s[1], s[2])

    # -- one node -----------------------------------------------------------------------

    def _add(self, kind: str, inputs: list[str], name: str, **attrs: Any) -> str:
        try:
            out = self.b.op(kind, inputs, name, **attrs)
        except GraphError as e:
            raise self.fail(str(e)) from None
        self.ops_of[self._node].append(out)
        return out

    def _ref(self, ref: str, local: Mapping[str, str]) -> str:
        if ref in local:
            return local[ref]
        if ref == self.input_name or (ref in self.ops_of and ref != self._node):
            if ref not in self.deps[self._node]:
                self.deps[self._node].append(ref)
            return ref
        raise self.fail(f"input {ref!r} is not a node defined before it")

    def _terms(self, node: Mapping[str, Any], local: Mapping[str, str]) -> list[list[tuple]]:
        terms = node.get("inputs")
        if not isinstance(terms, list) or not terms:
            raise self.fail('"inputs" must be a non-empty list of terms')
        out = []
        for term in terms:
            if not isinstance(term, list) or not term:
                raise self.fail(f"a term must be a non-empty list of slices, got {term!r}")
            slices = []
            for s in term:
                if (
                    not isinstance(s, list)
                    or len(s) != 3
                    or not isinstance(s[0], str)
                    or not (_int(s[1]) and _int(s[2]))
                ):
                    raise self.fail(f"a slice must be [node, c_begin, c_end], got {s!r}")
                src = self._ref(s[0], local)
                channels = self.b.shape(src)[1]
                if not 0 <= s[1] < s[2] <= channels:
                    raise self.fail(f"slice {s} outside the {channels} channels of {s[0]!r}")
                slices.append((src, s[1], s[2], s[0]))
            out.append(slices)
        return out

    def _slice_op(self, owner: str, t: int, j: int, sl: tuple) -> str:
        src, begin, end, _ = sl
        if begin == 0 and end == self.b.shape(src)[1]:
            return src
        attrs = {"axis": 1, "begin": begin, "end": end, "view": True, TERM: owner}
        return self._add("slice", [src], f"{owner}.t{t}.s{j}", **attrs)

    def _term_op(self, owner: str, t: int, term: list[tuple]) -> str:
        parts = [self._slice_op(owner, t, j, sl) for j, sl in enumerate(term)]
        self._same_shapes(parts, f"the slices of term {t}")
        if len(parts) == 1:
            return parts[0]
        return self._add("add", parts, f"{owner}.t{t}.sum", **{TERM: owner})

    def _same_shapes(self, ops: list[str], what: str) -> None:
        shapes = [self.b.shape(o)[1:] for o in ops]
        if any(s != shapes[0] for s in shapes):
            raise self.fail(f"{what} differ in shape: {[list(s) for s in shapes]}")

    def _single(
        self, node: Mapping[str, Any], name: str, local: Mapping[str, str], extra: dict
    ) -> None:
        """Add the ops of one non-sequential node, the last one named ``name``."""
        typ = node.get("type")
        hint = node.get("hint_name", node.get("name"))
        if isinstance(hint, str) and hint != node.get("name"):
            # IOS names a merged conv's hint after the convs it replaces ("41 45")
            words = hint.split()
            extra = {**extra, **({MERGED: tuple(words)} if len(words) > 1 else {HINT: hint})}
        if typ not in NODE_TYPES:
            raise self.fail(
                f"unknown node type {shown(typ)} (IOS types: placeholder, {', '.join(NODE_TYPES)})",
                node.get("name"),
            )
        self.known(node, typ, f"IOS node '{printable(str(node.get('name')))}'")
        terms = self._terms(node, local)
        if typ == "element":
            op_type = node.get("op_type")
            if op_type not in ("add", "mul"):
                raise self.fail(f'element "op_type" must be "add" or "mul", got {op_type!r}')
            if len(terms) >= 2:
                operands = [self._term_op(name, t, term) for t, term in enumerate(terms)]
            elif len(terms[0]) >= 2:  # one term: its slices are the operands
                operands = [self._slice_op(name, 0, j, sl) for j, sl in enumerate(terms[0])]
                extra = {**extra, ONE_TERM: True}
            else:
                raise self.fail("an element node needs two or more operands")
            self._same_shapes(operands, "the operands")
            self._add(op_type, operands, name, **extra)
        elif typ == "identity" and len(terms) > 1:
            parts = [self._term_op(name, t, term) for t, term in enumerate(terms)]
            self._add("concat", parts, name, axis=1, **extra)
        else:
            if len(terms) == 1:
                x = self._term_op(name, 0, terms[0])
            else:
                parts = [self._term_op(name, t, term) for t, term in enumerate(terms)]
                x = self._add("concat", parts, f"{name}.cat", axis=1, **{TERM: name})
            self._unary(typ, node, x, name, extra)
        got = list(self.b.shape(name)[1:])
        if list(self._shape(node)) != got:
            raise self.fail(f"output_shape {node['output_shape']} but its inputs imply {got}")

    def _unary(self, typ: str, node: Mapping[str, Any], x: str, name: str, extra: dict) -> None:
        if typ == "identity":
            self._add("identity", [x], name, **extra)
        elif typ == "relu":
            self._add("relu", [x], name, **extra)
        elif typ == "activation":
            act = node.get("act_type")
            if act not in ACTIVATIONS:
                raise self.fail(f"act_type must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
            self._add(act, [x], name, **extra)
        elif typ == "conv":
            geo = {k: _pair(node.get(k)) for k in ("kernel", "stride", "padding")}
            cout, groups, act = node.get("out_channels"), node.get("groups", 1), node.get("act")
            if any(v is None for v in geo.values()) or not (_int(cout) and _int(groups)):
                raise self.fail(
                    "conv needs out_channels, groups (integers) and kernel, stride, padding "
                    "(integer pairs)"
                )
            if act not in CONV_ACTS:
                raise self.fail(f"conv act must be one of {', '.join(CONV_ACTS)}, got {act!r}")
            self._add(
                "conv",
                [x],
                name,
                **geo,
                groups=groups,
                out_channels=cout,
                bias=False,
                folded_bn=True,
                activation=None if act == "identity" else act,
                **extra,
            )
        else:  # pool
            pool_type = node.get("pool_type")
            if pool_type == "global_avg":
                self._add("global_pool", [x], name, pool_type="avg", **extra)
                return
            if pool_type not in ("max", "avg"):
                raise self.fail(f"pool_type must be max, avg or global_avg, got {pool_type!r}")
            geo = {k: _pair(node.get(k)) for k in ("kernel", "stride", "padding")}
            if any(v is None for v in geo.values()):
                raise self.fail("pool needs kernel, stride and padding (integer pairs)")
            self._add("pool", [x], name, pool_type=pool_type, **geo, **extra)

    # -- stages -------------------------------------------------------------------------

    def _schedule(self, graph: OpGraph, blocks: list[tuple[int, Any]]) -> StageSchedule:
        """IOS stages (node names) -> a StageSchedule of our ops, checked in IOS terms."""
        where: dict[str, tuple[int, int, int]] = {}  # node -> (global stage, group, index)
        label: list[str] = []  # global stage -> "block b, stage s"
        node_stages: list[list[list[str]]] = []
        for bi, stages in blocks:
            if not isinstance(stages, list):
                raise FormatError(f"{self.source}: block {bi}: stages must be a list")
            for si, stage in enumerate(stages):
                at = f"block {bi}, stage {si}"
                if not isinstance(stage, list) or not stage:
                    raise FormatError(f"{self.source}: {at}: a stage must be a non-empty list")
                groups = []
                for gi, group in enumerate(stage):
                    if not isinstance(group, list) or not group:
                        raise FormatError(
                            f"{self.source}: {at}: group {gi} must be a non-empty list of names"
                        )
                    for pi, n in enumerate(group):
                        if n == self.input_name:
                            raise ScheduleError(
                                f"{self.source}: IOS stages ({at}) name the input '{n}' "
                                "(stages hold computing nodes only)"
                            )
                        if not isinstance(n, str) or n not in self.ops_of:
                            raise ScheduleError(
                                f"{self.source}: IOS stages ({at}) name unknown node {n!r}"
                            )
                        if n in where:
                            raise ScheduleError(
                                f"{self.source}: IOS stages run node '{n}' twice ({at})"
                            )
                        where[n] = (len(node_stages), gi, pi)
                    groups.append(list(group))
                label.append(at)
                node_stages.append(groups)
        missing = [n for n in self.ops_of if n not in where]
        if missing:
            raise ScheduleError(f"{self.source}: IOS stages miss node(s): {', '.join(missing)}")
        for n, deps in self.deps.items():
            sv, gv, pv = where[n]
            for d in deps:
                if d == self.input_name:
                    continue
                su, gu, pu = where[d]
                if su > sv or (su == sv and (gu != gv or pu > pv)):
                    raise ScheduleError(
                        f"{self.source}: IOS node '{n}' ({label[sv]}, group {gv}) reads '{d}' "
                        f"({label[su]}, group {gu}), which does not run before it"
                    )
        stages = [
            [[op for n in group for op in self.ops_of[n]] for group in stage]
            for stage in node_stages
        ]
        # the input (a view: no kernel) runs first: in the first group if the first
        # stage has one group, else in a stage of its own (every group reads it)
        if len(stages[:1]) == 1 and len(stages[0]) == 1:
            stages[0][0].insert(0, self.input_name)
        else:
            stages.insert(0, [[self.input_name]])
        sched = StageSchedule(stages, barrier="sync", meta={"source": "ios"})
        validate_schedule(sched, graph)
        return sched


# --- writing ----------------------------------------------------------------------------


def write_ios(graph: OpGraph, schedule: Schedule | None = None) -> dict[str, Any]:
    """``graph`` (and its stage schedule, if given) in the IOS JSON format.

    Ops IOS has no node type for (linear, softmax, ...) are an error naming the op.
    Blocks are cut where one node carries everything forward, as IOS's own model
    definitions cut them (after a fork or a join), and only between stages."""
    if schedule is not None and not isinstance(schedule, StageSchedule):
        raise FormatError("the IOS format holds stage schedules only (this is a stream schedule)")
    g = schedule.graph if schedule is not None and schedule.graph is not None else graph
    if schedule is not None:
        validate_schedule(schedule, g)
    return _Writer(g).write(schedule)


class _Writer:
    def __init__(self, g: OpGraph) -> None:
        self.g = g
        inputs = g.inputs
        if len(inputs) != 1 or len(inputs[0].output_shape) != 4:
            shapes = [list(op.output_shape) for op in inputs]
            raise FormatError(
                f"graph '{g.name}': IOS graphs have one NCHW input, this one has {shapes}"
            )
        self.input = inputs[0].name
        # the IOS node each op belongs to (None: no node of its own)
        self.top: dict[str, str | None] = {}
        for op in g:
            self.top[op.name] = self._top(op)

    def fail(self, op: Op, msg: str) -> FormatError:
        return FormatError(f"graph '{self.g.name}': op '{op.name}' ({op.kind}): {msg}")

    def _folded(self, op: Op) -> bool:
        """An op that becomes part of its consumers' input terms, not a node."""
        if op.kind == "slice":
            return True
        owner = op.attrs.get(TERM)
        return owner is not None and all(
            c == owner or (self.g[c].attrs.get(TERM) == owner and self._folded(self.g[c]))
            for c in self.g.successors(op.name)
        )

    def _top(self, op: Op) -> str | None:
        if op.kind == "input" or op.kind == "slice":
            return None
        if self._folded(op):
            return self._top(self.g[op.attrs[TERM]])
        seq = op.attrs.get(SEQ)
        return seq if seq is not None else op.name

    # -- terms --------------------------------------------------------------------------

    def ios_name(self, name: str) -> str:
        seq = self.g[name].attrs.get(SEQ)
        if seq is not None and name != seq and name.startswith(seq + "."):
            return name[len(seq) + 1 :]
        return name

    def slice_of(self, name: str) -> list:
        op = self.g[name]
        if op.kind == "slice":
            rank = len(op.output_shape)
            if rank != 4 or int(op.attrs.get("axis", 1)) % rank != 1:
                raise self.fail(op, "IOS slices channels (axis 1 of NCHW) only")
            src, begin, _ = self.slice_of(op.inputs[0])
            return [src, begin + int(op.attrs["begin"]), begin + int(op.attrs["end"])]
        return [self.ios_name(name), 0, op.output_shape[1]]

    def term_of(self, name: str, reader: str) -> list:
        op = self.g[name]
        if op.kind == "add" and op.attrs.get(TERM) == reader and self._folded(op):
            return [self.slice_of(i) for i in op.inputs]
        return [self.slice_of(name)]

    def terms_of(self, op: Op) -> list:
        x = self.g[op.inputs[0]]
        if x.kind == "concat" and x.attrs.get(TERM) == op.name and self._folded(x):
            return [self.term_of(i, op.name) for i in x.inputs]
        return [self.term_of(x.name, op.name)]

    # -- nodes --------------------------------------------------------------------------

    def node(self, op: Op, name: str) -> dict[str, Any]:
        a = op.attrs
        shape = list(op.output_shape[1:])
        if len(op.output_shape) != 4:
            raise self.fail(op, f"IOS tensors are NCHW, this one is {list(op.output_shape)}")
        hint = a.get(HINT) or (" ".join(a[MERGED]) if a.get(MERGED) else name)
        d: dict[str, Any] = {"type": "", "name": name, "hint_name": hint}
        k = op.kind
        if k == "conv":
            pair = {key: list(_pair(a.get(key, dflt)) or ()) for key, dflt in _CONV_GEO}
            if pair.pop("dilation") != [1, 1]:
                raise self.fail(op, "IOS convolutions have no dilation")
            act = a.get("activation") or "identity"
            if act not in CONV_ACTS:
                raise self.fail(op, f"activation {act!r} is not one IOS convs fuse")
            d.update(type="conv", inputs=self.terms_of(op), out_channels=a["out_channels"])
            d.update(kernel=pair["kernel"], stride=pair["stride"], padding=pair["padding"])
            d.update(groups=int(a.get("groups", 1)), act=act)
        elif k == "pool":
            if a.get("ceil_mode"):
                raise self.fail(op, "IOS pools have no ceil_mode")
            kernel = list(_pair(a["kernel"]) or ())
            d.update(type="pool", inputs=self.terms_of(op), pool_type=a.get("pool_type", "max"))
            d.update(
                kernel=kernel,
                stride=list(_pair(a.get("stride", a["kernel"])) or ()),
                padding=list(_pair(a.get("padding", 0)) or ()),
            )
        elif k == "global_pool":
            if a.get("pool_type", "avg") != "avg":
                raise self.fail(op, "IOS has global average pooling only")
            h, w = self.g[op.inputs[0]].output_shape[2:]
            d.update(type="pool", inputs=self.terms_of(op), pool_type="global_avg")
            d.update(kernel=[h, w], stride=[1, 1], padding=[0, 0])
        elif k == "concat":
            if int(a.get("axis", 1)) % 4 != 1:
                raise self.fail(op, "IOS concatenates channels (axis 1) only")
            d.update(type="identity", inputs=[self.term_of(i, op.name) for i in op.inputs])
        elif k == "identity":
            d.update(type="identity", inputs=self.terms_of(op))
        elif k in ("add", "mul") and "op" not in a:
            if a.get(ONE_TERM):
                terms = [[self.slice_of(i) for i in op.inputs]]
            else:
                terms = [self.term_of(i, op.name) for i in op.inputs]
            d.update(type="element", inputs=terms, op_type=k)
        elif k == "relu":
            d.update(type="relu", inputs=self.terms_of(op))
        elif k in ("sigmoid", "tanh"):
            d.update(type="activation", inputs=self.terms_of(op), act_type=k)
        else:
            raise self.fail(
                op, "no IOS node type for it (IOS has conv, pool, concat, add/mul, activations)"
            )
        d["output_shape"] = shape
        return d

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Every IOS node, in graph order, keyed by name."""
        out: dict[str, dict[str, Any]] = {}
        chains: dict[str, list[Op]] = {}
        for op in self.g:
            top = self.top[op.name]
            if top is None or top != (op.attrs.get(SEQ) or op.name):
                continue  # input, slice or term op: folded into its readers
            if op.attrs.get(SEQ) is None:
                out[op.name] = self.node(op, op.name)
                continue
            chain = chains.setdefault(top, [])
            chain.append(op)
            if op.name == top:
                inner = [
                    self.node(o, o.attrs.get(INNER_NAME, top) if o is op else self.ios_name(o.name))
                    for o in chain
                ]
                out[top] = {
                    "type": "sequential",
                    "name": top,
                    "hint_name": top,
                    "inputs": inner[0]["inputs"],
                    "nodes": inner,
                    "output_shape": inner[-1]["output_shape"],
                }
        open_chains = [n for n in chains if n not in out]
        if open_chains:
            raise FormatError(
                f"graph '{self.g.name}': sequential '{open_chains[0]}' has no op of its name"
            )
        return out

    # -- blocks -------------------------------------------------------------------------

    def write(self, schedule: StageSchedule | None) -> dict[str, Any]:
        nodes = self.nodes()
        producers: dict[str, set[str]] = {n: set() for n in nodes}
        consumers: dict[str, set[str]] = {n: set() for n in [self.input, *nodes]}
        for u, v in self.g.edges():
            pu, tv = self._producer(u), self.top[v]
            if pu is not None and tv is not None and pu != tv:
                producers[tv].add(pu)
                consumers[pu].add(tv)
        if schedule is not None:  # a node's place is that of the op named after it
            stages = []
            for stage in schedule.stages:
                groups = [[o for o in group if self.top[o] == o] for group in stage]
                if any(groups):
                    stages.append([grp for grp in groups if grp])
        else:
            stages = [[[n]] for n in nodes]
        placeholder = {
            "type": "placeholder",
            "name": self.input,
            "hint_name": self.input,
            "output_shape": list(self.g[self.input].output_shape[1:]),
        }
        index = {n: i for i, n in enumerate(nodes)}
        blocks: list[dict[str, Any]] = []
        enter = placeholder
        done = {self.input}
        members: list[str] = []
        block_stages: list[list[list[str]]] = []
        for k, stage in enumerate(stages):
            block_stages.append(stage)
            for group in stage:
                members += group
                done.update(group)
            # the exit is the block's last node (in graph order) and the only one
            # that later blocks read
            exit_name = max(members, key=index.__getitem__)
            live = [n for n in done if consumers[n] - done]
            cut = live == [exit_name] and (
                len(producers[exit_name]) > 1 or len(consumers[exit_name]) > 1
            )
            if not cut and k < len(stages) - 1:
                continue
            inside = set(members)
            block: dict[str, Any] = {
                "enter_name": enter["name"],
                "enter_node": enter,
                "inner_nodes": [nodes[n] for n in nodes if n in inside and n != exit_name],
                "exit_node": nodes[exit_name],
            }
            if schedule is not None:
                block["stages"] = block_stages
            blocks.append(block)
            enter, members, block_stages = nodes[exit_name], [], []
        return {"name": self.g.name, "input": placeholder, "blocks": blocks}

    def _producer(self, name: str) -> str | None:
        """The IOS node whose output op ``name`` reads (through folded slices)."""
        op = self.g[name]
        if op.kind == "input":
            return name
        if op.kind == "slice":
            return self._producer(op.inputs[0])
        return self.top[name]


_CONV_GEO = (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1))
