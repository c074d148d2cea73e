"""Shared fixtures: tiny random Llama / Qwen2 / Qwen3 models and a byte-level tokenizer.

Nothing here downloads anything. The models are built once per session from configs
(hidden 32, 2 layers; hidden 64 for the 4-bit tests, see ``QUANTIZABLE``) and deep-copied
per test, as transformers' own model tests do.
Every test gets its own GEM_CACHE so no test reads or writes the user's cache; tests
marked ``real_model`` use the real cache, so the default model is fetched only once.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("GEM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ARCHITECTURES = ("llama", "qwen2", "qwen3")


def make_tokenizer():
    """A byte-level tokenizer with no merges: every UTF-8 byte is one token (vocab 257)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: index for index, char in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


# Sizes for the 4-bit tests: bitsandbytes' CPU kernel for AVX512-BF16 repacks every NF4
# matrix in blocks of 64 input features (the quantisation block) and 32 output features, so
# hidden 32 fails there ("shape '[32, 0]' is invalid"); with these every linear layer's
# in_features is a multiple of 64 and its out_features a multiple of 32.
QUANTIZABLE = dict(hidden_size=64, intermediate_size=128)


def make_config(architecture: str, vocab_size: int = 257, tie: bool = False, hidden_size: int = 32,
                intermediate_size: int | None = None):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=tie, eos_token_id=256, pad_token_id=256, bos_token_id=None,
    )
    if architecture == "llama":
        return LlamaConfig(**common)
    if architecture == "qwen2":
        return Qwen2Config(**common)
    if architecture == "qwen3":
        return Qwen3Config(head_dim=8 if hidden_size == 32 else hidden_size // 4, **common)
    raise ValueError(architecture)


def make_model(architecture: str, tie: bool = False, attn: str = "sdpa", seed: int = 0, **sizes):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = make_config(architecture, tie=tie, **sizes)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    return model.eval()


_MODEL_CACHE: dict[tuple, torch.nn.Module] = {}


def tiny_model(architecture: str, tie: bool = False, attn: str = "sdpa", **sizes):
    key = (architecture, tie, attn, tuple(sorted(sizes.items())))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = make_model(architecture, tie=tie, attn=attn, **sizes)
    return copy.deepcopy(_MODEL_CACHE[key])


def cpu_4bit_paths() -> list:
    """pytest params for bitsandbytes' two CPU paths of a 4-bit matmul.

    ``generic``: the plain dequantise-and-matmul path every CPU has. ``avx512_bf16``: the
    path bitsandbytes picks by itself on CPUs with AVX512-BF16 (weights repacked on the
    first forward pass); skipped where the CPU lacks the instruction set.
    """
    try:
        from bitsandbytes.functional import has_avx512bf16

        packed = bool(has_avx512bf16())
    except Exception:
        packed = False
    reason = "this CPU lacks AVX512-BF16, so bitsandbytes has no packed CPU kernel here"
    return ["generic", pytest.param("avx512_bf16", marks=pytest.mark.skipif(not packed, reason=reason))]


def use_cpu_4bit_path(model, path: str) -> int:
    """Make every ``Linear4bit`` of ``model`` take ``path`` (see ``cpu_4bit_paths``); return their count."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = path == "avx512_bf16"
            count += 1
    return count


def tiny_gem(architecture: str = "llama", k: int = 1, tie: bool = False, attn: str = "sdpa", **config):
    from gem_adapter import GEMConfig, GEMModel

    return GEMModel(tiny_model(architecture, tie=tie, attn=attn), make_tokenizer(), GEMConfig(num_gem_tokens=k, **config))


def tiny_training_config(base, data, output, **overrides):
    """A GEMTrainingConfig that trains a tiny model for a few steps in seconds."""
    from gem_adapter.training.recipes import load_recipe

    values = dict(
        base_model=str(base), data=str(data), output_dir=str(output), max_steps=4,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=5e-3,
        eval_chunks=8, logging_steps=1, save_steps=2, eval_strategy="no",
        activation_checkpointing=False, disable_tqdm=True, seed=0, lora_r=4, lora_alpha=8,
        min_chunk_tokens=16, max_chunk_tokens=48, warmup_steps=0,
    )
    values.update(overrides)
    return load_recipe(None, values)


# A training corpus for tiny-model runs: 96 two-sentence paragraphs (the corpus fixture writes them).
SENTENCES = [
    f"Sentence {i} talks about the {w} near the river. Another remark follows it, with {i % 5} words more."
    for i, w in enumerate(["dog", "cat", "boat", "tree", "house", "car", "bird", "stone"] * 12)
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    """``SENTENCES`` as a plain-text corpus file, paragraphs separated by blank lines."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(SENTENCES))
    return path


def save_tiny_base(folder: Path, architecture: str = "llama") -> Path:
    """A tiny random model and the byte tokenizer saved as a Hugging Face folder."""
    tiny_model(architecture).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def random_gem_adapter(base: Path, out: Path, seed: int, template: str | None = None, num_gem_tokens: int = 1,
                       adapter_scope: str = "all", target_modules: list[str] | str = ("q_proj", "v_proj"),
                       lora_b_std: float | None = None) -> Path:
    """A GEM adapter with a random LoRA (on q/v unless ``target_modules``) and random GEM rows, saved as
    training saves one (no training needed to check that a loader applies it). ``lora_b_std``: LoRA B
    drawn from N(0, std) instead of PEFT's small random init, for a LoRA that moves embeddings far."""
    from peft import LoraConfig, get_peft_model

    from gem_adapter import GEMConfig, GEMModel, quiet
    from gem_adapter.config import base_fingerprint

    config = GEMConfig(base_model=str(base), template=template, num_gem_tokens=num_gem_tokens,
                       adapter_scope=adapter_scope)
    gem = GEMModel.from_pretrained(base, config=config, dtype="float32")
    torch.manual_seed(seed)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=lora_b_std is not None,
                      trainable_token_indices=list(gem.gem_token_ids))
    with quiet.peft_calls():
        model = get_peft_model(gem.model, lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if lora_b_std is not None and "lora_B" in name:
                parameter.normal_(std=lora_b_std)
            if "trainable_tokens_delta" in name:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    model.save_pretrained(out, save_embedding_layers=False)
    gem.tokenizer.save_pretrained(out)
    config.base_fingerprint = base_fingerprint(model.get_base_model().config)
    config.save(out)
    return out


def without_tokenizer(adapter: Path, out: Path) -> Path:
    """A copy of ``adapter``'s files minus its tokenizer, as the shipped adapter is packaged."""
    out.mkdir()
    for path in adapter.iterdir():
        if path.is_file() and not path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / path.name).write_bytes(path.read_bytes())
    return out


