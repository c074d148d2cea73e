"""Data-parallel training through accelerate's own launcher: 2 CPU processes (gloo) vs 1.

``accelerate launch --multi_gpu --num_processes 2`` with no GPU (torchrun, gloo; accelerate's ``--cpu``
launches a single process unless MPI is set up) runs ``train()`` in two processes, each with half
the batch; the global batch (2 x 2 chunks, 2 x 2 pairs) is the 1-process run's (1 x 4), so both runs
see the same chunks and pairs per step and must end with the same adapter, up to float reordering.
They train every term: mixed NTP, the contrastive views and the supervised pairs (whose in-batch
negatives are gathered across the processes), with plain SGD, a constant learning rate and no
gradient clipping, so a gradient off by any factor moves the weights by a different amount.
The gathering itself is also checked without a launcher, in two gloo processes of this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_base
from safetensors import safe_open

TESTS = Path(__file__).resolve().parent
ACCELERATE = Path(sys.executable).with_name("accelerate")
SENTENCES = [f"Sentence {i} talks about the {w} near the river. Another remark follows it, with {i % 5} words."
             for i, w in enumerate(["dog", "cat", "boat", "tree", "house", "car", "bird", "stone"] * 6)]
PAIR_LABELS = 3  # pair i has label i % 3: pairs of one label are never each other's negatives, on any process
PAIRS = [{"anchor": f"Which animal is number {i}?", "positive": f"Animal {i} is a {w}.", "label": f"l{i % PAIR_LABELS}",
          **({"negative": f"Number {i} is not an animal."} if i % 2 else {})}
         for i, w in enumerate(["dog", "cat", "boat", "tree", "house", "car", "bird", "stone"] * 2)]
# Each run records the dataset indices its collator received, per rank, then trains. A batch's pairs
# are those of its example indices (index % number of pairs) instead of a seeded draw, so the two
# processes' pairs together are the one process's: each process draws its own otherwise.
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
class PairsOfTheExamples:
    def __init__(self, indices):
        self.indices = indices
    def sample(self, population, k):
        return [i % len(population) for i in self.indices][:k]
GEMCollator.pairs_rng = lambda self, indices: PairsOfTheExamples(indices)
config = tiny_training_config({base!r}, {corpus!r}, {out!r}, max_steps=2, per_device_train_batch_size={batch},
                              lora_dropout=0.0, eval_chunks=0, save_steps=2, use_cpu=True, base_dtype="float32",
                              dataloader_num_workers=0, dataloader_pin_memory=False, logging_steps=1,
                              optim="sgd", learning_rate=LEARNING_RATE, lr_scheduler_type="constant", max_grad_norm=0.0,
                              contrastive_weight=1.0, pairs_data={pairs!r}, pairs_per_batch={batch}, **{extra!r})
train(config)
"""
LEARNING_RATE = 0.1  # plain SGD: the update is lr x gradient, so a scale error shows at its own size
TOLERANCE = 1e-4  # max abs difference of any adapter weight (measured 2.5e-6; a missing gradient factor: 0.9)


def run_training(tmp_path: Path, name: str, processes: int, batch: int, base: Path, corpus: Path, pairs: Path,
                 **extra) -> tuple[Path, Path]:
    out, record = tmp_path / name, tmp_path / f"{name}-record"
    record.mkdir()
    script = tmp_path / f"{name}.py"
    script.write_text(SCRIPT.replace("LEARNING_RATE", repr(LEARNING_RATE)).format(
        tests=str(TESTS), record=str(record), base=str(base), corpus=str(corpus), out=str(out), batch=batch,
        pairs=str(pairs), extra=extra))
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


