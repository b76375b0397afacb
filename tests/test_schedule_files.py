"""A schedule file runs exactly what it says, or is refused with one line (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli import run_error, run_json


@pytest.fixture(scope="module")
def ios_file(tmp_path_factory) -> Path:
    """IOS's schedule of Inception V3, with its merged convs (an embedded rewrite)."""
    from simgpu.cli import main

    p = tmp_path_factory.mktemp("s") / "ios.json"
    assert main(["run", "inception_v3", "--scheduler", "ios", "--schedule-out", str(p),
                 "--json"]) == 0  # fmt: skip
    assert "graph" in json.loads(p.read_text())
    return p


def _variant(tmp_path: Path, src: Path, **change) -> Path:
    d = json.loads(src.read_text())
    d.update(change)
    p = tmp_path / "v.json"
    p.write_text(json.dumps(d))
    return p


def test_a_rewritten_graph_of_the_same_model_runs(ios_file: Path, capsys) -> None:
    out = run_json(capsys, "simulate", "inception_v3", "--schedule", str(ios_file), "--json")
    assert out["graph"] == "inception_v3" and out["latency_ms"] > 0


def test_an_embedded_graph_of_another_model_is_refused(ios_file: Path, capsys) -> None:
    line = run_error(capsys, "simulate", "squeezenet1_1", "--schedule", str(ios_file))
    assert "embedded graph is 'inception_v3', not the 'squeezenet1_1' given" in line


def test_an_embedded_graph_of_another_batch_is_refused(tmp_path: Path, capsys) -> None:
    from simgpu.models import build_model
    from simgpu.schedule import StreamSchedule, schedule_to_json

    g2 = build_model("squeezenet1_1", batch=2)
    p = tmp_path / "b2.json"
    p.write_text(json.dumps(schedule_to_json(StreamSchedule([list(g2.topo_order)], g2))))
    line = run_error(capsys, "simulate", "squeezenet1_1", "--schedule", str(p))
    assert "has shape [2, " in line and "in the graph given" in line


@pytest.mark.parametrize("mode", ["false", "true", [0], 1, None])
def test_graph_mode_must_be_a_json_boolean(ios_file: Path, tmp_path: Path, capsys, mode) -> None:
    p = _variant(tmp_path, ios_file, graph_mode=mode)
    line = run_error(capsys, "simulate", "inception_v3", "--schedule", str(p))
    assert "graph_mode must be true or false" in line


def test_empty_stages_groups_and_streams_are_refused(tmp_path: Path, capsys) -> None:
    base = {"format": "simgpu.schedule", "version": 1, "graph_mode": False}
    cases = {
        "stage 1 is empty": {**base, "kind": "stages",
                             "stages": [[["x"]], *[[]] * 1000, [["y"]]]},
        "stage 0 group 1 is empty": {**base, "kind": "stages", "stages": [[["x"], []]]},
        "at least one stream": {**base, "kind": "streams", "streams": []},
        "stream 1 is empty": {**base, "kind": "streams", "streams": [["x"], []]},
        "barrier must be": {**base, "kind": "stages", "stages": [[["x"]]], "barrier": "none"},
        "unknown schedule field(s) graphmode": {**base, "kind": "streams", "streams": [["x"]],
                                                "graphmode": True},
    }  # fmt: skip
    for why, data in cases.items():
        p = tmp_path / "s.json"
        p.write_text(json.dumps(data))
        line = run_error(capsys, "simulate", "squeezenet1_1", "--schedule", str(p))
        assert why in line, (why, line)
