"""benchmarks/accuracy.py: job planning, tables from result JSON, and the generated part of the docs."""

import importlib.util
import json
import sys

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("accuracy", REPO_ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy"] = module
    spec.loader.exec_module(module)
    return module


def _metrics(mae, rmse):
    return {"avg": {"MAE": mae, "RMSE": rmse, "MAPE": 0.1}}


def _zero_shot_result(ours, baselines):
    results = [{"model": "factost:x", "metrics": _metrics(*ours)}]
    results += [{"model": name, "metrics": _metrics(*pair)} for name, pair in baselines.items()]
    return {"model": "factost:x", "metrics": _metrics(*ours), "results": results}


def test_jobs_follow_present_data_and_quick(accuracy, tmp_path):
    args = accuracy.parse_args(["--output", str(tmp_path), "--quick"])
    jobs = accuracy.zero_shot_jobs(args, {"HZMETRO", "ETTh2", "LOS-LOOP"})
    assert [job["dataset"] for job in jobs] == ["HZMETRO", "LOS-LOOP", "ETTh2"]  # the data present, in task order
    for job in jobs:
        job["command"] = [sys.executable, "-c", f"open({str(job['output'])!r}, 'w').write('{{}}')"]
        job["output"].parent.mkdir(parents=True, exist_ok=True)
    assert accuracy.run_jobs(jobs, args) == []
    ran = sorted(job["dataset"] for job in jobs if job["output"].is_file())
    assert ran == ["HZMETRO", "LOS-LOOP"]  # --quick runs only the missing 12-step evaluations
    args = accuracy.parse_args(["--output", str(tmp_path), "--few_shot_variants", "hzmetro,pems08"])
    few = accuracy.few_shot_jobs(args, {"HZMETRO"})
    assert [(job["variant"], job["model"]) for job in few] == [
        ("hzmetro", "factost_few"), ("hzmetro", "stid_few"), ("hzmetro", "stid_full")]
    assert "--config.init_from=factost-tiny" in few[0]["command"] and "--config.model=stid" in few[1]["command"]
    assert "--config.data.few_shot_ratio=1.0" in few[2]["command"]
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--parts", "zero_shot,nope"])


def test_tables_count_wins_and_docs_keep_hand_written_text(accuracy, tmp_path):
    args = accuracy.parse_args(["--output", str(tmp_path)])
    jobs = accuracy.zero_shot_jobs(args, {"HZMETRO", "LOS-LOOP", "AQI36"})
    payloads = {
        "HZMETRO": _zero_shot_result((20.0, 30.0), {"last_value": (23.4, 42.5), "seasonal_naive_week": (13.7, 21.9)}),
        "LOS-LOOP": _zero_shot_result((4.0, 8.0), {"last_value": (4.41, 8.42)}),
    }
    for job in jobs:
        if job["dataset"] in payloads:
            job["output"].parent.mkdir(parents=True, exist_ok=True)
            job["output"].write_text(json.dumps(payloads[job["dataset"]]))
    lines, wins, total = accuracy.zero_shot_table(jobs)
    assert (wins, total) == (1, 2)  # AQI36 has no JSON: not counted
    hz = next(line for line in lines if line.startswith("| HZMETRO"))
    assert "**20.00 / 30.00**" in hz and "13.70 / 21.90 (seasonal naive, week)" in hz and hz.endswith("| no |")
    assert next(line for line in lines if line.startswith("| LOS-LOOP")).endswith("| **yes** |")

    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\nhand-written intro\n")
    accuracy.write_docs(docs, accuracy.BEGIN_MARKER + "\nfirst\n" + accuracy.END_MARKER + "\n")
    text = docs.read_text()
    docs.write_text(text + "\nhand-written after\n")
    accuracy.write_docs(docs, accuracy.BEGIN_MARKER + "\nsecond\n" + accuracy.END_MARKER + "\n")
    text = docs.read_text()
    assert "hand-written intro" in text and "hand-written after" in text
    assert "second" in text and "first" not in text and text.count(accuracy.BEGIN_MARKER) == 1


def test_few_shot_table_reads_adapt_metrics(accuracy, tmp_path):
    args = accuracy.parse_args(["--output", str(tmp_path), "--few_shot_variants", "los_loop"])
    jobs = accuracy.few_shot_jobs(args, {"LOS-LOOP"})
    for job, mae in zip(jobs, (3.9, 4.2, 3.5)):
        job["output"].parent.mkdir(parents=True, exist_ok=True)
        job["output"].write_text(json.dumps({"input_len": 12, "horizon": 12, "metrics": _metrics(mae, 2 * mae),
                                             "adaptation": {"steps_run": 300, "best_step": 150}}))
    zero = accuracy.zero_shot_jobs(args, {"LOS-LOOP"})
    zero[0]["output"].parent.mkdir(parents=True, exist_ok=True)
    zero[0]["output"].write_text(json.dumps(_zero_shot_result((4.85, 9.16), {"last_value": (4.41, 8.42)})))
    row = accuracy.few_shot_table(jobs, zero)[-1]
    assert row.startswith("| LOS-LOOP | 12->12 | **3.90 / 7.80** | 4.85 / 9.16 | 4.20 / 8.40 | 3.50 / 7.00 |")
    assert "300 (150)" in row


def test_statistical_rows_share_strided_windows(accuracy, tmp_path):
    args = accuracy.parse_args(["--output", str(tmp_path)])
    full = accuracy.zero_shot_jobs(args, {"ETTh2"})[0]["command"]
    assert full[full.index("--baselines") + 1] == "naive" and "--window_stride" not in full  # every window
    jobs = accuracy.statistical_jobs(args, {"ETTh2", "LOS-LOOP"})
    assert [job["dataset"] for job in jobs] == ["LOS-LOOP", "ETTh2"]
    strides = [job["command"][job["command"].index("--window_stride") + 1] for job in jobs]
    assert strides == [str(accuracy.STATISTICAL_STRIDES["LOS-LOOP"]), str(accuracy.STATISTICAL_STRIDES["ETTh2"])]
    assert all("--baselines" not in job["command"] for job in jobs)  # --with_baselines: all of them

    def fitted(name, mae, season, fallbacks=0):
        return {"model": name, "metrics": _metrics(mae, mae * 2),
                "fit_report": {"model": name, "season_length": season, "series": 100,
                               "fallback_last_value": fallbacks, "no_observation": 0}}

    payload = _zero_shot_result((0.35, 0.57), {"last_value": (0.42, 0.66), "seasonal_naive_day": (0.38, 0.62)})
    payload["results"] += [fitted("autoets", 0.36, 24, fallbacks=3), fitted("autotheta", 0.34, 24)]
    payload.update(num_windows=349, split_windows=2785, window_stride=8)
    jobs[1]["output"].parent.mkdir(parents=True, exist_ok=True)
    jobs[1]["output"].write_text(json.dumps(payload))
    lines, notes = accuracy.statistical_table(jobs)
    assert len(lines) == 3  # header, rule, ETTh2 (LOS-LOOP has no JSON)
    row = lines[2]
    assert row.startswith("| ETTh2 | 96->96 | 349 of 2785 (every 8) | **0.350 / 0.570** | "
                          "0.380 / 0.620 (seasonal naive, day) | 0.360 / 0.720 | 0.340 / 0.680 | 24 · 24 |")
    assert row.endswith("| no |")  # AutoTheta is better
    assert notes == ["ETTh2 AutoETS: 3 of 100 series forecast by their last value (too few observed steps or a "
                     "non-finite fit), 0 with nothing observed."]


def test_earlier_checkpoints_become_columns_newest_first(accuracy, tmp_path, capsys):
    earlier = {label: tmp_path / f"accuracy_{label}" for label in ("v2", "v1")}
    argv = ["--output", str(tmp_path / "accuracy")]
    for label, root in earlier.items():
        root.mkdir()
        argv += ["--previous", str(root), "--previous_label", label]
    args = accuracy.parse_args(argv)
    job = accuracy.zero_shot_jobs(args, {"LOS-LOOP"})[0]
    job["output"].parent.mkdir(parents=True)
    job["output"].write_text(json.dumps(_zero_shot_result((4.0, 8.0), {"last_value": (4.41, 8.42)})))
    v2 = earlier["v2"] / job["output"].relative_to(args.output)  # v1 has no result: its cell is "–"
    v2.parent.mkdir(parents=True)
    v2.write_text(json.dumps(_zero_shot_result((4.9, 9.1), {"last_value": (4.41, 8.42)})))
    lines, _, _ = accuracy.zero_shot_table([job], accuracy.earlier_columns(args))
    assert lines[0].startswith("| dataset | L->H | FactoST zero-shot | FactoST v2 zero-shot | FactoST v1 zero-shot | ")
    assert lines[2].startswith("| LOS-LOOP | 12->12 | **4.00 / 8.00** | 4.90 / 9.10 | – | 4.41 / 8.42 (last value) |")
    assert len(lines[1].split("|")) == len(lines[0].split("|")) == len(lines[2].split("|"))

    assert accuracy.parse_args(["--previous", str(earlier["v1"])]).previous_label == ["v1"]  # one: "v1" by default
    for bad, message in ((["--previous", str(earlier["v1"]), "--previous", str(earlier["v2"])], "one per --previous"),
                         (["--previous", str(tmp_path / "missing")], "is not a directory")):
        with pytest.raises(SystemExit):
            accuracy.parse_args(bad)
        assert message in capsys.readouterr().err