def logged(folder: Path, key: str) -> list[float]:
    records = [json.loads(line) for line in (folder / "loss_log.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


@pytest.mark.slow
@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")
def test_two_cpu_processes_train_the_same_adapter_as_one(tmp_path):
    from gem_adapter.training.pairs import write_pairs

    base = save_tiny_base(tmp_path / "tiny")
    corpus, pairs = tmp_path / "corpus.txt", tmp_path / "pairs.jsonl"
    corpus.write_text("\n\n".join(SENTENCES))
    write_pairs(PAIRS, pairs)
    single, single_record = run_training(tmp_path, "one", 1, 4, base, corpus, pairs)
    runs = {"one pass": run_training(tmp_path, "two", 2, 2, base, corpus, pairs),
            "GradCache": run_training(tmp_path, "two-cached", 2, 2, base, corpus, pairs, contrastive_cache_chunk=1)}

    # the first two batches are the two steps' (the dataloaders may fetch one more ahead)
    one = batches(single_record, 0)[:2]
    for _name, (_double, double_record) in runs.items():
        rank0, rank1 = batches(double_record, 0)[:2], batches(double_record, 1)[:2]
        assert len(one) == len(rank0) == len(rank1) == 2
        for step in range(2):
            assert not set(rank0[step]) & set(rank1[step])  # each rank sees different chunks
            assert sorted(rank0[step] + rank1[step]) == sorted(one[step])  # together, the 1-process batch
    # some pair's label is on the other process in the same step, so the mask must cross processes too;
    # the processes hold different numbers of hard negatives (odd pairs have one), so the gathers' sizes differ
    drawn = [[[i % len(PAIRS) for i in batches(runs["one pass"][1], rank)[step]] for rank in (0, 1)] for step in range(2)]
    assert any({i % PAIR_LABELS for i in rank0} & {i % PAIR_LABELS for i in rank1} for rank0, rank1 in drawn), drawn
    assert any(sum(i % 2 for i in rank0) != sum(i % 2 for i in rank1) for rank0, rank1 in drawn), drawn

    a = tensors(single)
    assert any("lora_B" in k for k in a) and any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # it trained
    for name, (double, _record) in runs.items():
        b = tensors(double)
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst <= TOLERANCE, (name, worst)
        # the logged contrastive and pairs losses (the main process's) are the whole batch's, the one process's
        for key in ("loss_contrastive", "loss_pairs"):
            assert logged(double, key) == pytest.approx(logged(single, key), rel=1e-5), (name, key)
        losses = [json.loads((folder / "train_summary.json").read_text())["train_loss"] for folder in (single, double)]
        assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0]), (name, losses)  # not divided by the processes
        summary = json.loads((double / "train_summary.json").read_text())
        assert summary["global_step"] == 2
        assert summary["train_tokens_seen"] == json.loads((single / "train_summary.json").read_text())["train_tokens_seen"]
    double = runs["one pass"][0]
    checkpoint = double / "checkpoint-2"  # written by both processes, renamed into place by the main one
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert not (double / ".staging").exists()


# ---------------------------------------------------------------------------- gathering, without a launcher
# Two gloo processes (torch.multiprocessing, a file store) each hold part of a global batch whose
# embeddings are x @ weight. Rank 0 holds views 0-3, pairs 0-2 and no hard negative; rank 1 holds
# views 4-5, pairs 3-4 and both hard negatives, so row counts differ between processes.
VIEW_ROWS, PAIR_ROWS, NEGATIVE_ROWS = (4, 2), (3, 2), (0, 2)
POSITIVE_KEYS = [1, 2, 3, 4, 1]  # pair 4 (rank 1) has the same positive text as pair 0 (rank 0)
GROUP_KEYS = [10, 11, 12, 11, -1]  # pairs 1 and 3 share a label, across processes; pair 4 has no group
NEGATIVE_KEYS = [5, 3]  # rank 1's second hard negative is pair 2's positive text (rank 0)
# what no negative means for each row, worked by hand: (row, column); columns 0-4 positives, 5-6 negatives
NOT_NEGATIVES = {(0, 4), (4, 0), (1, 3), (3, 1), (2, 6)}
TEMPERATURE, DIMS = 0.5, [3]


def global_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    def rows(n):
        return torch.randn(n, 6, generator=generator)
    return {"weight": torch.randn(6, 8, generator=generator), "view_a": rows(6), "view_b": rows(6),
            "anchor": rows(5), "positive": rows(5), "negative": rows(2)}


def single_process_loss(batch: dict, weight: torch.Tensor) -> torch.Tensor:
    """The views term plus the pairs term over the whole batch, as one process computes them."""
    from gem_adapter.training.losses import info_nce

    mask = torch.zeros(5, 7, dtype=torch.bool)
    for row, column in NOT_NEGATIVES:
        mask[row, column] = True
    views = info_nce(batch["view_a"] @ weight, batch["view_b"] @ weight, TEMPERATURE, DIMS)
    pairs = info_nce(batch["anchor"] @ weight, batch["positive"] @ weight, TEMPERATURE, DIMS,
                     extra_negatives=batch["negative"] @ weight, mask=mask, symmetric=False)
    return views + pairs


def _local(rank: int, rows: tuple[int, int], tensor):
    start = sum(rows[:rank])
    return tensor[start : start + rows[rank]]


