"""Data-parallel training through accelerate's own launcher: 2 CPU processes (gloo) vs 1.

``accelerate launch --multi_gpu --num_processes 2`` with no GPU (torchrun, gloo; accelerate's ``--cpu``
launches a single process unless MPI is set up) runs ``train()`` in two processes, each with half
the batch; the global batch (2 x 2 chunks) is the 1-process run's (1 x 4), so both runs see the
same chunks per step and must end with the same adapter, up to float reordering.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_base
from safetensors import safe_open

TESTS = Path(__file__).resolve().parent
ACCELERATE = Path(sys.executable).with_name("accelerate")
SENTENCES = [f"Sentence {i} talks about the {w} near the river. Another remark follows it, with {i % 5} words."
             for i, w in enumerate(["dog", "cat", "boat", "tree", "house", "car", "bird", "stone"] * 6)]
# Each run records the dataset indices its collator received, per rank, then trains.
SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_training_config
from gem_adapter.training.collator import GEMCollator
from gem_adapter.training.run import train

rank = int(os.environ.get("RANK", "0"))
call = GEMCollator.__call__
def recording(self, features):
    with open(os.path.join({record!r}, f"rank{{rank}}.jsonl"), "a") as handle:
        handle.write(json.dumps([int(f["index"]) for f in features]) + "\\n")
    return call(self, features)
GEMCollator.__call__ = recording
config = tiny_training_config({base!r}, {corpus!r}, {out!r}, max_steps=2, per_device_train_batch_size={batch},
                              lora_dropout=0.0, eval_chunks=0, save_steps=2, use_cpu=True, base_dtype="float32",
                              dataloader_num_workers=0, dataloader_pin_memory=False, logging_steps=1)
train(config)
"""
TOLERANCE = 1e-4  # max abs difference of any adapter weight (measured 3e-8); lr 5e-3, 2 AdamW steps


def run_training(tmp_path: Path, name: str, processes: int, batch: int, base: Path, corpus: Path) -> tuple[Path, Path]:
    out, record = tmp_path / name, tmp_path / f"{name}-record"
    record.mkdir()
    script = tmp_path / f"{name}.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), record=str(record), base=str(base), corpus=str(corpus),
                                    out=str(out), batch=batch))
    if processes == 1:
        command = [sys.executable, str(script)]
    else:
        # --multi_gpu is accelerate's torchrun launcher; without a GPU each process runs on the CPU over gloo
        # (accelerate's --cpu launches one process unless MPI is set up).
        command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, record


def tensors(folder: Path) -> dict:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def batches(record: Path, rank: int) -> list[list[int]]:
    path = record / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")
def test_two_cpu_processes_train_the_same_adapter_as_one(tmp_path):
    base = save_tiny_base(tmp_path / "tiny")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(SENTENCES))
    single, single_record = run_training(tmp_path, "one", 1, 4, base, corpus)
    double, double_record = run_training(tmp_path, "two", 2, 2, base, corpus)

    # the first two batches are the two steps' (the dataloaders may fetch one more ahead)
    one = batches(single_record, 0)[:2]
    rank0, rank1 = batches(double_record, 0)[:2], batches(double_record, 1)[:2]
    assert len(one) == len(rank0) == len(rank1) == 2
    for step in range(2):
        assert not set(rank0[step]) & set(rank1[step])  # each rank sees different chunks
        assert sorted(rank0[step] + rank1[step]) == sorted(one[step])  # together, the 1-process batch

    a, b = tensors(single), tensors(double)
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= TOLERANCE, worst
    losses = [json.loads((folder / "train_summary.json").read_text())["train_loss"] for folder in (single, double)]
    assert abs(losses[0] - losses[1]) <= 1e-4 * abs(losses[0]), losses  # the loss is not divided by the processes
    assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # it trained
    summary = json.loads((double / "train_summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["train_tokens_seen"] == json.loads((single / "train_summary.json").read_text())["train_tokens_seen"]
    checkpoint = double / "checkpoint-2"  # written by both processes, renamed into place by the main one
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert not (double / ".staging").exists()


def test_fsdp_is_refused_with_the_data_parallel_alternative_named(tmp_path, monkeypatch):
    """GEMTrainer calls the unwrapped decoder, past FSDP's root unit: FSDP must stop before training."""
    from conftest import tiny_training_config
    from datasets import Dataset
    from transformers import Trainer

    from gem_adapter import GEMConfigError
    from gem_adapter.training.run import build_peft_model, make_collator
    from gem_adapter.training.trainer import GEMTrainer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(SENTENCES))
    config = tiny_training_config(save_tiny_base(tmp_path / "base"), corpus, tmp_path / "out")
    gem = build_peft_model(config)
    create = Trainer.create_accelerator_and_postprocess

    def as_under_fsdp(self):  # what accelerate reports when launched with an FSDP plugin
        create(self)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_under_fsdp)
    with pytest.raises(GEMConfigError, match=r"FSDP is not supported.*accelerate launch --multi_gpu"):
        GEMTrainer(model=gem.model, args=config, data_collator=make_collator(config, gem),
                   processing_class=gem.tokenizer, train_dataset=Dataset.from_dict({"input_ids": [[1, 2, 3]], "index": [0]}),
                   gem_token_ids=gem.gem_token_ids)
