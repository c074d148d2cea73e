"""How far apart two rows of a ``gem eval`` run are on the probed classification tasks, with a standard error.

    python tools/probe_spread.py runs/diag/val-full-shipped --rows gem,prompteol \
        --out tools/results/cpu-2core/validation-full-probe-spread

MTEB fits its logistic-regression probe several times (``scores_per_experiment``), each on a seeded
draw of train texts; the draws are the same for every row of a run (same seed and task), so row A's
run i and row B's run i differ only in the embeddings. The difference of the two rows is therefore
taken run by run, and its standard error is the spread of those paired differences over sqrt(runs).
That error covers the choice of the few train texts per label, the larger noise of these tasks; it
does not cover the sampling of the test set. Writes ``.md`` and ``.json`` beside ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def experiments(results_file: Path) -> dict[str, list[float]]:
    """Accuracy of every probe run, per task (and subset), from one row's mteb results file."""
    runs: dict[str, list[float]] = {}
    for task in json.loads(results_file.read_text())["task_results"]:
        for split in task["scores"].values():
            for subset in split:
                per_run = subset.get("scores_per_experiment")
                if per_run:
                    name = task["task_name"] + (f" {subset['hf_subset']}" if subset.get("hf_subset") not in (None, "default", "en") else "")
                    runs[name] = [100 * run["accuracy"] for run in per_run]
    return runs


def paired_differences(first: dict[str, list[float]], second: dict[str, list[float]]) -> list[dict]:
    """Per task: both means, the mean paired difference and its standard error."""
    rows = []
    for name, ours in first.items():
        theirs = second.get(name, [])
        if len(ours) != len(theirs) or len(ours) < 2:
            continue
        differences = [a - b for a, b in zip(ours, theirs, strict=True)]
        rows.append({"task": name, "runs": len(differences), "first": statistics.mean(ours),
                     "second": statistics.mean(theirs), "difference": statistics.mean(differences),
                     "standard_error": statistics.stdev(differences) / len(differences) ** 0.5})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a gem eval output folder")
    parser.add_argument("--rows", default="gem,prompteol", help="two row ids of the run (results/<id>.json)")
    parser.add_argument("--out", type=Path, required=True, help="path stem for the .md and .json")
    args = parser.parse_args()
    first_id, second_id = args.rows.split(",")
    rows = paired_differences(experiments(args.run / "results" / f"{first_id}.json"),
                              experiments(args.run / "results" / f"{second_id}.json"))
    if not rows:
        raise SystemExit(f"{args.run} has no probed task scored by both {first_id} and {second_id}")
    suite = json.loads((args.run / "summary.json").read_text()).get("suite")
    table = "\n".join(f"| {r['task']} | {r['runs']} | {r['first']:.2f} | {r['second']:.2f} | {r['difference']:+.2f} | "
                      f"{r['standard_error']:.2f} |" for r in rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"run": str(args.run), "suite": suite, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        f"# Probed classification: {first_id} − {second_id}, paired over the probe runs ({args.run}, suite {suite})\n\n"
        f"`python tools/probe_spread.py {args.run} --rows {args.rows} --out {args.out}`\n\n"
        f"| task | probe runs | {first_id} | {second_id} | difference | standard error |\n|---|---:|---:|---:|---:|---:|\n"
        f"{table}\n\nAccuracy x100. The standard error is that of the mean paired difference over the probe runs (the\n"
        "same seeded train texts for both rows; for a cross-validated task, the same folds); it leaves out the\n"
        "sampling of the test set.\n")
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
