"""The human-readable outputs of an evaluation run: ``report.md`` (one table) and ``report.png``.

Both are built from the summary dict that ``runner.run_evaluation`` returns and writes as
``summary.json``: rows are models, columns are the MTEB tasks' main scores (x100), their
average, and the language-model metrics beside them, accuracies as ``value ± standard error``.
Tasks whose train split the adapter's recipe used are marked in-domain (``*``) and the
table then has a held-out average beside the all-task one. A last row gives GEM minus
PromptEOL per column (LM columns: adapter minus base decoder, paired standard error).
A validation suite's report has its tasks in suite order, the out-of-domain average, and a
second table of family averages (``validation``).
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
    "Banking77Clustering": "B77 clust",
    "SciFact": "SciFact",
    "AmazonCounterfactualClassification": "AmazonCF",
    "TweetEvalClassification": "TweetEval",
    "CustomerReviewsClassification": "CR",
    "TwitterURLCorpus": "TwitterURL",
    "WikiQAReranking": "WikiQA",
    "TrecQAReranking": "TrecQA",
    "NFCorpusOriginal": "NFCorpus",
    "CustomerReviewsClustering": "CR clust",
}
MTEB_METRICS: dict[str, str] = {
    "STSBenchmark": "cosine Spearman",
    "SICK-R": "cosine Spearman",
    "Banking77Classification": "accuracy",
    "Banking77Clustering": "V-measure",
    "SciFact": "nDCG@10",
    "AmazonCounterfactualClassification": "accuracy",
    "TweetEvalClassification": "accuracy, mean of 4 subtasks",
    "CustomerReviewsClassification": "accuracy, cross-validated",
    "TwitterURLCorpus": "max AP",
    "WikiQAReranking": "MAP",
    "TrecQAReranking": "MAP",
    "NFCorpusOriginal": "nDCG@10",
    "CustomerReviewsClustering": "V-measure",
}
# LM accuracies shown (task, metric) and WikiText-2 perplexity
LM_ACCURACY_COLUMNS: dict[str, tuple[str, str]] = {
    "MMLU": ("MMLU", "acc"),
    "ARC-Easy": ("ARC-E", "acc_norm"),
    "HellaSwag": ("HellaSwag", "acc_norm"),
}


def split_averages(summary: dict[str, Any]) -> bool:
    """Whether the table shows a held-out and an all-task average (the adapter recorded
    ``train_splits_used``) rather than one average."""
    return summary.get("train_splits_used") is not None


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the report table, the GEM − PromptEOL row last if both ran."""
    if summary.get("out_of_domain"):
        return validation_table_rows(summary)
    mteb_tasks = [t for t in MTEB_COLUMNS if t in summary.get("mteb_tasks", [])]
    lm_tasks = [t for t in LM_ACCURACY_COLUMNS if t in summary.get("lm_tasks", [])]
    has_ppl = "WikiText-2" in summary.get("lm_tasks", [])
    in_domain = set(summary.get("in_domain_tasks") or [])
    split = split_averages(summary)
    header = ["Model"] + [MTEB_COLUMNS[t] + ("*" if t in in_domain else "") for t in mteb_tasks]
    if mteb_tasks:
        header += ["held-out avg", "all avg"] if split else ["MTEB avg"]
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
            if split:
                cells.append(_fmt(row.get("mteb_average_held_out")))
            cells.append(_fmt(row.get("mteb_average")))
        lm = row.get("lm") or {}
        for task in lm_tasks:
            metric = LM_ACCURACY_COLUMNS[task][1]
            values = lm.get(task, {})
            cells.append(_fmt_se(_percent(values.get(metric)), _percent(values.get(f"{metric}_se"))))
        if lm_tasks:
            cells.append(_fmt(_percent(row.get("lm_average"))))
        if has_ppl:
            cells.append(_fmt(lm.get("WikiText-2", {}).get("perplexity"), digits=2))
        rows.append(cells)
    difference = gem_minus_prompteol(summary)
    if difference is not None:
        cells = [difference["label"]] + [_signed(difference["mteb"].get(t)) for t in mteb_tasks]
        if mteb_tasks:
            if split:
                cells.append(_signed(difference.get("mteb_average_held_out")))
            cells.append(_signed(difference.get("mteb_average")))
        lm_difference = summary.get("lm_difference") or {}
        for task in lm_tasks:
            change = lm_difference.get(task)
            cells.append(_signed_se(_percent(change["difference"]), _percent(change["se"])) if change else "–")
        if lm_tasks:
            changes = [lm_difference[t]["difference"] for t in lm_tasks if t in lm_difference]
            cells.append(_signed(_percent(sum(changes) / len(changes))) if len(changes) == len(lm_tasks) else "–")
        if has_ppl:
            change = lm_difference.get("WikiText-2")
            cells.append(_signed(change["difference"], digits=2) if change else "–")
        rows.append(cells)
    return header, rows


