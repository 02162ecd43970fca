"""benchmarks/sanity.py and capability_cases.py: deterministic cases, exact references, the end-to-end run.

Kept cheap (one family at one period on the shipped checkpoint, no real data): the full benchmark is
`make bench`'s, never the test suite's.
"""

import importlib.util
import json
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"benchmarks.{name}"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cases():
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return _load("capability_cases")


@pytest.fixture(scope="module")
def sanity(cases):
    return _load("sanity")


def test_cases_are_deterministic_and_shaped(cases):
    first = cases.build_cases(512, 2048, 2)
    again = cases.build_cases(512, 2048, 2)
    assert [c.name for c in first] == [c.name for c in again]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.target, b.target)
        np.testing.assert_array_equal(a.reference_forecast, b.reference_forecast)
        assert a.target.shape == a.reference_forecast.shape and a.inputs.shape[0] == a.target.shape[0]
        assert np.all(np.isfinite(a.inputs)) and np.all(np.isfinite(a.target))
    # A case does not depend on which other cases are built with it.
    alone = cases.build_cases(512, 2048, 2, families=["square"], periods=[96])
    same = next(c for c in first if c.name == alone[0].name)
    np.testing.assert_array_equal(alone[0].inputs, same.inputs)
    # Contexts: 2 periods, 512 and the trained maximum, deduplicated and capped at the architecture.
    assert [(c.context, c.context_label) for c in first if c.family == "sine" and c.period == 672] == [
        (512, "512 = trained max"), (1344, "2 periods")]
    assert {c.context for c in cases.build_cases(2048, 1024, 1, families=["random_walk"])} == {96, 512, 1024}
    assert {c.horizon for c in first if c.family == "sine"} == {12, 24, 96}


@pytest.mark.parametrize("family", ["sine", "rectified", "square", "two_periods", "trend_season", "spikes"])
def test_references_are_exact_without_noise(cases, family):
    period = 24
    for context in (48, 512):
        case = cases.periodic_case(family, period, context, "x", batch=3, noise_std=0.0)
        assert case.inputs.shape == (3, context) and case.target.shape == (3, period)
        assert cases.mae(case.reference_forecast, case.target) < 1e-9
    # With noise, seasonal naive pays about E|e1 - e2| = 2 / sqrt(pi) for unit noise.
    noisy = cases.periodic_case("sine", period, 512, "x", batch=64, noise_std=1.0)
    assert cases.mae(noisy.reference_forecast, noisy.target) == pytest.approx(2 / np.sqrt(np.pi), rel=0.1)


def test_flat_references(cases):
    walk = cases.flat_case("random_walk", 96, "96", batch=4, noise_std=0.0)
    np.testing.assert_array_equal(walk.reference_forecast, np.repeat(walk.inputs[:, -1:], 24, axis=1))
    demand = cases.flat_case("intermittent", 96, "96", batch=4)
    assert np.all(demand.inputs >= 0) and np.mean(demand.inputs == 0) > 0.4
    np.testing.assert_allclose(demand.reference_forecast[:, 0], demand.inputs.mean(axis=1))
    shift = cases.flat_case("level_shift", 96, "96", batch=4, noise_std=0.0)
    np.testing.assert_array_equal(shift.target, shift.reference_forecast)  # no jump inside the horizon


def test_spikes_stay_out_of_the_last_period(cases):
    spiky = cases.periodic_case("spikes", 24, 192, "x", batch=2, noise_std=0.0)
    jumps = np.abs(np.diff(spiky.inputs, axis=1)).max(axis=1)
    assert np.all(jumps > 6)  # outliers of 8-15 on a smooth amplitude-5 sine
    assert np.abs(np.diff(spiky.inputs[:, -24:], axis=1)).max() < 2  # the last period is clean


def test_flag_errors_are_one_line(sanity, capsys):
    for argv, fragment in ((["--families", "sine,sawtooth"], "--families: unknown ['sawtooth']"),
                           (["--periods", "24,x"], "--periods: expected a comma list of integers"),
                           (["--periods", "1"], "--periods: every period must be an integer >= 2"),
                           (["--label", "v 1"], "--label: letters, digits")):
        with pytest.raises(SystemExit) as exit_info:
            sanity.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fragment in err and err.count("\n") == 1


def test_end_to_end_synthetic_writes_json_and_docs(sanity, tmp_path, capsys):
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\nKept above.\n\n" + sanity.BEGIN_MARKER + "\nold\n" + sanity.END_MARKER
                    + "\n\n## After\n\nKept below.\n")
    argv = ["--no_real", "--families", "sine", "--periods", "24", "--quick", "--label", "t1",
            "--output", str(tmp_path / "out"), "--docs", str(docs)]
    assert sanity.main(argv) == 0
    record = json.loads((tmp_path / "out" / "t1.json").read_text())
    assert record["label"] == "t1" and record["real"] is None and record["command"].endswith(" ".join(argv))
    assert record["context_limits"]["trained"] == 2048 and record["wall_s"]["total"] > 0
    rows = record["synthetic"]
    assert [(r["family"], r["period"], r["context"], r["horizon"]) for r in rows] == [
        ("sine", 24, 48, 24), ("sine", 24, 512, 24), ("sine", 24, 2048, 24)]
    for row in rows:
        assert row["ratio"] == pytest.approx(row["model_mae"] / row["reference_mae"])
        assert row["target"] == 1.2 and row["meets"] == (row["ratio"] <= 1.2)
    text = docs.read_text()
    assert text.startswith("# Results\n\nKept above.\n\n" + sanity.BEGIN_MARKER)
    assert text.endswith(sanity.END_MARKER + "\n\n## After\n\nKept below.\n") and "\nold\n" not in text
    assert "| sine | 24 | 48 (2 periods) | 24 | seasonal naive (true P) |" in text
    assert "python benchmarks/sanity.py --no_real" in text
    # --render_only redraws the same section from the JSON alone.
    capsys.readouterr()
    assert sanity.main(["--render_only", "--output", str(tmp_path / "out"), "--docs", str(docs)]) == 0
    assert docs.read_text() == text
    assert "| sine | seasonal naive (true P) | <= 1.2x |" in capsys.readouterr().out
