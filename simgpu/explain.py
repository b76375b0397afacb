"""Why a schedule takes the time it does, read from its simulated Timeline.

A latency alone does not say what to change. This module walks the run back from its
last command to time zero and names, at every step, what the step waited for: the
command before it on its stream, an event recorded on another stream, the host call
that issued it, the hardware queue it shared, or SM space held by another kernel. The
walk is the run's critical path; shortening anything off it cannot make the run faster.
It also splits that path into host-bound and GPU-bound time, totals per stream where
the time between commands went, and compares per-op kernel times with another schedule.

Everything is read from the Timeline's records; the few constants the records do not
carry are recovered exactly from them: the launch latency (the smallest gap between a
host call's end and the release of what it issued), the kernel gap and the event
latency are each the smallest such gap on the device, since the first command of a run
meets that minimum with nothing else in the way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from simgpu.output import text_table as _table
from simgpu.timeline import HostRecord, Timeline

#: What a step waited for, in the order ties are broken (a GPU-side cause first: it
#: continues the path on the device, where the time was spent).
CAUSES = (
    "stream", "event", "queue", "host", "SM space", "synchronize", "host thread", "hand-off",
    "start",
)  # fmt: skip


@dataclass
class _Item:
    """A command on a stream, as the timeline recorded it."""

    kind: str  # "kernel" | "copy" | "record" | "wait" | "noop"
    device: int
    stream: int
    name: str
    op: str | None
    issue: float  # end of the host call that issued it
    release: float  # left its hardware queue (a command: done)
    start: float
    end: float
    event: str | None = None
    queue: int | None = None


@dataclass
class PathStep:
    """One step of the critical path: ``what`` ran (or the host was in) from ``start_us``
    to ``end_us``; before it started it waited ``wait_us`` for ``cause``, which is the
    previous step (``cause`` "start": nothing, the run began)."""

    kind: str
    what: str
    device: int
    stream: int | None
    start_us: float
    end_us: float
    cause: str
    wait_us: float

    @property
    def side(self) -> str:
        return "host" if self.kind in ("host", "synchronize") else "gpu"


@dataclass
class StreamWaits:
    """Where one stream's time went: running work (``busy_us``), and between commands
    waiting for the host to issue the next one, for an event, for its hardware queue,
    or (a kernel released but not yet started) for SM space and the kernel gap."""

    device: int
    stream: int
    commands: int
    busy_us: float = 0.0
    host_us: float = 0.0
    event_us: float = 0.0
    queue_us: float = 0.0
    sm_us: float = 0.0
    after_us: float = 0.0  # idle after its last command, until the run ended


@dataclass
class OpDelta:
    """One op's kernel time (sum of its kernels' durations) in two schedules."""

    op: str
    time_us: float | None
    against_us: float | None
    end_us: float | None
    against_end_us: float | None
    on_path: bool

    @property
    def delta_us(self) -> float | None:
        if self.time_us is None or self.against_us is None:
            return None
        return self.time_us - self.against_us


@dataclass
class Explanation:
    makespan_us: float
    path: list[PathStep]
    streams: list[StreamWaits]
    gpu_busy_us: float  # some kernel or copy running, on any device
    host_busy_us: float  # the host in an API call (not blocked in a synchronize)
    gpu_idle_host_busy_us: float  # no kernel running while the host issues: host-bound
    constants: dict[str, float] = field(default_factory=dict)
    ops: list[OpDelta] | None = None

    # -- the critical path's split --------------------------------------------------------

    def path_split(self) -> dict[str, float]:
        """Critical-path time by what it was: GPU work, host calls, and the waits before
        steps by cause (launch and event latency, kernel gaps, ...)."""
        out: dict[str, float] = defaultdict(float)
        for s in self.path:
            out["gpu_us" if s.side == "gpu" else "host_us"] += s.end_us - s.start_us
            if s.wait_us > 0:
                out[f"wait_{s.cause.replace(' ', '_')}_us"] += s.wait_us
        return dict(out)

    def host_bound_us(self) -> float:
        """Critical-path time the host decided: its calls, and the launch latency of
        the commands it issued while the GPU had nothing before them."""
        return sum(
            (s.end_us - s.start_us if s.side == "host" else 0.0)
            + (s.wait_us if s.cause in ("host", "host thread", "hand-off") else 0.0)
            for s in self.path
        )

    def gpu_bound_us(self) -> float:
        return max(0.0, self.makespan_us - self.host_bound_us())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "makespan_us": self.makespan_us,
            "critical_path": {
                "host_bound_us": self.host_bound_us(),
                "gpu_bound_us": self.gpu_bound_us(),
                "split": self.path_split(),
                "steps": [asdict(s) for s in self.path],
            },
            "gpu_busy_us": self.gpu_busy_us,
            "host_busy_us": self.host_busy_us,
            "gpu_idle_host_busy_us": self.gpu_idle_host_busy_us,
            "streams": [asdict(s) for s in self.streams],
            "constants_us": self.constants,
        }
        if self.ops is not None:
            out["ops"] = [{**asdict(o), "delta_us": o.delta_us} for o in self.ops]
        return out


# --- reading the timeline ----------------------------------------------------------------


def _items(tl: Timeline) -> list[_Item]:
    items: list[_Item] = []
    for k in tl.kernels:
        release = k.release_us if k.release_us >= 0 else k.start_us
        items.append(
            _Item("kernel", k.device, k.stream, k.name, k.op, k.issue_us, release, k.start_us,
                  k.end_us, queue=k.queue)
        )  # fmt: skip
    for c in tl.copies:
        items.append(
            _Item("copy", c.device, c.stream, f"copy {c.src}->{c.dst}", c.tensor, c.issue_us,
                  c.start_us, c.start_us, c.end_us)
        )  # fmt: skip
    for c in tl.commands:
        items.append(
            _Item(c.kind, c.device, c.stream, c.event or c.op or c.kind, c.op, c.issue_us,
                  c.done_us, c.done_us, c.done_us, event=c.event)
        )  # fmt: skip
    return items


def _stream_order(items: list[_Item]) -> dict[tuple[int, int], list[_Item]]:
    """Each stream's commands in the order the stream ran them. A stream runs in order,
    so ends never decrease along it; at equal ends a kernel (never zero-length) came
    before the zero-length commands, and issue order breaks the rest."""
    per: dict[tuple[int, int], list[_Item]] = defaultdict(list)
    for it in items:
        per[(it.device, it.stream)].append(it)
    for lst in per.values():
        lst.sort(key=lambda i: (i.end, i.kind in ("record", "wait", "noop"), i.issue))
    return dict(per)


def _minimum(values: list[float], default: float = 0.0) -> float:
    ok = [v for v in values if v >= 0]
    return min(ok) if ok else default


class _Walker:
    def __init__(self, tl: Timeline) -> None:
        self.tl = tl
        self.eps = 1e-6 * max(1.0, tl.makespan_us)
        self.items = _items(tl)
        self.order = _stream_order(self.items)
        self.prev: dict[int, _Item | None] = {}
        for lst in self.order.values():
            for i, it in enumerate(lst):
                self.prev[id(it)] = lst[i - 1] if i else None
        self.records: dict[str, list[_Item]] = defaultdict(list)
        for it in self.items:
            if it.kind == "record" and it.event is not None:
                self.records[it.event].append(it)
        devices = {it.device for it in self.items}
        # the constants the records do not carry, recovered as explained above
        self.latency = {
            d: _minimum([it.release - it.issue for it in self.items if it.device == d])
            for d in devices
        }
        self.kernel_gap = {
            d: _minimum([it.start - it.release for it in self.items
                         if it.device == d and it.kind == "kernel"])
            for d in devices
        }  # fmt: skip
        self.event_latency = {
            d: _minimum([w.end - r.end for w in self.items if w.device == d and w.kind == "wait"
                         for r in [self._record_of(w)] if r is not None])
            for d in devices
        }  # fmt: skip
        self.per_queue: dict[tuple[int, int], list[_Item]] = defaultdict(list)
        for it in self.items:
            if it.kind == "kernel" and it.queue is not None:
                self.per_queue[(it.device, it.queue)].append(it)
        self.queue_pos: dict[int, int] = {}
        for lst in self.per_queue.values():
            lst.sort(key=lambda i: (i.release, i.issue))
            for i, it in enumerate(lst):
                self.queue_pos[id(it)] = i
        self.kernels_by_device: dict[int, list[_Item]] = defaultdict(list)
        for it in self.items:
            if it.kind == "kernel":
                self.kernels_by_device[it.device].append(it)
        # host calls in the order they were logged: each thread's calls in issue order
        # (calls of zero cost share their times, so times alone cannot order them)
        self.host = list(tl.host)
        self.host_index = {id(h): i for i, h in enumerate(self.host)}
        self.host_by_end: dict[float, list[HostRecord]] = defaultdict(list)
        for h in self.host:
            self.host_by_end[h.end_us].append(h)
        self.shared_host = not _threads_overlap(sorted(self.host, key=lambda h: h.start_us))
        self.thread_prev: dict[int, HostRecord | None] = {}
        last: dict[int, HostRecord] = {}
        for h in self.host:
            key = 0 if self.shared_host else h.device
            self.thread_prev[id(h)] = last.get(key)
            last[key] = h

    def _record_of(self, wait: _Item) -> _Item | None:
        """The recording a wait bound to: the latest one done by the time the wait was."""
        best = None
        for r in self.records.get(wait.event or "", []):
            if r.end <= wait.end + 1e-9 and (best is None or r.end > best.end):
                best = r
        return best

    # -- what gated one GPU command ------------------------------------------------------------

    def _gpu_gate(self, it: _Item) -> tuple[str, Any, float]:
        """(cause, the step it waited for, when that let it go) for a command's release."""
        t = it.release
        cands: list[tuple[float, int, str, Any]] = []
        p = self.prev.get(id(it))
        if p is not None:
            cands.append((p.end, 0, "stream", p))
        if it.kind == "wait":
            r = self._record_of(it)
            if r is not None:
                cands.append((r.end + self.event_latency.get(it.device, 0.0), 1, "event", r))
        if it.kind == "kernel":
            q = self._queue_prev(it)
            if q is not None:
                cands.append((q.release, 2, "queue", q))
        h = self._host_call(it)
        cands.append((it.issue + self.latency.get(it.device, 0.0), 3, "host", h))
        ok = [c for c in cands if c[0] <= t + self.eps]
        if not ok:  # cannot happen in a simulated run; a start is the safe reading
            return "start", None, 0.0
        top = max(c[0] for c in ok)
        cause = min((c for c in ok if c[0] >= top - self.eps), key=lambda c: c[1])
        return cause[2], cause[3], top

    def _queue_prev(self, it: _Item) -> _Item | None:
        """The kernel of another stream released just before ``it`` from the same
        hardware queue (strictly earlier in release order, so the walk cannot cycle)."""
        lst = self.per_queue.get((it.device, it.queue or 0), [])
        for x in reversed(lst[: self.queue_pos.get(id(it), 0)]):
            if x.stream != it.stream:
                return x
        return None

    def _host_call(self, it: _Item) -> HostRecord | None:
        cands = self.host_by_end.get(it.issue, [])
        for h in cands:
            if h.device == it.device and (it.op is None or h.op in (None, it.op)):
                return h
        return cands[0] if cands else None

    def _sm_blocker(self, k: _Item) -> _Item | None:
        """The kernel whose blocks held the SM space ``k`` waited for: the one resident at
        its start whose blocks ended then (a finished wave), else the longest resident."""
        resident = [
            x for x in self.kernels_by_device[k.device]
            if x is not k and x.start < k.start - self.eps and x.end >= k.start - self.eps
        ]  # fmt: skip
        if not resident:
            return None
        ending = [x for x in resident if abs(x.end - k.start) <= self.eps]
        if ending:
            return min(ending, key=lambda x: x.start)
        return min(resident, key=lambda x: (x.start, x.stream))

    # -- the walk --------------------------------------------------------------------------------

    def walk(self) -> list[PathStep]:
        steps: list[PathStep] = []
        if not self.items:
            return steps
        last = max(self.items, key=lambda i: (i.end, i.kind == "kernel", i.start))
        node: Any = last
        until = last.end
        seen = 0
        limit = 4 * (len(self.items) + len(self.host)) + 10
        while node is not None and seen < limit:
            seen += 1
            if isinstance(node, _Item):
                node, until = self._gpu_step(node, until, steps)
            else:
                node, until = self._host_step(node, until, steps)
        steps.reverse()
        return steps

    def _gpu_step(self, it: _Item, until: float, steps: list[PathStep]) -> tuple[Any, float]:
        """Add ``it`` (running up to ``until``) and return the step it waited for, with
        the time the path continues from there. A kernel reached through its hardware
        queue (``until`` before its start) adds only its release: what held the queue."""
        start = min(it.start, until)
        gap = self.kernel_gap.get(it.device, 0.0)
        if it.kind == "kernel" and until >= it.start and it.start - it.release > gap + self.eps:
            x = self._sm_blocker(it)
            if x is not None:
                steps.append(self._step(it, start, until, "SM space", 0.0))
                return x, it.start
        cause, prev, _ = self._gpu_gate(it)
        if prev is None:
            steps.append(self._step(it, start, until, "start", start))
            return None, 0.0
        if cause == "host":
            then = prev.end_us
        elif cause == "queue":
            then = prev.release
        else:
            then = prev.end
        steps.append(self._step(it, start, until, cause, max(0.0, start - then)))
        return prev, then

    def _step(self, it: _Item, start: float, end: float, cause: str, wait: float) -> PathStep:
        what = it.name if it.kind in ("kernel", "copy") else f"{it.kind} {it.name}"
        if it.op and it.kind in ("kernel", "copy") and it.op != it.name:
            what = f"{it.op}: {it.name}"
        kind = it.kind if end >= it.start else "release"  # reached through its queue
        return PathStep(kind, what, it.device, it.stream, start, max(start, end), cause, wait)

    def _host_step(self, h: HostRecord, until: float, steps: list[PathStep]) -> tuple[Any, float]:
        end = min(until, h.end_us)
        if h.api == "synchronize":
            done = self._device_done(h.device, h.end_us)
            if done is not None and done.end > h.start_us + self.eps:
                steps.append(
                    PathStep("synchronize", "synchronize", h.device, None, done.end, end,
                             "synchronize", 0.0)
                )  # fmt: skip
                return done, done.end
        prev = self._host_prev(h)
        what = h.api if h.op is None else f"{h.api} {h.op}"
        if prev is None:
            steps.append(PathStep("host", what, h.device, None, h.start_us, end, "start",
                                  h.start_us))  # fmt: skip
            return None, 0.0
        cause = "host thread" if prev.device == h.device or self.shared_host else "hand-off"
        steps.append(PathStep("host", what, h.device, None, h.start_us, end, cause,
                              max(0.0, h.start_us - prev.end_us)))  # fmt: skip
        return prev, prev.end_us

    def _host_prev(self, h: HostRecord) -> HostRecord | None:
        """The host call before ``h`` on its thread or, when that one ended earlier, the
        call of another thread whose end released it (a hand-off of an event recorded
        by another thread)."""
        prev = self.thread_prev.get(id(h))
        if not self.shared_host and (prev is None or prev.end_us < h.start_us - self.eps):
            mine = self.host_index[id(h)]
            for p in self.host_by_end.get(h.start_us, []):
                if p.device != h.device and self.host_index[id(p)] < mine:
                    return p
        return prev

    def _device_done(self, device: int, by: float) -> _Item | None:
        """The device's last command to finish before a synchronize returned at ``by``."""
        best = None
        for it in self.items:
            if it.device != device or it.end > by + self.eps:
                continue
            if best is None or (it.end, it.kind == "kernel") > (best.end, best.kind == "kernel"):
                best = it
        return best


