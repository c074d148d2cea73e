"""What the GEM mask is for: the suffix can learn about the prefix only through GEM tokens."""

from __future__ import annotations

import pytest
import torch

from gem_adapter.masking import Segment

from conftest import tiny_gem

P, G, S, _ = Segment.PREFIX, Segment.GEM, Segment.SUFFIX, Segment.PAD


def batch(gem_ids, padding_side: str, prefix_seed: int):
    """Row 0: 5 prefix, GEM, 4 suffix. Row 1: shorter (3 prefix), padded on ``padding_side``."""
    k = len(gem_ids)
    generator = torch.Generator().manual_seed(prefix_seed)
    rows = []
    for prefix_len, pad in ((5, 0), (3, 2)):
        prefix = torch.randint(0, 256, (prefix_len,), generator=generator).tolist()
        suffix = [10, 20, 30, 40]
        ids = prefix + list(gem_ids) + suffix
        seg = [P] * prefix_len + [G] * k + [S] * len(suffix)
        if padding_side == "right":
            ids, seg = ids + [256] * pad, seg + [_] * pad
        else:
            ids, seg = [256] * pad + ids, [_] * pad + seg
        rows.append((ids, seg))
    return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


def run_with_gem_states(gem, ids, seg, mask, pinned=None):
    """Forward pass recording every layer's output at the GEM positions.

    With ``pinned`` (a previous run's record) those outputs are overwritten by the
    recorded ones, i.e. the GEM tokens carry the same states whatever the prefix is.
    """
    gem_positions = seg == G
    record = []
    layers = gem._causal_lm.get_decoder().layers

    def hook(layer_index):
        def replace(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if pinned is not None:
                hidden = hidden.clone()
                hidden[gem_positions] = pinned[layer_index]
            record.append(hidden[gem_positions].clone())
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return replace

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            if mask == "gem":
                logits = gem.forward(ids, seg).logits
            else:  # plain causal attention with padding
                logits = gem.model(input_ids=ids, attention_mask=(seg != _).long()).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, record


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("k", [1, 2])
def test_prefix_reaches_suffix_only_through_gem_tokens(architecture, padding_side, k):
    gem = tiny_gem(architecture, k=k)
    ids_a, seg = batch(gem.gem_token_ids, padding_side, prefix_seed=0)
    ids_b, seg_b = batch(gem.gem_token_ids, padding_side, prefix_seed=1)
    assert torch.equal(seg, seg_b) and not torch.equal(ids_a, ids_b)
    suffix = seg == S

    logits_a, gem_states_a = run_with_gem_states(gem, ids_a, seg, "gem")
    logits_b, gem_states_b = run_with_gem_states(gem, ids_b, seg, "gem")
    # A different prefix gives different GEM states, and through them different suffix logits ...
    assert (gem_states_a[-1] - gem_states_b[-1]).abs().max() > 1e-3
    assert (logits_a[suffix] - logits_b[suffix]).abs().max() > 1e-3
    # ... but once the GEM states are held fixed, the prefix no longer matters to the suffix.
    logits_b_pinned, _unused = run_with_gem_states(gem, ids_b, seg, "gem", pinned=gem_states_a)
    torch.testing.assert_close(logits_b_pinned[suffix], logits_a[suffix], atol=1e-5, rtol=0)

    # Without the GEM mask the suffix reads the prefix directly: pinning is not enough.
    plain_a, plain_states_a = run_with_gem_states(gem, ids_a, seg, "causal")
    plain_b_pinned, _unused = run_with_gem_states(gem, ids_b, seg, "causal", pinned=plain_states_a)
    assert (plain_b_pinned[suffix] - plain_a[suffix]).abs().max() > 1e-3


def test_gem_tokens_do_not_see_each_other():
    gem = tiny_gem("llama", k=2)
    ids = torch.tensor([[5, 6, 7, *gem.gem_token_ids, 10, 11]])
    seg = torch.tensor([[P, P, P, G, G, S, S]])
    changed = ids.clone()
    changed[0, 3] = 42  # alter the first GEM token's input
    with torch.no_grad():
        before = gem.forward(ids, seg, output_hidden_states=True).hidden_states[-1]
        after = gem.forward(changed, seg, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(before[0, 4], after[0, 4], atol=1e-6, rtol=0)  # second GEM token
    assert (before[0, 5] - after[0, 5]).abs().max() > 1e-4  # the suffix reads both
