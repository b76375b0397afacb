"""Export a :class:`~simgpu.timeline.Timeline` as Chrome Trace Event JSON.

The layout follows the PyTorch profiler (Kineto) so a simulated run and a profiled one can be
opened side by side in Perfetto (ui.perfetto.dev) or chrome://tracing:

* one process per GPU (``pid`` = device index), one thread track per stream (``tid`` = stream);
* kernels as complete (``"X"``) events, ``cat: "kernel"``;
* peer copies as complete events on their stream track, ``cat: "gpu_memcpy"``, named as
  Kineto names them ("Memcpy PtoP (Device -> Device)"), with bytes, source and
  destination GPU and the achieved GB/s in ``args``;
* event record / wait / no-op commands as instant (``"i"``) events on their stream track, so
  zero-length ones stay visible;
* a "Host" process with one track per device's host thread, each API call an ``"X"`` event;
* ``ac2g`` flow arrows from each host launch to the kernel it issued;
* per-GPU counter tracks "SMs busy" and "DRAM GB/s".

Output is deterministic: the same timeline always gives byte-identical JSON.
"""

from __future__ import annotations

import bisect
import json
from os import PathLike
from typing import Any

from simgpu.timeline import HostRecord, Timeline

SM_COUNTER = "SMs busy"
DRAM_COUNTER = "DRAM GB/s"
COMPUTE_COUNTER = "SM compute %"  # share of the GPU's sustained compute in use

# Tie-break order for events sharing a timestamp: slices open before the flow ends that bind
# to them, and counters come last.
_RANK = {"X": 0, "i": 1, "s": 2, "f": 3, "C": 4}
_EPS_US = 1e-6


def _t(us: float) -> float:
    """Round to the nanosecond: trims float noise so output is compact and stable."""
    return round(float(us), 3)


def _n_devices(tl: Timeline) -> int:
    """Devices named in the timeline plus any index a record mentions beyond them."""
    idx = [k.device for k in tl.kernels] + [c.device for c in tl.commands]
    idx += [c.device for c in tl.copies] + [c.dst for c in tl.copies]
    idx += [h.device for h in tl.host]
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


def _match_launches(tl: Timeline) -> dict[int, HostRecord]:
    """Map kernel index → the host ``launch`` call that issued it.

    The launch is the latest one on the same device for the same op that ended at or before
    the kernel's issue time (``issue_us`` is the end of the launch call).
    """
    by_key: dict[tuple[int, str | None], list[HostRecord]] = {}
    for h in tl.host:
        if h.api == "launch":
            by_key.setdefault((h.device, h.op), []).append(h)
    ends: dict[tuple[int, str | None], list[float]] = {}
    for key, recs in by_key.items():
        recs.sort(key=lambda h: (h.end_us, h.start_us))
        ends[key] = [h.end_us for h in recs]
    out: dict[int, HostRecord] = {}
    for i, k in enumerate(tl.kernels):
        key = (k.device, k.op)
        if key not in by_key:
            continue
        j = bisect.bisect_right(ends[key], k.issue_us + _EPS_US) - 1
        if j >= 0:
            out[i] = by_key[key][j]
    return out


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

    # --- kernels ----------------------------------------------------------------------------
    for i, k in enumerate(tl.kernels):
        events.append(
            {
                "ph": "X",
                "cat": "kernel",
                "name": k.name,
                "pid": k.device,
                "tid": k.stream,
                "ts": _t(k.start_us),
                "dur": _t(k.end_us - k.start_us),
                "args": {
                    "op": k.op,
                    "device": k.device,
                    "stream": k.stream,
                    "queue": k.queue,
                    "grid": k.grid,
                    "threads": k.threads,
                    "batches": k.batches,
                    "issue_us": _t(k.issue_us),
                    "correlation": i + 1,
                },
            }
        )

    # --- peer copies ---------------------------------------------------------------------------
    for c in tl.copies:
        dur = c.end_us - c.start_us
        cargs: dict[str, Any] = {
            "bytes": int(c.bytes),
            "src_device": c.src,
            "dst_device": c.dst,
            "device": c.device,
            "stream": c.stream,
            "issue_us": _t(c.issue_us),
            "gbps": round(c.bytes / dur / 1e3, 3) if dur > 0 else None,
        }
        if c.tensor is not None:
            cargs["tensor"] = c.tensor
        events.append(
            {
                "ph": "X",
                "cat": "gpu_memcpy",
                "name": "Memcpy PtoP (Device -> Device)",
                "pid": c.device,
                "tid": c.stream,
                "ts": _t(c.start_us),
                "dur": _t(dur),
                "args": cargs,
            }
        )

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

    # --- host API calls ---------------------------------------------------------------------
    for h in tl.host:
        ev: dict[str, Any] = {
            "ph": "X",
            "cat": "cuda_runtime",
            "name": h.api,
            "pid": host_pid,
            "tid": h.device,
            "ts": _t(h.start_us),
            "dur": _t(h.end_us - h.start_us),
            "args": {"device": h.device},
        }
        if h.op is not None:
            ev["args"]["op"] = h.op
        events.append(ev)

    # --- launch → kernel flows (Kineto "ac2g") ----------------------------------------------
    for i, h in sorted(_match_launches(tl).items()):
        k = tl.kernels[i]
        flow = {"cat": "ac2g", "name": "ac2g", "id": i + 1, "bp": "e"}
        events.append({**flow, "ph": "s", "pid": host_pid, "tid": h.device, "ts": _t(h.start_us)})
        events.append({**flow, "ph": "f", "pid": k.device, "tid": k.stream, "ts": _t(k.start_us)})

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

    # Stable sort keeps construction order (itself deterministic) among full ties.
    events.sort(key=lambda e: (e["ts"], _RANK[e["ph"]], e["pid"], e["tid"], e["name"]))

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
        "otherData": {
            "title": title,
            "generator": "simgpu",
            "makespan_us": _t(tl.makespan_us),
            "gpu_names": list(tl.gpu_names),
            "sm_counts": [int(n) for n in tl.sm_counts],
            "kernels": len(tl.kernels),
            "copies": len(tl.copies),
        },
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
