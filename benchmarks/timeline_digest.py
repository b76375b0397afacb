"""A digest of the timelines of 67 fixed programs: run it before and after a change to the
simulator that must not change its results (a speed-up, a refactor) — equal digests mean
bit-identical kernel, command and host records, counters and per-SM busy times.

The programs: Inception V3 on five GPUs, sequential, on 3, 8 and 16 streams, in CUDA Graph
mode and with two hardware queues; random DAGs of 200 and 500 ops on 1, 4 and 12 streams;
stage schedules with synchronize and event barriers. Counter series are compared as step
functions (a sample equal to the one before it carries no information). Usage:
    python benchmarks/timeline_digest.py [--out FILE.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _programs import level_streams, random_dag

from simgpu.hardware import load_gpu
from simgpu.models import build_model
from simgpu.program import lower
from simgpu.schedule import StageSchedule, StreamSchedule
from simgpu.sim.engine import simulate
from simgpu.timeline import Timeline


def _steps(counters: list[tuple[float, int, float, float]]) -> list[tuple[str, int, str, str]]:
    out: list[tuple[str, int, str, str]] = []
    for t, busy, bw, compute in counters:
        if out and out[-1][1:] == (busy, repr(bw), repr(compute)):
            continue
        out.append((repr(t), busy, repr(bw), repr(compute)))
    return out


def record(tl: Timeline) -> str:
    """Every time in the timeline, exactly (repr), as one JSON string."""
    ks = [(*k[:5], *map(repr, k[5:8]), *k[8:]) for k in tl.kernels]
    cs = [(c.kind, c.device, c.stream, repr(c.issue_us), repr(c.done_us), c.event, c.op)
          for c in tl.commands]  # fmt: skip
    hs = [(h.api, h.device, repr(h.start_us), repr(h.end_us), h.op) for h in tl.host]
    cnt = [_steps(d) for d in tl.counters]
    busy = [list(map(repr, tl.sm_busy(i))) for i in range(len(tl.sm_counts))]
    return json.dumps([repr(tl.makespan_us), ks, cs, hs, cnt, busy])


def records() -> dict[str, str]:
    out: dict[str, str] = {}
    g = build_model("inception_v3")
    seq = StreamSchedule([list(g.topo_order)])
    for name in ("v100", "a100", "t4", "k80", "h100"):
        gpu = load_gpu(name)
        schedules = {
            "seq": seq,
            "8s": level_streams(g, 8),
            "3s": level_streams(g, 3),
            "16s": level_streams(g, 16),
            "seqgraph": StreamSchedule(seq.streams, graph_mode=True),
            "8sgraph": StreamSchedule(level_streams(g, 8).streams, graph_mode=True),
        }
        for sname, sch in schedules.items():
            out[f"inc/{name}/{sname}"] = record(simulate(lower(sch, g, gpu), gpu))
        two_queues = gpu.replace(hw_queues=2)
        out[f"inc/{name}/8s-q2"] = record(
            simulate(lower(level_streams(g, 8), g, two_queues), two_queues)
        )
        for n, seed in ((200, 1), (500, 2)):
            rg = random_dag(n, seed)
            for ns in (1, 4, 12):
                prog = lower(level_streams(rg, ns), rg, gpu)
                out[f"rand{n}/{name}/{ns}"] = record(simulate(prog, gpu))
    gpu = load_gpu("v100")
    depth: dict[str, int] = {}
    stages: dict[int, list[list[str]]] = {}
    for n in g.topo_order:
        depth[n] = max((depth[p] + 1 for p in g.predecessors(n)), default=0)
        stages.setdefault(depth[n], []).append([n])
    for barrier in ("sync", "events"):
        sch = StageSchedule(list(stages.values()), barrier=barrier)
        out[f"inc/stages/{barrier}"] = record(simulate(lower(sch, g, gpu), gpu))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="also write every program's record, to diff two runs")
    args = ap.parse_args()
    out = records()
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=0, sort_keys=True))
    digest = hashlib.sha1(json.dumps(out, sort_keys=True).encode()).hexdigest()
    print(f"{len(out)} programs, digest {digest}")


if __name__ == "__main__":
    main()