def gem_minus_prompteol(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Per MTEB task (and the averages): the GEM row's score minus the PromptEOL row's; None
    unless both rows have scores."""
    by_id = {row.get("id"): row for row in summary["models"]}
    gem, prompteol = by_id.get("gem"), by_id.get("prompteol")
    if not gem or not prompteol or not gem.get("mteb") or not prompteol.get("mteb"):
        return None
    mteb = {task: gem["mteb"][task] - prompteol["mteb"][task] for task in gem["mteb"] if task in prompteol["mteb"]}
    result: dict[str, Any] = {"label": "GEM − PromptEOL", "mteb": mteb}
    for key in ("mteb_average", "mteb_average_held_out", "ood_average"):
        if gem.get(key) is not None and prompteol.get(key) is not None:
            result[key] = gem[key] - prompteol[key]
    if gem.get("family_averages") and prompteol.get("family_averages"):
        result["family_averages"] = {family: value - prompteol["family_averages"][family]
                                     for family, value in gem["family_averages"].items()
                                     if family in prompteol["family_averages"]}
    return result


def validation_table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A validation suite's table: its tasks in suite order (``*``: in-domain), then the OOD average."""
    tasks = list(summary.get("mteb_tasks", []))
    in_domain = set(summary.get("in_domain_tasks") or [])
    header = ["Model"] + [MTEB_COLUMNS.get(t, t) + ("*" if t in in_domain else "") for t in tasks] + ["OOD avg"]
    rows = [[row["display"]] + [_fmt(row.get("mteb", {}).get(t)) for t in tasks] + [_fmt(row.get("ood_average"))]
            for row in summary["models"]]
    difference = gem_minus_prompteol(summary)
    if difference is not None:
        rows.append([difference["label"]] + [_signed(difference["mteb"].get(t)) for t in tasks]
                    + [_signed(difference.get("ood_average"))])
    return header, rows


def family_table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A validation suite's second table: the family averages (``*``: a task of it in-domain), the OOD average."""
    from .validation import FAMILIES, family_is_in_domain

    tasks, in_domain = summary.get("mteb_tasks", []), summary.get("in_domain_tasks") or []
    families = [f for f in FAMILIES if any(f in (row.get("family_averages") or {}) for row in summary["models"])]
    header = ["Model"] + [f + ("*" if family_is_in_domain(f, tasks, in_domain) else "") for f in families] + ["OOD avg"]
    rows = [[row["display"]] + [_fmt((row.get("family_averages") or {}).get(f)) for f in families]
            + [_fmt(row.get("ood_average"))] for row in summary["models"]]
    difference = gem_minus_prompteol(summary)
    if difference is not None:
        rows.append([difference["label"]] + [_signed((difference.get("family_averages") or {}).get(f)) for f in families]
                    + [_signed(difference.get("ood_average"))])
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(cells) + " |" for cells in rows])


def _validation_notes(summary: dict[str, Any]) -> list[str]:
    """The lines under a validation table: what each column measures and the OOD rule."""
    tasks = list(summary.get("mteb_tasks", []))
    ood = summary.get("out_of_domain") or {}
    lines = ["", "Scores are x100. " + "; ".join(f"{MTEB_COLUMNS.get(t, t)}: {MTEB_METRICS.get(t, 'main score')}"
                                                 for t in tasks) + "."]
    lines.append(f"OOD avg: mean over the {len(ood.get('tasks', []))} out-of-domain task(s) "
                 f"({', '.join(MTEB_COLUMNS.get(t, t) for t in ood.get('tasks', [])) or 'none'}). "
                 + (f"Columns marked * are in-domain and left out of it: {ood.get('in_domain_reason')}."
                    if summary.get("in_domain_tasks") else f"No task is in-domain: {ood.get('in_domain_reason')}."))
    return lines


