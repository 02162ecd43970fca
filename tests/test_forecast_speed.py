"""benchmarks/forecast_speed.py: its series, its table, and equal work of the methods it times."""

import os
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from benchmarks import forecast_speed as fs  # noqa: E402


def test_settings_and_series():
    assert fs.parse_setting("512x96") == fs.Setting(512, 96, 24)
    assert fs.parse_setting("12x12") == fs.Setting(12, 12, 1)  # two days do not fit in 12 steps
    with pytest.raises(ValueError, match="CONTEXTxHORIZON"):
        fs.parse_setting("512")
    small, large = fs.make_series(5, 48), fs.make_series(1500, 48)
    assert large.shape == (1500, 48) and np.isfinite(large).all() and (large > 0).mean() > 0.99
    np.testing.assert_array_equal(small, large[:5])  # the statistical models fit a prefix of the same series


def _row(method, rate, setting="512x96", num_series=10_000, **extra):
    return {"setting": setting, "num_series": num_series, "method": method, "series_per_s_cold": rate,
            "series_per_s_warm": rate, "load_avg_1m": {"start": 1.0, "end": 2.0}, **extra}


def test_ratios_target_and_table():
    rows = [_row("factost", 30.0, load_s=1.0, warm_series=1000), _row("autoets", 2.0, extrapolated=True,
            fitted_series=40), _row("autotheta", 6.0), _row("factost", 30.0, setting="12x12", load_s=1.0)]
    fs.add_ratios(rows)
    assert rows[0]["vs_autoets"] == 15.0 and rows[0]["vs_autotheta"] == 5.0
    assert rows[3]["vs_autoets"] is None  # no AutoETS row for that setting
    target = fs.target_status(rows)
    assert target["ratio"] == 15.0 and target["met"] is True
    meta = {"command": "python benchmarks/forecast_speed.py --quick", "started": "now", "wall_s": 1.0,
            "checkpoint": "factost-tiny", "batch_size": 256, "machine": {"cpu_count": 2}}
    block = fs.render({"meta": meta, "rows": rows, "target": target})
    assert "**met**: 15.0x" in block and "fitted 40 series, rate extrapolated" in block
    assert "compiled rate from 1,000 series" in block and "checkpoint read 1.0 s" in block


def test_perf_report_rewrites_only_its_block(tmp_path):
    from benchmarks import perf_report

    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nbefore\n")
    block = perf_report.render(tmp_path)  # no result files: every target "not measured", never met
    assert "met**" not in block and block.count("not measured") >= 5
    perf_report.write_docs(docs, block)
    perf_report.write_docs(docs, block.replace("not measured", "measured"))
    text = docs.read_text()
    assert text.count(perf_report.BEGIN_MARKER) == 1 and "not measured" not in text and "before" in text
    shipped = perf_report.render(REPO_ROOT / "benchmarks" / "results")  # the committed JSON renders
    assert "| tiny | train |" in shipped and "| 8,000 |" in shipped


def test_torch_reference_forecasts_what_the_forecaster_forecasts():
    if not os.environ.get("CI"):
        pytest.importorskip("torch", reason="torch is not installed; `make test` installs the CPU build")
    series = fs.make_series(6, 40)
    ours = fs.factost_method("factost-tiny", 12, batch_size=4)(series)
    theirs = fs.torch_method("factost-tiny", 12, batch_size=4)(series)
    assert ours.shape == theirs.shape == (6, 12, 3)
    # The Forecaster standardises in float64 first; the encoder's instance norm makes that a no-op up to rounding.
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3 * np.abs(series).max())


def test_statistical_method_returns_ordered_quantiles():
    pytest.importorskip("statsforecast")
    out = fs.statistical_method("autotheta", 12, 1, n_jobs=1)(fs.make_series(3, 30))
    assert out.shape == (3, 12, 3) and np.isfinite(out).all()
    assert (out[..., 0] <= out[..., 1]).all() and (out[..., 1] <= out[..., 2]).all()
