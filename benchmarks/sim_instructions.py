"""Machine instructions per simulated kernel, counted by valgrind's callgrind.

A shared machine makes wall and CPU times noisy; instruction counts are not. Each
program of ``sim_throughput.py`` (Inception V3 sequential and on 8 streams) is simulated
1 and 1 + N times in a child process under callgrind; the difference over N runs and the
program's kernels is the cost of one simulated kernel, the first run's one-off work
(imports, lowering, memos) cancelled out; the children share one hash seed, so the count
is the same from run to run. Needs ``valgrind`` on the PATH; takes about a
minute per program. Usage:
    python benchmarks/sim_instructions.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _programs import level_streams

PROGRAMS = ("sequential", "8-streams")


def build(program: str):
    """The program and its GPU, as ``sim_throughput.py`` builds them."""
    from simgpu.hardware import load_gpu
    from simgpu.models import build_model
    from simgpu.program import lower
    from simgpu.schedule import StreamSchedule

    gpu = load_gpu("v100")
    g = build_model("inception_v3")
    sched = StreamSchedule([list(g.topo_order)]) if program == "sequential" else level_streams(g, 8)
    return lower(sched, g, gpu), gpu


def simulate_n(program: str, n: int) -> None:
    """The child: simulate the program ``n`` times."""
    from simgpu.sim.engine import simulate

    prog, gpu = build(program)
    for _ in range(n):
        simulate(prog, gpu)


def instructions(program: str, n: int) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           __file__, "--child", program, str(n)]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every child
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stderr
    m = re.search(r"Collected : ([\d,]+)", out)
    if m is None:
        raise SystemExit(f"no instruction count in callgrind's output:\n{out[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20, help="extra runs counted (default 20)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        simulate_n(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    out = {}
    for p in PROGRAMS:
        kernels = build(p)[0].kernels
        one, more = instructions(p, 1), instructions(p, 1 + args.runs)
        out[p] = round((more - one) / args.runs / kernels)
    if args.json:
        print(json.dumps({"instructions_per_kernel": out}))
    else:
        for p, v in out.items():
            print(f"{p}: {v:,} instructions per simulated kernel")


if __name__ == "__main__":
    main()
