"""Language-model preservation: does the model still predict text as well as before?

Scores a ``GEMModel``'s causal LM (``gem.model``, possibly a PEFT wrapper) with
``gem.tokenizer``. Every score is a sum of next-token log-probabilities under a
log-softmax in which the GEM tokens are excluded (they are suppressed in generation too):

- ``loglikelihood`` / ``choice_loglikelihoods``: log P(continuation | context); context
  and continuation are tokenised separately, the tokeniser's leading special tokens (BOS)
  are put before the context, and a too-long context loses its start.
- MMLU: k-shot (default 5) with the original prompt format, choices " A".." D"; the k-shot
  block is shared per subject and run once (its key/value cache is reused). A sample of the
  test set is either up to ``limit_per_subject`` per subject or ``limit_total`` stratified
  by subject (proportional quotas, at least one per subject, seeded).
- ARC-Easy, HellaSwag: accuracy of the most likely choice, raw (``acc``) and length
  normalised (``acc_norm``: log-likelihood divided by the choice's length in characters).
- WikiText-2: perplexity with a sliding window of ``max_length`` tokens moved by
  ``stride``; every token after the first is scored once, with at least
  ``max_length - stride`` tokens of context where the text allows.

A ``ScoreProgress`` given to any of them keeps the batches scored so far in a JSON file, so
that a run killed in the middle of a task continues from its last saved batch with the same
numbers (the batches, their order and the running sums are those of an uninterrupted run).

Every accuracy comes with its binomial standard error ``sqrt(p (1 - p) / n)`` and the
per-item outcomes (``correct``: metric -> list of 0/1 in item order), so that two decoders
scored on the same items can be compared with the paired standard error of their
difference (``paired_difference``).
"""

from __future__ import annotations

import bz2
import contextlib
import copy
import csv
import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_file
from ..errors import GEMConfigError, GEMError
from ..tokens import leading_special_ids
from .tasks import MissingDataError, require_files, resolve_data_dir

LM_TASKS: tuple[str, ...] = ("MMLU", "ARC-Easy", "HellaSwag", "WikiText-2")
MMLU_LETTERS = ("A", "B", "C", "D")


