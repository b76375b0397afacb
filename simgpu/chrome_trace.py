"""Export a :class:`~simgpu.timeline.Timeline` as Chrome Trace Event JSON, in Kineto's layout.

The trace follows the PyTorch profiler (Kineto) closely enough that a simulated run opens
beside a profiled one in Perfetto (ui.perfetto.dev) or chrome://tracing, and that
``simgpu replay`` (:mod:`calibrate.kineto`) reads it back as it reads a real trace:

* one process per GPU (``pid`` = device index), one thread track per stream (``tid`` = stream);
* kernels as complete (``"X"``) events, ``cat: "kernel"``, with Kineto's args: ``device``,
  ``stream``, ``correlation``, ``grid`` and ``block`` as ``[x, y, z]``;
* peer copies as complete events on their stream track, ``cat: "gpu_memcpy"``, named as
  Kineto names them ("Memcpy PtoP (Device -> Device)"), with bytes, source and
  destination GPU and the achieved GB/s in ``args``;
* a "Host" process with one track per device's host thread; each API call is an ``"X"``
  event in ``cuda_runtime`` named as the CUDA runtime names it (``cudaLaunchKernel``,
  ``cudaEventRecord``, ``cudaStreamWaitEvent``, ``cudaDeviceSynchronize``,
  ``cudaGraphLaunch``, ``cudaMemcpyPeerAsync``) with an ``args.correlation`` id that the
  kernel or copy it issued carries too (every kernel of a CUDA Graph carries its
  ``cudaGraphLaunch``'s id, as CUPTI reports them); a framework dispatch with no device
  work is a ``cpu_op``;
* ``cuda_sync`` events as Kineto writes them: a "Stream Wait Event" on the waiting
  stream naming the record it waits for (``wait_on_cuda_event_record_corr_id``) and the
  recording stream (``wait_on_stream``), and a "Context Sync" per device synchronize;
* event record / wait / no-op commands also as instant (``"i"``) events on their stream
  track, so zero-length ones stay visible;
* ``ac2g`` flow arrows from each host launch (or graph launch) to every kernel it issued;
* per-GPU counter tracks "SMs busy", "DRAM GB/s" and "SM compute %", and, where the run's
  memory was accounted (``timeline.memory``, :mod:`simgpu.memory`), a "GPU memory (MB)"
  counter with two series, ``allocated`` and ``reserved`` (MiB), at every change of either;
  ``otherData`` then carries each device's peaks. Kineto writes memory as ``[memory]``
  instant events of the CPU allocator's log; a counter shows the same curve in Perfetto
  without pretending to be such a log, and readers of kernels and calls skip it.

Times are written in whole nanoseconds (three decimals of a microsecond) and a slice's
duration is its rounded end minus its rounded start, so rounding never makes two slices
of one track overlap. Output is deterministic: the same timeline gives byte-identical JSON.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from os import PathLike
from typing import Any

from simgpu.memory import MB
from simgpu.timeline import (
    CommandRecord,
    CopyRecord,
    HostRecord,
    KernelRecord,
    MemoryTrack,
    Timeline,
)

SM_COUNTER = "SMs busy"
DRAM_COUNTER = "DRAM GB/s"
COMPUTE_COUNTER = "SM compute %"  # share of the GPU's sustained compute in use
MEMORY_COUNTER = "GPU memory (MB)"  # series "allocated" and "reserved", in MiB

# The simulator's host API names and the CUDA runtime calls they stand for.
CUDA_API = {
    "launch": "cudaLaunchKernel",
    "event_record": "cudaEventRecord",
    "record": "cudaEventRecord",
    "stream_wait_event": "cudaStreamWaitEvent",
    "wait": "cudaStreamWaitEvent",
    "synchronize": "cudaDeviceSynchronize",
    "graph_launch": "cudaGraphLaunch",
    "memcpy_peer": "cudaMemcpyPeerAsync",
}
CPU_OPS = {"dispatch"}  # host work with no CUDA call: a framework op, as Kineto's cpu_op

# Tie-break order for events sharing a timestamp: slices open before the flow ends that bind
# to them, and counters come last.
_RANK = {"X": 0, "i": 1, "s": 2, "f": 3, "C": 4}
_EPS_US = 1e-6


def _ns(us: float) -> int:
    return round(float(us) * 1000.0)


def _t(us: float) -> float:
    """Round to the nanosecond: trims float noise so output is compact and stable."""
    return _ns(us) / 1000.0


def _span(start: float, end: float) -> tuple[float, float]:
    """(ts, dur) of a slice: both ends rounded first, so slices that touch or are apart
    before rounding still do after it (a duration rounded on its own could overlap)."""
    a, b = _ns(start), _ns(end)
    return a / 1000.0, max(b - a, 0) / 1000.0


def _n_devices(tl: Timeline) -> int:
    """Devices named in the timeline plus any index a record mentions beyond them."""
    idx = [k.device for k in tl.kernels] + [c.device for c in tl.commands]
    idx += [c.device for c in tl.copies] + [c.dst for c in tl.copies]
    idx += [h.device for h in tl.host]
    idx += [m.device for m in tl.memory or ()]
    return max([len(tl.gpu_names), len(tl.counters), *(i + 1 for i in idx)])


def _gpu_label(tl: Timeline, dev: int) -> str:
    name = tl.gpu_names[dev] if dev < len(tl.gpu_names) else None
    return f"GPU {dev} ({name})" if name else f"GPU {dev}"


def _meta(name: str, pid: int, tid: int | None, value: Any) -> dict[str, Any]:
    key = "name" if name.endswith("_name") else "sort_index"
    ev: dict[str, Any] = {"ph": "M", "name": name, "pid": pid, "args": {key: value}}
    if tid is not None:
        ev["tid"] = tid
    return ev


def _match_issued(
    host: Sequence[tuple[int, HostRecord]],
    items: Iterable[tuple[int, int, str | None, float]],
) -> dict[int, int]:
    """Map item index → index of the host call that issued it.

    ``host`` holds the candidate calls with their indices; ``items`` are
    (index, device, op, issue time). The call is the latest one on the same device for
    the same op that ended at or before the item's issue time (an item is issued when
    its call returns).
    """
    by_key: dict[tuple[int, str | None], list[tuple[int, HostRecord]]] = {}
    for j, h in host:
        by_key.setdefault((h.device, h.op), []).append((j, h))
    ends: dict[tuple[int, str | None], list[float]] = {}
    for key, recs in by_key.items():
        recs.sort(key=lambda x: (x[1].end_us, x[1].start_us, x[0]))
        ends[key] = [h.end_us for _, h in recs]
    out: dict[int, int] = {}
    for i, dev, op, issue in items:
        key = (dev, op)
        if key not in by_key:
            continue
        j = bisect.bisect_right(ends[key], issue + _EPS_US) - 1
        if j >= 0:
            out[i] = by_key[key][j][0]
    return out


def _match_commands(
    host: Sequence[tuple[int, HostRecord]], cmds: Sequence[tuple[int, CommandRecord]]
) -> dict[int, int]:
    """Map command index → index of the host call (record or wait) that issued it: per
    device, the k-th such call issued the k-th such command by issue time (a command's
    issue time is its call's end)."""
    out: dict[int, int] = {}
    devices = {h.device for _, h in host} | {c.device for _, c in cmds}
    for d in sorted(devices):
        calls = sorted(((h.end_us, j) for j, h in host if h.device == d))
        mine = sorted(((c.issue_us, i) for i, c in cmds if c.device == d))
        for (_, j), (_, i) in zip(calls, mine, strict=False):
            out[i] = j
    return out


def _bind_waits(commands: Sequence[CommandRecord]) -> dict[int, int]:
    """Map wait command index → the record command it waited for: the latest record of
    its event issued before it, else the next one (the simulator's binding rule)."""
    recs: dict[str, list[tuple[float, int]]] = {}
    for i, c in enumerate(commands):
        if c.kind == "record" and c.event is not None:
            recs.setdefault(c.event, []).append((c.issue_us, i))
    for lst in recs.values():
        lst.sort()
    out: dict[int, int] = {}
    for i, c in enumerate(commands):
        if c.kind != "wait" or c.event not in recs:
            continue
        lst = recs[c.event]
        j = bisect.bisect_right(lst, (c.issue_us + _EPS_US, len(commands))) - 1
        out[i] = lst[j][1] if j >= 0 else lst[0][1]
    return out


def _kernel_event(k: KernelRecord, corr: int) -> dict[str, Any]:
    ts, dur = _span(k.start_us, k.end_us)
    return {
        "ph": "X",
        "cat": "kernel",
        "name": k.name,
        "pid": k.device,
        "tid": k.stream,
        "ts": ts,
        "dur": dur,
        "args": {
            "op": k.op,
            "device": k.device,
            "stream": k.stream,
            "queue": k.queue,
            "grid": [int(k.grid), 1, 1],
            "block": [int(k.threads), 1, 1],
            "threads": k.threads,
            "batches": k.batches,
            "issue_us": _t(k.issue_us),
            "correlation": corr,
        },
    }


def _copy_event(c: CopyRecord, corr: int) -> dict[str, Any]:
    dur_us = c.end_us - c.start_us
    ts, dur = _span(c.start_us, c.end_us)
    cargs: dict[str, Any] = {
        "bytes": int(c.bytes),
        "src_device": c.src,
        "dst_device": c.dst,
        "device": c.device,
        "stream": c.stream,
        "issue_us": _t(c.issue_us),
        "gbps": round(c.bytes / dur_us / 1e3, 3) if dur_us > 0 else None,
        "correlation": corr,
    }
    if c.tensor is not None:
        cargs["tensor"] = c.tensor
    return {
        "ph": "X",
        "cat": "gpu_memcpy",
        "name": "Memcpy PtoP (Device -> Device)",
        "pid": c.device,
        "tid": c.stream,
        "ts": ts,
        "dur": dur,
        "args": cargs,
    }


def _mb(nbytes: int) -> float:
    return round(nbytes / MB, 6)


def _memory_events(track: MemoryTrack) -> list[dict[str, Any]]:
    """One counter event per sample of ``track``; samples that round to one nanosecond
    keep the last (the state after everything at that instant)."""
    out: dict[float, dict[str, Any]] = {}
    for t, allocated, reserved in track.samples:
        ts = _t(t)
        out[ts] = {
            "ph": "C",
            "cat": "memory",
            "name": MEMORY_COUNTER,
            "pid": track.device,
            "tid": 0,
            "ts": ts,
            "args": {"allocated": _mb(allocated), "reserved": _mb(reserved)},
        }
    return list(out.values())


def to_chrome_trace(timeline: Timeline, title: str = "simgpu") -> dict[str, Any]:
    """Build the Chrome Trace Event dict for ``timeline`` (see module docstring for layout)."""
    tl = timeline
    n_dev = _n_devices(tl)
    host_pid = n_dev  # after the GPUs, so device pids equal device indices as in Kineto
    meta: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []

    # --- processes and tracks -------------------------------------------------------------
    meta.append(_meta("process_name", host_pid, None, "Host"))
    meta.append(_meta("process_sort_index", host_pid, None, -1))
    for dev in range(n_dev):
        meta.append(_meta("process_name", dev, None, _gpu_label(tl, dev)))
        meta.append(_meta("process_sort_index", dev, None, dev))
    for dev, stream in tl.streams:
        meta.append(_meta("thread_name", dev, stream, f"stream {stream}"))
        meta.append(_meta("thread_sort_index", dev, stream, stream))
    for dev in sorted({h.device for h in tl.host}):
        meta.append(_meta("thread_name", host_pid, dev, f"host thread (GPU {dev})"))
        meta.append(_meta("thread_sort_index", host_pid, dev, dev))

    # --- correlation ids: one per host API call, in host order ----------------------------
    order = sorted(range(len(tl.host)), key=lambda j: (tl.host[j].start_us, tl.host[j].device, j))
    corr_of_call = {j: n + 1 for n, j in enumerate(order)}
    next_corr = len(tl.host) + 1
    launches = [(j, h) for j, h in enumerate(tl.host) if h.api == "launch"]
    graphs = {h.device: j for j, h in enumerate(tl.host) if h.api == "graph_launch"}
    k_call = _match_issued(
        launches, ((i, k.device, k.op, k.issue_us) for i, k in enumerate(tl.kernels))
    )
    c_call = _match_issued(
        [(j, h) for j, h in enumerate(tl.host) if h.api == "memcpy_peer"],
        ((i, c.device, c.tensor, c.issue_us) for i, c in enumerate(tl.copies)),
    )

    def issuer(call: int | None, device: int) -> int | None:
        return call if call is not None else graphs.get(device)

    # --- kernels and peer copies, each with the correlation of the call that issued it ---
    flows: list[tuple[int, int, float, int, int, float]] = []  # host (tid, ts) → GPU (pid, tid, ts)
    activities = [(tl.kernels, k_call, _kernel_event), (tl.copies, c_call, _copy_event)]
    for records, call_of, event in activities:
        for i, a in enumerate(records):
            j = issuer(call_of.get(i), a.device)
            if j is None:  # issued before the host log began: a fresh id, as CUPTI gives one
                corr, next_corr = next_corr, next_corr + 1
            else:
                corr = corr_of_call[j]
                h = tl.host[j]
                flows.append((h.device, corr, h.start_us, a.device, a.stream, a.start_us))
            events.append(event(a, corr))

    # --- stream commands (event record / wait / no-op) ------------------------------------
    for c in tl.commands:
        label = c.kind if c.event is None else f"{c.kind} {c.event}"
        args: dict[str, Any] = {
            "kind": c.kind,
            "issue_us": _t(c.issue_us),
            "done_us": _t(c.done_us),
        }
        if c.event is not None:
            args["event"] = c.event
        if c.op is not None:
            args["op"] = c.op
        events.append(
            {
                "ph": "i",
                "s": "t",
                "cat": "cuda_event" if c.kind in ("record", "wait") else "cuda_runtime",
                "name": label,
                "pid": c.device,
                "tid": c.stream,
                "ts": _t(c.done_us),
                "args": args,
            }
        )

    # --- cuda_sync: each wait names the record it waits for, as Kineto does -------------
    cmd_list = list(enumerate(tl.commands))
    rec_call = _match_commands(
        [(j, h) for j, h in enumerate(tl.host) if h.api in ("event_record", "record")],
        [(i, c) for i, c in cmd_list if c.kind == "record"],
    )
    wait_call = _match_commands(
        [(j, h) for j, h in enumerate(tl.host) if h.api in ("stream_wait_event", "wait")],
        [(i, c) for i, c in cmd_list if c.kind == "wait"],
    )
    # Inside a CUDA Graph, records and waits are graph nodes with no runtime call, which a
    # real trace does not show. simgpu writes them as cuda_sync events of their graph
    # launch (``args.graph`` = its correlation) with ids of their own, so a replay keeps the
    # graph's cross-stream dependencies; a Kineto reader that does not know them skips them.
    node_corr: dict[int, int] = {}
    for i, c in cmd_list:
        graphed = c.device in graphs and i not in rec_call and i not in wait_call
        if c.kind in ("record", "wait") and graphed:
            node_corr[i], next_corr = next_corr, next_corr + 1
    waits_of = _bind_waits(tl.commands)
    for i in sorted(node_corr):
        c = tl.commands[i]
        nargs: dict[str, Any] = {
            "cuda_sync_kind": "Event Record" if c.kind == "record" else "Stream Wait Event",
            "correlation": node_corr[i],
            "graph": corr_of_call[graphs[c.device]],
            "device": c.device,
            "stream": c.stream,
            "event": c.event,
        }
        if c.kind == "wait":
            r = waits_of.get(i)
            if r is None or r not in node_corr:
                continue  # waits for nothing in this graph: no dependency to replay
            nargs["wait_on_stream"] = tl.commands[r].stream
            nargs["wait_on_device"] = tl.commands[r].device
            nargs["wait_on_cuda_event_record_corr_id"] = node_corr[r]
        events.append(
            {
                "ph": "X",
                "cat": "cuda_sync",
                "name": nargs["cuda_sync_kind"],
                "pid": c.device,
                "tid": c.stream,
                "ts": _t(c.done_us),
                "dur": 0.0,
                "args": nargs,
            }
        )
    for w, r in sorted(waits_of.items()):
        if w not in wait_call or r not in rec_call:
            continue  # a graph node (above), or a command whose call was not logged
        cw, cr = tl.commands[w], tl.commands[r]
        events.append(
            {
                "ph": "X",
                "cat": "cuda_sync",
                "name": "Stream Wait Event",
                "pid": cw.device,
                "tid": cw.stream,
                "ts": _t(cw.done_us),
                "dur": 0.0,
                "args": {
                    "cuda_sync_kind": "Stream Wait Event",
                    "correlation": corr_of_call[wait_call[w]],
                    "device": cw.device,
                    "stream": cw.stream,
                    "wait_on_stream": cr.stream,
                    "wait_on_device": cr.device,
                    "wait_on_cuda_event_record_corr_id": corr_of_call[rec_call[r]],
                    "event": cw.event,
                },
            }
        )

    # --- host API calls ---------------------------------------------------------------------
    for j, h in enumerate(tl.host):
        ts, dur = _span(h.start_us, h.end_us)
        corr = corr_of_call[j]
        cpu = h.api in CPU_OPS
        ev: dict[str, Any] = {
            "ph": "X",
            "cat": "cpu_op" if cpu else "cuda_runtime",
            "name": h.api if cpu else CUDA_API.get(h.api, h.api),
            "pid": host_pid,
            "tid": h.device,
            "ts": ts,
            "dur": dur,
            "args": {"device": h.device} if cpu else {"device": h.device, "correlation": corr},
        }
        if h.op is not None:
            ev["args"]["op"] = h.op
        events.append(ev)
        if h.api == "synchronize":
            events.append(
                {
                    "ph": "X",
                    "cat": "cuda_sync",
                    "name": "Context Sync",
                    "pid": h.device,
                    "tid": -1,
                    "ts": ts,
                    "dur": dur,
                    "args": {
                        "cuda_sync_kind": "Context Sync",
                        "correlation": corr,
                        "device": h.device,
                        "stream": -1,
                    },
                }
            )

    # --- launch → kernel flows (Kineto "ac2g"), one arrow per kernel or copy ----------------
    for n, (htid, _corr, hts, pid, tid, gts) in enumerate(flows):
        flow = {"cat": "ac2g", "name": "ac2g", "id": n + 1, "bp": "e"}
        events.append({**flow, "ph": "s", "pid": host_pid, "tid": htid, "ts": _t(hts)})
        events.append({**flow, "ph": "f", "pid": pid, "tid": tid, "ts": _t(gts)})

    # --- counters -----------------------------------------------------------------------------
    for dev, points in enumerate(tl.counters):
        for t, busy, gbps, compute in points:
            for name, val in (
                (SM_COUNTER, int(busy)),
                (DRAM_COUNTER, round(float(gbps), 6)),
                (COMPUTE_COUNTER, round(100.0 * float(compute), 6)),
            ):
                events.append(
                    {
                        "ph": "C",
                        "cat": "counter",
                        "name": name,
                        "pid": dev,
                        "tid": 0,
                        "ts": _t(t),
                        "args": {name: val},
                    }
                )

    for track in tl.memory or ():
        events.extend(_memory_events(track))

    # Stable sort keeps construction order (itself deterministic) among full ties.
    events.sort(key=lambda e: (e["ts"], _RANK[e["ph"]], e["pid"], e["tid"], e["name"]))

    other: dict[str, Any] = {
        "title": title,
        "generator": "simgpu",
        "makespan_us": _t(tl.makespan_us),
        "gpu_names": list(tl.gpu_names),
        "sm_counts": [int(n) for n in tl.sm_counts],
        "kernels": len(tl.kernels),
        "copies": len(tl.copies),
    }
    if tl.memory is not None:
        other["memory"] = [
            {
                "device": m.device,
                "peak_memory_mb": _mb(m.peak_allocated),
                "reserved_memory_mb": _mb(m.peak_reserved),
                "peak_at_us": _t(m.peak_at_us),
                "peak_op": m.peak_op,
                "weights_mb": _mb(m.weights),
            }
            for m in tl.memory
        ]
    return {
        "traceEvents": meta + events,
        "displayTimeUnit": "ns",
        "deviceProperties": [
            {
                "id": dev,
                "name": tl.gpu_names[dev] if dev < len(tl.gpu_names) else f"GPU {dev}",
                "numSms": tl.sm_counts[dev] if dev < len(tl.sm_counts) else None,
            }
            for dev in range(n_dev)
        ],
        "otherData": other,
    }


def dumps_chrome_trace(timeline: Timeline, title: str = "simgpu") -> str:
    """Serialise compactly with sorted keys so the same timeline gives identical bytes."""
    return json.dumps(
        to_chrome_trace(timeline, title), sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def write_chrome_trace(
    timeline: Timeline, path: str | PathLike[str], title: str = "simgpu"
) -> None:
    """Write the trace to ``path`` (open it in ui.perfetto.dev or chrome://tracing)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps_chrome_trace(timeline, title))
        f.write("\n")


__all__ = ["dumps_chrome_trace", "to_chrome_trace", "write_chrome_trace"]
