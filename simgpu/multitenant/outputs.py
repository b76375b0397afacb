"""Chrome/Perfetto traces and Gantt charts of multi-tenant runs, grouped by tenant.

Trace layout: one process per tenant ("tenant 0: resnet50") holding a *requests* track
(each request from arrival to completion, its queueing and issue times in the args;
drops as instant events), the tenant's *host thread* (its API calls) and one track per
stream it used (kernels named ``tenant/kernel``); a "GPU" process carries the SMs-busy
and DRAM counters, and a "memory MB" counter (allocated and reserved) when the run's
memory was replayed (:func:`simgpu.multitenant.memory.replay`). The Gantt chart has the same grouping: per tenant a request row and
its stream rows, kernels coloured by tenant, busy SMs underneath. Output is
deterministic: the same run gives byte-identical JSON.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import Any

from simgpu.output import save_figure
from simgpu.sim.tenants import MultiTenantRun, parse_label

_STREAM_TID = 10  # stream s of a tenant is thread 10 + s (0: requests, 1: host thread)


def _t(us: float) -> float:
    return round(float(us), 3)


def _tenant_of(run: MultiTenantRun) -> dict[str, int]:
    return {t.name: i for i, t in enumerate(run.workload.tenants)}


def _streams_by_tenant(run: MultiTenantRun) -> list[list[int]]:
    """Streams each tenant ran anything on, sorted."""
    idx = _tenant_of(run)
    used: list[set[int]] = [set() for _ in run.workload.tenants]
    for k in run.timeline.kernels:
        used[idx[parse_label(k.op)[0]]].add(k.stream)
    for c in run.timeline.commands:
        if c.op is not None:
            used[idx[parse_label(c.op)[0]]].add(c.stream)
    return [sorted(s) for s in used]


def to_chrome_trace(run: MultiTenantRun, title: str | None = None) -> dict[str, Any]:
    """The Chrome Trace Event dict of a multi-tenant run (layout in the module doc)."""
    tl = run.timeline
    idx = _tenant_of(run)
    per = _streams_by_tenant(run)
    owners: dict[int, int] = {}
    for s in (s for lst in per for s in lst):
        owners[s] = owners.get(s, 0) + 1
    meta: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    gpu_pid = 0

    def m(name: str, pid: int, tid: int | None, value: Any) -> None:
        key = "name" if name.endswith("_name") else "sort_index"
        ev: dict[str, Any] = {"ph": "M", "name": name, "pid": pid, "args": {key: value}}
        if tid is not None:
            ev["tid"] = tid
        meta.append(ev)

    m("process_name", gpu_pid, None, f"GPU ({run.gpu.name})")
    m("process_sort_index", gpu_pid, None, 0)
    for i, ten in enumerate(run.workload.tenants):
        pid = i + 1
        m("process_name", pid, None, f"tenant {i}: {ten.name} ({ten.model})")
        m("process_sort_index", pid, None, pid)
        m("thread_name", pid, 0, "requests")
        m("thread_sort_index", pid, 0, 0)
        m("thread_name", pid, 1, "host thread")
        m("thread_sort_index", pid, 1, 1)
        for s in per[i]:
            shared = " (shared)" if owners[s] > 1 else ""
            m("thread_name", pid, _STREAM_TID + s, f"stream {s}{shared}")
            m("thread_sort_index", pid, _STREAM_TID + s, _STREAM_TID + s)
    for r in run.requests:
        pid = r.tenant + 1
        name = f"request #{r.rid}"
        args: dict[str, Any] = {"arrival_us": _t(r.arrival_us)}
        if r.dropped:
            events.append(
                {"ph": "i", "s": "t", "cat": "request", "name": f"dropped #{r.rid}",
                 "pid": pid, "tid": 0, "ts": _t(r.arrival_us), "args": args}
            )  # fmt: skip
            continue
        assert r.done_us is not None and r.issue_us is not None
        args.update(
            issue_us=_t(r.issue_us),
            done_us=_t(r.done_us),
            queue_us=_t(r.issue_us - r.arrival_us),
            latency_us=_t(r.done_us - r.arrival_us),
        )
        events.append(
            {"ph": "X", "cat": "request", "name": name, "pid": pid, "tid": 0,
             "ts": _t(r.arrival_us), "dur": _t(r.done_us - r.arrival_us), "args": args}
        )  # fmt: skip
    for k in tl.kernels:
        ten, rid, op = parse_label(k.op)
        events.append(
            {
                "ph": "X",
                "cat": "kernel",
                "name": f"{ten}/{k.name}",
                "pid": idx[ten] + 1,
                "tid": _STREAM_TID + k.stream,
                "ts": _t(k.start_us),
                "dur": _t(k.end_us - k.start_us),
                "args": {
                    "op": op,
                    "request": rid,
                    "stream": k.stream,
                    "queue": k.queue,
                    "grid": k.grid,
                    "threads": k.threads,
                    "issue_us": _t(k.issue_us),
                },
            }
        )
    for c in tl.commands:
        ten, rid, op = parse_label(c.op) if c.op is not None else ("", -1, "")
        if not ten:
            continue
        events.append(
            {
                "ph": "i",
                "s": "t",
                "cat": "cuda_event" if c.kind in ("record", "wait") else "cuda_runtime",
                "name": c.kind if c.event is None else f"{c.kind} {c.event}",
                "pid": idx[ten] + 1,
                "tid": _STREAM_TID + c.stream,
                "ts": _t(c.done_us),
                "args": {"op": op, "request": rid, "issue_us": _t(c.issue_us)},
            }
        )
    for h, ti in zip(tl.host, run.host_tenants, strict=True):
        ev = {
            "ph": "X",
            "cat": "cuda_runtime",
            "name": h.api,
            "pid": ti + 1,
            "tid": 1,
            "ts": _t(h.start_us),
            "dur": _t(h.end_us - h.start_us),
            "args": {"op": h.op} if h.op is not None else {},
        }
        events.append(ev)
    for t, busy, gbps, _ in tl.counters[0] if tl.counters else []:
        for name, val in (("SMs busy", int(busy)), ("DRAM GB/s", round(float(gbps), 6))):
            events.append(
                {"ph": "C", "cat": "counter", "name": name, "pid": gpu_pid, "tid": 0,
                 "ts": _t(t), "args": {name: val}}
            )  # fmt: skip
    for track in tl.memory or []:
        for t, allocated, reserved in track.samples:
            events.append(
                {"ph": "C", "cat": "memory", "name": "memory MB", "pid": gpu_pid, "tid": 0,
                 "ts": _t(t), "args": {"allocated": round(allocated / 2**20, 6),
                                       "reserved": round(reserved / 2**20, 6)}}
            )  # fmt: skip
    rank = {"X": 0, "i": 1, "C": 2}
    events.sort(key=lambda e: (e["ts"], rank[e["ph"]], e["pid"], e["tid"], e["name"]))
    return {
        "traceEvents": meta + events,
        "displayTimeUnit": "ns",
        "otherData": {
            "title": title or run.plan.name,
            "generator": "simgpu multitenant",
            "gpu": run.gpu.name,
            "mode": run.plan.mode,
            "tenants": [t.name for t in run.workload.tenants],
            "requests": len(run.requests),
            "span_us": _t(run.end_us),
        },
    }


def write_chrome_trace(
    run: MultiTenantRun, path: str | PathLike[str], title: str | None = None
) -> None:
    text = json.dumps(
        to_chrome_trace(run, title), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def _tenant_color(i: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


def plot_tenant_gantt(
    runs: dict[str, MultiTenantRun], path: str | PathLike[str], max_ms: float | None = None
) -> None:
    """One Gantt panel per run (stacked, shared time axis): per tenant a request row and
    its stream rows, kernels coloured by tenant; busy SMs of the first run underneath.
    ``max_ms`` crops the time axis (long runs are unreadable whole)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    items = list(runs.items())
    if not items:
        raise ValueError("plot_tenant_gantt needs at least one run")
    layouts = []
    for _, run in items:
        per = _streams_by_tenant(run)
        rows: list[tuple[str, tuple[int, int]]] = []  # label, (tenant, stream or -1)
        for i, ten in enumerate(run.workload.tenants):
            rows.append((f"{ten.name}: requests", (i, -1)))
            rows += [(f"{ten.name}: stream {s}", (i, s)) for s in per[i]]
        layouts.append(rows)
    heights = [0.7 + 0.3 * len(rows) for rows in layouts] + [1.3]
    fig = Figure(figsize=(14, sum(heights) + 0.6), layout="constrained")
    axes = fig.subplots(len(items) + 1, 1, sharex=True, gridspec_kw={"height_ratios": heights})
    end = max(run.end_us for _, run in items) / 1e3
    end = min(end, max_ms) if max_ms is not None else end
    for ax, (name, run), rows in zip(axes[:-1], items, layouts, strict=True):
        row_of = {key: y for y, (_, key) in enumerate(rows)}
        idx = _tenant_of(run)
        bars: dict[int, tuple[list, list]] = {}
        for k in run.timeline.kernels:
            ti = idx[parse_label(k.op)[0]]
            xr, cols = bars.setdefault(row_of[(ti, k.stream)], ([], []))
            xr.append((k.start_us / 1e3, (k.end_us - k.start_us) / 1e3))
            cols.append(_tenant_color(ti))
        for y, (xr, cols) in sorted(bars.items()):
            ax.broken_barh(xr, (y - 0.4, 0.8), facecolors=cols, linewidth=0)
        for r in run.requests:
            y = row_of[(r.tenant, -1)]
            if r.dropped:
                ax.plot([r.arrival_us / 1e3], [y], marker="x", color="#d62728", markersize=4)
                continue
            assert r.done_us is not None and r.issue_us is not None
            c = _tenant_color(r.tenant)
            ax.broken_barh(
                [(r.arrival_us / 1e3, (r.issue_us - r.arrival_us) / 1e3)],
                (y - 0.15, 0.3),
                facecolors="#bbbbbb",
            )
            ax.broken_barh(
                [(r.issue_us / 1e3, (r.done_us - r.issue_us) / 1e3)],
                (y - 0.3, 0.6),
                facecolors=[c],
                edgecolor="white",
                linewidth=0.5,
                alpha=0.6,
            )
        ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
        ax.set_title(
            f"{name} ({run.plan.mode}) — {len(run.requests)} requests", fontsize=9, loc="left"
        )
        handles = [
            Patch(color=_tenant_color(i), label=t.name) for i, t in enumerate(run.workload.tenants)
        ]
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False
        )
    ax_sm = axes[-1]
    for name, run in items:
        pts = run.timeline.counters[0] if run.timeline.counters else []
        if not pts:
            continue
        xs = [t / 1e3 for t, *_ in pts] + [run.end_us / 1e3]
        ys = [b for _, b, *_ in pts]
        ys.append(ys[-1])
        ax_sm.step(xs, ys, where="post", linewidth=0.8, label=name)
    ax_sm.set_ylim(0, items[0][1].gpu.sm_count * 1.05)
    ax_sm.set_ylabel("SMs busy", fontsize=8)
    ax_sm.legend(loc="upper right", fontsize=7)
    ax_sm.set_xlabel("time (ms)")
    ax_sm.set_xlim(0, end * 1.01 if end > 0 else 1.0)
    save_figure(fig, path, dpi=110)


__all__ = ["plot_tenant_gantt", "to_chrome_trace", "write_chrome_trace"]
