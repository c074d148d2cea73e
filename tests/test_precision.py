"""``dtype="auto"``: bfloat16 where the processor computes it natively, float32 elsewhere.

The decision (``precision.resolve_dtype``), the bfloat16 path's correctness on any CPU (native
or emulated), training on a bfloat16 base (float32 LoRA and GEM rows, float32 loss), and the
``gem info`` line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from gem_adapter import GEMError, GEMModel
from gem_adapter import precision
from gem_adapter.cli import main
from gem_adapter.training.trainer import GEMTrainingConfig

from conftest import save_tiny_base, tiny_training_config

PLAIN_FLAGS = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f\n"
AMX_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SENTENCES = [f"Sentence {i} is about the {w} by the river, and {i % 3} more words." for i, w in
             enumerate(["dog", "cat", "boat", "tree", "house", "car"] * 16)]


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the cpuinfo reader at a file of ours; returns a function that writes it."""
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", path)

    def write(text: str) -> None:
        path.write_text(text)

    return write


def test_auto_is_float32_without_the_bf16_flags(cpuinfo):
    cpuinfo(PLAIN_FLAGS)
    assert precision.native_bfloat16("cpu") == (False, "emulated on this CPU (no amx_bf16/avx512_bf16)")
    assert precision.resolve_dtype("auto", "cpu") is torch.float32
    assert precision.resolve_dtype(None, "cpu") is torch.float32


def test_auto_is_bfloat16_with_the_flags(cpuinfo):
    cpuinfo(AMX_FLAGS)
    native, why = precision.native_bfloat16("cpu")
    assert native and why == "amx_bf16/avx512_bf16"
    assert precision.resolve_dtype("auto", "cpu") is torch.bfloat16
    cpuinfo(PLAIN_FLAGS.replace("avx512f", "avx512f avx512_bf16"))
    assert precision.resolve_dtype("auto", "cpu") is torch.bfloat16


