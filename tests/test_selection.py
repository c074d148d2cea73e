"""Checkpoint selection on the validation suite during ``gem train`` (``validation_eval``, ``select_best_by``)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SENTENCES, SHARED_DATA, make_tokenizer, tiny_model, tiny_training_config
from safetensors import safe_open

from gem_adapter import GEMConfigError
from gem_adapter.training.run import train
from gem_adapter.training.selection import metric_name


@pytest.fixture
def setup(tmp_path):
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(SENTENCES))
    return folder, corpus


def config(setup, out, **overrides):
    base, corpus = setup
    values = {"max_steps": 6, "eval_strategy": "steps", "eval_steps": 2, "save_steps": 2, "validation_eval": True}
    return tiny_training_config(base, corpus, out, **{**values, **overrides})


def tensors(path):
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


class ScriptedScorer:
    """A scorer whose OOD averages are given in advance, one per evaluation; it also draws from
    torch's global generator, as mteb's evaluators (which reseed it) do."""

    def __init__(self, values):
        self.values, self.models = list(values), []

    def __call__(self, gem):
        self.models.append(gem)
        torch.manual_seed(1234)
        value = self.values[len(self.models) - 1]
        return {"scores": {"TwitterURLCorpus": value, "STSBenchmark": -value}, "ood_average": value,
                "family_averages": {"pair classification": value, "similarity": -value}}


def test_the_output_adapter_is_the_checkpoint_with_the_best_logged_validation_score(setup, tmp_path):
    scorer = ScriptedScorer([1.0, 5.0, 2.0])  # evaluations at steps 2, 4, 6: step 4 is the best
    out = train(config(setup, tmp_path / "out", select_best_by="ood_average", save_total_limit=1), validation_scorer=scorer)
    logged = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["eval_validation_ood_average"] for r in logged if "eval_validation_ood_average" in r}
    assert by_step == {2: 1.0, 4: 5.0, 6: 2.0}
    assert all(r.get("eval_validation_pair_classification") == r["eval_validation_ood_average"]
               for r in logged if "eval_validation_ood_average" in r)
    summary = json.loads((out / "train_summary.json").read_text())["validation"]
    assert (summary["metric"], summary["best_step"], summary["best_value"]) == ("validation_ood_average", 4, 5.0)
    assert summary["adapter_from"] == "checkpoint-4" and summary["by_step"]["6"]["validation_TwitterURLCorpus"] == 2.0
    # the best checkpoint outlived save_total_limit=1, and the output adapter is its weights, not step 6's
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    best, final = tensors(out / "checkpoint-4"), tensors(out)
    assert best.keys() == final.keys() and all(torch.equal(value, final[key]) for key, value in best.items())
    assert scorer.models and all(model is scorer.models[0] for model in scorer.models)  # the model being trained


def test_scoring_validation_leaves_the_training_run_unchanged(setup, tmp_path):
    plain = train(config(setup, tmp_path / "plain", validation_eval=False))
    scored = train(config(setup, tmp_path / "scored"), validation_scorer=ScriptedScorer([3.0, 2.0, 1.0]))
    first, second = tensors(plain), tensors(scored)  # no select_best_by: the last step's adapter
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert "validation" not in json.loads((plain / "train_summary.json").read_text())
    assert json.loads((scored / "train_summary.json").read_text())["validation"]["by_step"]["2"] == {
        "validation_TwitterURLCorpus": 3.0, "validation_STSBenchmark": -3.0, "validation_ood_average": 3.0,
        "validation_pair_classification": 3.0, "validation_similarity": -3.0}


@pytest.mark.skipif(not (SHARED_DATA / "validation").is_dir(), reason=f"no validation data at {SHARED_DATA}")
def test_the_real_validation_slice_scores_a_tiny_model_at_each_evaluation(setup, tmp_path):
    tasks = ["TwitterURLCorpus", "CustomerReviewsClustering", "STSBenchmark"]
    out = train(config(setup, tmp_path / "out", max_steps=4, validation_limit=4, validation_tasks=tasks,
                       validation_data=str(SHARED_DATA), select_best_by="pair_classification"))
    summary = json.loads((out / "train_summary.json").read_text())["validation"]
    assert summary["metric"] == "validation_pair_classification"
    assert set(summary["by_step"]) == {"2", "4"} and summary["tasks"] == tasks and summary["limit"] == 4
    scores = summary["by_step"][str(summary["best_step"])]
    assert summary["best_value"] == scores["validation_pair_classification"] == max(
        step["validation_pair_classification"] for step in summary["by_step"].values())
    # no pairs in this recipe: STSB is out-of-domain and counts in the OOD average
    assert scores["validation_ood_average"] == pytest.approx(sum(scores[f"validation_{t}"] for t in tasks) / 3)


def test_the_fields_are_checked_and_off_by_default(setup, tmp_path):
    default = tiny_training_config(*setup, tmp_path / "a")
    assert not default.validation_eval and default.select_best_by is None
    assert default.metric_for_best_model is None and not default.load_best_model_at_end
    chosen = config(setup, tmp_path / "b", select_best_by="Classification")
    assert (chosen.metric_for_best_model, chosen.greater_is_better, chosen.load_best_model_at_end) == (
        "validation_classification", True, True)
    assert metric_name("twitterurlcorpus") == "validation_TwitterURLCorpus"
    assert metric_name("eval_validation_ood_average") == "validation_ood_average"
    refused = {
        "select_best_by needs validation_eval: true": {"validation_eval": False, "select_best_by": "ood_average"},
        "select_best_by 'f1' is not a validation metric of this run; choose from ood_average, classification":
            {"select_best_by": "f1"},
        "select_best_by 'reranking' is not a validation metric of this run; choose from ood_average, pair_classification":
            {"select_best_by": "reranking", "validation_tasks": ["TwitterURLCorpus"]},
        "save_steps equal to eval_steps (now steps every 4, steps every 2)": {"select_best_by": "ood_average", "save_steps": 4},
        "validation_eval scores the adapter at evaluation steps": {"eval_strategy": "no"},
        "validation_tasks: unknown task 'MTEB'; choose from AmazonCounterfactualClassification":
            {"validation_tasks": ["MTEB"]},
        "validation_limit must be an integer >= 1 or None": {"validation_limit": 0},
    }
    for message, overrides in refused.items():
        with pytest.raises(GEMConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            config(setup, tmp_path / "c", **overrides)