def gathering_worker(rank: int, folder: str, cached: bool) -> None:
    """One of two processes: gathered loss and averaged gradient, plain or GradCache'd; saved for the test."""
    import torch.distributed as dist

    from gem_adapter.training.collator import pair_mask
    from gem_adapter.training.distributed import gather_rows, gathered_loss, world_size
    from gem_adapter.training.losses import grad_cached, info_nce

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        batch = global_batch()
        weight = batch["weight"].clone().requires_grad_(True)
        local = {name: _local(rank, rows, batch[name]) for name, rows in
                 (("view_a", VIEW_ROWS), ("view_b", VIEW_ROWS), ("anchor", PAIR_ROWS), ("positive", PAIR_ROWS),
                  ("negative", NEGATIVE_ROWS))}
        keys = [_local(rank, rows, torch.tensor(k)) for rows, k in
                ((PAIR_ROWS, POSITIVE_KEYS), (PAIR_ROWS, GROUP_KEYS), (NEGATIVE_ROWS, NEGATIVE_KEYS))]

        # gather_rows alone: every row in rank order; only the local rows get a gradient, and all of theirs
        rows = local["view_a"].clone().requires_grad_(True)
        gathered = gather_rows(rows)
        weights = torch.arange(gathered.numel(), dtype=torch.float32).view_as(gathered)
        (gathered * weights).sum().backward()
        result = {"world_size": world_size(), "gathered": gathered.detach(), "row_grad": rows.grad,
                  "gathered_keys": gather_rows(keys[2])}

        # the two terms as GEMTrainer runs them (the pairs mask rebuilt from every process's keys)
        sides = [name for name in local if local[name].shape[0]]  # rank 0 has no hard negative side

        def loss_of(*embeddings):
            by_side = dict(zip(sides, embeddings))
            negatives = by_side.get("negative", embeddings[0].new_zeros((0, embeddings[0].shape[-1])))
            views = gathered_loss(lambda a, b: info_nce(a, b, TEMPERATURE, DIMS), by_side["view_a"], by_side["view_b"])
            pairs = gathered_loss(
                lambda pk, gk, nk, a, p, n: info_nce(a, p, TEMPERATURE, DIMS, extra_negatives=n, mask=pair_mask(pk, gk, nk),
                                                     symmetric=False),
                *keys, by_side["anchor"], by_side["positive"], negatives)
            return views + pairs

        if cached:
            def encode(side, start, end):
                return local[side][start:end] @ weight
            loss = grad_cached(encode, [(side, local[side].shape[0]) for side in sides], 1, loss_of, torch.Tensor.backward)
        else:
            loss = loss_of(*[local[side] @ weight for side in sides])
            loss.backward()
        gradient = weight.grad.clone()
        dist.all_reduce(gradient)  # GEMTrainer._average_gradients: the sum over processes over their count
        result.update(loss=loss.detach(), gradient=gradient / 2)
        torch.save(result, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("cached", [False, True], ids=["one-pass", "gradcache"])
def test_gathered_terms_give_each_process_the_single_process_loss_and_gradient(tmp_path, cached):
    import torch.multiprocessing as mp

    from gem_adapter.training.distributed import gather_rows, gathered_loss, world_size

    mp.spawn(gathering_worker, args=(str(tmp_path), cached), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    batch = global_batch()
    weight = batch["weight"].clone().requires_grad_(True)
    expected = single_process_loss(batch, weight)
    expected.backward()
    weights = torch.arange(6 * 6, dtype=torch.float32).view(6, 6)
    for rank, result in enumerate(ranks):
        assert result["world_size"] == 2
        assert torch.equal(result["gathered"], batch["view_a"])  # every row, in rank order
        assert torch.equal(result["row_grad"], _local(rank, VIEW_ROWS, weights))  # the local rows' own gradient
        assert result["gathered_keys"].tolist() == NEGATIVE_KEYS  # 0 rows on rank 0, 2 on rank 1
        assert torch.allclose(result["loss"], expected.detach(), atol=1e-6)  # the loss of the whole batch
        assert torch.allclose(result["gradient"], weight.grad, atol=1e-6), (result["gradient"] - weight.grad).abs().max()
    # one process: nothing to gather, nothing scaled
    rows = batch["view_a"].clone().requires_grad_(True)
    assert world_size() == 1 and gather_rows(rows) is rows
    gathered_loss(lambda r: (r * 3).sum(), rows).backward()
    assert torch.equal(rows.grad, torch.full_like(rows, 3.0))


def test_gathering_is_on_by_default_and_its_setting_is_checked():
    from conftest import tiny_training_config

    from gem_adapter import GEMConfigError

    assert tiny_training_config("base", "data", "out").contrastive_gather is True
    assert tiny_training_config("base", "data", "out", contrastive_gather=False).contrastive_gather is False
    with pytest.raises(GEMConfigError, match="contrastive_gather"):
        tiny_training_config("base", "data", "out", contrastive_gather="sometimes")


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