def _validation_sections(summary: dict[str, Any]) -> list[str]:
    """A validation report's family table and per-subtask details."""
    from .validation import TASK_FAMILIES

    tasks = list(summary.get("mteb_tasks", []))
    header, rows = family_table_rows(summary)
    families = "; ".join(f"{family}: {', '.join(MTEB_COLUMNS.get(t, t) for t in tasks if TASK_FAMILIES.get(t) == family)}"
                         for family in [h.rstrip("*") for h in header[1:-1]])
    lines = ["", "## By family", "", *_markdown_table(header, rows), "",
              (f"A family's average is the mean of its tasks' scores ({families}). * marks a family with an "
               "in-domain task.")]
    detail_columns: list[tuple[str, str, str]] = []  # (task, key, label)
    for row in summary["models"]:
        for task, details in (row.get("mteb_details") or {}).items():
            keys = [(task, "subsets", name) for name in details.get("subsets", {})]
            keys += [(task, key, "MRR@10") for key in details if key != "subsets"]
            for task_key, key, name in keys:
                label = f"{MTEB_COLUMNS.get(task_key, task_key)} {name}"
                if (task_key, key, label) not in detail_columns:
                    detail_columns.append((task_key, key, label))
    if detail_columns:
        def cell(row: dict[str, Any], task: str, key: str, label: str) -> str:
            details = (row.get("mteb_details") or {}).get(task, {})
            value = details.get("subsets", {}).get(label.split(" ", 1)[1]) if key == "subsets" else details.get(key)
            return _fmt(value)

        lines += ["", "## Details", "",
                  *_markdown_table(["Model"] + [label for _, _, label in detail_columns],
                                   [[row["display"]] + [cell(row, *column) for column in detail_columns]
                                    for row in summary["models"]]),
                  "", ("TweetEval: accuracy per subtask (its column is their mean); WikiQA, TrecQA: MRR@10 "
                       "beside the MAP of their columns.")]
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    """The text of ``report.md``."""
    header, rows = table_rows(summary)
    lines = [f"# GEM evaluation: {summary['base']}" + (f" + {summary['adapter']}" if summary.get("adapter") else ""), ""]
    lines += [
        f"- suite: **{summary['suite']}**" + (f" (every task capped at {summary['limit']} items)" if summary.get("limit") else ""),
        f"- base model: `{summary['base']}`; adapter: `{summary.get('adapter') or 'none (GEM token untrained)'}`",
        f"- seed: {summary['seed']}; data: `{summary['data_dir']}`"
        + (f"; dtype: {summary['dtype']}" if summary.get("dtype") else ""),
        f"- wall time: {summary['wall_time_s']:.0f} s"
        + (" (the last sitting of a resumed run)" if summary.get("resumed") else "") + f"; finished {summary['finished']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in summary.get('versions', {}).items())}",
    ]
    copied = summary.get("copied") or {}
    if copied.get("rows") or copied.get("lm_tasks") or copied.get("embedding_caches"):
        taken = [f"finished rows {', '.join(copied['rows'])}"] if copied.get("rows") else []
        taken += [f"base-decoder LM tasks {', '.join(copied['lm_tasks'])}"] if copied.get("lm_tasks") else []
        taken += ([f"the embeddings stored for {', '.join(copied['embedding_caches'])}"]
                  if copied.get("embedding_caches") else [])
        lines.append(f"- baselines taken from the earlier run `{summary['baselines_from']}` (same base, suite, tasks, "
                     f"seed, data and dtype; checked): {'; '.join(taken)}")
    lines += [
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    mteb_tasks = [t for t in MTEB_COLUMNS if t in summary.get("mteb_tasks", [])]
    in_domain = [t for t in mteb_tasks if t in set(summary.get("in_domain_tasks") or [])]
    held_out = [t for t in mteb_tasks if t not in in_domain]
    average = ". MTEB avg: mean of the MTEB columns." if mteb_tasks else ""
    if mteb_tasks and split_averages(summary):
        average = (f". held-out avg: mean over the {len(held_out)} task(s) whose train split the adapter's recipe "
                   f"did not use ({', '.join(MTEB_COLUMNS[t] for t in held_out) or 'none'}); all avg: mean over all "
                   f"{len(mteb_tasks)}.")
    if summary.get("out_of_domain"):
        lines += _validation_notes(summary)
    else:
        lines += ["", "Scores are x100. " + "; ".join(
            f"{MTEB_COLUMNS[t]}: {MTEB_METRICS[t]}" for t in MTEB_COLUMNS if t in summary.get("mteb_tasks", []))
            + average]
    if split_averages(summary) and not summary.get("out_of_domain"):
        used = ", ".join(summary.get("train_splits_used") or []) or "none"
        lines.append(f"Columns marked * are in-domain: the adapter's recipe trained on the task's train split (the "
                     f"adapter's train_summary.json, train_splits_used: {used}); the scores are still on the test split.")
    if summary.get("lm_tasks"):
        lines.append("MMLU: accuracy of the most likely of ' A'..' D'; ARC-E and HellaSwag: length-normalised "
                     "accuracy (log-likelihood / characters of the choice); ± is the binomial standard error "
                     "sqrt(p(1-p)/n); LM avg: mean of those accuracies; "
                     "WikiText-2: sliding-window perplexity (lower is better). GEM tokens are excluded from the "
                     "log-softmax, as they are from generation.")
        lines += [f"The LM columns of {', '.join(group)} are one measurement of one decoder."
                  for group in summary.get("lm_shared_rows", [])]
    difference = gem_minus_prompteol(summary)
    if difference is not None:
        columns = [t for t in mteb_tasks if t in difference["mteb"]]
        above = [MTEB_COLUMNS[t] for t in columns if difference["mteb"][t] > 0]
        below = [MTEB_COLUMNS[t] for t in columns if difference["mteb"][t] <= 0]
        text = (f"GEM − PromptEOL: the GEM row minus the PromptEOL row, per task; GEM is above PromptEOL on "
                f"{len(above)} of {len(columns)} task(s)" + (f" (not on {', '.join(below)})" if below else "") + ".")
        if summary.get("lm_difference"):
            text += (" In the LM columns it is the adapter minus the base decoder (PromptEOL's LM columns) "
                     "on the same items, ± the paired standard error.")
        if difference.get("ood_average") is not None:
            text += f" OOD avg: {_signed(difference['ood_average'])}."
        lines += [text]
    if summary.get("out_of_domain"):
        lines += _validation_sections(summary)
    if summary.get("lm_difference"):
        lines += ["", "## Language model: adapter minus base decoder", ""]
        for task, change in summary["lm_difference"].items():
            if task == "WikiText-2":
                lines.append(f"- {task}: perplexity {change['gem']:.2f} vs {change['base']:.2f} "
                             f"({_signed(100.0 * change['relative'])}%)")
            else:
                lines.append(f"- {task} ({change['metric']}): {100 * change['gem']:.1f} vs {100 * change['base']:.1f}, "
                             f"difference {_signed_se(100 * change['difference'], 100 * change['se'])} "
                             f"(paired standard error over the same {change['n']:,} items)")
    lines += ["", "## What was evaluated", ""]
    lines += [f"- {name}: {note}" for name, note in summary.get("notes", {}).items()]
    lines += ["", "## Models", ""]
    for row in summary["models"]:
        lines.append(f"- **{row['display']}**: {row['description']}"
                     + (f"; results `{row['results_file']}`" if row.get("results_file") else "")
                     + f"; {row['seconds']:.0f} s" + (" (finished in an earlier sitting)" if row.get("resumed") else "")
                     + (" (scores taken from the earlier run)" if row.get("copied_from") else ""))
    for key, seconds in summary.get("lm_seconds", {}).items():
        lines.append(f"- language-model metrics of the {key} decoder: {seconds:.0f} s"
                     + (" (some or all measured in the earlier run)" if key == "base" and copied.get("lm_tasks") else ""))
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
    if mteb_tasks and summary.get("out_of_domain"):
        scored = [row for row in summary["models"] if row.get("mteb")]
        header, _ = validation_table_rows(summary)
        panels.append(("Validation tasks (x100)", header[1:],
                       {row["display"]: [row["mteb"].get(t) for t in summary["mteb_tasks"]] + [row.get("ood_average")]
                        for row in scored}))
        header, _ = family_table_rows(summary)
        families = [label.rstrip("*") for label in header[1:-1]]
        panels.append(("Families (x100)", header[1:],
                       {row["display"]: [(row.get("family_averages") or {}).get(f) for f in families]
                        + [row.get("ood_average")] for row in scored}))
    elif mteb_tasks:
        in_domain = set(summary.get("in_domain_tasks") or [])
        groups = [MTEB_COLUMNS[t] + ("*" if t in in_domain else "") for t in mteb_tasks]
        averages = ["mteb_average_held_out", "mteb_average"] if split_averages(summary) else ["mteb_average"]
        groups += ["held-out avg", "all avg"] if split_averages(summary) else ["MTEB avg"]
        bars = {row["display"]: [row.get("mteb", {}).get(t) for t in mteb_tasks] + [row.get(k) for k in averages]
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
    if summary.get("out_of_domain"):  # two wide panels (tasks, families): one above the other
        figure, axes = plt.subplots(len(panels), 1, figsize=(4 + 0.3 * max(widths), 5.2 * len(panels)), squeeze=False)
        axes = axes.T
    else:
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


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: float | None, digits: int = 1) -> str:
    if _missing(value):
        return "–"
    return f"{value:.{digits}f}"


def _fmt_se(value: float | None, se: float | None, digits: int = 1) -> str:
    """``value ± se`` (just the value when there is no standard error)."""
    if _missing(value) or _missing(se):
        return _fmt(value, digits)
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def _signed(value: float | None, digits: int = 1) -> str:
    if _missing(value):
        return "–"
    return f"{value:+.{digits}f}"


def _signed_se(value: float | None, se: float | None, digits: int = 1) -> str:
    if _missing(value) or _missing(se):
        return _signed(value, digits)
    return f"{value:+.{digits}f} ± {se:.{digits}f}"
