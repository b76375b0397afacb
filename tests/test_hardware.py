"""GPU presets, aliases, JSON overrides and the validation of GPU specs.

Every result the simulator reports is only as good as these datasheet figures, and a
calibration or override file with a typo must fail loudly, naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simgpu.errors import FormatError, SpecError
from simgpu.hardware import ALIASES, KB, PRESETS, GPUSpec, Machine, gpu_from_json, load_gpu, preset

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
}


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
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert preset(alias) is PRESETS[name]
    assert load_gpu(alias) is PRESETS[name]


def test_every_alias_points_at_a_preset() -> None:
    assert set(ALIASES.values()) <= set(PRESETS)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown GPU 'p100'.*v100-sxm2"):
        preset("p100")


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
        ({"base": "p100"}, "unknown GPU 'p100'"),
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
def test_non_finite_peak_tflops_is_spec_error(tmp_path: Path, rate: str) -> None:
    p = tmp_path / "gpu.json"
    p.write_text('{"base": "v100", "peak_tflops": {"fp32": ' + rate + "}}")
    with pytest.raises(SpecError, match="peak_tflops"):
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
