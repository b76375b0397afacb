"""A device on the CPU for the measurement plan's dry run: the simulator stands in for
the GPU.

:class:`FakeDevice` answers every primitive of :class:`calibrate.device.Device` from a
"true" GPU — a preset with some host costs and efficiencies moved off their datasheet
values (:func:`truth`), so that the fit has something to recover — through the
simulator, with deterministic noise (seeded per primitive and argument, so results do
not depend on call order). No torch, no CUDA. Nothing it produces is a measurement: its
files say ``"fake": true``.

Memory comes from the simulator's own accounting (:mod:`simgpu.memory`) on the true GPU,
where one difference from the model is planted, as the real executor has it: an op with a
fused activation runs as two PyTorch calls, so its pre-activation tensor is a transient
of the op's output size (:meth:`FakeDevice.memory_gpu`). ``op_memory`` reports an op's
output and its peak over its inputs; ``program_memory`` a run's peak allocated bytes less
the weights and the graph's inputs, as :meth:`calibrate.executor.Executor.peak_memory`
measures them on a GPU.

Its clock is virtual: each primitive advances it by about what the real GPU would take
(kernel times x repeats, plus set-up costs such as a CUDA context, a CuPy compile or a
profiler session), on top of the CPU time that really passes. So the dry run exercises
the plan's budget the way a GPU run would, in seconds of real time.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import platform
import random
import time
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from calibrate.corun import CoKernel, analytic_kernels, simulate_streams
from calibrate.errors import CalibrationError
from simgpu.graph import OpGraph
from simgpu.hardware import PRESETS, GPUSpec
from simgpu.kernels import KernelCache, plan_time_us, standalone_time_us
from simgpu.program import Launch, StreamProgram

SIGMA = 0.02  # relative noise of one sample (log-normal)
# Interference the sharing model does not capture, planted so the co-run analysis shows
# ratios away from 1: (kind a, kind b) -> factor on the pair's span
PLANTED = {("copy", "copy"): 1.08, ("gemm_tc", "fma32"): 0.9}
HOST_SLOWER = 1.1  # the true framework's per-call CPU time over the committed host costs


def truth(base: str = "h100-sxm") -> GPUSpec:
    """The dry run's "real" GPU: ``base`` with host costs and efficiencies moved."""
    p = PRESETS[base]
    return p.replace(
        launch_api_us=p.launch_api_us * 1.4,
        framework_dispatch_us=p.framework_dispatch_us * 1.25,
        kernel_gap_us=p.kernel_gap_us * 0.7,
        graph_node_us=p.graph_node_us * 1.6,
        graph_launch_api_us=p.graph_launch_api_us * 1.2,
        event_record_api_us=p.event_record_api_us * 1.3,
        event_wait_api_us=p.event_wait_api_us * 1.3,
        event_latency_us=p.event_latency_us * 2.0,
        compute_efficiency=p.compute_efficiency * 0.9,
        dram_efficiency=min(1.0, p.dram_efficiency * 0.95),
    )


def _h100_props(gpu: GPUSpec) -> SimpleNamespace:
    return SimpleNamespace(
        name="NVIDIA H100 80GB HBM3 (fake)",
        major=9,
        minor=0,
        total_memory=int(gpu.memory_gb * 1e9),
        multi_processor_count=gpu.sm_count,
        max_threads_per_multi_processor=gpu.max_threads_per_sm,
        max_threads_per_block=gpu.max_threads_per_block,
        regs_per_multiprocessor=gpu.regs_per_sm,
        warp_size=gpu.warp_size,
        shared_memory_per_block=49152,
        shared_memory_per_block_optin=gpu.max_smem_per_block,
        shared_memory_per_multiprocessor=gpu.smem_per_sm,
        L2_cache_size=int(gpu.l2_mb * 2**20),
        max_blocks_per_multi_processor=gpu.max_blocks_per_sm,
    )


