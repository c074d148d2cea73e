"""``gem eval`` (the click command object) on a tiny model folder, and the report it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

from gem_adapter.cli.evaluate import eval_command
from gem_adapter.errors import GEMError
from gem_adapter.evaluation.report import render_markdown, table_rows, write_report
from gem_adapter.evaluation.runner import (
    SUITES,
    lm_differences,
    mteb_averages,
    train_splits_used,
)

needs_data = pytest.mark.skipif(not (SHARED_DATA / "README.md").is_file(), reason=f"no evaluation data at {SHARED_DATA}")


@needs_data
def test_eval_on_a_tiny_model_writes_results_summary_and_report(tiny_model_folder, tmp_path):
    from mteb.results import ModelResult

    out = tmp_path / "eval"
    args = ["--base", str(tiny_model_folder), "--tasks", "STSBenchmark,Banking77Clustering,SciFact,arc-easy,WikiText-2",
            "--baselines", "mean,prompteol", "--out", str(out), "--data-dir", str(SHARED_DATA), "--limit", "4"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    assert "Model | STSB | B77 clust | SciFact | MTEB avg | ARC-E | LM avg | WikiText-2 ppl" in result.output
    assert "GEM − PromptEOL | " in result.output  # the difference row
    for name in ("report.md", "report.png", "summary.json", "results/mean.json", "results/prompteol.json",
                 "results/gem.json", "results/lm-base.json"):
        assert (out / name).is_file(), name
    model_result = ModelResult.from_disk(out / "results" / "gem.json")
    assert sorted(r.task_name for r in model_result.task_results) == ["Banking77Clustering", "STSBenchmark", "SciFact"]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["id"] for row in summary["models"]] == ["mean", "prompteol", "gem"]
    arc = summary["models"][0]["lm"]["ARC-Easy"]
    assert arc["n"] == 4 and arc["acc_norm_se"] == pytest.approx((arc["acc_norm"] * (1 - arc["acc_norm"]) / 4) ** 0.5)
    assert "correct" not in arc  # per-item outcomes stay in results/lm-*.json
    assert len(json.loads((out / "results" / "lm-base.json").read_text())["ARC-Easy"]["correct"]["acc_norm"]) == 4
    assert summary["train_splits_used"] is None and summary["in_domain_tasks"] == [] and summary["lm_difference"] == {}
    report = (out / "report.md").read_text()
    assert "STSBenchmark: 4 of 1,379 pairs (seeded random subset, seed 0)" in report
    assert "WikiText-2: first 128 tokens of the test file; window 64, stride 32" in report
    assert "Banking77Clustering: 4 of 3,080 test texts (seeded random subset, seed 0, stratified by label)" in report
    assert "1 k-means run(s)" in report
    assert "tiny-llama GEM (untrained)" in report

    again = CliRunner().invoke(eval_command, args)
    assert again.exit_code == 1 and f"output folder {out} is not empty; pass --force to replace its run, --resume to continue it, or choose another --out" in again.output


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


def test_suites_sizes():
    quick, full = SUITES["quick"], SUITES["full"]
    assert (quick.sts_pairs, quick.banking_test, quick.clustering_texts, quick.mmlu_per_subject, quick.arc,
            quick.hellaswag, quick.wikitext_tokens) == (200, 154, 308, 6, 100, 40, 2048)
    # full: every embedding task whole; MMLU >= 1,400 stratified, HellaSwag >= 1,000, ARC-Easy and WikiText-2 whole
    assert full.clustering_texts is None and full.sts_pairs is None and full.scifact_corpus is None
    assert full.mmlu_total >= 1400 and full.mmlu_per_subject is None and full.mmlu_subject_step == 1
    assert full.hellaswag >= 1000 and full.arc is None and full.wikitext_tokens is None
    smoke = full.capped(8)
    assert (smoke.clustering_texts, smoke.clustering_runs, smoke.mmlu_total, smoke.mmlu_per_subject, smoke.hellaswag) == (
        8, 1, None, 8, 8)


def test_in_domain_tasks_come_from_the_adapters_train_summary(tmp_path):
    assert train_splits_used(None) is None and train_splits_used(tmp_path) is None  # no file: one average
    (tmp_path / "train_summary.json").write_text(json.dumps({"global_step": 80}))
    assert train_splits_used(tmp_path) is None  # a summary from before the key: one average
    (tmp_path / "train_summary.json").write_text(json.dumps(
        {"train_splits_used": ["stsbenchmark", "Banking77Classification", "Banking77Clustering", "MSMARCO"]}))
    used = train_splits_used(tmp_path)
    assert used == ["STSBenchmark", "Banking77Classification", "Banking77Clustering", "MSMARCO"]
    scores = {"STSBenchmark": 80.0, "SICK-R": 60.0, "Banking77Classification": 70.0, "Banking77Clustering": 30.0,
              "SciFact": 50.0}
    assert mteb_averages(scores, used) == {"mteb_average": 58.0, "mteb_average_held_out": 55.0}
    assert mteb_averages(scores, None) == {"mteb_average": 58.0}
    assert mteb_averages({"STSBenchmark": 80.0}, used)["mteb_average_held_out"] is None
    (tmp_path / "train_summary.json").write_text(json.dumps({"train_splits_used": "STSBenchmark"}))
    with pytest.raises(GEMError, match="must be a list of MTEB task names"):
        train_splits_used(tmp_path)


def test_lm_differences_pair_the_same_items():
    gem = {"ARC-Easy": {"acc_norm": 0.6, "correct": {"acc_norm": [1, 1, 0, 0, 1]}},
           "MMLU": {"acc": 0.5, "correct": {"acc": [1, 0]}},
           "WikiText-2": {"perplexity": 22.0}}
    base = {"ARC-Easy": {"acc_norm": 0.4, "correct": {"acc_norm": [1, 0, 0, 1, 0]}},
            "MMLU": {"acc": 0.5, "correct": {"acc": [0, 1]}},
            "WikiText-2": {"perplexity": 20.0}}
    changes = lm_differences(gem, base)
    assert changes["ARC-Easy"]["difference"] == pytest.approx(0.2) and changes["ARC-Easy"]["n"] == 5
    assert changes["ARC-Easy"]["se"] == pytest.approx((0.56 / 5) ** 0.5)
    assert changes["MMLU"]["difference"] == 0.0 and changes["MMLU"]["se"] == pytest.approx(0.5 ** 0.5)  # d = [1, -1]
    assert changes["WikiText-2"]["difference"] == 2.0 and changes["WikiText-2"]["relative"] == pytest.approx(0.1)


def test_report_with_in_domain_tasks_standard_errors_and_the_prompteol_difference(tmp_path):
    used = ["STSBenchmark", "Banking77Classification"]
    tasks = ["STSBenchmark", "SICK-R", "Banking77Classification", "SciFact"]

    def row(row_id, display, scores, lm):
        return {"id": row_id, "display": display, "description": "d", "seconds": 1.0, "mteb": scores,
                **mteb_averages(scores, used), "lm": lm, "lm_average": lm["ARC-Easy"]["acc_norm"]}

    base_lm = {"ARC-Easy": {"acc_norm": 0.4, "acc_norm_se": 0.01}}
    gem_lm = {"ARC-Easy": {"acc_norm": 0.42, "acc_norm_se": 0.011}}
    summary = {
        "base": "m", "adapter": "runs/a", "suite": "full", "limit": None, "seed": 0, "data_dir": "/d",
        "mteb_tasks": tasks, "lm_tasks": ["ARC-Easy"],
        "models": [row("prompteol", "m PromptEOL", dict(zip(tasks, [70.0, 60.0, 50.0, 40.0])), base_lm),
                   row("gem", "m GEM (a)", dict(zip(tasks, [80.0, 58.0, 70.0, 45.0])), gem_lm)],
        "notes": {}, "lm_shared_rows": [], "lm_seconds": {}, "versions": {}, "wall_time_s": 1.0, "finished": "now",
        "lm_difference": {"ARC-Easy": {"metric": "acc_norm", "gem": 0.42, "base": 0.4, "difference": 0.02,
                                       "se": 0.005, "n": 2376}},
        "train_splits_used": used, "in_domain_tasks": used, "dtype": "bfloat16",
    }
    header, rows = table_rows(summary)
    assert header == ["Model", "STSB*", "SICK-R", "Banking77*", "SciFact", "held-out avg", "all avg", "ARC-E", "LM avg"]
    assert rows == [
        ["m PromptEOL", "70.0", "60.0", "50.0", "40.0", "50.0", "55.0", "40.0 ± 1.0", "40.0"],
        ["m GEM (a)", "80.0", "58.0", "70.0", "45.0", "51.5", "63.2", "42.0 ± 1.1", "42.0"],
        ["GEM − PromptEOL", "+10.0", "-2.0", "+20.0", "+5.0", "+1.5", "+8.2", "+2.0 ± 0.5", "+2.0"],
    ]
    text = render_markdown(summary)
    assert "- seed: 0; data: `/d`; dtype: bfloat16" in text  # what `auto` picked changes the scores
    assert "held-out avg: mean over the 2 task(s) whose train split the adapter's recipe did not use (SICK-R, SciFact)" in text
    assert "Columns marked * are in-domain" in text and "train_splits_used: STSBenchmark, Banking77Classification" in text
    assert "GEM is above PromptEOL on 3 of 4 task(s) (not on SICK-R)" in text
    assert "- ARC-Easy (acc_norm): 42.0 vs 40.0, difference +2.0 ± 0.5 (paired standard error over the same 2,376 items)" in text
    # without train_splits_used: one average, as before
    summary.update(train_splits_used=None, in_domain_tasks=[])
    header, _ = table_rows(summary)
    assert header[1:6] == ["STSB", "SICK-R", "Banking77", "SciFact", "MTEB avg"]
    assert write_report(summary, tmp_path)[1].stat().st_size > 10_000


def random_adapter(base, out, seed: int = 1):
    """A GEM adapter with a random LoRA on q/v and random GEM rows, saved as training saves one."""
    import torch
    from peft import LoraConfig, get_peft_model

    from gem_adapter import GEMConfig, GEMModel
    from gem_adapter.config import base_fingerprint

    config = GEMConfig(base_model=str(base))
    gem = GEMModel.from_pretrained(base, config=config)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      trainable_token_indices=list(gem.gem_token_ids))
    model = get_peft_model(gem.model, lora)
    model.save_pretrained(out, save_embedding_layers=False)
    gem.tokenizer.save_pretrained(out)
    config.base_fingerprint = base_fingerprint(model.get_base_model().config)
    config.save(out)
    return out


@needs_data
def test_eval_with_an_adapter_marks_in_domain_tasks_and_pairs_the_lm_difference(tiny_model_folder, tmp_path):
    adapter = random_adapter(tiny_model_folder, tmp_path / "adapter")
    (adapter / "train_summary.json").write_text(json.dumps({"train_splits_used": ["STSBenchmark"]}))
    out = tmp_path / "eval"
    args = ["--base", str(tiny_model_folder), "--adapter", str(adapter), "--tasks", "STSBenchmark,SciFact,ARC-Easy",
            "--baselines", "prompteol", "--out", str(out), "--data-dir", str(SHARED_DATA), "--limit", "4"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    assert "Model | STSB* | SciFact | held-out avg | all avg | ARC-E | LM avg" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_splits_used"] == ["STSBenchmark"] and summary["in_domain_tasks"] == ["STSBenchmark"]
    prompteol, gem = summary["models"]
    for row in (prompteol, gem):
        assert row["mteb_average_held_out"] == pytest.approx(row["mteb"]["SciFact"])
        assert row["mteb_average"] == pytest.approx((row["mteb"]["SciFact"] + row["mteb"]["STSBenchmark"]) / 2)
    change = summary["lm_difference"]["ARC-Easy"]
    outcomes = {key: json.loads((out / "results" / f"lm-{key}.json").read_text())["ARC-Easy"]["correct"]["acc_norm"]
                for key in ("base", "gem")}
    assert change["n"] == 4 and change["difference"] == pytest.approx(gem["lm"]["ARC-Easy"]["acc_norm"]
                                                                      - prompteol["lm"]["ARC-Easy"]["acc_norm"])
    d = [a - b for a, b in zip(outcomes["gem"], outcomes["base"])]
    mean = sum(d) / 4
    assert change["se"] == pytest.approx((sum((x - mean) ** 2 for x in d) / 4 / 4) ** 0.5)
    report = (out / "report.md").read_text()
    assert "| GEM − PromptEOL |" in report and "## Language model: adapter minus base decoder" in report


def test_embedding_store_keeps_vectors_across_encoders_and_embeds_only_what_is_missing(tmp_path):
    from conftest import tiny_gem

    from gem_adapter.evaluation import EmbeddingStore, GEMEncoder

    gem = tiny_gem("llama")
    seen: list[list[str]] = []
    original = gem.encode
    gem.encode = lambda texts, **kwargs: seen.append(list(texts)) or original(texts, **kwargs)
    # a text whose digest ends in a zero byte: numpy's S32 would drop it and miss the text on reload
    zero_tail = next(f"text {i}" for i in range(10_000) if EmbeddingStore.key(f"text {i}")[-1] == 0)
    texts = ["a", "bb bb", "ccc ccc ccc", zero_tail, "a"]
    first = GEMEncoder(gem, name="t", pooling="mean", store=EmbeddingStore(tmp_path / "store", chunk=2)).encode(texts)
    assert seen == [["ccc ccc ccc", zero_tail], ["bb bb", "a"]]  # longest first, two per file
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["chunk-000000.npz", "chunk-000001.npz"]

    seen.clear()
    reopened = EmbeddingStore(tmp_path / "store", chunk=2)
    assert len(reopened) == 4
    again = GEMEncoder(gem, name="t", pooling="mean", store=reopened).encode(texts + ["dd"])
    assert seen == [["dd"]]
    np.testing.assert_array_equal(again[:5], first)
    np.testing.assert_allclose(again[5], original(["dd"], pooling="mean")[0], atol=1e-6)
    assert (tmp_path / "store" / "chunk-000002.npz").is_file()


class Interrupted(BaseException):
    """Stands for the process being killed (a BaseException: nothing on the way catches it)."""


@needs_data
def test_an_interrupted_eval_resumes_to_the_uninterrupted_result(tiny_model_folder, tmp_path, monkeypatch):
    from gem_adapter.evaluation import EmbeddingStore, lm
    from gem_adapter.model import GEMModel

    adapter = random_adapter(tiny_model_folder, tmp_path / "adapter")
    embedded: list[tuple[str, str]] = []  # (pooling, text) of every text a decoder embeds
    original_encode = GEMModel.encode

    def counting_encode(self, texts, **kwargs):
        embedded.extend((kwargs.get("pooling"), text) for text in texts)
        return original_encode(self, texts, **kwargs)

    monkeypatch.setattr(GEMModel, "encode", counting_encode)

    def args(out):
        return ["--base", str(tiny_model_folder), "--adapter", str(adapter), "--tasks", "STSBenchmark,SciFact,ARC-Easy,WikiText-2",
                "--baselines", "prompteol", "--out", str(out), "--data-dir", str(SHARED_DATA), "--limit", "4"]

    whole = CliRunner().invoke(eval_command, args(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    expected = json.loads((tmp_path / "whole" / "summary.json").read_text())
    texts_per_row = {row: len({text for p, text in embedded if p == pooling}) for row, pooling in (("gem", "gem"),
                                                                                                   ("prompteol", "last"))}

    # 1. killed in the GEM row (embedded before the baselines) after its first saved file
    out = tmp_path / "stopped"
    original_add, stored = EmbeddingStore.add, []

    def add_then_die(self, texts, vectors):
        original_add(self, texts, vectors)
        if self.folder.name == "gem":
            stored.extend(texts)
            raise Interrupted

    monkeypatch.setattr(EmbeddingStore, "add", add_then_die)
    with pytest.raises(Interrupted):
        CliRunner().invoke(eval_command, args(out))
    assert not list((out / "results").iterdir()) and not (out / "embedding-cache" / "prompteol").exists()
    monkeypatch.setattr(EmbeddingStore, "add", original_add)

    # 2. resumed, killed again in the base decoder's WikiText-2 (its ARC-Easy is done)
    original_wikitext = lm.evaluate_wikitext2
    monkeypatch.setattr(lm, "evaluate_wikitext2", lambda *a, **k: (_ for _ in ()).throw(Interrupted()))
    embedded.clear()
    with pytest.raises(Interrupted):
        CliRunner().invoke(eval_command, args(out) + ["--resume"])
    gem_texts = {text for pooling, text in embedded if pooling == "gem"}
    assert gem_texts and not gem_texts & set(stored)  # the GEM file saved before the kill was not redone
    assert list(json.loads((out / "results" / "lm-base.json").read_text())) == ["ARC-Easy"]

    # 3. resumed to the end: no text embedded again, ARC-Easy only for the adapter's decoder
    monkeypatch.setattr(lm, "evaluate_wikitext2", original_wikitext)
    arc_runs = []
    original_arc = lm.evaluate_arc_easy
    monkeypatch.setattr(lm, "evaluate_arc_easy", lambda *a, **k: arc_runs.append(1) or original_arc(*a, **k))
    embedded.clear()
    done = CliRunner().invoke(eval_command, args(out) + ["--resume"])
    assert done.exit_code == 0, done.output
    assert (f"resuming {out}: finished rows: gem, prompteol; embeddings stored: gem {texts_per_row['gem']}, "
            f"prompteol {texts_per_row['prompteol']}; LM tasks of the base decoder finished: ARC-Easy") in done.output
    assert embedded == [] and len(arc_runs) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [row.get("resumed", False) for row in summary["models"]] == [True, True]
    for mine, theirs in zip(summary["models"], expected["models"]):
        assert mine["mteb"] == pytest.approx(theirs["mteb"], abs=1e-4)
        assert mine["lm"] == theirs["lm"]  # same items, same decoder: the same numbers
    assert summary["lm_difference"] == expected["lm_difference"]
    saved = json.loads((out / "results" / "lm-base.json").read_text())
    assert summary["lm_seconds"]["base"] == pytest.approx(sum(saved[task]["seconds"] for task in saved))  # both sittings
    report = (out / "report.md").read_text()
    assert "(the last sitting of a resumed run)" in report and report.count("(finished in an earlier sitting)") == 2


@needs_data
def test_an_lm_task_killed_mid_way_resumes_from_its_last_saved_batch(tiny_model_folder, tmp_path, monkeypatch):
    from gem_adapter.evaluation import lm

    def args(out):
        return ["--base", str(tiny_model_folder), "--tasks", "ARC-Easy", "--baselines", "prompteol", "--out", str(out),
                "--data-dir", str(SHARED_DATA), "--limit", "4"]  # 4 questions x 4 choices: 2 batches of 8

    assert CliRunner().invoke(eval_command, args(tmp_path / "whole")).exit_code == 0
    expected = json.loads((tmp_path / "whole" / "summary.json").read_text())
    out, original_save, saved = tmp_path / "stopped", lm.ScoreProgress.save, []

    def save_then_die(self, key, state):
        original_save(self, key, state)
        saved.append(state["batches"])
        if len(saved) == 1:
            raise Interrupted

    monkeypatch.setattr(lm.ScoreProgress, "save", save_then_die)
    with pytest.raises(Interrupted):
        CliRunner().invoke(eval_command, args(out))
    assert (out / "lm-progress" / "base" / "ARC-Easy.json").is_file() and not list((out / "results").iterdir())

    done = CliRunner().invoke(eval_command, args(out) + ["--resume"])
    assert done.exit_code == 0, done.output
    assert "partly scored, to continue: ARC-Easy of the base decoder" in done.output
    assert saved == [1, 2]  # the resumed sitting scored only the second batch
    summary = json.loads((out / "summary.json").read_text())
    assert [row["lm"] for row in summary["models"]] == [row["lm"] for row in expected["models"]]
    assert not (out / "lm-progress").exists()  # gone once the task's result is saved


def test_ctrl_c_says_how_to_resume(tiny_model_folder, tmp_path, monkeypatch):
    from gem_adapter import evaluation

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "run_evaluation", interrupted)
    out = tmp_path / "eval"
    result = CliRunner().invoke(eval_command, ["--base", str(tiny_model_folder), "--out", str(out)])
    assert result.exit_code == 130
    assert f"stopped; what is finished stays in {out}: run the same command with --resume to continue" in result.output


@needs_data
def test_resume_refuses_a_run_that_measured_something_else(tiny_model_folder, tmp_path):
    adapter = random_adapter(tiny_model_folder, tmp_path / "adapter")
    out = tmp_path / "eval"
    args = ["--base", str(tiny_model_folder), "--adapter", str(adapter), "--tasks", "STSBenchmark", "--baselines", "",
            "--out", str(out), "--data-dir", str(SHARED_DATA), "--limit", "4"]
    runner = CliRunner()
    result = runner.invoke(eval_command, args + ["--resume"])
    assert result.exit_code == 1 and f"resume: {out} holds no run.json of an earlier run; start it without --resume" in result.output
    assert runner.invoke(eval_command, args).exit_code == 0
    result = runner.invoke(eval_command, args + ["--resume", "--seed", "1"])
    assert result.exit_code == 1
    assert f"cannot resume {out}: it was started with seed 0, this call has 1; repeat the first call's arguments" in result.output
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")
    result = runner.invoke(eval_command, args + ["--resume"])
    assert result.exit_code == 1 and "it was started with adapter_digest" in result.output
    result = runner.invoke(eval_command, args + ["--resume", "--force"])
    assert result.exit_code == 2 and "--resume and --force contradict each other" in result.output
    (out / "embedding-cache" / "gem" / "chunk-000099.npz").write_bytes(b"stale")  # --force must not keep it
    assert runner.invoke(eval_command, args[:2] + args[4:] + ["--force"]).exit_code == 0
    assert not (out / "embedding-cache" / "gem" / "chunk-000099.npz").exists()


@needs_data
def test_the_last_token_row_reuses_the_mean_rows_forward_pass(tiny_model_folder, tmp_path, monkeypatch):
    from gem_adapter.model import GEMModel

    poolings_embedded = []
    original = GEMModel.encode
    monkeypatch.setattr(GEMModel, "encode", lambda self, texts, **kw: poolings_embedded.append(kw.get("pooling"))
                        or original(self, texts, **kw))

    def run(baselines, out):
        args = ["--base", str(tiny_model_folder), "--no-adapter", "--tasks", "STSBenchmark", "--baselines", baselines,
                "--out", str(out), "--data-dir", str(SHARED_DATA), "--limit", "6"]
        assert CliRunner().invoke(eval_command, args).exit_code == 0
        return {row["id"]: row["mteb"] for row in json.loads((out / "summary.json").read_text())["models"]}

    both = run("mean,last", tmp_path / "both")
    assert "last" not in poolings_embedded  # its vectors came with the mean row's pass
    alone = run("last", tmp_path / "alone")
    assert "last" in poolings_embedded
    assert both["last"] == pytest.approx(alone["last"], abs=1e-4)


@needs_data
def test_a_new_adapter_takes_the_baselines_of_an_earlier_run_and_computes_only_its_own(tiny_model_folder, tmp_path,
                                                                                      monkeypatch):
    from gem_adapter.evaluation import lm
    from gem_adapter.model import GEMModel

    def args(adapter, out, *extra):
        return ["--base", str(tiny_model_folder), "--adapter", str(adapter), "--tasks", "STSBenchmark,ARC-Easy",
                "--baselines", "prompteol", "--out", str(out), "--data-dir", str(SHARED_DATA), "--limit", "4", *extra]

    first, second = tmp_path / "first", tmp_path / "second"
    assert CliRunner().invoke(eval_command, args(random_adapter(tiny_model_folder, tmp_path / "a1"), first)).exit_code == 0
    poolings, arc_runs = [], []
    original_encode, original_arc = GEMModel.encode, lm.evaluate_arc_easy
    monkeypatch.setattr(GEMModel, "encode", lambda self, texts, **kw: poolings.append(kw.get("pooling"))
                        or original_encode(self, texts, **kw))
    monkeypatch.setattr(lm, "evaluate_arc_easy", lambda *a, **k: arc_runs.append(1) or original_arc(*a, **k))
    adapter2 = random_adapter(tiny_model_folder, tmp_path / "a2", seed=2)
    result = CliRunner().invoke(eval_command, args(adapter2, second, "--baselines-from", str(first)))
    assert result.exit_code == 0, result.output
    assert set(poolings) == {"gem"} and len(arc_runs) == 1  # only the new adapter's row and LM metrics ran

    earlier, summary = (json.loads((run / "summary.json").read_text()) for run in (first, second))
    (old_prompteol, old_gem), (prompteol, gem) = earlier["models"], summary["models"]
    assert prompteol["copied_from"] == str(first.resolve()) and "copied_from" not in gem
    assert prompteol["mteb"] == old_prompteol["mteb"] and prompteol["lm"] == old_prompteol["lm"]
    assert gem["mteb"] != old_gem["mteb"]  # another adapter, measured anew
    assert summary["copied"] == {"rows": ["prompteol"], "lm_tasks": ["ARC-Easy"], "embedding_caches": []}
    assert summary["lm_difference"]["ARC-Easy"]["n"] == 4
    report = (second / "report.md").read_text()
    assert f"baselines taken from the earlier run `{first.resolve()}`" in report
    assert "(scores taken from the earlier run)" in report


@needs_data
def test_baselines_are_taken_only_from_a_run_that_measured_them_the_same_way(tiny_model_folder, tmp_path):
    adapter = random_adapter(tiny_model_folder, tmp_path / "adapter")
    first = tmp_path / "first"

    def args(out, *extra, limit="4"):
        return ["--base", str(tiny_model_folder), "--adapter", str(adapter), "--tasks", "STSBenchmark",
                "--baselines", "", "--out", str(out), "--data-dir", str(SHARED_DATA), "--limit", limit, *extra]

    runner = CliRunner()
    assert runner.invoke(eval_command, args(first)).exit_code == 0
    refused = {
        "seed": (args(tmp_path / "b", "--baselines-from", str(first), "--seed", "1"),
                 f"cannot take baselines from {first}: it ran with seed 0, this call has 1; evaluate under the same"),
        "limit": (args(tmp_path / "c", "--baselines-from", str(first), limit="3"),
                  f"cannot take baselines from {first}: it ran with limit 4, this call has 3"),
        "not a run": (args(tmp_path / "d", "--baselines-from", str(tmp_path)),
                      f"--baselines-from {tmp_path} holds no run.json; name the --out folder of an earlier gem eval run"),
        "itself": (args(first, "--baselines-from", str(first), "--force"), "is this run's own --out; use --resume"),
    }
    for name, (call, message) in refused.items():
        result = runner.invoke(eval_command, call)
        assert result.exit_code == 1 and message in result.output, (name, result.output)
    assert not any((tmp_path / name).exists() for name in "bcd")  # refused before anything was written


def test_an_unfinished_baseline_row_brings_its_stored_embeddings(tmp_path):
    from gem_adapter.evaluation import EmbeddingStore
    from gem_adapter.evaluation.runner import copy_baselines

    source, out = tmp_path / "source", tmp_path / "out"
    EmbeddingStore(source / "embedding-cache" / "mean").add(["a text"], np.ones((1, 3), dtype=np.float32))
    EmbeddingStore(source / "embedding-cache" / "gem").add(["a text"], np.ones((1, 3), dtype=np.float32))
    copied = copy_baselines(source, out, ["mean"], ["STSBenchmark"], [])
    assert copied == {"rows": [], "lm_tasks": [], "embedding_caches": ["mean"]}
    into: dict[str, np.ndarray] = {}
    assert EmbeddingStore(out / "embedding-cache" / "mean").lookup("a text", into) and into["a text"].tolist() == [1, 1, 1]
    assert not (out / "embedding-cache" / "gem").exists()  # never the GEM row's