# ---------------------------------------------------------------------------- progress
class ScoreProgress:
    """Partly scored work of one LM task, kept in one JSON file between sittings.

    Each scoring call keys its state by a fingerprint of its inputs (token ids, batch size,
    window), so a state is only ever picked up by the same work. ``save`` rewrites the file
    under a temporary name at most every ``interval`` seconds (and when a call ends or is
    interrupted), so a killed process loses at most that much scoring. The file also keeps
    the seconds spent on the task, so that ``seconds()`` counts every sitting.
    """

    def __init__(self, path: str | Path, *, interval: float = 10.0) -> None:
        self.path = Path(path)
        self.interval = interval
        self._states: dict[str, Any] = {}
        self._earlier_seconds = 0.0
        self._started = self._last_write = time.monotonic()
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                self._states, self._earlier_seconds = dict(saved["states"]), float(saved["seconds"])
            except (ValueError, KeyError, TypeError) as error:
                raise GEMError(f"{self.path} is not a readable progress file ({error!r}); delete it and resume") from None

    def state(self, key: str) -> Any:
        """What was saved under ``key``, or None."""
        return self._states.get(key)

    def save(self, key: str, state: Any) -> None:
        """Keep ``state`` under ``key``; write the file if ``interval`` seconds have passed since the last write."""
        self._states[key] = state
        if time.monotonic() - self._last_write >= self.interval:
            self.flush()

    def seconds(self) -> float:
        """Seconds spent on the task: earlier sittings (as last saved) plus this one so far."""
        return self._earlier_seconds + time.monotonic() - self._started

    def flush(self) -> None:
        """Write every state kept so far (under a temporary name, then renamed)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as handle:
            handle.write(json.dumps({"seconds": self.seconds(), "states": self._states}))
        self._last_write = time.monotonic()


@contextlib.contextmanager
def _saving(progress: ScoreProgress | None):
    """Write ``progress`` when the block ends, also when it is interrupted (Ctrl-C, an error)."""
    try:
        yield
    finally:
        if progress is not None:
            progress.flush()


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode("utf-8")).hexdigest()[:24]


def _batches_left(progress: ScoreProgress | None, key: str, count: int, desc: str, show_progress: bool):
    """The state saved under ``key`` (None if nothing) and the batch indices still to score, as a progress bar."""
    from tqdm.auto import tqdm

    saved = progress.state(key) if progress is not None else None
    done = int(saved["batches"]) if saved else 0
    return saved, tqdm(range(done, count), desc=desc, unit="batch", disable=not show_progress, initial=done,
                       total=count)


# ---------------------------------------------------------------------------- scoring core
def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _max_positions(gem) -> int:
    config = gem._causal_lm.config
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _device(gem) -> torch.device:
    return next(gem.model.parameters()).device


def _cache_argument(gem) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier): the forward's name for it."""
    import inspect

    parameters = inspect.signature(type(gem._causal_lm).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _masked_log_softmax(logits: torch.Tensor, exclude: Sequence[int]) -> torch.Tensor:
    logits = logits.float()
    if exclude:
        logits = logits.clone()
        logits[..., list(exclude)] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


@torch.inference_mode()
def _score_items(
    gem,
    items: list[tuple[list[int], list[list[int]]]],
    *,
    prefix_ids: list[int] | None = None,
    batch_size: int = 8,
    desc: str = "Scoring",
    show_progress: bool = False,
    progress: ScoreProgress | None = None,
) -> list[list[float]]:
    """Sum log P(choice tokens | prefix + context) for every (context ids, [choice ids]) item.

    Choices that are all one token long share one forward pass. A ``prefix`` common to every
    item is run once and its key/value cache reused, when everything fits the model.
    ``progress``: continue from the batches it holds for these items, and save each batch to it.
    """
    limit = _max_positions(gem)
    prefix = list(prefix_ids or [])
    key = _fingerprint("choices", prefix, items, batch_size) if progress is not None else ""
    longest = max((len(c) + max(len(x) for x in xs) for c, xs in items), default=0)
    use_cache = bool(prefix) and len(prefix) + longest <= limit
    if prefix and not use_cache:
        items = [(prefix + context, choices) for context, choices in items]
    room = limit - (len(prefix) if use_cache else 0)

    # one sequence = input ids + readouts (item, choice, [(position, token)])
    sequences: list[tuple[list[int], list[tuple[int, int, list[tuple[int, int]]]]]] = []
    for index, (context, choices) in enumerate(items):
        if not context:
            raise GEMError(f"item {index} has an empty context; put at least one token before the choices")
        if any(not choice for choice in choices):
            raise GEMError(f"item {index} has an empty choice; every choice needs at least one token")
        if all(len(choice) == 1 for choice in choices):
            ids = context[-room:]
            readouts = [(index, j, [(len(ids) - 1, choice[0])]) for j, choice in enumerate(choices)]
            sequences.append((ids, readouts))
            continue
        for j, choice in enumerate(choices):
            if len(choice) >= room:
                raise GEMError(f"item {index} choice {j} has {len(choice)} tokens, more than the model's {room}")
            full = (context + choice)[:-1]
            cut = max(len(full) - room, 0)
            ids = full[cut:]
            start = len(context) - 1 - cut
            sequences.append((ids, [(index, j, [(start + t, token) for t, token in enumerate(choice)])]))

    scores: list[list[float]] = [[0.0] * len(choices) for _, choices in items]
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    starts = range(0, len(order), batch_size)
    saved, left = _batches_left(progress, key, len(starts), desc, show_progress)
    if saved:
        scores = saved["scores"]
    device = _device(gem)
    pad = gem.tokenizer.pad_token_id if gem.tokenizer.pad_token_id is not None else 0
    cache = None
    if use_cache and len(left):
        output = gem.model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
        cache = getattr(output, "cache", None) or output.past_key_values
    with _saving(progress):
        for index in left:
            _score_batch(gem, [sequences[i] for i in order[starts[index] : starts[index] + batch_size]],
                         scores, prefix, cache, pad, device)
            if progress is not None:
                progress.save(key, {"batches": index + 1, "scores": scores})
    return scores


def _score_batch(gem, batch, scores: list[list[float]], prefix: list[int], cache, pad: int,
                 device: torch.device) -> None:
    """Add one batch of sequences' choice log-probabilities into ``scores``."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    kwargs: dict[str, Any] = {"use_cache": False}
    if cache is not None:
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(batch))
        mask = torch.cat([torch.ones((len(batch), len(prefix)), dtype=torch.long), mask], dim=1)
        kwargs = {"use_cache": True, _cache_argument(gem): past}
    logits = gem.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs).logits
    for row, (_, readouts) in enumerate(batch):
        positions = sorted({p for _, _, pairs in readouts for p, _ in pairs})
        logprobs = _masked_log_softmax(logits[row, positions], gem.gem_token_ids)
        where = {p: k for k, p in enumerate(positions)}
        for item, choice, pairs in readouts:
            scores[item][choice] = float(sum(logprobs[where[p], token] for p, token in pairs))


def choice_loglikelihoods(
    gem,
    items: Sequence[tuple[str, Sequence[str]]],
    *,
    prefix: str | None = None,
    batch_size: int = 8,
    desc: str = "Scoring",
    show_progress: bool = False,
    progress: ScoreProgress | None = None,
) -> list[list[float]]:
    """log P(choice | prefix + context) for every choice of every (context, choices) item.

    ``progress``: keep the scored batches there and continue from them (``ScoreProgress``)."""
    tokenizer = gem.tokenizer
    lead = leading_special_ids(tokenizer)
    prefix_ids = (lead + _ids(tokenizer, prefix)) if prefix else None
    encoded = [((_ids(tokenizer, context) if prefix else lead + _ids(tokenizer, context)),
                [_ids(tokenizer, choice) for choice in choices]) for context, choices in items]
    return _score_items(gem, encoded, prefix_ids=prefix_ids, batch_size=batch_size, desc=desc,
                        show_progress=show_progress, progress=progress)


def loglikelihood(gem, requests: Sequence[tuple[str, str]], *, batch_size: int = 8) -> list[float]:
    """log P(continuation | context) for each (context, continuation) pair."""
    scores = choice_loglikelihoods(gem, [(context, [continuation]) for context, continuation in requests],
                                   batch_size=batch_size)
    return [row[0] for row in scores]


# ---------------------------------------------------------------------------- perplexity
def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over ``n_tokens`` tokens."""
    if max_length < 2:
        raise GEMConfigError(f"perplexity max_length must be >= 2, got {max_length}")
    if not 1 <= stride <= max_length:
        raise GEMConfigError(f"perplexity stride must be between 1 and max_length ({max_length}), got {stride}")
    windows, previous_end = [], 0
    for begin in range(0, max(n_tokens - 1, 1), stride):
        end = min(begin + max_length, n_tokens)
        first = max(previous_end, begin + 1)
        if first < end:
            windows.append((begin, end, first))
        previous_end = end
        if end >= n_tokens:
            break
    return windows


@torch.inference_mode()
def perplexity(
    gem,
    text: str,
    *,
    max_length: int = 512,
    stride: int = 256,
    max_tokens: int | None = None,
    batch_size: int = 4,
    show_progress: bool = False,
    progress: ScoreProgress | None = None,
) -> dict[str, Any]:
    """Sliding-window perplexity of ``text`` (first ``max_tokens`` tokens if given).

    ``progress``: continue from the batches of windows it holds for this text, and save each batch to it.
    """
    max_length = min(max_length, _max_positions(gem))
    ids = leading_special_ids(gem.tokenizer) + _ids(gem.tokenizer, text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise GEMError("perplexity needs a text of at least 2 tokens")
    windows = sliding_windows(len(ids), max_length, stride)
    device = _device(gem)
    total, count = 0.0, 0
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for window in windows:
        groups.setdefault(window[1] - window[0], []).append(window)
    batches = [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
    key = _fingerprint("perplexity", ids, max_length, stride, batch_size) if progress is not None else ""
    saved, left = _batches_left(progress, key, len(batches), "Perplexity", show_progress)
    if saved:
        total, count = float(saved["total"]), int(saved["count"])
    with _saving(progress):
        for index in left:
            batch = batches[index]
            width = batch[0][1] - batch[0][0]
            keep = max(end - first + 1 for _, end, first in batch)  # logits of the last `keep` positions
            input_ids = torch.tensor([ids[begin:end] for begin, end, _ in batch], device=device)
            logits = gem.model(input_ids=input_ids, use_cache=False, logits_to_keep=keep).logits
            for row, (begin, end, first) in enumerate(batch):
                positions = [p - begin - 1 - (width - keep) for p in range(first, end)]
                logprobs = _masked_log_softmax(logits[row, positions], gem.gem_token_ids)
                targets = torch.tensor(ids[first:end], device=logprobs.device)
                total -= float(logprobs.gather(1, targets[:, None]).sum())
                count += end - first
            if progress is not None:
                progress.save(key, {"batches": index + 1, "total": total, "count": count})
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens_scored": count,
            "tokens": len(ids), "windows": len(windows), "max_length": max_length, "stride": stride}


# ---------------------------------------------------------------------------- benchmarks
def _sample(count: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), limit))


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` over ``n`` items: ``sqrt(p (1 - p) / n)``."""
    if n <= 0:
        raise GEMError("a standard error needs at least one item")
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of ``a - b`` over the same items and its paired standard error.

    ``a`` and ``b`` are per-item outcomes (0/1 for accuracies) of two models on the same
    items in the same order. ``se = sqrt(mean((d - mean d)^2) / n)`` with ``d = a - b``: the
    binomial formula's population variance, applied to the differences (when ``b`` is all
    zeros it is ``sqrt(p (1 - p) / n)``). Items both models get right or both get wrong add
    nothing to it, which is why it is smaller than the two separate errors combined.
    """
    if len(a) != len(b) or not a:
        raise GEMError(f"a paired difference needs two equally long, non-empty outcome lists ({len(a)} vs {len(b)})")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    variance = sum((x - mean) ** 2 for x in d) / len(d)
    return {"difference": mean, "se": math.sqrt(variance / len(d)), "n": len(d)}


def _accuracy(items: list[tuple[str, list[str], int]], gem, batch_size: int, desc: str, show_progress: bool,
              note: str, progress: ScoreProgress | None = None) -> dict[str, Any]:
    scores = choice_loglikelihoods(gem, [(c, [" " + x for x in xs]) for c, xs, _ in items],
                                   batch_size=batch_size, desc=desc, show_progress=show_progress, progress=progress)
    raw: list[int] = []
    norm: list[int] = []
    for (_, choices, gold), row in zip(items, scores):
        raw.append(int(max(range(len(row)), key=row.__getitem__) == gold))
        normalised = [s / max(len(choice), 1) for s, choice in zip(row, choices)]
        norm.append(int(max(range(len(row)), key=normalised.__getitem__) == gold))
    n = len(items)
    acc, acc_norm = sum(raw) / n, sum(norm) / n
    return {"acc": acc, "acc_se": standard_error(acc, n), "acc_norm": acc_norm,
            "acc_norm_se": standard_error(acc_norm, n), "n": n, "note": note,
            "correct": {"acc": raw, "acc_norm": norm}}


def evaluate_arc_easy(gem, data_dir=None, *, limit: int | None = None, seed: int = 0, batch_size: int = 8,
                      show_progress: bool = True,
                      progress: ScoreProgress | None = None) -> dict[str, Any]:
    """ARC-Easy test: 'Question: ...\\nAnswer:' + ' choice'; acc and acc_norm."""
    (path,) = require_files("ARC-Easy", resolve_data_dir(data_dir), ("lm/arc_easy/arc_easy.jsonl",))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = _sample(len(rows), limit, seed)
    items = [(rows[i]["query"] + "\nAnswer:", list(rows[i]["choices"]), int(rows[i]["gold"])) for i in keep]
    return _accuracy(items, gem, batch_size, "ARC-Easy", show_progress, _note(len(keep), len(rows), "questions", seed),
                     progress)


def evaluate_hellaswag(gem, data_dir=None, *, limit: int | None = None, seed: int = 0, batch_size: int = 8,
                       show_progress: bool = True,
                       progress: ScoreProgress | None = None) -> dict[str, Any]:
    """HellaSwag validation: context + ' ending'; acc and acc_norm."""
    (path,) = require_files("HellaSwag", resolve_data_dir(data_dir), ("lm/hellaswag/hellaswag_val_full.txt.bz2",))
    lines = bz2.decompress(path.read_bytes()).decode("utf-8").split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise GEMError(f"{path} has {len(lines)} lines, not a multiple of 6 (context, label, 4 endings per item)")
    rows = [lines[i : i + 6] for i in range(0, len(lines), 6)]
    keep = _sample(len(rows), limit, seed)
    items = [(rows[i][0], rows[i][2:6], int(rows[i][1])) for i in keep]
    return _accuracy(items, gem, batch_size, "HellaSwag", show_progress, _note(len(keep), len(rows), "items", seed),
                     progress)


def mmlu_subjects(data_dir=None) -> list[str]:
    """The MMLU subjects that have a test file, sorted."""
    folder = resolve_data_dir(data_dir) / "mmlu" / "test"
    if not folder.is_dir():
        raise MissingDataError(f"MMLU needs the folder {folder}, which does not exist; pass --data-dir DIR "
                               "(or set GEM_DATA) to a folder laid out as shared/data/README.md describes")
    return sorted(p.name[: -len("_test.csv")] for p in folder.glob("*_test.csv"))


def _mmlu_block(row: dict[str, str], answer: str | None) -> str:
    text = row["question"].strip() + "".join(f"\n{letter}. {row[f'choice{i}']}" for i, letter in enumerate(MMLU_LETTERS))
    return text + "\nAnswer:" + (f" {answer}\n\n" if answer is not None else "")


def mmlu_quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Questions per subject for a stratified sample of ``total`` out of ``sizes`` (subject -> count).

    Proportional allocation with the largest-remainder method: each subject gets
    ``total * size / sum(sizes)`` rounded down, at least 1 and at most its size, and the
    questions left go one each to the largest remainders (ties: alphabetical). Every
    subject is represented, so ``total`` must be at least the number of subjects.
    """
    population = sum(sizes.values())
    if total >= population:
        return dict(sizes)
    if total < len(sizes):
        raise GEMConfigError(f"a stratified MMLU sample of {total} cannot cover all {len(sizes)} subjects; "
                             f"ask for at least {len(sizes)} questions")
    exact = {subject: total * size / population for subject, size in sizes.items()}
    quotas = {subject: min(max(math.floor(value), 1), sizes[subject]) for subject, value in exact.items()}
    while sum(quotas.values()) > total:  # the minimum of 1 overshot: take from the most over-served
        subject = max((s for s in quotas if quotas[s] > 1), key=lambda s: (quotas[s] - exact[s], s))
        quotas[subject] -= 1
    for subject in sorted(sizes, key=lambda s: (-(exact[s] - quotas[s]), s)):
        if sum(quotas.values()) >= total:
            break
        if quotas[subject] < sizes[subject]:
            quotas[subject] += 1
    return quotas


def evaluate_mmlu(gem, data_dir=None, *, subjects: Sequence[str] | None = None, limit_per_subject: int | None = None,
                  limit_total: int | None = None, num_shots: int = 5, seed: int = 0, batch_size: int = 8,
                  show_progress: bool = True, progress: ScoreProgress | None = None) -> dict[str, Any]:
    """MMLU test, k-shot from the dev split, log-likelihood of ' A'..' D'; micro and macro accuracy.

    ``limit_total``: a stratified sample of that many test questions over the chosen
    subjects (``mmlu_quotas``: proportional, every subject at least once); each subject's
    questions are a seeded random sample (``seed``). ``limit_per_subject`` instead caps each
    subject at that many. The accuracy's standard error is the binomial one over the sample.
    """
    if limit_total is not None and limit_per_subject is not None:
        raise GEMConfigError("give MMLU either limit_total or limit_per_subject, not both")
    directory = resolve_data_dir(data_dir)
    available = mmlu_subjects(directory)
    chosen = list(subjects) if subjects is not None else available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise GEMConfigError(f"unknown MMLU subject(s) {unknown}; available: {', '.join(available)}")
    if not 0 <= num_shots <= 5:
        raise GEMConfigError(f"MMLU num_shots must be 0-5 (the dev split has 5 per subject), got {num_shots}")
    files = {subject: require_files("MMLU", directory, (f"mmlu/dev/{subject}_dev.csv", f"mmlu/test/{subject}_test.csv"))
             for subject in chosen}
    tests = {subject: _read_csv(files[subject][1]) for subject in chosen}
    population = sum(len(rows) for rows in tests.values())
    if limit_total is not None:
        quotas = mmlu_quotas({subject: len(rows) for subject, rows in tests.items()}, int(limit_total))
    else:
        quotas = {subject: (len(rows) if limit_per_subject is None else min(limit_per_subject, len(rows)))
                  for subject, rows in tests.items()}
    per_subject: dict[str, float] = {}
    outcomes: list[int] = []
    from tqdm.auto import tqdm

    for subject in tqdm(chosen, desc="MMLU subjects", unit="subject", disable=not show_progress):
        dev, test = _read_csv(files[subject][0]), tests[subject]
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        prefix = header + "".join(_mmlu_block(row, MMLU_LETTERS[int(row["answer"])]) for row in dev[:num_shots])
        rows = [test[i] for i in _sample(len(test), quotas[subject], seed)]
        scores = choice_loglikelihoods(gem, [(_mmlu_block(row, None), [f" {x}" for x in MMLU_LETTERS]) for row in rows],
                                       prefix=prefix, batch_size=batch_size, progress=progress)
        hits = [int(max(range(4), key=s.__getitem__) == int(row["answer"])) for s, row in zip(scores, rows)]
        per_subject[subject] = sum(hits) / len(rows)
        outcomes += hits
    total = len(outcomes)
    if limit_total is not None and total < population:
        note = (f"{total:,} of {population:,} questions over {len(chosen)} of {len(available)} subjects, stratified "
                f"by subject (proportional quotas {min(quotas.values())}-{max(quotas.values())} per subject, "
                f"seed {seed})")
    else:
        note = (f"{total:,} questions over {len(chosen)} of {len(available)} subjects"
                + (f", up to {limit_per_subject} per subject (seed {seed})" if limit_per_subject else ""))
    note += f", {num_shots}-shot"
    acc = sum(outcomes) / total
    return {"acc": acc, "acc_se": standard_error(acc, total), "acc_macro": sum(per_subject.values()) / len(per_subject),
            "n": total, "subjects": per_subject, "quotas": quotas, "note": note, "correct": {"acc": outcomes}}


def evaluate_wikitext2(gem, data_dir=None, *, max_length: int = 512, stride: int = 256, max_tokens: int | None = None,
                       batch_size: int = 4, show_progress: bool = True,
                       progress: ScoreProgress | None = None) -> dict[str, Any]:
    """WikiText-2 (raw tokenised v1 test file) sliding-window perplexity."""
    (path,) = require_files("WikiText-2", resolve_data_dir(data_dir), ("lm/wikitext2/wiki.test.tokens",))
    result = perplexity(gem, path.read_text(encoding="utf-8"), max_length=max_length, stride=stride,
                        max_tokens=max_tokens, batch_size=batch_size, show_progress=show_progress, progress=progress)
    scope = f"first {result['tokens']:,} tokens of the test file" if max_tokens else f"all {result['tokens']:,} tokens"
    result["note"] = f"{scope}; window {result['max_length']}, stride {stride}"
    return result


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _note(kept: int, total: int, unit: str, seed: int) -> str:
    return f"all {total:,} {unit}" if kept >= total else f"{kept:,} of {total:,} {unit} (seeded random subset, seed {seed})"


def canonical_lm_task(name: str) -> str:
    """The exact LM benchmark name for ``name`` (case-insensitive), or a ``GEMConfigError``."""
    for known in LM_TASKS:
        if name.strip().lower() == known.lower():
            return known
    raise GEMConfigError(f"unknown LM task {name!r}; choose from {', '.join(LM_TASKS)}")


__all__ = [
    "LM_TASKS", "ScoreProgress", "canonical_lm_task", "choice_loglikelihoods", "evaluate_arc_easy", "evaluate_hellaswag",
    "evaluate_mmlu", "evaluate_wikitext2", "loglikelihood", "mmlu_quotas", "mmlu_subjects", "paired_difference",
    "perplexity", "sliding_windows", "standard_error",
]