class FakeDevice:
    """The simulator as a GPU (see the module's docstring).

    ``fail``: primitives that raise instead (``"microbench"``, ``"microbench:waves"``,
    ``"time_program:ios"``: a primitive, or a primitive and its first argument), for
    testing what the plan does with a failing step. ``calls`` counts each primitive's
    calls by the same keys.
    """

    kind = "fake"

    def __init__(self, seed: int = 0, base: str = "h100-sxm", fail: Collection[str] = ()) -> None:  # fmt: skip
        self.seed = seed
        self.base = base
        self.gpu = truth(base)
        self.fail = set(fail)
        self.calls: dict[str, int] = {}
        self.virtual_s = 0.0
        self._t0 = time.monotonic()
        self._caches: dict[int, KernelCache] = {}
        self._memory_gpus: dict[int, GPUSpec] = {}
        self._op_tensors: dict[int, Any] = {}

    # --- bookkeeping -----------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self._t0 + self.virtual_s

    def _enter(self, prim: str, arg: str | None = None, cost_s: float = 0.0) -> None:
        keys = [prim] + ([f"{prim}:{arg}"] if arg is not None else [])
        for k in keys:
            self.calls[k] = self.calls.get(k, 0) + 1
        self.virtual_s += cost_s
        hit = [k for k in keys if k in self.fail]
        if hit:
            raise CalibrationError(f"injected failure of {hit[-1]} (fake device)")

    def _rng(self, *key: Any) -> random.Random:
        return random.Random(zlib.crc32(repr((self.seed, *key)).encode()))

    def _noisy(self, x: float, n: int, *key: Any) -> list[float]:
        r = self._rng(*key)
        return [x * math.exp(r.gauss(0.0, SIGMA)) for _ in range(n)]

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": "NVIDIA H100 80GB HBM3 (fake)", "fake": True,
                "truth": self.gpu.name, "seed": self.seed, "python": platform.python_version()}  # fmt: skip

    def release(self) -> None:
        self._caches.clear()
        self._memory_gpus.clear()
        self._op_tensors.clear()

    # --- probe ---------------------------------------------------------------------------------

    def probe(self) -> dict[str, Any]:
        from calibrate.probe import spec_from_facts, torch_properties

        self._enter("probe", cost_s=8.0)  # torch import, CUDA context, NVML
        g = self.gpu
        props = torch_properties(_h100_props(g))
        nvml = {
            "name": props["name"],
            "driver": "fake",
            "compute_capability": g.compute_capability,
            "sm_clock_max_mhz": g.clock_mhz,
            "memory_bytes": props["totalGlobalMem"],
            "power_limit_w": 700.0,
        }
        return {
            "format": "simgpu.probe",
            "version": 1,
            "fake": True,
            "gpu": spec_from_facts(props, nvml),
            "properties": props,
            "nvml": nvml,
            "torch": None,
            "cuda": None,
        }

    # --- microbenchmarks -----------------------------------------------------------------

    def microbench(self, name: str, repeats: int) -> dict[str, Any]:
        from calibrate import microbench as mb

        costs = {
            "launch": 6.0,
            "events": 3.0,
            "waves": 5.0,
            "overlap": 4.0,
            "bandwidth": 3.0,
            "connections": 10.0,
        }
        if name not in costs:
            raise CalibrationError(f"unknown microbenchmark '{name}'")
        self._enter("microbench", name, costs[name])
        g = self.gpu
        noisy = self._noisy

        def one(x: float, *key: Any) -> float:
            return noisy(x, 1, name, *key)[0]

        if name == "launch":
            n, own = 2000, 1.5
            eager = n * (g.launch_api_us + g.framework_dispatch_us)
            return {
                "eager": {"n": n, "host_us": one(eager, 0)},
                "raw": {
                    "n": n,
                    "host_us": one(n * g.launch_api_us, 1),
                    "queued_gpu_us": one(n * (g.kernel_gap_us + own), 2),
                    "kernel_us": own,
                },
                "graph": {
                    "n": n,
                    "launch_host_us": one(g.graph_launch_api_us, 3),
                    "queued_gpu_us": one(n * (g.graph_node_us + own), 4),
                },
            }
        if name == "events":
            return {
                "record_host_us": noisy(g.event_record_api_us, 200, name, 0),
                "wait_host_us": noisy(g.event_wait_api_us, 200, name, 1),
                "wait_latency_us": noisy(g.event_latency_us, 200, name, 2),
            }
        per_wave = g.sm_count * (g.max_threads_per_sm // mb.SPIN_THREADS)
        if name == "waves":
            fracs = (0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4)
            grids = sorted({max(1, int(per_wave * f)) for f in fracs})
            lone = [standalone_time_us(mb.spin_kernel(g, gr, 20.0), g) for gr in grids]
            times = [one(g.launch_latency_us + t, gr) for gr, t in zip(grids, lone, strict=True)]
            return {"grids": grids, "times_us": times, "per_wave": per_wave, "cycles": 0}
        if name == "overlap":
            cases = []
            for fa, fb in ((0.25, 0.25), (0.5, 0.5), (0.75, 0.5), (1, 0.25), (1, 1), (1.5, 0.5)):
                ga, gb = max(1, int(per_wave * fa)), max(1, int(per_wave * fb))
                span = noisy(mb.simulate_pair(g, ga, gb, 50.0), 1, name, ga, gb)[0]
                cases.append({"grid_a": ga, "grid_b": gb, "span_us": span})
            return {"block_us": noisy(50.0, 1, name)[0], "cases": cases, "per_wave": per_wave}
        if name == "bandwidth":
            nbytes = 2 * 512 * 2**20
            alone = nbytes / (g.dram_bytes_per_us * g.dram_efficiency)
            return {"bytes": nbytes, "alone_us": noisy(alone, repeats, name, 0),
                    "pair_us": noisy(2 * alone, repeats, name, 1)}  # fmt: skip
        spans = {q: noisy(mb.simulate_connections(g, q, 8, 2, 50.0), 1, name, q)[0] for q in (1, 8)}
        return {"streams": 8, "per_stream": 2, "block_us": 50.0, "spans": spans}

    # --- co-run kernels ----------------------------------------------------------------------

    def time_kernels(
        self, kernels: Sequence[CoKernel], repeats: int, warmup: int = 3
    ) -> list[list[float]]:
        names = "+".join(k.name for k in kernels)
        ks = [analytic_kernels(k, self.gpu) for k in kernels]
        ends = simulate_streams(ks, self.gpu)
        kinds = tuple(k.kind for k in kernels)
        factor = PLANTED.get((kinds[0], kinds[-1]), 1.0) if len(kinds) == 2 else 1.0
        ends = [self.gpu.launch_latency_us + e * factor for e in ends]
        self._enter("time_kernels", names, 0.2 + (warmup + repeats) * (max(ends) + 40.0) / 1e6)
        cols = [self._noisy(e, repeats, "time_kernels", names, i) for i, e in enumerate(ends)]
        return [list(row) for row in zip(*cols, strict=True)]

    def kernel_configs(self, kernels: Sequence[CoKernel]) -> dict[str, list[dict[str, Any]]]:
        self._enter("kernel_configs", None, 1.0 + 0.01 * len(kernels))
        out = {}
        for ck in kernels:
            ks = analytic_kernels(ck, self.gpu)
            out[ck.name] = [self._config(k, "kernel_configs", ck.name) for k in ks]
        return out

    def _config(self, k: Any, *key: Any) -> dict[str, Any]:
        return {
            "name": k.name,
            "grid": k.grid,
            "threads": k.threads,
            "regs": k.regs,
            "smem": k.smem,
            "duration_us": self._noisy(standalone_time_us(k, self.gpu), 1, *key, k.name)[0],
        }

    # --- per-op profiling ----------------------------------------------------------------------

    def _cache(self, graph: OpGraph) -> KernelCache:
        c = self._caches.get(id(graph))
        if c is None:
            c = self._caches[id(graph)] = KernelCache(self.gpu)
        return c

    def time_op(self, graph: OpGraph, op: str, warmup: int, repeats: int) -> list[float]:
        ks = self._cache(graph).lower(graph, op)
        if not ks:
            raise CalibrationError(f"op '{op}' has no device work")
        t = plan_time_us(ks, self.gpu)
        self._enter("time_op", op, 0.01 + (warmup + repeats) * (t + 20.0) / 1e6)
        return self._noisy(t, repeats, "time_op", graph.name, op)

    def op_kernels(self, graph: OpGraph, ops: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        self._enter("op_kernels", graph.name, 1.0 + 0.005 * len(ops))
        cache = self._cache(graph)
        return {
            op: [self._config(k, "op_kernels", graph.name, op) for k in cache.lower(graph, op)]
            for op in ops
        }

    # --- memory ---------------------------------------------------------------------------------

    def memory_gpu(self, graph: OpGraph) -> GPUSpec:
        """The true GPU with the planted memory of ``graph``: each op with a fused
        activation holds its pre-activation tensor (its output's size) while it runs."""
        from simgpu.memory import tensors_of

        key = id(graph)
        if key not in self._memory_gpus:
            t = tensors_of(graph, self.gpu, self._cache(graph))
            ops = {
                name: {"workspace_bytes": t.workspace[name] + t.size[name]}
                for name in graph.topo_order
                if graph[name].attrs.get("activation") is not None and name in t.size
            }
            self._memory_gpus[key] = self.gpu.replace(memory={"ops": ops}) if ops else self.gpu
        return self._memory_gpus[key]

    def op_memory(self, graph: OpGraph, op: str) -> dict[str, int]:
        """One call's memory, as :func:`calibrate.profile.op_peak_memory` measures it:
        the op's output and workspace (both in allocator blocks) at once."""
        from calibrate.profile import memory_entry
        from simgpu.memory import tensors_of
        from simgpu.ops import numel

        if not self._cache(graph).lower(graph, op):
            raise CalibrationError(f"op '{op}' has no device work")
        self._enter("op_memory", op, 0.002)
        key = id(graph)
        if key not in self._op_tensors:
            self._op_tensors[key] = tensors_of(graph, self.memory_gpu(graph), self._cache(graph))
        t = self._op_tensors[key]
        o = graph[op]
        return memory_entry(t.size[op] + t.workspace[op], numel(o.output_shape) * o.dtype_bytes)

    def program_memory(self, program: StreamProgram, graph: OpGraph) -> dict[str, int]:
        """One run's peak allocated bytes beyond the weights and the graph's inputs, as
        :meth:`calibrate.executor.Executor.peak_memory` measures them, from the
        simulator's accounting of the run on the true GPU."""
        from simgpu.memory import account, tensors_of
        from simgpu.sim.engine import simulate

        true = self._on_truth(program, graph)
        tl = simulate(true, self.gpu)
        self._enter("program_memory", program.name, 0.1 + (tl.makespan_us + 30.0) / 1e6)
        kernels: dict[str, list[Any]] = {}
        for c in true.commands:
            if isinstance(c, Launch) and c.kernel is not None:
                kernels.setdefault(c.op, []).append(c.kernel)
        gpu = self.memory_gpu(graph)
        t = tensors_of(graph, gpu, kernels)
        report = account(tl, true, graph, gpu, tensors=t)
        return {"peak_memory_bytes": report.peak_allocated - t.resident()}

    # --- schedules -----------------------------------------------------------------------------

    def _on_truth(self, program: StreamProgram, graph: OpGraph) -> StreamProgram:
        """The program as the true GPU runs it: each op's kernels re-lowered there, each
        call's host time moved by the true launch cost."""
        cache = self._cache(graph)
        # the plan lowers with the probe's spec, whose host costs are the base preset's
        d_launch = self.gpu.launch_api_us - PRESETS[self.base].launch_api_us
        cmds = []
        seen: dict[str, int] = {}
        for c in program.commands:
            if isinstance(c, Launch) and c.kernel is not None:
                i = seen.get(c.op, 0)
                seen[c.op] = i + 1
                ks = cache.lower(graph, c.op)
                k = ks[i] if len(ks) > i else c.kernel
                host = None if c.host_us is None else c.host_us * HOST_SLOWER + d_launch
                c = dataclasses.replace(c, kernel=k, host_us=host)
            cmds.append(c)
        return dataclasses.replace(program, commands=cmds)

    def time_program(
        self, program: StreamProgram, graph: OpGraph, warmup: int, repeats: int
    ) -> list[float]:
        from simgpu.sim.engine import simulate

        us = simulate(self._on_truth(program, graph), self.gpu).makespan_us
        self._enter("time_program", program.name, 0.3 + (warmup + repeats) * (us + 30.0) / 1e6)
        return self._noisy(us, repeats, "time_program", graph.name, program.name)

    def trace_program(self, program: StreamProgram, graph: OpGraph, path: Path) -> Path:
        """A Chrome trace of the simulated run (not a Kineto trace: the dry run writes
        the file the real run would, with the simulator's timeline in it)."""
        from simgpu.chrome_trace import to_chrome_trace
        from simgpu.sim.engine import simulate

        self._enter("trace_program", program.name, 2.0)
        tl = simulate(self._on_truth(program, graph), self.gpu)
        data = to_chrome_trace(tl, title=f"{program.name} (fake device)")
        data["fake"] = True
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        tmp.replace(path)
        return path
