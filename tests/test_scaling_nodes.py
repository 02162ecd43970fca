"""benchmarks/scaling_nodes.py: the power-law fit on exact data, the target check, and a tiny sweep's JSON."""

import json
import math
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from benchmarks import scaling_nodes as sn  # noqa: E402


def _rows(nodes, step_s, memory_bytes, phase="train"):
    return [{"nodes": n, "phase": phase, "step_s": t, "memory_bytes": m} for n, t, m in zip(nodes, step_s, memory_bytes)]


def test_fit_exponent_recovers_exact_power_laws():
    nodes = [170, 500, 1000, 2000, 4000, 8000]
    for exponent, scale in ((1.0, 2e-4), (1.23, 3.7), (0.5, 1e3), (2.0, 1e-9)):
        costs = [scale * n**exponent for n in nodes]
        assert sn.fit_exponent(nodes, costs) == pytest.approx(exponent, abs=1e-12)


def test_fit_exponent_is_least_squares_on_noisy_data():
    # log-cost residuals +e, -e, -e, +e around slope 1 on a log-symmetric grid leave the slope at 1
    nodes = [1, 2, 4, 8]
    noise = [1.1, 1 / 1.1, 1 / 1.1, 1.1]
    assert sn.fit_exponent(nodes, [n * f for n, f in zip(nodes, noise)]) == pytest.approx(1.0, abs=1e-12)
    # a log-cost offset growing by 0.1 per doubling adds 0.1 / ln 2 to the slope
    tilted = [n * math.exp(0.1 * i) for i, n in enumerate(nodes)]
    assert sn.fit_exponent(nodes, tilted) == pytest.approx(1.0 + 0.1 / math.log(2), abs=1e-12)


@pytest.mark.parametrize("nodes, costs, message", [
    ([10, 10], [1.0, 2.0], "2 distinct"),
    ([10], [1.0], "2 distinct"),
    ([10, 20], [1.0, 0.0], "positive"),
    ([10, 20], [1.0, float("nan")], "positive"),
    ([10, 20, 30], [1.0, 2.0], "equal length"),
])
def test_fit_exponent_rejects_bad_input(nodes, costs, message):
    with pytest.raises(ValueError, match=message):
        sn.fit_exponent(nodes, costs)


def test_large_n_nodes_is_the_upper_half():
    assert sn.large_n_nodes([170, 500, 1000, 2000, 4000, 8000]) == (2000, 4000, 8000)
    assert sn.large_n_nodes([170, 1000, 4000]) == (1000, 4000)
    assert sn.large_n_nodes([8, 16]) == (8, 16)
    assert sn.large_n_nodes([4000, 170, 1000, 170]) == (1000, 4000)


def test_exponents_and_target_on_synthetic_timings():
    nodes = [100, 200, 400, 800, 1600, 3200]
    # fixed overhead + linear work: flat at small N, slope -> 1 at large N
    overhead = [0.05 + 1e-5 * n for n in nodes]
    memory = [7.0 * n**0.5 for n in nodes]
    infer = [2e-6 * n**1.3 for n in nodes]
    rows = _rows(nodes, overhead, memory) + _rows(nodes, infer, [3.0 * n for n in nodes], phase="infer")
    fitted = sn.exponents(rows)
    assert fitted["large_n_from"] == 800
    assert fitted["memory_train"] == pytest.approx(0.5, abs=1e-12)
    assert fitted["memory_infer"] == pytest.approx(1.0, abs=1e-12)
    assert fitted["infer"] == pytest.approx(1.3, abs=1e-12)
    assert fitted["infer_large_n"] == pytest.approx(1.3, abs=1e-12)
    assert fitted["train"] < fitted["train_large_n"] < 1.0
    assert fitted["train_large_n"] == pytest.approx(
        sn.fit_exponent(nodes[3:], overhead[3:]), abs=1e-12)
    assert sn.meets_target(fitted) is False  # infer grows as N^1.3
    assert sn.meets_target({**fitted, "infer": 1.05, "infer_large_n": 1.1}) is True
    one_n = sn.exponents(_rows([64], [0.1], [1.0]))
    assert one_n["train"] is None and one_n["memory_train"] is None and sn.meets_target(one_n) is None


def test_settings_validation():
    assert sn.ScalingSettings(nodes=(32, 8, 16, 8)).nodes == (8, 16, 32)
    for bad in ({"nodes": ()}, {"nodes": (0, 8)}, {"phases": ("backward",)}, {"batch": 0}, {"repeats": 0},
                {"warmup": -1}):
        with pytest.raises(ValueError):
            sn.ScalingSettings(**bad)


def test_tiny_inference_sweep_json(tmp_path):
    """The real sweep on 8 / 16 / 32 nodes (inference only: the train step alone compiles for ~15 s)."""
    settings = sn.ScalingSettings(nodes=(8, 16, 32), phases=("infer",), batch=2, synthetic_days=2, warmup=0,
                                  repeats=1, min_round_s=0.0)
    result = json.loads(json.dumps(sn.measure(settings, log=lambda message: None)))
    assert set(result) >= {"rows", "exponent", "target_max_exponent", "meets_target", "settings"}
    assert result["target_max_exponent"] == 1.1
    rows = result["rows"]
    assert [(row["nodes"], row["phase"]) for row in rows] == [(8, "infer"), (16, "infer"), (32, "infer")]
    for row in rows:
        assert set(row) >= {"nodes", "phase", "batch", "step_s", "compile_s", "memory_bytes", "tokens"}
        assert row["batch"] == 2 and row["step_s"] > 0 and row["compile_s"] > 0
        assert row["memory_bytes"] == row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"]
        # 12 steps -> 1 context patch + [REG] + 1 future patch + 3 prompts per series
        assert row["tokens"] == 2 * row["nodes"] * 6
    memory = [row["memory_bytes"] for row in rows]
    assert memory[0] < memory[1] < memory[2]
    exponent = result["exponent"]
    assert exponent["infer"] == pytest.approx(
        sn.fit_exponent([8, 16, 32], [row["step_s"] for row in rows]), abs=1e-12)
    assert exponent["train"] is None and exponent["memory_infer"] > 0
    assert result["settings"]["nodes"] == [8, 16, 32] and result["settings"]["model"] == "debug"
    assert "infer exponent" in sn.format_table(result)


@pytest.mark.slow
def test_cli_train_step_writes_scaling_json(tmp_path):
    """The command line end to end on the train step (one compile, one node count: no exponent)."""
    code = sn.main(["--nodes", "8", "--phases", "train", "--batch", "2", "--repeats", "1", "--warmup", "0",
                    "--min-round-s", "0", "--output", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "scaling.json").read_text())
    (row,) = result["rows"]
    assert row["phase"] == "train" and row["nodes"] == 8 and row["step_s"] > 0
    assert row["memory_bytes"] > 0 and row["parameters"] > 0
    assert result["exponent"]["train"] is None and result["meets_target"] is None
    assert result["settings"]["command"].startswith("python benchmarks/scaling_nodes.py --nodes 8")