def test_missing_cpuinfo_means_emulated(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")
    assert precision.cpu_flags() == set()
    assert precision.resolve_dtype("auto", "cpu") is torch.float32


def test_other_devices_are_not_native():
    assert precision.native_bfloat16("mps")[0] is False
    assert precision.resolve_dtype("auto", "mps") is torch.float32


def test_explicit_dtype_wins(cpuinfo):
    for flags in (PLAIN_FLAGS, AMX_FLAGS):
        cpuinfo(flags)
        assert precision.resolve_dtype("float32", "cpu") is torch.float32
        assert precision.resolve_dtype("bfloat16", "cpu") is torch.bfloat16
        assert precision.resolve_dtype("fp16", "cpu") is torch.float16
        assert precision.resolve_dtype(torch.bfloat16, "cpu") is torch.bfloat16


@pytest.mark.parametrize("bad", ["bf32", "int8", "", torch.int64])
def test_bad_dtype_names_the_valid_ones(bad):
    with pytest.raises(GEMError, match="auto.*float32.*bfloat16.*float16"):
        precision.resolve_dtype(bad, "cpu")


def test_from_pretrained_default_follows_auto(tmp_path, cpuinfo):
    base = save_tiny_base(tmp_path / "tiny")
    cpuinfo(PLAIN_FLAGS)
    assert GEMModel.from_pretrained(base).model.dtype is torch.float32
    cpuinfo(AMX_FLAGS)
    assert GEMModel.from_pretrained(base).model.dtype is torch.bfloat16
    assert GEMModel.from_pretrained(base, dtype="float32").model.dtype is torch.float32
    with pytest.raises(GEMError, match="not one of"):
        GEMModel.from_pretrained(base, dtype="double")


def test_bfloat16_encodes_like_float32(tmp_path):
    """The bfloat16 path is correct on any CPU (native or emulated): embeddings agree with float32."""
    base = save_tiny_base(tmp_path / "tiny")
    full = GEMModel.from_pretrained(base, dtype="float32")
    half = GEMModel.from_pretrained(base, dtype="bfloat16")
    assert half.model.dtype is torch.bfloat16
    a = full.encode(SENTENCES[:12], batch_size=5)
    b = half.encode(SENTENCES[:12], batch_size=5)
    assert b.dtype == np.float32 and a.shape == b.shape
    cosine = (a * b).sum(axis=1)  # both are unit length
    assert cosine.min() >= 0.99, cosine
    text = half.generate("Sentence 1 is", max_new_tokens=3, do_sample=False)
    assert isinstance(text, str)


def test_gem_info_prints_the_bfloat16_line(cpuinfo):
    cpuinfo(PLAIN_FLAGS)
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "bfloat16: emulated on this CPU (no amx_bf16/avx512_bf16) -> dtype auto = float32" in result.output
    cpuinfo(AMX_FLAGS)
    result = CliRunner().invoke(main, ["info"])
    assert "bfloat16: native (amx_bf16/avx512_bf16) -> dtype auto = bfloat16" in result.output


def test_embed_command_takes_dtype(tmp_path):
    base = save_tiny_base(tmp_path / "tiny")
    out = tmp_path / "emb.npy"
    args = ["embed", "--base", str(base), "--text", "a dog", "--text", "a cat", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert np.load(out).dtype == np.float32
    result = CliRunner().invoke(main, [*args, "--force", "--dtype", "double"])
    assert result.exit_code != 0 and "auto" in result.output


def test_base_dtype_is_validated(tmp_path):
    with pytest.raises(Exception, match="base_dtype"):
        GEMTrainingConfig(output_dir=str(tmp_path / "out"), base_dtype="bf32")


def test_training_on_a_bfloat16_base(tmp_path):
    """Frozen base in bfloat16, LoRA and GEM rows in float32 (trained and saved), a finite float32 loss."""
    from datasets import Dataset

    from gem_adapter.training.run import build_peft_model, load_chunks, make_collator, save_adapter
    from gem_adapter.training.trainer import GEMTrainer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(SENTENCES))
    base = save_tiny_base(tmp_path / "tiny")
    config = tiny_training_config(base, corpus, tmp_path / "out", max_steps=2, eval_chunks=0, save_strategy="no",
                                  base_dtype="bfloat16", contrastive_weight=0.5)
    gem = build_peft_model(config)
    trainable = {n: p for n, p in gem.model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in gem.model.named_parameters() if not p.requires_grad}
    assert trainable and all(p.dtype is torch.float32 for p in trainable.values())
    assert any("trainable_tokens" in n for n in trainable)
    assert frozen and all(p.dtype is torch.bfloat16 for p in frozen.values())

    chunks, _ = load_chunks(config, gem.tokenizer)
    losses = []

    class Recorder(GEMTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(loss)
            return loss

    before = {n: p.detach().clone() for n, p in trainable.items()}
    trainer = Recorder(model=gem.model, args=config, data_collator=make_collator(config, gem),
                       processing_class=gem.tokenizer, gem_token_ids=gem.gem_token_ids, gem_config=gem.config,
                       train_dataset=Dataset.from_dict({"input_ids": chunks, "index": list(range(len(chunks)))}))
    trainer.train()
    assert len(losses) == 2 and all(loss.dtype is torch.float32 and torch.isfinite(loss) for loss in losses)
    assert all(p.dtype is torch.bfloat16 for p in frozen.values())
    assert any(not torch.equal(before[n], p.detach()) for n, p in trainable.items())

    save_adapter(gem, tmp_path / "adapter")
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as handle:
        dtypes = {key: handle.get_tensor(key).dtype for key in handle.keys()}
    assert any("lora_" in k for k in dtypes) and any("trainable_tokens" in k for k in dtypes)
    assert set(dtypes.values()) == {torch.float32}, dtypes
    loaded = GEMModel.from_pretrained(base, tmp_path / "adapter", dtype="float32")
    assert np.isfinite(loaded.encode(SENTENCES[:4])).all()


def test_auto_training_base_is_float32_without_the_flags(tmp_path, cpuinfo):
    from gem_adapter.training.run import base_dtype

    cpuinfo(PLAIN_FLAGS)
    config = tiny_training_config(tmp_path, tmp_path / "c.txt", tmp_path / "out", use_cpu=True, bf16=False)
    assert config.base_dtype == "auto" and base_dtype(config) is torch.float32
    cpuinfo(AMX_FLAGS)
    assert base_dtype(config) is torch.bfloat16


def test_a_cpu_is_described_by_its_name_bfloat16_support_and_cores(cpuinfo):
    import os

    cpuinfo("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n" + PLAIN_FLAGS.split("\n", 1)[1])
    assert precision.describe_cpu() == (f"AMD EPYC 7B13, bfloat16 emulated on this CPU (no amx_bf16/avx512_bf16), "
                                        f"{os.cpu_count()} CPU cores")
    cpuinfo("model name\t: Intel Xeon Platinum 8480+\n" + AMX_FLAGS)
    assert precision.describe_cpu().startswith("Intel Xeon Platinum 8480+, bfloat16 native (amx_bf16/avx512_bf16), ")
