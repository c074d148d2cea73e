"""Adapter scope: where in a sequence an adapter's LoRA deltas apply.

``all`` (the default, and what PEFT does): at every token. ``gem``: only at the GEM
tokens and the tokens after them (``Segment.GEM`` and ``Segment.SUFFIX``); the text
before them runs through the frozen base unchanged. Under the GEM mask nothing before
the GEM tokens looks at them, so with scope ``gem``:

* a text without GEM tokens (generation, perplexity, MMLU) gets exactly the base model's
  logits: the adapter cannot cost the language model anything;
* the GEM tokens still read the whole text (they attend to the base's keys and values)
  and the adapter learns how they summarise it.

This is PEFT's activated LoRA (aLoRA) idea with the GEM tokens as the invocation; it is
done here with hooks on every LoRA layer, because the GEM paths call the decoder directly
with a 4D mask and segment ids, which PEFT's aLoRA offsets (computed in
``PeftModel.forward``, counted from the end of each row) never see. A gated
adapter's LoRA cannot be folded into the base weights (the delta would then reach every
token): ``fuse`` folds its GEM rows only, ``gem stack`` refuses it, and ``gem merge`` / ``gem export``
write its LoRA apart as a PEFT activated LoRA (``ACTIVATED_LORA``; ``adapters/gated.py``).

This module knows about PEFT modules and segment ids, nothing about tokenizers.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .masking import (
    Segment,
    attention_inputs,
    build_gem_attention_mask,
    kernel_mask,
    position_ids_from_segments,
)

ADAPTER_SCOPES: tuple[str, ...] = ("all", "gem")
# The folder inside a merged gated checkpoint (``gem merge`` of a scope ``gem`` adapter) that holds
# its LoRA as a PEFT activated LoRA, invoked by the GEM token.
ACTIVATED_LORA = "alora"
_GATE_ATTRIBUTE = "_gem_scope_gate"


class _Gate:
    """Hooks on every LoRA layer that run its LoRA delta at the gated tokens only.

    Before the layer runs, its adapters are switched off (PEFT's own switch, for that one
    call), so the wrapped layer computes the base output alone. After it, inside ``gated``,
    the delta ``B(A(dropout(x))) * scaling`` of each active adapter is computed for the rows
    the gate marks and added there (as PEFT's aLoRA does), so a GEM pass pays the LoRA cost
    of its few GEM and suffix tokens, not of the whole text. Outside ``gated`` nothing is
    added: any forward pass that is not a GEM pass (``generate``, LM evaluation, serving)
    is the base model's.
    """

    def __init__(self) -> None:
        self.gate: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None  # flat indices of the gated tokens, found once per pass
        self.handles: list = []

    @staticmethod
    def before_layer(module, inputs) -> None:
        if not module._disable_adapters:
            module._disable_adapters = True
            module.__dict__["_gem_scope_switched"] = True

    def after_layer(self, module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if not module.__dict__.pop("_gem_scope_switched", False):
            return None  # adapters were off before the call (disable_adapters): leave them off
        module._disable_adapters = False
        gate = self.gate
        if gate is None or output is None:  # not a GEM pass, or the layer raised
            return None
        if output.dim() != 3 or output.shape[:2] != gate.shape:
            raise RuntimeError(
                f"adapter scope gate of shape {tuple(gate.shape)} does not fit a LoRA layer output of shape "
                f"{tuple(output.shape)}"
            )
        rows = self.rows.to(output.device)
        x = inputs[0].reshape(-1, inputs[0].shape[-1]).index_select(0, rows)
        flat = output.reshape(-1, output.shape[-1])
        gated = flat.index_select(0, rows)
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            lora_a, lora_b = module.lora_A[name], module.lora_B[name]
            delta = lora_b(lora_a(module.lora_dropout[name](x.to(lora_a.weight.dtype)))) * module.scaling[name]
            gated = gated + delta.to(flat.dtype)
        # The gated rows are distinct, so they are written back, not accumulated: index_add on a
        # bfloat16 CPU tensor takes a scalar scatter-add path that cost a third of a bfloat16 encode.
        # Without a graph the layer's fresh output is written in place; with one a copy keeps autograd's
        # view of it intact.
        if torch.is_grad_enabled():
            return flat.index_put((rows,), gated).view_as(output)
        return flat.index_put_((rows,), gated).view_as(output)


def install(model, scope: str) -> int:
    """Apply ``scope`` to every LoRA layer of ``model`` (a PEFT model); returns the gated layer count.

    ``all`` removes any gate installed before. Call it again after loading more adapters.
    """
    from peft.tuners.lora import LoraLayer

    if scope not in ADAPTER_SCOPES:
        raise ValueError(f"adapter scope {scope!r} is not one of {ADAPTER_SCOPES}")
    previous = getattr(model, _GATE_ATTRIBUTE, None)
    if previous is not None:
        for handle in previous.handles:
            handle.remove()
        delattr(model, _GATE_ATTRIBUTE)
    if scope == "all":
        return 0
    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    if not layers:
        raise ValueError("adapter scope 'gem' needs a LoRA adapter (no LoRA layers found)")
    if any(getattr(layer, "lora_variant", None) for layer in layers):
        raise ValueError("adapter scope 'gem' supports plain LoRA only (not DoRA or other LoRA variants)")
    gate = _Gate()
    for layer in layers:
        gate.handles.append(layer.register_forward_pre_hook(gate.before_layer))
        gate.handles.append(layer.register_forward_hook(gate.after_layer, always_call=True))
    object.__setattr__(model, _GATE_ATTRIBUTE, gate)
    return len(layers)


def load_activated_lora(model, folder):
    """``model`` (a transformers causal LM) with the activated LoRA in ``folder`` loaded as a gated LoRA.

    A merged gated checkpoint keeps its LoRA as a PEFT aLoRA whose invocation is the GEM
    token. PEFT finds the invocation only inside ``PeftModelForCausalLM.forward``, which the
    GEM paths do not call (they run the decoder with a 4D mask), so the LoRA is loaded here
    without it and gated by segments: for k = 1 the same tokens, the GEM token and after.
    """
    from peft import LoraConfig, PeftModel

    config = LoraConfig.from_pretrained(str(folder))
    config.alora_invocation_tokens = None
    peft_model = PeftModel.from_pretrained(model, str(folder), config=config, is_trainable=False)
    install(peft_model, "gem")
    return peft_model


def scope_of(model) -> str:
    """``gem`` when ``model`` carries a gate, else ``all``."""
    return "gem" if getattr(model, _GATE_ATTRIBUTE, None) is not None else "all"


def gate_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """1.0 at GEM tokens and the tokens after them, 0.0 elsewhere; shape (batch, seq)."""
    return ((segment_ids == Segment.GEM) | (segment_ids == Segment.SUFFIX)).float()


@contextmanager
def gated(model, segment_ids: torch.Tensor) -> Iterator[None]:
    """Inside: a gated ``model``'s LoRA deltas apply where ``segment_ids`` marks GEM or suffix tokens.

    No-op for a model without a gate. Not re-entrant across threads: one GEM forward
    pass at a time per model (as the serving scheduler runs them).
    """
    gate = getattr(model, _GATE_ATTRIBUTE, None)
    if gate is None:
        yield
        return
    previous = gate.gate, gate.rows
    gate.gate = gate_from_segments(segment_ids)
    gate.rows = gate.gate.reshape(-1).nonzero().squeeze(1)
    try:
        yield
    finally:
        gate.gate, gate.rows = previous


def gated_hidden_states(decoder, model, input_ids: torch.Tensor, segment_ids: torch.Tensor,
                        implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """Last hidden states (batch, seq, dim) of one pass of ``decoder`` under the GEM mask, ``model``'s adapter gated."""
    mask, positions = attention_inputs(segment_ids, implementation, dtype)
    with gated(model, segment_ids):
        return decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state


def frozen_prefix_hidden_states(decoder, model, input_ids: torch.Tensor, segment_ids: torch.Tensor,
                                implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """Last hidden states (batch, seq, dim) of a gated GEM pass, the text before the GEM tokens run without a graph.

    Under scope ``gem`` the prefix is the frozen base's work and nothing trainable reaches
    it (the GEM tokens come after it and the mask is causal), so its gradient is zero and
    training need not keep its activations. The pass is split in two: the prefix columns
    once under ``no_grad`` (the base: no gate is set), keeping their keys and values; then
    only the gated tokens (GEM and suffix, gathered to the left of a (batch, gated) block at
    their own positions) with a graph, the GEM tokens attending to the cached prefix as the
    GEM mask allows. The result equals one gated pass (within float rounding) at every
    real token; an embedding's backward then runs through its k GEM tokens alone.
    ``model`` is the gated PEFT model whose LoRA layers ``decoder`` runs. Without a gate, or
    for a batch with no prefix, no gated token, or a row whose prefix does not all come before
    its gated tokens, this is one ordinary gated pass.
    """
    gate = gate_from_segments(segment_ids).bool()
    is_prefix = segment_ids == Segment.PREFIX
    columns = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    last_prefix = torch.where(is_prefix, columns, -1).max(dim=1).values
    first_gated = torch.where(gate, columns, segment_ids.shape[1]).min(dim=1).values
    if scope_of(model) != "gem" or not bool(gate.any()) or not bool(is_prefix.any()) or bool((last_prefix >= first_gated).any()):
        return gated_hidden_states(decoder, model, input_ids, segment_ids, implementation, dtype)

    width = int(last_prefix.max()) + 1
    all_positions = position_ids_from_segments(segment_ids)
    with torch.no_grad():
        # always the 4D GEM mask here: a 2D padding mask would leave a left-padded row's
        # padding queries with nothing to attend to (NaN under eager attention)
        mask = kernel_mask(build_gem_attention_mask(segment_ids[:, :width]), implementation, dtype)
        first = decoder(input_ids=input_ids[:, :width], attention_mask=mask, position_ids=all_positions[:, :width], use_cache=True)
    cache = getattr(first, "cache", None)
    if cache is None:  # transformers before the cache argument was renamed
        cache = first.past_key_values
    cache_argument = "cache" if "cache" in inspect.signature(type(decoder).forward).parameters else "past_key_values"

    counts = gate.sum(dim=1)
    gated_width = int(counts.max())
    # the gated columns of each row, in order, then (where a row has fewer) a spare column
    # past the end whose outputs are dropped
    order = torch.argsort((~gate).to(torch.int8), dim=1, stable=True)[:, :gated_width]
    real = columns[:gated_width] < counts[:, None]
    order = torch.where(real, order, segment_ids.shape[1])
    spare = order.clamp(max=segment_ids.shape[1] - 1)
    segments = torch.where(real, segment_ids.gather(1, spare), Segment.PAD)
    sees_prefix = (segments == Segment.GEM)[:, :, None] & is_prefix[:, None, :width]
    mask = kernel_mask(torch.cat([sees_prefix[:, None], build_gem_attention_mask(segments)], dim=-1), implementation, dtype)
    with gated(model, segments):
        second = decoder(input_ids=input_ids.gather(1, spare), attention_mask=mask, position_ids=all_positions.gather(1, spare),
                         use_cache=True, **{cache_argument: cache}).last_hidden_state
    batch, length, dim = segment_ids.shape[0], segment_ids.shape[1], second.shape[-1]
    hidden = torch.cat([first.last_hidden_state, second.new_zeros(batch, length + 1 - width, dim)], dim=1)
    hidden = hidden.scatter(1, order[:, :, None].expand(-1, -1, dim), second)
    return hidden[:, :length]