def _threads_overlap(host: list[HostRecord]) -> bool:
    """Whether the host calls of different devices overlap: one thread per device."""
    last_end: dict[int, float] = {}
    for h in host:
        for d, e in last_end.items():
            if d != h.device and e > h.start_us + 1e-9:
                return True
        last_end[h.device] = max(last_end.get(h.device, 0.0), h.end_us)
    return False


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in intervals)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _stream_waits(w: _Walker, makespan: float) -> list[StreamWaits]:
    out = []
    for (d, s), lst in sorted(w.order.items()):
        sw = StreamWaits(d, s, len(lst))
        lat = w.latency.get(d, 0.0)
        prev_end = 0.0
        for it in lst:
            visible = min(it.issue + lat, it.start)
            if visible > prev_end:  # not yet issued (or not yet visible to the GPU)
                sw.host_us += visible - prev_end
            free = max(prev_end, visible)
            if it.kind == "wait":
                sw.event_us += max(0.0, it.end - free)
            elif it.kind == "kernel":
                sw.queue_us += max(0.0, it.release - free)
                sw.sm_us += max(0.0, it.start - max(free, it.release))
                sw.busy_us += it.end - it.start
            elif it.kind == "copy":
                sw.queue_us += max(0.0, it.start - free)
                sw.busy_us += it.end - it.start
            else:
                sw.queue_us += max(0.0, it.end - free)
            prev_end = max(prev_end, it.end)
        sw.after_us = max(0.0, makespan - prev_end)
        out.append(sw)
    return out


