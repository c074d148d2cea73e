"""GEMModel: one loaded decoder that both embeds (through its GEM tokens) and generates.

Data path of ``encode``: text -> tokenizer -> ``tokens.embedding_ids`` (GEM tokens last,
text truncated first) -> length-sorted batches -> ``masking`` (a 4D GEM mask only where it
differs from causal attention) -> decoder hidden states -> ``pooling.pool`` -> optional L2
normalisation -> original order.

Loading resolves the base through ``hub`` (alias, folder, .gguf, hub id), optionally in
4-bit NF4, and applies a saved adapter folder (PEFT LoRA + trained GEM rows +
``gem_config.json``). Which adapters are loaded and active is ``runtime``'s business; training lives in
``training/``, adapter surgery (merge, stack, swap) in ``adapters/``.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import quiet, runtime, scope
from .compat import tokenizer_source
from .config import GEMConfig
from .errors import GEMError, ModelResolutionError
from .hub import DEFAULT_ADAPTER, quantized_copy, resolve_base, shipped_adapter, store_quantized
from .masking import attention_inputs
from .pooling import POOLING_MODES, pool
from .precision import named_dtype, resolve_dtype
from .runtime import causal_lm_of
from .tokens import add_gem_tokens, embedding_ids, leading_special_ids, pad_batch, plain_ids

# Attention kernels checked against a reference in tests/test_attention.py. Others
# (flash_attention_2, flex_attention) are refused until they are tested the same way.
SUPPORTED_ATTENTION: tuple[str, ...] = ("sdpa", "eager")

QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {text}"
DOCUMENT_TEMPLATE = "{instruction}\n{text}"


class GEMModel:
    """A causal LM with GEM tokens: ``encode`` for embeddings, ``generate`` for text."""

    def __init__(self, model, tokenizer, config: GEMConfig | None = None, *, initialize_rows: bool = True):
        quiet.import_peft()  # before anything imports PEFT: it would import bitsandbytes (see quiet.py)
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GEMConfig()
        implementation = getattr(model.config, "_attn_implementation", None) or "sdpa"
        if implementation not in SUPPORTED_ATTENTION:
            raise GEMError(
                f"attention implementation {implementation!r} is not supported for GEM masks; "
                f"load the model with attn_implementation one of {SUPPORTED_ATTENTION}"
            )
        self.gem_token_ids = add_gem_tokens(tokenizer, self._causal_lm, self.config, initialize_rows)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike = "smollm2-135m",
        adapter: str | os.PathLike | None = DEFAULT_ADAPTER,
        *,
        load_in_4bit: bool = False,
        dtype: torch.dtype | str | None = "auto",
        compute_dtype: torch.dtype | str = torch.float32,
        device: str | torch.device | None = None,
        attn_implementation: str = "sdpa",
        config: GEMConfig | None = None,
        fuse: bool = True,
        cache_quantized: bool = True,
        allow_pickle: bool = False,
    ) -> "GEMModel":
        """Load a base model (alias, folder, .gguf or hub id), optionally with an adapter.

        ``adapter``: a folder written by ``gem train``; ``"default"`` (the default) is the adapter
        shipped in the package for the base alias ``smollm2-135m`` (``hub.shipped_adapter``) and
        nothing for any other base, or when ``config`` is given; None is the bare base, whose
        GEM token is untrained.

        ``dtype`` is the dtype of the (full-precision) weights: ``auto`` (the default) is
        bfloat16 where ``device`` computes it natively and float32 elsewhere (see
        ``precision.resolve_dtype``); ``float32``, ``bfloat16`` or ``float16`` always win.
        ``load_in_4bit`` quantises the base with bitsandbytes NF4 and double quantisation;
        ``compute_dtype`` is the dtype of the 4-bit matmuls (``dtype`` auto/None leaves the
        rest of a 4-bit model to transformers). A folder holding
        ``gem_config.json`` (a merged GEM checkpoint) keeps its trained GEM rows; a merged gated
        checkpoint's LoRA (its ``alora/`` folder, ``gem merge`` of an adapter of scope ``gem``) is
        loaded with it, gated.
        ``fuse`` folds the adapter into the (full-precision) base weights for inference
        speed; ``unfuse_adapters()`` or any adapter switch undoes it (see ``runtime``).
        ``cache_quantized`` keeps the NF4 copy of a local base in the cache and loads it next
        time, instead of reading and quantising the full-precision weights again (see ``hub``).
        The adapter folder goes through the same checks as ``load_adapter``, merge and swap
        before PEFT reads any of its weights: ``files.read_adapter`` (complete, readable, its
        config matching its tensors; a pickled ``adapter_model.bin`` only with
        ``allow_pickle``) and ``compat.check_compatibility`` against the loaded base.
        """
        quiet.import_peft(load_in_4bit)  # transformers' loader may import PEFT; bitsandbytes only for 4-bit
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if attn_implementation not in SUPPORTED_ATTENTION:
            raise GEMError(
                f"attn_implementation {attn_implementation!r} is not supported; use one of {SUPPORTED_ATTENTION}"
            )
        if adapter is not None and str(adapter) == DEFAULT_ADAPTER:
            # the adapter shipped for a base alias (smollm2-135m), unless a config asks for a bare base
            adapter = shipped_adapter(base) if config is None else None
        base_path = resolve_base(base)
        adapter_path = Path(adapter) if adapter is not None else None
        adapter_folder = _check_adapter_folder(adapter_path, allow_pickle) if adapter_path is not None else None
        # an adapter without tokenizer files (the shipped one) takes the base's; its GEM tokens are added below
        tokenizer_folder = tokenizer_source(adapter_path, base_path) if adapter_path is not None else base_path

        merged_checkpoint = GEMConfig.exists(base_path)
        if config is None:
            if adapter_path is not None:
                config = GEMConfig.load(adapter_path)
            elif merged_checkpoint:
                config = GEMConfig.load(base_path)
            else:
                config = GEMConfig(base_model=str(base))

        kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
        if load_in_4bit:
            kwargs["quantization_config"] = bnb_4bit_config(compute_dtype)
        if load_in_4bit and (dtype is None or dtype == "auto"):
            pass  # 4-bit: the matmuls run in compute_dtype; the rest is transformers' default
        else:
            kwargs["dtype"] = resolve_dtype(dtype, device if device is not None else "cpu")  # where it lands
        if device is not None:
            kwargs["device_map"] = {"": str(device)}
        elif load_in_4bit:
            kwargs["device_map"] = {"": "cuda" if torch.cuda.is_available() else "cpu"}

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
        quantized = quantized_copy(base_path, kwargs["quantization_config"]) if load_in_4bit and cache_quantized else None
        if quantized is not None and (quantized / "config.json").is_file():
            kwargs.pop("quantization_config")  # the copy's config.json carries it
            model = AutoModelForCausalLM.from_pretrained(str(quantized), **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
            if quantized is not None:
                store_quantized(model, quantized)
        initialize_rows = not merged_checkpoint
        # a merged gated checkpoint (gem merge of an adapter_scope gem adapter) carries its LoRA apart
        activated_lora = Path(base_path) / scope.ACTIVATED_LORA if merged_checkpoint else None
        if activated_lora is not None and activated_lora.is_dir():
            if adapter_path is not None:
                raise GEMError(f"{base_path} is a merged gated GEM checkpoint (its LoRA in {scope.ACTIVATED_LORA}/); "
                               "load it without an adapter, or load its base with the adapter")
            gem_model = cls(model, tokenizer, config, initialize_rows=False)
            with quiet.peft_calls():
                gem_model.model = scope.load_activated_lora(gem_model.model, activated_lora)
            gem_model.model.eval()
            return gem_model
        if adapter_path is None:
            return cls(model, tokenizer, config, initialize_rows=initialize_rows)

        from peft import PeftModel

        gem_model = cls(model, tokenizer, config, initialize_rows=initialize_rows)
        _check_adapter_fits(adapter_folder, gem_model, base_path)
        with quiet.peft_calls():
            gem_model.model = PeftModel.from_pretrained(gem_model.model, str(adapter_path), is_trainable=False)
        gem_model.model.eval()
        scope.install(gem_model.model, config.adapter_scope)
        if fuse:  # a gem-scoped adapter gets its GEM rows folded in, its LoRA stays gated (scope.py)
            gem_model.fuse_adapters()
        return gem_model

    # ------------------------------------------------------------------ properties
    @property
    def _causal_lm(self):
        """The transformers model inside any PEFT wrapper."""
        return causal_lm_of(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self._causal_lm.config.hidden_size)

    @property
    def embedding_dim(self) -> int:
        return self.hidden_size

    # ------------------------------------------------------------------ embedding
    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        normalize: bool = True,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        pooling: str | None = None,
        template: str | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        dimensions: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts; returns (n, hidden_size) in input order (a 1D vector for one str).

        ``pooling`` is ``gem`` (default), or ``mean``/``last`` over the plain text (the
        baselines a decoder offers without GEM). ``template`` wraps each text, e.g.
        ``'This sentence : "{text}" means in one word:"'``. An empty string is valid: its
        embedding is that of the GEM tokens alone. Texts longer than ``max_length``
        tokens (GEM tokens included) lose their end, never their GEM tokens.
        ``max_length`` None means the config's (512 by default); a value that leaves no
        room for at least one text token after the GEM tokens, the template and the
        tokenizer's leading special tokens is refused with a ``ValueError``.
        ``dimensions`` keeps the first ``dimensions`` values of each vector (L2-normalised
        again when ``normalize``): Matryoshka truncation, meant for adapters trained with
        ``matryoshka_dims`` (``config.matryoshka_dims`` lists the sizes they were trained at).
        """
        single = isinstance(sentences, str)
        vectors = self._encode_many([sentences] if single else sentences, (pooling or self.config.pooling,),
                                    batch_size=batch_size, normalize=normalize, max_length=max_length,
                                    show_progress_bar=show_progress_bar, template=template, dimensions=dimensions)[0]
        if single:
            vectors = vectors[0]
        if convert_to_tensor or not convert_to_numpy:
            return vectors
        return vectors.numpy()

    def encode_poolings(
        self,
        sentences: Sequence[str],
        poolings: Sequence[str] = ("mean", "last"),
        batch_size: int = 32,
        normalize: bool = True,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        template: str | None = None,
        dimensions: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Several poolings of the plain texts from one forward pass: ``{pooling: (n, hidden)}``,
        each what ``encode(sentences, pooling=pooling, ...)`` returns.

        Only ``mean`` and ``last`` read the same token rows (``gem`` appends the GEM tokens), so
        only they combine: the two decoder baselines of an evaluation pay one pass, not two.
        """
        if isinstance(sentences, str):
            raise TypeError("encode_poolings takes a list of texts; use encode() for one text")
        chosen = tuple(dict.fromkeys(poolings))
        if not chosen or any(mode not in ("mean", "last") for mode in chosen):
            raise ValueError(f"poolings must be 'mean' and/or 'last' (one forward pass serves both), got {tuple(poolings)!r}")
        vectors = self._encode_many(sentences, chosen, batch_size=batch_size, normalize=normalize,
                                    max_length=max_length, show_progress_bar=show_progress_bar, template=template,
                                    dimensions=dimensions)
        return {mode: block.numpy() for mode, block in zip(chosen, vectors)}

    def _encode_many(
        self, sentences: Sequence[str], poolings: tuple[str, ...], *, batch_size: int, normalize: bool,
        max_length: int | None, show_progress_bar: bool | None, template: str | None, dimensions: int | None,
    ) -> list[torch.Tensor]:
        """``encode``'s checks and batches; one (n, d) float32 tensor per pooling, one forward pass."""
        texts = list(sentences)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"sentences[{index}] is {type(text).__name__}, expected str")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, numbers.Integral):
                raise TypeError(f"dimensions must be an int or None, got {dimensions!r}")
            if not 1 <= dimensions <= self.embedding_dim:
                raise ValueError(f"dimensions must lie in 1..{self.embedding_dim} (the embedding size), got {dimensions}")
            dimensions = int(dimensions)
        for mode in poolings:
            if mode not in POOLING_MODES:
                raise ValueError(f"pooling {mode!r} is not one of {POOLING_MODES}")
        pooling = poolings[0]  # decides the token rows; encode_poolings only combines mean and last
        if max_length is None:
            max_length = self.config.max_length
        if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
            raise TypeError(f"max_length must be an int or None, got {max_length!r}")
        max_length = int(max_length)
        n_gem = len(self.gem_token_ids) if pooling == "gem" else 0
        if max_length < n_gem + 1:
            raise ValueError(
                f"max_length must be at least {n_gem + 1} ({n_gem} GEM token{'s' * (n_gem != 1)} + 1 text token), "
                f"got {max_length}"
            )
        if template is None and pooling == "gem":
            template = self.config.template
        if template is not None and "{text}" not in template:
            raise ValueError(f"template must contain '{{text}}', got {template!r}")

        rows = self._tokenize_for_embedding(texts, pooling, max_length, template)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        if show_progress_bar is None:
            show_progress_bar = len(texts) >= 256
        from tqdm.auto import tqdm

        vectors: list[list[torch.Tensor]] = [[None] * len(rows) for _ in poolings]  # type: ignore[list-item]
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="Embedding", unit="batch", disable=not show_progress_bar):
            batch = order[start : start + batch_size]
            for slot, embedded in zip(vectors, self._embed_rows([rows[i] for i in batch], poolings)):
                if dimensions is not None:
                    embedded = embedded[:, :dimensions]
                if normalize:
                    embedded = torch.nn.functional.normalize(embedded, dim=-1)
                for index, vector in zip(batch, embedded):
                    slot[index] = vector
        if not rows:
            return [torch.zeros((0, dimensions or self.embedding_dim), dtype=torch.float32) for _ in poolings]
        return [torch.stack(slot).float().cpu() for slot in vectors]

    def encode_query(self, queries: str | Sequence[str], instruction: str | None = None, **kwargs) -> np.ndarray | torch.Tensor:
        """Embed search queries, optionally under a task instruction (``QUERY_TEMPLATE``).

        The instruction goes inside the adapter's own template, if it has one.
        """
        if instruction:
            kwargs["template"] = self._inside_template(QUERY_TEMPLATE.replace("{instruction}", instruction))
        return self.encode(queries, **kwargs)

    def encode_document(self, documents: str | Sequence[str], instruction: str | None = None, **kwargs) -> np.ndarray | torch.Tensor:
        """Embed documents, optionally after an instruction line (``DOCUMENT_TEMPLATE``)."""
        if instruction:
            kwargs["template"] = self._inside_template(DOCUMENT_TEMPLATE.replace("{instruction}", instruction))
        return self.encode(documents, **kwargs)

    def _inside_template(self, inner: str) -> str:
        outer = self.config.template
        return inner if outer is None else outer.replace("{text}", inner)

    def _tokenize_for_embedding(
        self, texts: list[str], pooling: str, max_length: int, template: str | None = None
    ) -> list[tuple[list[int], list[int]]]:
        """Token rows ``[specials] [template head] text [template tail] [GEM...]``.

        The template's two halves are tokenised once, apart from the text, so truncation
        cuts the text only: the template's tail (e.g. PromptEOL's 'means in one word')
        and the GEM tokens survive any length.
        """
        if not texts:
            return []
        head, tail = self.template_ids(template)
        leading = leading_special_ids(self.tokenizer)
        n_gem = len(self.gem_token_ids) if pooling == "gem" else 0
        fixed = n_gem + len(leading) + len(head) + len(tail)
        room = max_length - fixed
        if room < 1:  # the text would be cut to nothing: refuse rather than embed the template alone
            raise ValueError(
                f"max_length {max_length} leaves no room for the text after {n_gem} GEM token{'s' * (n_gem != 1)}, "
                f"{len(leading)} leading special tokens and {len(head) + len(tail)} template tokens; "
                f"max_length must be at least {fixed + 1}"
            )
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        rows = []
        for index, ids in enumerate(encoded):
            text_ids = leading + head + ids[:room] + tail
            if pooling == "gem":
                rows.append(embedding_ids(text_ids, self.gem_token_ids, max_length))
                continue
            if not text_ids:
                raise ValueError(f"sentences[{index}] is empty; pooling {pooling!r} needs at least one token")
            rows.append(plain_ids(text_ids, max_length))
        return rows

    def template_ids(self, template: str | None) -> tuple[list[int], list[int]]:
        """Token ids of the template's halves before and after ``{text}``, each tokenised alone."""
        if template is None:
            return [], []
        before, after = template.split("{text}", 1)
        tokenize = lambda part: self.tokenizer(part, add_special_tokens=False)["input_ids"] if part else []  # noqa: E731
        return tokenize(before), tokenize(after)

    @torch.inference_mode()
    def _embed_rows(self, rows: list[tuple[list[int], list[int]]], poolings: tuple[str, ...]) -> list[torch.Tensor]:
        input_ids, segment_ids = pad_batch(
            [r[0] for r in rows], [r[1] for r in rows], self.tokenizer.pad_token_id, side="right"
        )
        hidden = self.hidden_states(input_ids.to(self.device), segment_ids.to(self.device))
        return [pool(hidden, segment_ids.to(hidden.device), mode) for mode in poolings]

    def hidden_states(self, input_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states (batch, seq, hidden) under the GEM mask implied by ``segment_ids``."""
        mask, position_ids = self.attention_inputs(segment_ids)
        decoder = self._causal_lm.get_decoder()
        with scope.gated(self.model, segment_ids):
            output = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        return output.last_hidden_state

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, **kwargs):
        """The causal LM's forward pass under the GEM mask implied by ``segment_ids``."""
        mask, position_ids = self.attention_inputs(segment_ids)
        with scope.gated(self.model, segment_ids):
            return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs)

    __call__ = forward

    def attention_inputs(self, segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``attention_mask`` and ``position_ids`` to pass for these segments (see ``masking``)."""
        config = self._causal_lm.config
        return attention_inputs(segment_ids, config._attn_implementation, self._causal_lm.dtype)

    # ------------------------------------------------------------------ adapters
    def load_adapter(self, path: str | os.PathLike, name: str, *, allow_pickle: bool = False,
                     activate: bool = False) -> str:
        """Load another adapter folder onto this loaded base under ``name`` (checked first)."""
        return runtime.load_adapter(self, path, name, allow_pickle=allow_pickle, activate=activate)

    def fuse_adapters(self) -> bool:
        """Fold the active adapters into the base weights (base speed, same outputs); see ``runtime``."""
        return runtime.fuse_adapters(self)

    def unfuse_adapters(self) -> None:
        """Take fused adapters back out of the base weights."""
        runtime.unfuse_adapters(self)

    def use_adapter(self, name: str | Sequence[str] | None) -> None:
        """Activate adapter ``name``, several at once (a list), or none (None)."""
        runtime.use_adapter(self, name)

    def disable_adapters(self) -> None:
        """Run the bare base (GEM rows as initialised) until ``use_adapter`` is called."""
        runtime.disable_adapters(self)

    def unload_adapter(self, name: str) -> None:
        """Remove adapter ``name`` from this model (the others stay loaded)."""
        runtime.unload_adapter(self, name)

    def adapter_names(self) -> list[str]:
        """Names of the adapters loaded into this model."""
        return runtime.adapter_names(self)

    def active_adapters(self) -> list[str]:
        """Names of the adapters in use now ([] for the bare base)."""
        return runtime.active_adapters(self)

    # ------------------------------------------------------------------ generation
    def generate(self, inputs: str | Sequence[str] | torch.Tensor | None = None, **kwargs):
        """The base model's ``generate``, with the GEM tokens suppressed.

        Given a string (or list of strings) returns the decoded continuation(s); given
        token ids (or ``input_ids=`` and friends) returns what transformers returns.
        """
        suppress = set(kwargs.pop("suppress_tokens", None) or []) | set(self.gem_token_ids)
        kwargs["suppress_tokens"] = sorted(suppress)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        is_text = isinstance(inputs, str) or (
            isinstance(inputs, Sequence) and not isinstance(inputs, torch.Tensor) and len(inputs) > 0
            and all(isinstance(x, str) for x in inputs)
        )
        if not is_text:
            if inputs is not None:
                kwargs["input_ids"] = inputs
            return self.model.generate(**kwargs)
        prompts = [inputs] if isinstance(inputs, str) else list(inputs)
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
        try:
            encoded = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        finally:
            self.tokenizer.padding_side = side
        output = self.model.generate(**encoded, **kwargs)
        continuations = self.tokenizer.batch_decode(
            output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return continuations[0] if isinstance(inputs, str) else continuations


def bnb_4bit_config(compute_dtype: torch.dtype | str = torch.float32):
    """NF4 with double quantisation, the QLoRA setting."""
    try:
        quiet.import_bitsandbytes()
    except ImportError:
        raise GEMError("load_in_4bit needs bitsandbytes: pip install 'gem-adapter[quant]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=named_dtype(compute_dtype),
    )


def _check_adapter_folder(path: Path, allow_pickle: bool = False):
    """The checked adapter folder (``files.read_adapter``); it must be a GEM adapter."""
    from .files import read_adapter

    folder = read_adapter(path, allow_pickle=allow_pickle)
    if not folder.is_gem:
        raise ModelResolutionError(
            f"adapter folder {path} lacks gem_config.json; it must be a folder written by `gem train` "
            "(a plain LoRA loads with model.load_adapter(path, name))"
        )
    return folder


def _check_adapter_fits(folder, gem: "GEMModel", base_path: str) -> None:
    """``compat.check_compatibility`` against the loaded base, before PEFT touches its weights.

    The model's tokenizer came from the adapter, so the vocabulary is compared with the
    base's own tokenizer (its GEM tokens set apart when the base is a merged checkpoint).
    """
    from transformers import AutoTokenizer

    from .compat import check_compatibility, spec_from_model

    spec = spec_from_model(gem)
    try:
        vocab = AutoTokenizer.from_pretrained(base_path).get_vocab()
    except Exception:  # no tokenizer beside the base: the adapter's tokenizer is all there is
        vocab = None
    if vocab is not None:
        for token in gem.config.gem_tokens:
            vocab.pop(token, None)
        spec.vocab = vocab
    check_compatibility(folder, spec)
