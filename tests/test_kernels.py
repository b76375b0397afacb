"""Occupancy by the CUDA rules, lowering of every op kind, and the per-block cost model.

The simulator's concurrency comes from blocks of different kernels sharing SMs, so the
occupancy figures must be exactly what the CUDA occupancy calculator gives, and every
op kind must lower to sane kernels.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from simgpu.errors import LoweringError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import KB, PRESETS, preset
from simgpu.kernels import (
    KernelCache,
    lower_graph,
    lower_op,
    occupancy,
    sequential_kernel_time_us,
    signature,
    standalone_time_us,
    waves,
)
from simgpu.ops import KINDS

V100 = preset("v100")
A100 = preset("a100")


# --- occupancy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "regs", "smem", "blocks", "limiter"),
    [
        (256, 32, 0, 8, "threads"),  # 2048 / 256
        # 128 regs x 32 lanes = 4096 per warp, x 8 warps = 32768 per block -> 65536 / 32768
        (256, 128, 0, 2, "registers"),
        (256, 32, 48 * KB, 2, "shared memory"),  # 96 KB / 48 KB
        (32, 16, 0, 32, "blocks"),  # one warp: only the 32 block slots limit
        (1024, 64, 0, 1, "registers"),  # 2048 regs/warp x 32 warps fills the file
        (128, 64, 0, 8, "registers"),  # 2048 regs/warp -> 32 warps / 4 per block
        (128, 32, 0, 16, "threads"),  # 64 warps / 4; registers allow 16 too (tie)
        (64, 255, 0, 4, "registers"),  # 255 regs -> 8192 per warp (granularity 256)
    ],
)
def test_occupancy_cuda_rules_on_v100(
    threads: int, regs: int, smem: int, blocks: int, limiter: str
) -> None:
    occ = occupancy(threads, regs, smem, V100)
    assert (occ.blocks, occ.limiter) == (blocks, limiter)
    assert occ.warps == -(-threads // 32)


def test_register_allocation_granularity() -> None:
    # 33 regs x 32 = 1056 -> rounded up to 1280 per warp
    occ = occupancy(32, 33, 0, V100)
    assert occ.regs_alloc == 1280
    occ = occupancy(256, 128, 0, V100)
    assert occ.regs_alloc == 8 * 4096


def test_shared_memory_granularity() -> None:
    assert occupancy(128, 32, 1, V100).smem_alloc == 256
    assert occupancy(128, 32, 257, V100).smem_alloc == 512


def test_a100_reserves_1kb_shared_memory_per_block() -> None:
    assert occupancy(256, 32, 0, A100).smem_alloc == 1 * KB
    assert occupancy(256, 32, 48 * KB, A100).smem_alloc == 49 * KB
    # 82 KB + 1 KB reserved: only one block fits in 164 KB, where two would without it
    assert occupancy(256, 32, 82 * KB, A100).blocks == 1
    assert occupancy(256, 32, 82 * KB, A100.replace(smem_reserved_per_block=0)).blocks == 2
    assert occupancy(256, 32, 82 * KB, V100).blocks == 1  # 96 KB holds one 82 KB block


@pytest.mark.parametrize(
    ("threads", "regs", "smem", "match"),
    [
        (1025, 32, 0, "1025 threads"),
        (0, 32, 0, "0 threads"),
        (256, 256, 0, "256 registers"),
        (256, 0, 0, "0 registers"),
        (256, 32, 96 * KB + 1, "shared memory"),
        (256, 32, -1, "shared memory"),
        (1024, 255, 0, "does not fit"),  # 32 warps x 8192 regs > 65536
    ],
)
def test_occupancy_limit_violations(threads: int, regs: int, smem: int, match: str) -> None:
    with pytest.raises(LoweringError, match=match):
        occupancy(threads, regs, smem, V100, what="op 'k'")


def test_occupancy_error_names_what() -> None:
    with pytest.raises(LoweringError, match="op 'conv7'"):
        occupancy(2048, 32, 0, V100, what="op 'conv7'")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_typical_blocks_fit_every_preset(name: str) -> None:
    g = PRESETS[name]
    occ = occupancy(256, 64, 16 * KB, g)
    assert 1 <= occ.blocks <= g.max_blocks_per_sm
    assert occ.blocks * occ.warps <= g.max_warps_per_sm


# --- lowering every kind ----------------------------------------------------------------

X4 = (2, 8, 6, 6)


def _x(shape: tuple[int, ...] = X4, name: str = "x", dtype: str = "fp32") -> Op:
    return Op(name, "input", (), shape, dtype)


TINY: dict[str, list[Op]] = {
    "input": [_x()],
    "conv": [
        _x(),
        Op(
            "t",
            "conv",
            ("x",),
            (2, 16, 6, 6),
            attrs={"kernel": 3, "padding": 1, "out_channels": 16},
        ),
    ],
    "conv_transpose": [
        _x(),
        Op(
            "t",
            "conv_transpose",
            ("x",),
            (2, 4, 13, 13),
            attrs={"kernel": 3, "stride": 2, "out_channels": 4, "groups": 2, "bias": True},
        ),
    ],
    "eltwise": [
        _x(),
        Op("t", "eltwise", ("x",), X4, attrs={"fn": "div", "cost": 4, "const_shape": (8, 1, 1)}),
    ],
    "linear": [_x((4, 32)), Op("t", "linear", ("x",), (4, 10), attrs={"out_features": 10})],
    "matmul": [_x((3, 4, 5)), _x((3, 5, 6), "y"), Op("t", "matmul", ("x", "y"), (3, 4, 6))],
    "pool": [
        _x(),
        Op("t", "pool", ("x",), (2, 8, 3, 3), attrs={"kernel": 3, "stride": 2, "padding": 1}),
    ],
    "global_pool": [_x(), Op("t", "global_pool", ("x",), (2, 8, 1, 1))],
    "concat": [_x(), _x((2, 4, 6, 6), "y"), Op("t", "concat", ("x", "y"), (2, 12, 6, 6))],
    "slice": [_x(), Op("t", "slice", ("x",), (2, 3, 6, 6), attrs={"begin": 1, "end": 4})],
    "add": [_x(), _x(name="y"), Op("t", "add", ("x", "y"), X4)],
    "mul": [_x(), _x((1, 8, 1, 1), "y"), Op("t", "mul", ("x", "y"), X4)],
    "batchnorm": [_x(), Op("t", "batchnorm", ("x",), X4)],
    "layernorm": [_x((4, 64)), Op("t", "layernorm", ("x",), (4, 64))],
    "softmax": [_x((4, 1000)), Op("t", "softmax", ("x",), (4, 1000))],
    "transpose": [_x(), Op("t", "transpose", ("x",), (2, 6, 6, 8), attrs={"perm": [0, 2, 3, 1]})],
    "reshape": [_x(), Op("t", "reshape", ("x",), (2, 288))],
    "flatten": [_x(), Op("t", "flatten", ("x",), (2, 288))],
    "embedding": [
        _x((2, 7)),
        Op("t", "embedding", ("x",), (2, 7, 16), attrs={"num_embeddings": 50, "embedding_dim": 16}),
    ],
}
for _kind in ("relu", "sigmoid", "tanh", "gelu", "silu", "clip", "identity"):
    TINY[_kind] = [_x(), Op("t", _kind, ("x",), X4)]


def _tiny(kind: str) -> tuple[OpGraph, str]:
    ops = TINY.get(kind)
    if ops is None:
        # a kind added after these tests: try it as a shape-preserving unary op
        lo, hi = KINDS[kind].arity
        if not lo <= 1 <= (hi if hi is not None else 1):
            pytest.fail(f"add a tiny graph for op kind '{kind}' to TINY")
        ops = [_x(), Op("t", kind, ("x",), X4)]
    name = "t" if kind != "input" else "x"
    return OpGraph(ops, name=f"tiny-{kind}"), name


LIBRARY_KINDS = {"conv", "conv_transpose", "linear", "matmul"}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("gpu", ["v100", "a100", "k80", "t4"])
def test_every_kind_lowers(kind: str, gpu: str) -> None:
    g, name = _tiny(kind)
    spec = preset(gpu)
    ks = lower_op(g, name, spec)
    if KINDS[kind].view:
        assert ks == []
        return
    assert ks, f"{kind} lowered to no kernel"
    for k in ks:
        assert k.op == name
        assert k.grid >= 1
        assert 1 <= k.threads <= spec.max_threads_per_block
        assert k.work_us >= 0 and math.isfinite(k.work_us)
        # library kernels pay their fitted main-loop latencies, the rest the GPU's setup
        assert k.setup_us == spec.block_setup_us or kind in LIBRARY_KINDS
        assert k.setup_us >= 0
        assert k.block_flops >= 0 and k.block_bytes >= 0
        assert k.occupancy.blocks >= 1
        assert waves(k.grid, k.occupancy, spec) >= 1
        assert not k.measured
        assert standalone_time_us(k, spec) > 0


# An SM with 128 threads and 16K registers: the largest GEMM tile (256 threads of 128
# registers), the 256-thread depthwise kernel and wide row reductions do not fit as such.
SMALL_SM = A100.replace(
    sm_count=1, max_threads_per_sm=128, max_threads_per_block=256, regs_per_sm=16384,
    smem_per_sm=16 * KB, max_smem_per_block=256, max_blocks_per_sm=1,
)  # fmt: skip


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_lowers_to_what_a_small_sm_can_run(kind: str) -> None:
    """Kernels are launched with a configuration the device can run: a smaller tile or
    fewer threads per block, never a block that does not fit (found by a property test
    on a random GPU, where lowering used to fail)."""
    g, name = _tiny(kind)
    for k in lower_op(g, name, SMALL_SM):
        assert k.threads <= SMALL_SM.max_threads_per_sm and k.occupancy.blocks >= 1
        assert standalone_time_us(k, SMALL_SM) > 0


def test_no_gemm_tile_fits_is_a_clear_error() -> None:
    tiny = SMALL_SM.replace(regs_per_sm=4096)
    g, name = _tiny("conv")
    with pytest.raises(LoweringError, match=r"no library kernel \(GEMM tile\) fits on an SM"):
        lower_op(g, name, tiny)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_every_kind_lowers_in_every_dtype(dtype: str) -> None:
    for kind in sorted(TINY):
        ops = [Op(o.name, o.kind, o.inputs, o.output_shape, dtype, o.attrs) for o in TINY[kind]]
        g = OpGraph(ops)
        for name in g.ops:
            for k in lower_op(g, name, V100):
                t = standalone_time_us(k, V100)
                assert t > 0 and math.isfinite(t), (kind, dtype)


CONVS = [
    # (input shape, out channels, attrs)
    ((1, 3, 299, 299), 32, {"kernel": 3, "stride": 2}),
    ((1, 64, 35, 35), 96, {"kernel": 3, "padding": 1, "activation": "relu", "bias": True}),
    ((8, 256, 14, 14), 256, {"kernel": 1}),
    ((1, 768, 17, 17), 192, {"kernel": (1, 7), "padding": (0, 3)}),
    ((2, 32, 28, 28), 32, {"kernel": 3, "padding": 1, "groups": 32}),  # depthwise
    ((2, 32, 28, 28), 64, {"kernel": 3, "padding": 1, "groups": 4}),  # grouped
    ((1, 2048, 8, 8), 384, {"kernel": 3, "padding": 1, "dilation": 1}),
]


def _conv(
    shape: tuple[int, ...], cout: int, attrs: dict, dtype: str = "fp32"
) -> tuple[OpGraph, str]:
    n, _, h, w = shape
    kh, kw = (attrs["kernel"],) * 2 if isinstance(attrs["kernel"], int) else attrs["kernel"]
    s = attrs.get("stride", 1)
    ph, pw = (
        (attrs.get("padding", 0),) * 2
        if isinstance(attrs.get("padding", 0), int)
        else attrs["padding"]
    )
    ho, wo = (h + 2 * ph - kh) // s + 1, (w + 2 * pw - kw) // s + 1
    g = OpGraph(
        [
            Op("x", "input", (), shape, dtype),
            Op("c", "conv", ("x",), (n, cout, ho, wo), dtype, {**attrs, "out_channels": cout}),
        ]
    )
    return g, "c"


@pytest.mark.parametrize(("shape", "cout", "attrs"), CONVS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_conv_kernels_cover_the_op_work(shape, cout, attrs, dtype) -> None:
    g, name = _conv(shape, cout, attrs, dtype)
    st = g.stats(name)
    for gpu in (V100, A100, preset("k80")):
        ks = lower_op(g, name, gpu)
        total = sum(k.block_flops * k.grid for k in ks)
        if not any(k.name.startswith("winograd") for k in ks):
            # tiles pad the work, never drop any (Winograd does fewer multiplications)
            assert total >= st.flops * (1 - 1e-9), gpu.name
        moved = sum(k.block_bytes * k.grid for k in ks)
        # every byte is moved at least once; split-K and transforms move more
        assert moved >= (st.bytes_read + st.bytes_written) * (1 - 1e-9)


def test_a_wide_3x3_conv_runs_as_winograd_and_a_gemv_splits_k() -> None:
    g, name = _conv((8, 256, 28, 28), 256, {"kernel": 3, "padding": 1})
    assert lower_op(g, name, V100)[0].name.startswith("winograd4x4")
    # the classifier of a batch-1 CNN: a skinny tile, K split to fill the GPU, then the
    # partial sums reduced; memory-bound, near its 8.2 MB of weights at DRAM speed
    g = OpGraph([Op("x", "input", (), (1, 2048)),
                 Op("fc", "linear", ("x",), (1, 1000), attrs={"in_features": 2048,
                                                               "out_features": 1000})])  # fmt: skip
    ks = lower_op(g, "fc", V100)
    assert "splitk" in ks[0].name and ks[0].name.split("_")[2] == "16x128"
    assert ks[-1].name == "splitk_reduce"
    dram = 2048 * 1000 * 4 / (V100.dram_gbps * 1e3 * V100.dram_efficiency)
    assert dram < sum(standalone_time_us(k, V100) for k in ks) < 3 * dram


@pytest.mark.parametrize("kind", ["linear", "matmul"])
def test_gemm_kernels_cover_the_op_work(kind: str) -> None:
    g, name = _tiny(kind)
    for gpu in (V100, A100):
        ks = lower_op(g, name, gpu)
        assert sum(k.block_flops * k.grid for k in ks) >= g.stats(name).flops


def _time(g: OpGraph, gpu=V100) -> float:
    return sum(standalone_time_us(k, gpu) for ks in lower_graph(g, gpu).values() for k in ks)


def test_bigger_conv_takes_longer() -> None:
    small, _ = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    wider, _ = _conv((1, 64, 28, 28), 256, {"kernel": 3, "padding": 1})
    taller, _ = _conv((1, 64, 112, 112), 64, {"kernel": 3, "padding": 1})
    batched, _ = _conv((16, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    for big in (wider, taller, batched):
        assert _time(big) > _time(small)


def test_fp16_conv_on_v100_is_faster_than_fp32() -> None:
    attrs = {"kernel": 3, "padding": 1}
    fp32, name = _conv((8, 256, 28, 28), 256, attrs, "fp32")
    fp16, _ = _conv((8, 256, 28, 28), 256, attrs, "fp16")
    k32 = lower_op(fp32, name, V100)
    k16 = lower_op(fp16, name, V100)
    assert any(k.name.startswith("tensor") for k in k16)
    assert not any(k.name.startswith("tensor") for k in k32)
    assert _time(fp16) < _time(fp32)


def test_no_tensor_cores_on_k80() -> None:
    g, name = _conv((8, 256, 28, 28), 256, {"kernel": 3, "padding": 1}, "fp16")
    assert not any(k.name.startswith("tensor") for k in lower_op(g, name, preset("k80")))


def test_faster_gpu_is_faster_on_a_big_conv() -> None:
    g, _ = _conv((8, 256, 28, 28), 256, {"kernel": 3, "padding": 1})
    assert _time(g, A100) < _time(g, V100) < _time(g, preset("k80"))


def test_views_lower_to_nothing() -> None:
    for kind in ("reshape", "flatten", "identity", "input"):
        g, name = _tiny(kind)
        assert lower_op(g, name, V100) == []


def test_kernel_cache_renames_shared_kernels() -> None:
    g = OpGraph(
        [
            _x(),
            Op("r1", "relu", ("x",), X4),
            Op("r2", "relu", ("x",), X4),
            Op("s", "add", ("r1", "r2"), X4),
        ]
    )
    cache = KernelCache(V100)
    k1 = cache.lower(g, "r1")
    k2 = cache.lower(g, "r2")
    assert [k.op for k in k1] == ["r1"] and [k.op for k in k2] == ["r2"]
    assert [(k.name, k.grid, k.work_us) for k in k1] == [(k.name, k.grid, k.work_us) for k in k2]
    assert signature(g, "r1") == signature(g, "r2") != signature(g, "s")
    assert all(k.op == n for n, ks in lower_graph(g, V100).items() for k in ks)


def test_sequential_kernel_time_is_the_sum_of_standalone_times() -> None:
    g, _ = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    assert sequential_kernel_time_us(g, V100) == pytest.approx(_time(g))
    assert sequential_kernel_time_us(g, V100) > 0


# --- measured kernel table --------------------------------------------------------------


def test_measured_table_overrides_the_analytic_estimate() -> None:
    g, name = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    entry = {"name": "m", "grid": 160, "threads": 256, "regs": 32, "smem": 0, "duration_us": 50.0}
    gpu = V100.replace(kernel_table={signature(g, name): [entry]})
    ks = lower_op(g, name, gpu)
    assert len(ks) == 1
    k = ks[0]
    assert (k.name, k.grid, k.threads, k.regs, k.smem, k.measured) == ("m", 160, 256, 32, 0, True)
    assert k.occupancy.blocks == 8  # 160 blocks fit one wave of 80 SMs x 8
    assert standalone_time_us(k, gpu) == pytest.approx(50.0)
    assert analytic_differs(g, name, 50.0)
    # the input op is untouched by the table
    assert lower_op(g, "x", gpu) == []


def analytic_differs(g: OpGraph, name: str, measured: float) -> bool:
    return not math.isclose(
        sum(standalone_time_us(k, V100) for k in lower_op(g, name, V100)), measured
    )


def test_measured_table_multi_wave_and_multi_kernel() -> None:
    g, name = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    entries = [
        {"grid": 1600, "threads": 256, "duration_us": 30.0},  # 640 per wave -> 3 waves
        {"name": "epilogue", "grid": 10, "threads": 128, "duration_us": 5.0},
    ]
    gpu = V100.replace(kernel_table={signature(g, name): entries})
    ks = lower_op(g, name, gpu)
    assert [k.name for k in ks] == ["measured", "epilogue"]
    assert standalone_time_us(ks[0], gpu) == pytest.approx(30.0)
    assert standalone_time_us(ks[1], gpu) == pytest.approx(5.0)
    assert sum(k.block_flops * k.grid for k in ks) == pytest.approx(g.stats(name).flops)


def test_measured_table_for_other_signature_is_ignored() -> None:
    g, name = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    entry = {"grid": 4, "threads": 128, "duration_us": 1.0}
    gpu = V100.replace(kernel_table={"something else": [entry]})
    assert not any(k.measured for k in lower_op(g, name, gpu))


@pytest.mark.parametrize(
    "entry",
    [
        {"threads": 256, "duration_us": 5.0},  # no grid
        {"grid": 10, "duration_us": 5.0},  # no threads
        {"grid": 10, "threads": 256},  # no duration
        {"grid": "many", "threads": 256, "duration_us": 5.0},
        {"grid": 0, "threads": 256, "duration_us": 5.0},
        {"grid": 10, "threads": 256, "duration_us": 0},
        {"grid": 10, "threads": 256, "duration_us": -3},
        {"grid": 10, "threads": 2048, "duration_us": 5.0},  # exceeds block limit
        {"grid": 10, "threads": 256, "smem": 1 << 20, "duration_us": 5.0},
        "not an object",
        7,
    ],
)
def test_malformed_table_entry_is_lowering_error(entry: object) -> None:
    g, name = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    gpu = V100.replace(kernel_table={signature(g, name): [entry]})
    with pytest.raises(LoweringError, match="op 'c'"):
        lower_op(g, name, gpu)


def test_table_value_not_a_list_is_lowering_error() -> None:
    g, name = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    gpu = V100.replace(kernel_table={signature(g, name): 5})
    with pytest.raises(LoweringError, match="op 'c'"):
        lower_op(g, name, gpu)


@pytest.mark.parametrize("duration", [float("nan"), float("inf")])
def test_non_finite_duration_is_lowering_error(duration: float) -> None:
    g, name = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    entry = {"grid": 10, "threads": 256, "duration_us": duration}
    gpu = V100.replace(kernel_table={signature(g, name): [entry]})
    with pytest.raises(LoweringError, match="op 'c'"):
        lower_op(g, name, gpu)


def test_signature_ignores_replaces_attr_and_depends_on_shapes() -> None:
    g1, _ = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    g2, _ = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1, "replaces": ["a", "b"]})
    g3, _ = _conv((2, 64, 28, 28), 64, {"kernel": 3, "padding": 1})
    g4, _ = _conv((1, 64, 28, 28), 64, {"kernel": 3, "padding": 1}, "fp16")
    assert signature(g1, "c") == signature(g2, "c")
    assert signature(g1, "c") != signature(g3, "c")
    assert signature(g1, "c") != signature(g4, "c")


def test_the_simulator_memo_is_per_gpu_and_not_pickled() -> None:
    """The engine memoises a kernel's constants on it; they follow the GPU it runs on,
    never change its value, and stay behind when the kernel is pickled (a sweep)."""
    import pickle

    from simgpu.program import Launch, StreamProgram
    from simgpu.sim.engine import simulate

    g, name = _conv((1, 64, 28, 28), 64, {"kernel": 1})
    k = lower_op(g, name, V100)[0]
    fresh = dataclasses.replace(k)
    prog = StreamProgram([Launch(name, k, 0)])
    on_v100 = simulate(prog, V100).makespan_us
    slow = V100.replace(warps_to_saturate=64)  # its blocks use less of an SM
    on_slow = simulate(prog, slow).makespan_us
    assert on_slow > on_v100
    assert simulate(prog, V100).makespan_us == on_v100  # the memo follows the GPU
    assert k.sim is not None and k == fresh and fresh.sim is None
    back = pickle.loads(pickle.dumps(k))
    assert back == k and back.sim is None
