"""tools/probe_spread.py: two rows of a gem eval run compared run by run over the probe's experiments."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "probe_spread.py"


@pytest.fixture(scope="module")
def probe_spread():
    spec = importlib.util.spec_from_file_location("probe_spread", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_results(path: Path, accuracies: dict[str, list[float]]) -> Path:
    """An mteb results file with one test subset per task and its probe runs' accuracies."""
    tasks = [{"task_name": name, "scores": {"test": [{"hf_subset": "default", "main_score": sum(runs) / len(runs),
                                                      "scores_per_experiment": [{"accuracy": a} for a in runs]}]}}
             for name, runs in accuracies.items()]
    path.write_text(json.dumps({"task_results": tasks}))
    return path


def test_the_difference_is_paired_run_by_run_and_its_error_is_their_spread(tmp_path, probe_spread):
    ours = write_results(tmp_path / "gem.json", {"Task": [0.60, 0.50, 0.70], "Unpaired": [0.5, 0.5]})
    theirs = write_results(tmp_path / "prompteol.json", {"Task": [0.58, 0.49, 0.67]})
    [row] = probe_spread.paired_differences(probe_spread.experiments(ours), probe_spread.experiments(theirs))
    # run by run: +2, +1, +3 points; the runs' own spread (10 points) does not enter
    assert row["task"] == "Task" and row["runs"] == 3
    assert row["difference"] == pytest.approx(2.0)
    assert row["standard_error"] == pytest.approx(1.0 / math.sqrt(3))


def test_rows_with_a_different_number_of_runs_are_not_compared(tmp_path, probe_spread):
    ours = write_results(tmp_path / "gem.json", {"Task": [0.6, 0.5, 0.7]})
    theirs = write_results(tmp_path / "prompteol.json", {"Task": [0.6, 0.5]})
    assert probe_spread.paired_differences(probe_spread.experiments(ours), probe_spread.experiments(theirs)) == []
