"""``gem eval`` (the click command object) on a tiny model folder, and the report it writes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import SHARED_DATA
from gem_adapter.cli.evaluate import eval_command
from gem_adapter.evaluation.report import render_markdown, table_rows, write_report

needs_data = pytest.mark.skipif(not (SHARED_DATA / "README.md").is_file(), reason=f"no evaluation data at {SHARED_DATA}")


@needs_data
def test_eval_on_a_tiny_model_writes_results_summary_and_report(tiny_model_folder, tmp_path):
    from mteb.results import ModelResult

    out = tmp_path / "eval"
    args = ["--base", str(tiny_model_folder), "--tasks", "STSBenchmark,SciFact,arc-easy,WikiText-2",
            "--baselines", "mean,prompteol", "--out", str(out), "--data-dir", str(SHARED_DATA), "--limit", "4"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    assert "Model | STSB | SciFact | MTEB avg | ARC-E | LM avg | WikiText-2 ppl" in result.output
    for name in ("report.md", "report.png", "summary.json", "results/mean.json", "results/prompteol.json",
                 "results/gem.json", "results/lm-base.json"):
        assert (out / name).is_file(), name
    model_result = ModelResult.from_disk(out / "results" / "gem.json")
    assert sorted(r.task_name for r in model_result.task_results) == ["STSBenchmark", "SciFact"]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["id"] for row in summary["models"]] == ["mean", "prompteol", "gem"]
    report = (out / "report.md").read_text()
    assert "STSBenchmark: 4 of 1,379 pairs (seeded random subset, seed 0)" in report
    assert "WikiText-2: first 128 tokens of the test file; window 64, stride 32" in report
    assert "tiny-llama GEM (untrained)" in report

    again = CliRunner().invoke(eval_command, args)
    assert again.exit_code == 1 and f"output folder {out} is not empty; pass --force to write into it, or choose another --out" in again.output


def test_eval_errors_are_one_line(tiny_model_folder, tmp_path):
    runner = CliRunner()
    base = ["--base", str(tiny_model_folder), "--data-dir", str(tmp_path)]
    result = runner.invoke(eval_command, base + ["--out", str(tmp_path / "a"), "--tasks", "STS12"])
    assert result.exit_code == 1 and "Error: unknown task 'STS12'; choose from STSBenchmark" in result.output
    result = runner.invoke(eval_command, base + ["--out", str(tmp_path / "a"), "--baselines", "bm25"])
    assert result.exit_code == 1 and "unknown baseline 'bm25'; choose from mean, last, prompteol, minilm" in result.output
    result = runner.invoke(eval_command, base + ["--out", str(tmp_path / "a"), "--tasks", "SICK-R"])
    assert result.exit_code == 1 and "SICK-R needs" in result.output and "--data-dir" in result.output
    assert not (tmp_path / "a").exists()  # nothing written before the data was found
    result = runner.invoke(eval_command, base + ["--out", str(tmp_path / "a"), "--suite", "huge"])
    assert result.exit_code == 2
    assert runner.invoke(eval_command, ["--base", "x"]).exit_code == 2  # --out is required


def test_report_table_and_chart_from_a_summary(tmp_path):
    lm = {"MMLU": {"acc": 0.25}, "ARC-Easy": {"acc_norm": 0.5}, "WikiText-2": {"perplexity": 12.345}}
    summary = {
        "base": "m", "adapter": None, "suite": "quick", "limit": None, "seed": 0, "data_dir": "/d",
        "mteb_tasks": ["STSBenchmark", "SciFact"], "lm_tasks": ["MMLU", "ARC-Easy", "WikiText-2"],
        "models": [
            {"id": "mean", "display": "m mean", "description": "d", "seconds": 1.0, "lm_source": "base",
             "mteb": {"STSBenchmark": 50.0, "SciFact": 10.0}, "mteb_average": 30.0, "lm": lm, "lm_average": 0.375},
            {"id": "minilm", "display": "MiniLM", "description": "d", "seconds": 1.0,
             "mteb": {"STSBenchmark": 82.03, "SciFact": -1.0}, "mteb_average": 40.5},
        ],
        "notes": {"STSBenchmark": "all 1,379 pairs"}, "lm_shared_rows": [], "lm_seconds": {"base": 3.0},
        "versions": {"mteb": "2"}, "wall_time_s": 5.0, "finished": "now",
    }
    header, rows = table_rows(summary)
    assert header == ["Model", "STSB", "SciFact", "MTEB avg", "MMLU", "ARC-E", "LM avg", "WikiText-2 ppl"]
    assert rows == [["m mean", "50.0", "10.0", "30.0", "25.0", "50.0", "37.5", "12.35"],
                    ["MiniLM", "82.0", "-1.0", "40.5", "–", "–", "–", "–"]]
    assert "- STSBenchmark: all 1,379 pairs" in render_markdown(summary)
    markdown, image = write_report(summary, tmp_path)
    assert markdown.read_text().startswith("# GEM evaluation: m") and image.stat().st_size > 10_000
