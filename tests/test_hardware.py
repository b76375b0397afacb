"""GPU presets, aliases, JSON overrides and the validation of GPU specs.

Every result the simulator reports is only as good as these datasheet figures, and a
calibration or override file with a typo must fail loudly, naming the file.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
from pathlib import Path

import pytest

import simgpu.hardware
from schedulers.base import run_scheduler
from simgpu.costs import library_costs
from simgpu.errors import FormatError, SpecError
from simgpu.hardware import ALIASES, KB, PRESETS, GPUSpec, Machine, gpu_from_json, load_gpu, preset
from simgpu.kernels import lower_graph
from simgpu.models import build_model

DATASHEET = {
    # name: (SMs, DRAM GB/s)
    "v100-sxm2": (80, 900),
    "a100-sxm4-40gb": (108, 1555),
    "a100-sxm4-80gb": (108, 2039),
    "h100-sxm": (132, 3350),
    "h200-sxm": (132, 4800),
    "t4": (40, 320),
    "rtx3080": (68, 760),
    "k80": (13, 240),
    "p100-sxm2": (56, 732),
    "p100-pcie-16gb": (56, 732),
    "gtx1060-6gb": (10, 192),
    "gtx1080ti": (28, 484),
    "titanxp": (30, 547.7),
    "rtx2080": (46, 448),
    "rtx2080super": (48, 496),
    "rtx2080ti": (68, 616),
    "rtx3090": (82, 936),
    "rtx4090": (128, 1008),
    "a10": (72, 600),
    "a30": (56, 933),
    "a40": (84, 696),
    "l4": (58, 300),
    "l40s": (142, 864),
    "a100-pcie-40gb": (108, 1555),
    "h100-pcie": (114, 2000),
}

# Per-SM limits by compute capability, from the CUDA C++ Programming Guide's table of
# technical specifications (written out here again, not imported, so a typo in either
# copy fails): threads, blocks, registers, shared memory per SM and per block (opt-in
# maximum), shared memory CUDA reserves per block.
CUDA_OCCUPANCY = {
    "3.7": (2048, 16, 128 * 1024, 112 * KB, 48 * KB, 0),
    "6.0": (2048, 32, 64 * 1024, 64 * KB, 48 * KB, 0),
    "6.1": (2048, 32, 64 * 1024, 96 * KB, 48 * KB, 0),
    "7.0": (2048, 32, 64 * 1024, 96 * KB, 96 * KB, 0),
    "7.5": (1024, 16, 64 * 1024, 64 * KB, 64 * KB, 0),
    "8.0": (2048, 32, 64 * 1024, 164 * KB, 163 * KB, KB),
    "8.6": (1536, 16, 64 * 1024, 100 * KB, 99 * KB, KB),
    "8.9": (1536, 24, 64 * 1024, 100 * KB, 99 * KB, KB),
    "9.0": (2048, 32, 64 * 1024, 228 * KB, 227 * KB, KB),
}
# FP32 lanes per SM (architecture whitepapers): peak fp32 = SMs x lanes x 2 x boost clock
FP32_LANES = {"3.7": 192, "6.0": 64, "6.1": 128, "7.0": 64, "7.5": 64, "8.0": 64,
              "8.6": 128, "8.9": 128, "9.0": 128}  # fmt: skip
# Dense FP16 tensor FLOP per SM per clock with full-rate accumulate (whitepapers): a
# sparse figure is twice this, and GeForce parts' FP32-accumulate rate half of it
DENSE_FP16_TENSOR_PER_SM_CLOCK = {"7.0": 1024, "7.5": 1024, "8.0": 2048, "8.6": 1024,
                                  "8.9": 1024, "9.0": 4096}  # fmt: skip
GEFORCE = ("gtx", "rtx", "titan")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_constructs_and_is_self_consistent(name: str) -> None:
    g = PRESETS[name]
    assert g.name == name
    assert isinstance(g, GPUSpec)
    assert g.peak_tflops["fp32"] > 0
    assert g.max_smem_per_block <= g.smem_per_sm
    assert 1 <= g.hw_queues <= 32
    assert g.max_warps_per_sm * g.warp_size == g.max_threads_per_sm
    # rebuilding from its own fields passes validation
    assert GPUSpec(**g.to_json()) == g


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_consistent_limits_and_rates(name: str) -> None:
    g = PRESETS[name]
    for f in ("sm_count", "clock_mhz", "max_threads_per_sm", "max_blocks_per_sm",
              "regs_per_sm", "smem_per_sm", "max_smem_per_block", "max_threads_per_block",
              "dram_gbps", "memory_gb", "l2_mb", "copy_engines"):  # fmt: skip
        assert getattr(g, f) > 0, f
    assert g.max_smem_per_block <= g.smem_per_sm
    assert g.max_threads_per_block <= g.max_threads_per_sm
    assert g.max_threads_per_sm % g.warp_size == 0
    assert g.regs_per_sm >= g.max_threads_per_block * 32  # a full block at 32 regs fits
    assert all(v > 0 for v in g.peak_tflops.values())
    known = {"fp64", "fp32", "fp16", "bf16", "tf32_tensor", "fp16_tensor", "bf16_tensor",
             "int8_tensor"}  # fmt: skip
    assert set(g.peak_tflops) <= known
    cc = tuple(int(x) for x in g.compute_capability.split("."))
    rates = g.peak_tflops
    if cc >= (6, 0):
        assert "fp16" in rates, "every GPU since Pascal computes FP16"
    if cc == (6, 1):
        assert rates["fp16"] < rates["fp32"] / 32, "sm_61 runs FP16 at 1/64 rate"
    if cc == (6, 0) or cc[0] == 7:
        assert rates["fp16"] == pytest.approx(2 * rates["fp32"], rel=0.02)
    assert ("fp16_tensor" in rates) == (cc >= (7, 0)), "tensor cores from Volta on"
    if cc >= (8, 0):
        assert {"tf32_tensor", "bf16_tensor"} <= set(rates), "Ampere adds TF32 and BF16"
    else:
        assert not {"tf32_tensor", "bf16_tensor", "bf16"} & set(rates)
    if "int8_tensor" in rates:
        assert cc >= (7, 2)
    for key in ("tf32_tensor", "fp16_tensor", "bf16_tensor", "int8_tensor"):
        if key in rates:
            assert rates[key] >= rates["fp32"], key
    if "int8_tensor" in rates:
        assert rates["int8_tensor"] >= rates["fp16_tensor"]
    if "fp64" in rates:
        assert rates["fp64"] <= rates["fp32"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_per_sm_limits_follow_the_cuda_occupancy_table(name: str) -> None:
    g = PRESETS[name]
    assert g.compute_capability in CUDA_OCCUPANCY, g.compute_capability
    got = (g.max_threads_per_sm, g.max_blocks_per_sm, g.regs_per_sm, g.smem_per_sm,
           g.max_smem_per_block, g.smem_reserved_per_block)  # fmt: skip
    assert got == CUDA_OCCUPANCY[g.compute_capability]
    assert (g.max_threads_per_block, g.max_regs_per_thread, g.warp_size) == (1024, 255, 32)
    # the table in hardware.py that the newer presets take their limits from agrees too
    table = simgpu.hardware._SM_LIMITS[g.compute_capability]
    assert tuple(table.values()) == CUDA_OCCUPANCY[g.compute_capability]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_peak_rates_agree_with_sms_and_clock(name: str) -> None:
    """Catches a typo in a datasheet figure, and a sparse tensor rate taken for dense."""
    g = PRESETS[name]
    sm_ghz = g.sm_count * g.clock_mhz * 1e-3
    fp32 = sm_ghz * FP32_LANES[g.compute_capability] * 2 / 1e3
    assert g.peak_tflops["fp32"] == pytest.approx(fp32, rel=0.02)
    if "fp16_tensor" in g.peak_tflops:
        dense = sm_ghz * DENSE_FP16_TENSOR_PER_SM_CLOCK[g.compute_capability] / 1e3
        fp16 = g.peak_tflops["fp16_tensor"]
        # NVIDIA quotes Hopper's tensor rates at a clock below the boost clock
        assert fp16 <= dense * 1.01
        if name.startswith(GEFORCE):  # FP32 accumulate: half rate on GeForce
            assert fp16 == pytest.approx(dense / 2, rel=0.02)
        elif not g.compute_capability.startswith("9."):
            assert fp16 == pytest.approx(dense, rel=0.02)
        else:
            assert fp16 >= dense * 0.9


@pytest.mark.parametrize(("name", "figures"), sorted(DATASHEET.items()))
def test_required_presets_match_datasheets(name: str, figures: tuple[int, float]) -> None:
    sms, gbps = figures
    g = preset(name)
    assert g.sm_count == sms
    assert g.dram_gbps == gbps
    assert g.dram_bytes_per_us == gbps * 1e3


def test_ampere_and_later_reserve_shared_memory_per_block() -> None:
    for name in ("a100-sxm4-40gb", "a100-sxm4-80gb", "h100-sxm", "h200-sxm", "rtx3080"):
        assert preset(name).smem_reserved_per_block == 1 * KB, name
    for name in ("v100-sxm2", "t4", "k80"):
        assert preset(name).smem_reserved_per_block == 0, name
    for g in PRESETS.values():
        sm80 = tuple(map(int, g.compute_capability.split("."))) >= (8, 0)
        assert g.smem_reserved_per_block == (1 * KB if sm80 else 0), g.name


def test_all_datasheet_presets_exist() -> None:
    assert set(DATASHEET) == set(PRESETS)


def test_variants_share_their_silicon() -> None:
    a, b = preset("a100-sxm4-40gb"), preset("a100-pcie-40gb")
    assert a.replace(name=b.name) == b
    p, q = preset("p100-sxm2"), preset("p100-pcie-16gb")
    assert (p.sm_count, p.dram_gbps) == (q.sm_count, q.dram_gbps)
    assert q.peak_tflops["fp32"] < p.peak_tflops["fp32"]  # lower PCIe boost clock


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("v100", "v100-sxm2"),
        ("a100", "a100-sxm4-40gb"),
        ("a100-40gb", "a100-sxm4-40gb"),
        ("a100-80gb", "a100-sxm4-80gb"),
        ("h100", "h100-sxm"),
        ("h200", "h200-sxm"),
        ("rtx-3080", "rtx3080"),
        ("3080", "rtx3080"),
        ("V100", "v100-sxm2"),
        ("  H100-SXM ", "h100-sxm"),
        ("p100", "p100-sxm2"),
        ("p100-pcie", "p100-pcie-16gb"),
        ("1060", "gtx1060-6gb"),
        ("gtx1060", "gtx1060-6gb"),
        ("1080ti", "gtx1080ti"),
        ("titanxp", "titanxp"),
        ("Titan-Xp", "titanxp"),
        ("2080", "rtx2080"),
        ("2080s", "rtx2080super"),
        ("2080super", "rtx2080super"),
        ("2080ti", "rtx2080ti"),
        ("RTX-2080Ti", "rtx2080ti"),
        ("3090", "rtx3090"),
        ("4090", "rtx4090"),
        ("a10", "a10"),
        ("a30", "a30"),
        ("a40", "a40"),
        ("l4", "l4"),
        ("L40S", "l40s"),
        ("a100-pcie", "a100-pcie-40gb"),
        ("h100-pcie", "h100-pcie"),
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert preset(alias) is PRESETS[name]
    assert load_gpu(alias) is PRESETS[name]


def test_every_alias_points_at_a_preset() -> None:
    assert set(ALIASES.values()) <= set(PRESETS)
    for alias, name in ALIASES.items():
        assert preset(alias) is PRESETS[name]


def test_aliases_are_unique_and_shadow_no_preset() -> None:
    # a dict literal keeps the last of two equal keys silently: read the source
    tree = ast.parse(inspect.getsource(simgpu.hardware))
    (literal,) = (
        node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "ALIASES"
    )
    assert isinstance(literal, ast.Dict)
    keys = [ast.literal_eval(k) for k in literal.keys if k is not None]
    assert len(keys) == len(set(keys)) == len(ALIASES)
    # preset() looks aliases up first: one named like a preset would hide it
    assert not set(ALIASES) & set(PRESETS)
    # preset() strips and lower-cases what it is given: anything else never matches
    for key in [*ALIASES, *PRESETS]:
        assert key == key.strip().lower() and " " not in key, key


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown GPU 'nosuch-gpu'.*v100-sxm2"):
        preset("nosuch-gpu")


# --- JSON files -----------------------------------------------------------------------


def _write(tmp_path: Path, data: object, name: str = "gpu.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_load_gpu_override_file(tmp_path: Path) -> None:
    p = _write(tmp_path, {"base": "v100", "hw_queues": 1}, "oneq.json")
    g = load_gpu(p)
    assert g.hw_queues == 1
    assert g.name == "v100-sxm2+oneq"
    v = preset("v100")
    assert g == v.replace(hw_queues=1, name="v100-sxm2+oneq")
    assert g.sm_count == 80 and g.peak_tflops == v.peak_tflops


def test_override_file_may_name_the_gpu(tmp_path: Path) -> None:
    g = load_gpu(_write(tmp_path, {"base": "a100", "name": "my-a100", "launch_api_us": 3.5}))
    assert (g.name, g.launch_api_us, g.sm_count) == ("my-a100", 3.5, 108)


def test_calibration_file_form_is_accepted(tmp_path: Path) -> None:
    g = load_gpu(_write(tmp_path, {"gpu": {"base": "t4", "kernel_gap_us": 0.0}, "fit": {}}))
    assert g.kernel_gap_us == 0.0
    assert g.sm_count == 40


def test_full_definition_file(tmp_path: Path) -> None:
    data = preset("t4").to_json()
    data["name"] = "custom-t4"
    g = load_gpu(_write(tmp_path, data))
    assert g == preset("t4").replace(name="custom-t4")


def test_minimal_full_definition_uses_defaults(tmp_path: Path) -> None:
    data = {
        "name": "tiny",
        "sm_count": 2,
        "clock_mhz": 1000,
        "compute_capability": "7.0",
        "max_threads_per_sm": 1024,
        "max_blocks_per_sm": 16,
        "regs_per_sm": 65536,
        "smem_per_sm": 64 * KB,
        "max_smem_per_block": 48 * KB,
        "peak_tflops": {"fp32": 1.0},
    }
    g = load_gpu(_write(tmp_path, data))
    assert g.name == "tiny" and g.sm_count == 2
    assert g.hw_queues == GPUSpec.__dataclass_fields__["hw_queues"].default


@pytest.mark.parametrize(
    ("data", "want"),
    [
        ({"base": "v100", "bogus": 1}, "unknown field"),
        ({"base": "v100", "sm_count": 0}, "sm_count must be positive"),
        ({"base": "v100", "dram_gbps": -900}, "dram_gbps must be positive"),
        ({"base": "v100", "clock_mhz": "fast"}, "clock_mhz must be a number"),
        ({"base": "v100", "hw_queues": 33}, "hw_queues must be 1..32"),
        ({"base": "v100", "hw_queues": 0}, "hw_queues"),
        ({"base": "v100", "hw_queues": True}, "hw_queues must be a number"),
        ({"base": "v100", "peak_tflops": {"fp32": 0}}, "peak_tflops"),
        ({"base": "v100", "peak_tflops": {"fp16": 10}}, "must include fp32"),
        ({"base": "v100", "peak_tflops": {}}, "peak_tflops"),
        ({"base": "v100", "kernel_table": [1, 2]}, "kernel_table must be an object"),
        ({"base": "v100", "max_smem_per_block": 200 * KB}, "max_smem_per_block exceeds"),
        ({"base": "nosuch-gpu"}, "unknown GPU 'nosuch-gpu'"),
        ({"name": "x", "sm_count": 8}, "lacks"),
        ([1, 2, 3], "must be a JSON object"),
        ("v100", "must be a JSON object"),
        (None, "must be a JSON object"),
    ],
    ids=[
        "unknown-field",
        "zero-sms",
        "negative-bandwidth",
        "string-number",
        "hw-queues-33",
        "hw-queues-0",
        "bool",
        "zero-rate",
        "no-fp32",
        "no-rates",
        "kernel-table-list",
        "smem-block-too-big",
        "unknown-base",
        "missing-fields",
        "list",
        "string",
        "null",
    ],
)
def test_bad_gpu_file_is_spec_error_naming_the_file(
    tmp_path: Path, data: object, want: str
) -> None:
    p = _write(tmp_path, data, "mygpu.json")
    with pytest.raises(SpecError, match=r"mygpu\.json") as ei:
        load_gpu(p)
    assert want in str(ei.value)
    assert "\n" not in str(ei.value)


def test_missing_fields_are_listed(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"lacks .*clock_mhz.*compute_capability"):
        load_gpu(_write(tmp_path, {"name": "x", "sm_count": 8}))


def test_invalid_json_gpu_file_is_format_error(tmp_path: Path) -> None:
    p = tmp_path / "broken.json"
    p.write_text('{"base": "v100",')
    with pytest.raises(FormatError, match=r"broken\.json: invalid JSON at line 1"):
        load_gpu(p)


def test_missing_gpu_file_is_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file"):
        load_gpu(tmp_path / "absent.json")


def test_replace_rejects_unknown_fields() -> None:
    with pytest.raises(SpecError, match="unknown field"):
        preset("v100").replace(warp_drive=1)


@pytest.mark.parametrize("rates", ["fast", [[1]]], ids=["string", "list"])
def test_non_mapping_peak_tflops_is_spec_error(tmp_path: Path, rates: object) -> None:
    with pytest.raises(SpecError, match=r"gpu\.json"):
        load_gpu(_write(tmp_path, {"base": "v100", "peak_tflops": rates}))


@pytest.mark.parametrize("rate", ["NaN", "Infinity"])
def test_non_finite_peak_tflops_is_refused(tmp_path: Path, rate: str) -> None:
    """NaN and Infinity are not JSON: the reader refuses them before any field sees them."""
    p = tmp_path / "gpu.json"
    p.write_text('{"base": "v100", "peak_tflops": {"fp32": ' + rate + "}}")
    with pytest.raises(FormatError, match=f"{rate} is not a JSON number"):
        load_gpu(p)


@pytest.mark.parametrize("field", ["sm_count", "hw_queues", "max_blocks_per_sm", "warp_size"])
def test_integer_fields_reject_fractions(tmp_path: Path, field: str) -> None:
    with pytest.raises(SpecError, match=field):
        load_gpu(_write(tmp_path, {"base": "v100", field: 4.5}))


# --- derived figures ------------------------------------------------------------------


def test_peak_flops_picks_tensor_rates_where_present() -> None:
    v = preset("v100")
    assert v.peak_flops("fp16", tensor=True) == pytest.approx(125.0e12)
    assert v.peak_flops("fp16", tensor=False) == pytest.approx(31.4e12)
    # V100 has no TF32: fp32 "on tensor cores" stays on CUDA cores
    assert v.peak_flops("fp32", tensor=True) == pytest.approx(15.7e12)
    a = preset("a100")
    assert a.peak_flops("fp32", tensor=True) == pytest.approx(156.0e12)
    assert a.peak_flops("bf16", tensor=True) == pytest.approx(312.0e12)
    assert a.peak_flops("int8", tensor=True) == pytest.approx(624.0e12)
    assert a.peak_flops("fp32", tensor=False) == pytest.approx(19.5e12)


def test_peak_flops_falls_back_to_fp32_on_k80() -> None:
    k = preset("k80")
    fp32 = 4.37e12
    assert k.peak_flops("fp16", tensor=True) == pytest.approx(fp32)
    assert k.peak_flops("fp16", tensor=False) == pytest.approx(fp32)
    assert k.peak_flops("bf16", tensor=True) == pytest.approx(fp32)
    assert k.peak_flops("fp64", tensor=False) == pytest.approx(1.46e12)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tensor_rate_never_below_cuda_core_rate(name: str) -> None:
    g = PRESETS[name]
    for dtype in ("fp32", "fp16", "bf16"):
        assert g.peak_flops(dtype, True) >= g.peak_flops(dtype, False), dtype


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_json_round_trip(name: str) -> None:
    g = PRESETS[name]
    data = json.loads(json.dumps(g.to_json()))
    back = gpu_from_json(data)
    assert back == g
    assert math.isclose(back.peak_flops("fp32", False), g.peak_flops("fp32", False))


def test_round_trip_keeps_a_kernel_table() -> None:
    table = {"sig": [{"name": "k", "grid": 4, "threads": 128, "duration_us": 3.0}]}
    g = preset("v100").replace(kernel_table=table)
    assert gpu_from_json(json.loads(json.dumps(g.to_json()))) == g


def test_machine() -> None:
    v = preset("v100")
    m = Machine.single(v)
    assert m.gpu is v and m.devices == (v,) and m.name == v.name
    with pytest.raises(SpecError, match="no GPU"):
        Machine("empty", ())


# --- every preset runs a model --------------------------------------------------------


@pytest.fixture(scope="module")
def squeezenet():
    return build_model("squeezenet1_1")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_lowers_and_simulates_a_model(name: str, squeezenet) -> None:
    g = PRESETS[name]
    assert library_costs(g).units  # the nearest measured architecture's fit
    kernels = lower_graph(squeezenet, g)
    assert set(kernels) == set(squeezenet.ops)
    n = sum(len(ks) for ks in kernels.values())
    assert n > 0
    for ks in kernels.values():
        for k in ks:
            assert 1 <= k.occupancy.blocks <= g.max_blocks_per_sm
    tl = run_scheduler("sequential", squeezenet, Machine.single(g), runtime="cudnn").timeline
    assert math.isfinite(tl.makespan_us) and tl.makespan_us > 0
    assert len(tl.kernels) == n
