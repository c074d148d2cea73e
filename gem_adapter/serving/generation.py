"""Token-by-token generation that the worker can interleave with embedding batches.

``GEMModel.generate`` runs a whole generation in one call, which would hold the worker (and
every embedding request behind it) for seconds. Here a generation is a state object: one
``prefill`` forward over the prompt, then one ``step`` per new token reusing the KV cache
(``past_key_values``), so the worker can run an embedding batch between any two tokens.

The logits get what ``GEMModel.generate`` gives them: GEM token ids set to -inf, then the
arg-max (temperature 0) - so greedy output equals ``model.generate(prompt, do_sample=False)``.
With temperature > 0: divide, keep the smallest set of tokens whose probability reaches
``top_p``, sample with a ``torch.Generator`` seeded from ``seed``.

``TextStream`` turns the growing token list into text deltas: it stops at the first stop
string (cut off), and holds back a possible partial stop string or a half UTF-8 character
until it is known.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


def eos_token_ids(model) -> set[int]:
    """The ids that end a generation: the generation config's EOS (as ``generate`` uses), else the tokenizer's."""
    config = getattr(model.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = model.tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _forward_parameters(model) -> set[str]:
    causal_lm = model.model.get_base_model() if hasattr(model.model, "get_base_model") else model.model
    return set(inspect.signature(causal_lm.forward).parameters)


class Decoder:
    """One generation's state: the KV cache, the generated ids and the sampler."""

    def __init__(self, model, prompt_ids: list[int], params: SamplingParams):
        self.model = model
        self.prompt_ids = prompt_ids
        self.params = params
        self.generated: list[int] = []
        self.eos = eos_token_ids(model)
        self._suppress = torch.tensor(sorted(set(model.gem_token_ids)), dtype=torch.long)
        self._past = None
        parameters = _forward_parameters(model)
        # transformers 5.2x renamed past_key_values to cache (argument and output field)
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self._generator = None
        if params.temperature > 0:
            self._generator = torch.Generator(device=model.device)
            self._generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))

    @torch.inference_mode()
    def next_token(self) -> int:
        """Run one forward pass (the prompt the first time, then the last token) and pick a token."""
        if self._past is None:
            ids = self.prompt_ids
        else:
            ids = self.generated[-1:]
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        cache = {self._cache_name: self._past}
        output = self.model.model(input_ids=input_ids, use_cache=True, **cache, **self._keep)
        self._past = getattr(output, self._cache_name)
        token = self._choose(output.logits[0, -1].float())
        self.generated.append(token)
        return token

    def _choose(self, logits: torch.Tensor) -> int:
        logits = logits.clone()
        logits[self._suppress.to(logits.device)] = float("-inf")
        if self._generator is None:
            return int(torch.argmax(logits))
        logits = logits / self.params.temperature
        probs = torch.softmax(logits, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above
            sorted_probs[before >= self.params.top_p] = 0.0  # the top token always stays
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def release(self) -> None:
        self._past = None


class TextStream:
    """Text deltas of a growing list of token ids, cut at the first stop string."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.sent = 0
        self.text = ""

    def update(self, ids: list[int]) -> tuple[str, bool]:
        """The new text that is safe to send, and whether a stop string was reached."""
        self.text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if self.stop:
            hits = [i for i in (self.text.find(s, max(0, self.sent - self._hold)) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                return self._take(len(self.text)), True
        end = len(self.text) - self._hold
        while end > self.sent and self.text[end - 1] == "\ufffd":  # half a UTF-8 character so far
            end -= 1
        return self._take(end), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : end], end
        return delta