@pytest.fixture(params=ARCHITECTURES)
def architecture(request) -> str:
    return request.param


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model_folder(tmp_path) -> Path:
    """A tiny Llama saved as a Hugging Face folder (model + tokenizer)."""
    return save_tiny_base(tmp_path / "tiny-llama")


@pytest.fixture
def quantizable_model_folder(tmp_path) -> Path:
    """A tiny Llama whose matrices fit bitsandbytes' 4-bit CPU kernels (``QUANTIZABLE`` sizes)."""
    folder = tmp_path / "tiny-llama-64"
    tiny_model("llama", **QUANTIZABLE).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path, monkeypatch):
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("GEM_CACHE", str(tmp_path / "gem-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


# What ``dtype="auto"`` resolves to in the tests, whatever this processor computes natively:
# float32 by default, bfloat16 with GEM_TEST_DTYPE=bfloat16 (the path a CPU with AVX512-BF16 or
# AMX takes, run on any CPU: bfloat16 is emulated where it is not native). Tests that compare
# numbers pin the dtype they compare in; this decides only what the unpinned rest runs in.
TEST_DTYPE = os.environ.get("GEM_TEST_DTYPE", "float32").strip().lower()
if TEST_DTYPE not in ("float32", "bfloat16"):
    raise pytest.UsageError(f"GEM_TEST_DTYPE={TEST_DTYPE!r}: use float32 or bfloat16")


@pytest.fixture(scope="session", autouse=True)
def auto_dtype_for_tests(tmp_path_factory):
    """``dtype="auto"`` means ``TEST_DTYPE`` for the whole session, module-scoped fixtures included.

    The cpuinfo reader sees a CPU with or without AVX512-BF16 (tests/test_precision.py points it
    at flags of its own). Session-wide, so that a model a module fixture loads is not bfloat16 on
    one processor and float32 on another.
    """
    from gem_adapter import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path_factory, TEST_DTYPE))
        yield