def explain(tl: Timeline, against: Timeline | None = None) -> Explanation:
    """The critical path, host against GPU time and per-stream waits of ``tl``; with
    ``against``, every op's kernel time in both (see :func:`op_deltas`)."""
    w = _Walker(tl)
    path = w.walk()
    gpu = _union([(it.start, it.end) for it in w.items if it.kind in ("kernel", "copy")])
    host = _union([(h.start_us, h.end_us) for h in tl.host if h.api != "synchronize"])
    idle = []
    t = 0.0
    for s, e in gpu:
        if s > t:
            idle.append((t, s))
        t = max(t, e)
    if tl.makespan_us > t:
        idle.append((t, tl.makespan_us))
    constants = {}
    for d in sorted(w.latency):
        constants[f"launch_latency_dev{d}"] = w.latency[d]
        constants[f"kernel_gap_dev{d}"] = w.kernel_gap[d]
        constants[f"event_latency_dev{d}"] = w.event_latency[d]
    ex = Explanation(
        makespan_us=tl.makespan_us,
        path=path,
        streams=_stream_waits(w, tl.makespan_us),
        gpu_busy_us=_length(gpu),
        host_busy_us=_length(host),
        gpu_idle_host_busy_us=_overlap(idle, host),
        constants=constants,
    )
    if against is not None:
        ex.ops = op_deltas(tl, against, {s.what.split(":")[0] for s in path if s.kind == "kernel"})
    return ex


