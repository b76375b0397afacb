"""Programs the benchmarks simulate: real model programs and large random DAGs."""

from __future__ import annotations

import numpy as np

from simgpu.graph import Op, OpGraph
from simgpu.schedule import StreamSchedule


def level_streams(graph: OpGraph, max_streams: int = 8) -> StreamSchedule:
    """Multi-stream schedule: op i of each topological level goes to stream i mod max."""
    level: dict[str, int] = {}
    for n in graph.topo_order:
        level[n] = max((level[p] + 1 for p in graph.predecessors(n)), default=0)
    slot: dict[int, int] = {}
    streams: list[list[str]] = [[] for _ in range(max_streams)]
    for n in graph.topo_order:
        i = slot.get(level[n], 0)
        slot[level[n]] = i + 1
        streams[i % max_streams].append(n)
    return StreamSchedule([s for s in streams if s])


def random_dag(n: int, seed: int = 0, window: int = 64) -> OpGraph:
    """``n`` ops (1x1 convs, adds, relus of one shape), each reading 1–2 of the previous
    ``window`` ops: wide enough for concurrency, deep enough for long chains."""
    rng = np.random.default_rng(seed)
    shape = (1, 64, 28, 28)
    ops = [Op("in", "input", (), shape)]
    for i in range(1, n):
        lo = max(0, i - window)
        kind = rng.choice(["conv", "add", "relu"], p=[0.5, 0.25, 0.25])
        if kind == "add" and i >= 2:
            a, b = rng.choice(np.arange(lo, i), size=2, replace=False)
            ops.append(Op(f"op{i}", "add", (ops[a].name, ops[b].name), shape))
        elif kind == "conv":
            src = ops[int(rng.integers(lo, i))].name
            ops.append(
                Op(
                    f"op{i}",
                    "conv",
                    (src,),
                    shape,
                    attrs={
                        "kernel": 1,
                        "out_channels": 64,
                        "folded_bn": True,
                        "activation": "relu",
                    },
                )
            )
        else:
            src = ops[int(rng.integers(lo, i))].name
            ops.append(Op(f"op{i}", "relu", (src,), shape))
    return OpGraph(ops, name=f"random{n}")