@pytest.fixture(scope="module")
def auto_is_float32(tmp_path_factory):
    """For a module that compares numbers to float32 tolerances (merges, fusing, GradCache, trained
    adapters equal to 1e-5): ``dtype="auto"`` is float32 there whatever GEM_TEST_DTYPE says. Such a
    module says so with ``pytestmark = pytest.mark.usefixtures("auto_is_float32")``; the bfloat16
    side of those equalities is tests/test_bfloat16.py."""
    from gem_adapter import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path_factory, "float32"))
        yield


def _cpuinfo(tmp_path_factory, dtype: str) -> Path:
    """A cpuinfo file of a CPU on which ``auto`` means ``dtype``: with or without AVX512-BF16."""
    flags = "fpu sse2 avx2 fma" + (" avx512_bf16" if dtype == "bfloat16" else "")
    path = tmp_path_factory.mktemp("cpu") / f"cpuinfo-{dtype}"
    path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    return path


def trainer_and_batch(config, with_pairs: bool = False):
    """A ``GEMTrainer`` built as ``train`` builds it for ``config``, and one collated batch of 8 chunks.

    LoRA B is drawn at random (it starts at zero, which would leave A without gradient); with
    ``with_pairs`` the collator draws 6 of 10 supervised pairs (token ids, every other with a hard
    negative, as ``run.tokenize_pairs`` makes them) into the batch. Returns (trainer, batch, gem).
    """
    from datasets import Dataset

    from gem_adapter.training.collator import GEMCollator
    from gem_adapter.training.run import build_peft_model, load_chunks, make_collator
    from gem_adapter.training.trainer import GEMTrainer

    gem = build_peft_model(config)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in gem.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    chunks, _unused = load_chunks(config, gem.tokenizer)
    collator = make_collator(config, gem)
    if with_pairs:
        pairs = [{"anchor": chunks[i][:12], "positive": chunks[i][4:20], "negative": chunks[i + 1][:10] if i % 2 else None,
                  "group": f"g{i}"} for i in range(20, 30)]
        collator = GEMCollator(**{**collator.__dict__, "pairs": pairs, "pairs_per_batch": 6})
    trainer = GEMTrainer(model=gem.model, args=config, data_collator=collator, processing_class=gem.tokenizer,
                         train_dataset=Dataset.from_dict({"input_ids": chunks, "index": list(range(len(chunks)))}),
                         gem_token_ids=gem.gem_token_ids)
    trainer.current_gradient_accumulation_steps = config.gradient_accumulation_steps  # set by the training loop
    batch = collator([{"input_ids": chunks[i], "index": i} for i in range(8)])
    return trainer, batch, gem


def gradients_of(trainer, batch, chunk=None, num_items_in_batch=None):
    """One training step's loss and the gradients it leaves, with GradCache chunks of ``chunk`` (None: one pass)."""
    trainer.args.contrastive_cache_chunk = chunk
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.training_step(trainer.model, dict(batch), num_items_in_batch)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss, grads