def op_deltas(tl: Timeline, against: Timeline, on_path: set[str] | None = None) -> list[OpDelta]:
    """Per op, its kernel time (the sum of its kernels' durations: sharing SMs with a
    concurrent kernel makes it longer) and its end in both runs, ordered by the change,
    biggest loss first; ops only one schedule has (a rewritten graph) come last."""
    on_path = on_path or set()

    def per_op(t: Timeline) -> tuple[dict[str, float], dict[str, float]]:
        time: dict[str, float] = defaultdict(float)
        end: dict[str, float] = {}
        for k in t.kernels:
            time[k.op] += k.end_us - k.start_us
            end[k.op] = max(end.get(k.op, 0.0), k.end_us)
        return dict(time), end

    a, a_end = per_op(tl)
    b, b_end = per_op(against)
    rows = [
        OpDelta(op, a.get(op), b.get(op), a_end.get(op), b_end.get(op), op in on_path)
        for op in dict.fromkeys([*a, *b])
    ]
    rows.sort(key=lambda r: (r.delta_us is None, -(r.delta_us or 0.0), r.op))
    return rows


# --- text ------------------------------------------------------------------------------------


def format_text(ex: Explanation, title: str, against_name: str | None = None, top: int = 10) -> str:
    """The explanation as a few short tables (the JSON has every step and op)."""
    ms = ex.makespan_us / 1e3
    total = ex.makespan_us or 1.0

    def pct(v: float) -> str:
        return f"{100 * v / total:.0f}%"

    lines = [f"{title}: {ms:.3f} ms"]
    hb, gb = ex.host_bound_us(), ex.gpu_bound_us()
    split = ex.path_split()
    lines.append(
        f"critical path: {len(ex.path)} steps; host-bound {hb / 1e3:.3f} ms ({pct(hb)}), "
        f"GPU-bound {gb / 1e3:.3f} ms ({pct(gb)})"
    )
    waits = ", ".join(
        f"{k[5:-3].replace('_', ' ')} {v / 1e3:.3f}" for k, v in sorted(split.items())
        if k.startswith("wait_")
    )  # fmt: skip
    lines.append(
        f"  on it: kernels and copies {split.get('gpu_us', 0.0) / 1e3:.3f} ms, host calls "
        f"{split.get('host_us', 0.0) / 1e3:.3f} ms" + (f"; waits (ms): {waits}" if waits else "")
    )
    lines.append(
        f"whole run: GPU busy {ex.gpu_busy_us / 1e3:.3f} ms ({pct(ex.gpu_busy_us)}), host in "
        f"API calls {ex.host_busy_us / 1e3:.3f} ms ({pct(ex.host_busy_us)}); GPU idle while the "
        f"host issues {ex.gpu_idle_host_busy_us / 1e3:.3f} ms ({pct(ex.gpu_idle_host_busy_us)})"
    )
    lines.append("")
    lines.append(f"longest steps of the critical path (of {len(ex.path)}, in time order):")
    longest = sorted(ex.path, key=lambda s: -(s.end_us - s.start_us + s.wait_us))[:top]
    rows = []
    for s in sorted(longest, key=lambda s: s.start_us):
        where = "host" if s.stream is None else f"d{s.device}/s{s.stream}"
        rows.append([f"{s.start_us:.1f}", f"{s.end_us - s.start_us:.1f}", where, s.kind,
                     _short(s.what), s.cause, f"{s.wait_us:.1f}"])  # fmt: skip
    lines.append(_table(rows, ["start us", "us", "where", "kind", "what", "waited for",
                               "wait us"], right={0, 1, 6}))  # fmt: skip
    lines.append("")
    lines.append("per stream (us): running, and waiting between commands for each cause")
    shown = ex.streams
    if len(shown) > 2 * top:  # the streams that waited most; the JSON has every one
        shown = sorted(shown, key=lambda s: -(s.event_us + s.queue_us + s.sm_us))[: 2 * top]
        shown.sort(key=lambda s: (s.device, s.stream))
    rows = [
        [f"d{s.device}/s{s.stream}", str(s.commands), f"{s.busy_us:.1f}", f"{s.host_us:.1f}",
         f"{s.event_us:.1f}", f"{s.queue_us:.1f}", f"{s.sm_us:.1f}", f"{s.after_us:.1f}"]
        for s in shown
    ]  # fmt: skip
    lines.append(_table(rows, ["stream", "commands", "running", "host", "events", "queue",
                               "SM space", "after end"],
                        right=set(range(1, 8))))  # fmt: skip
    if len(shown) < len(ex.streams):
        lines.append(
            f"({len(shown)} of {len(ex.streams)} streams: those that waited most; --json has all)"
        )
    if ex.ops is not None and against_name is not None:
        both = [o for o in ex.ops if o.delta_us is not None]
        # a change under a hundredth of a microsecond is float noise, not a gain
        lost = [o for o in both if o.delta_us > 0.01][:top]
        gained = sorted((o for o in both if o.delta_us < -0.01), key=lambda o: o.delta_us)[:top]
        for label, group in (("lost most", lost), ("gained most", gained)):
            lines.append("")
            lines.append(f"ops that {label} against {against_name} (kernel time, us):")
            if not group:
                lines.append("  none")
                continue
            rows = [[_short(o.op), f"{o.time_us:.1f}", f"{o.against_us:.1f}",
                     f"{o.delta_us:+.1f}", "yes" if o.on_path else ""] for o in group]  # fmt: skip
            lines.append(_table(rows, ["op", "this", against_name, "change", "on path"],
                                right={1, 2, 3}))  # fmt: skip
        only = [o.op for o in ex.ops if o.delta_us is None]
        if only:
            lines.append(f"{len(only)} ops ran in only one of the two schedules")
    return "\n".join(lines)


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
