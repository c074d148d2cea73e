"""The human-readable outputs of an evaluation run: ``report.md`` (one table) and ``report.png``.

Both are built from the summary dict that ``runner.run_evaluation`` returns and writes as
``summary.json``: rows are models, columns are the MTEB tasks' main scores (x100), their
average, and the language-model metrics beside them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# column label and the summary key of each score, in table order
MTEB_COLUMNS: dict[str, str] = {
    "STSBenchmark": "STSB",
    "SICK-R": "SICK-R",
    "Banking77Classification": "Banking77",
    "SciFact": "SciFact",
}
MTEB_METRICS: dict[str, str] = {
    "STSBenchmark": "cosine Spearman",
    "SICK-R": "cosine Spearman",
    "Banking77Classification": "accuracy",
    "SciFact": "nDCG@10",
}
# LM accuracies shown (task, metric) and WikiText-2 perplexity
LM_ACCURACY_COLUMNS: dict[str, tuple[str, str]] = {
    "MMLU": ("MMLU", "acc"),
    "ARC-Easy": ("ARC-E", "acc_norm"),
    "HellaSwag": ("HellaSwag", "acc_norm"),
}


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the report table."""
    mteb_tasks = [t for t in MTEB_COLUMNS if t in summary.get("mteb_tasks", [])]
    lm_tasks = [t for t in LM_ACCURACY_COLUMNS if t in summary.get("lm_tasks", [])]
    has_ppl = "WikiText-2" in summary.get("lm_tasks", [])
    header = ["Model"] + [MTEB_COLUMNS[t] for t in mteb_tasks]
    if mteb_tasks:
        header.append("MTEB avg")
    header += [LM_ACCURACY_COLUMNS[t][0] for t in lm_tasks]
    if lm_tasks:
        header.append("LM avg")
    if has_ppl:
        header.append("WikiText-2 ppl")
    rows = []
    for row in summary["models"]:
        scores = row.get("mteb", {})
        cells = [row["display"]] + [_fmt(scores.get(t)) for t in mteb_tasks]
        if mteb_tasks:
            cells.append(_fmt(row.get("mteb_average")))
        lm = row.get("lm") or {}
        cells += [_fmt(_percent(lm.get(t, {}).get(LM_ACCURACY_COLUMNS[t][1]))) for t in lm_tasks]
        if lm_tasks:
            cells.append(_fmt(_percent(row.get("lm_average"))))
        if has_ppl:
            cells.append(_fmt(lm.get("WikiText-2", {}).get("perplexity"), digits=2))
        rows.append(cells)
    return header, rows


def render_markdown(summary: dict[str, Any]) -> str:
    """The text of ``report.md``."""
    header, rows = table_rows(summary)
    lines = [f"# GEM evaluation: {summary['base']}" + (f" + {summary['adapter']}" if summary.get("adapter") else ""), ""]
    lines += [
        f"- suite: **{summary['suite']}**" + (f" (every task capped at {summary['limit']} items)" if summary.get("limit") else ""),
        f"- base model: `{summary['base']}`; adapter: `{summary.get('adapter') or 'none (GEM token untrained)'}`",
        f"- seed: {summary['seed']}; data: `{summary['data_dir']}`",
        f"- wall time: {summary['wall_time_s']:.0f} s; finished {summary['finished']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in summary.get('versions', {}).items())}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += ["", "Scores are x100. " + "; ".join(
        f"{MTEB_COLUMNS[t]}: {MTEB_METRICS[t]}" for t in MTEB_COLUMNS if t in summary.get("mteb_tasks", []))
        + (". MTEB avg: mean of the MTEB columns." if summary.get("mteb_tasks") else "")]
    if summary.get("lm_tasks"):
        lines += ["MMLU: accuracy of the most likely of ' A'..' D'; ARC-E and HellaSwag: length-normalised "
                  "accuracy (log-likelihood / characters of the choice); LM avg: mean of those accuracies; "
                  "WikiText-2: sliding-window perplexity (lower is better). GEM tokens are excluded from the "
                  "log-softmax, as they are from generation."]
        lines += [f"The LM columns of {', '.join(group)} are one measurement of one decoder."
                  for group in summary.get("lm_shared_rows", [])]
    lines += ["", "## What was evaluated", ""]
    lines += [f"- {name}: {note}" for name, note in summary.get("notes", {}).items()]
    lines += ["", "## Models", ""]
    for row in summary["models"]:
        lines.append(f"- **{row['display']}**: {row['description']}"
                     + (f"; results `{row['results_file']}`" if row.get("results_file") else "")
                     + f"; {row['seconds']:.0f} s")
    for key, seconds in summary.get("lm_seconds", {}).items():
        lines.append(f"- language-model metrics of the {key} decoder: {seconds:.0f} s")
    lines.append("")
    return "\n".join(lines)


def write_report(summary: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    markdown = out / "report.md"
    markdown.write_text(render_markdown(summary), encoding="utf-8")
    image = out / "report.png"
    plot_summary(summary, image)
    return markdown, image


def plot_summary(summary: dict[str, Any], path: str | Path) -> None:
    """Grouped bar chart: MTEB tasks (and average) per model; LM accuracies per decoder beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mteb_tasks = [t for t in MTEB_COLUMNS if t in summary.get("mteb_tasks", [])]
    lm_tasks = [t for t in LM_ACCURACY_COLUMNS if t in summary.get("lm_tasks", [])]
    panels = []
    if mteb_tasks:
        groups = [MTEB_COLUMNS[t] for t in mteb_tasks] + ["MTEB avg"]
        bars = {row["display"]: [row.get("mteb", {}).get(t) for t in mteb_tasks] + [row.get("mteb_average")]
                for row in summary["models"] if row.get("mteb")}
        panels.append(("Embedding tasks (x100)", groups, bars))
    if lm_tasks:
        groups = [LM_ACCURACY_COLUMNS[t][0] for t in lm_tasks]
        bars, seen = {}, set()
        for row in summary["models"]:
            lm = row.get("lm")
            if not lm or row.get("lm_source") in seen:
                continue
            seen.add(row.get("lm_source"))
            label = row.get("lm_label") or row["display"]
            bars[label] = [_percent(lm.get(t, {}).get(LM_ACCURACY_COLUMNS[t][1])) for t in lm_tasks]
        panels.append(("Language modelling accuracy (x100)", groups, bars))
    if not panels:
        panels.append(("no scores", [], {}))
    widths = [max(len(groups), 1) * max(len(bars), 1) + 2 for _, groups, bars in panels]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 + 0.45 * sum(widths), 4.8),
                                gridspec_kw={"width_ratios": widths}, squeeze=False)
    for axis, (title, groups, bars) in zip(axes[0], panels):
        count = max(len(bars), 1)
        width = 0.8 / count
        for index, (label, values) in enumerate(bars.items()):
            xs = [g + (index - (count - 1) / 2) * width for g in range(len(groups))]
            heights = [v if v is not None and not math.isnan(v) else 0.0 for v in values]
            axis.bar(xs, heights, width=width, label=label)
        axis.set_xticks(range(len(groups)), groups, rotation=20)
        axis.set_title(title)
        lowest = min([v for values in bars.values() for v in values if v is not None and not math.isnan(v)] or [0.0])
        axis.set_ylim(min(0.0, lowest - 5.0), 100)
        axis.axhline(0.0, color="black", linewidth=0.6)
        axis.grid(axis="y", alpha=0.3)
        if bars:
            axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.18), ncol=2, frameon=False)
    figure.suptitle(f"{summary['base']} ({summary['suite']} suite)")
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"
