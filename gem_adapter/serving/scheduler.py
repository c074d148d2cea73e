"""The worker: one thread owns the model; the HTTP side only queues work for it and waits.

Everything that touches the model runs on this thread: embedding batches, generation steps,
and adapter load/unload. So a request can never run under another request's adapter: the
worker activates each batch's (or generation step's) adapter right before running it, and
load/unload happen between two pieces of work, never during one.

One turn of the loop:

1. adapter operations (load, unload) waiting, in arrival order;
2. one embedding micro-batch: texts taken first-come first-served from the waiting requests
   until ``max_batch_inputs`` texts or ``max_batch_tokens`` tokens (a request larger than
   that is split over several turns). When the worker is otherwise idle it first waits up to
   ``batch_wait_ms`` after the oldest request arrived, so concurrent requests share a batch.
   The batch is grouped by (adapter, query/document, instruction); one ``encode`` per group;
3. at most one new generation starts (prompt prefill), up to ``max_concurrent_generations``;
4. one decode step (one token) for every running generation.

So a long generation delays an embedding batch by at most one decode step per running
generation, and a big embedding request delays a generation by one batch per token.
Unloading an adapter that running generations use waits until they end; meanwhile new
requests for it are answered 404.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GEMError
from .errors import APIError, model_not_found, queue_full
from .generation import Decoder, SamplingParams, TextStream

CLOSED = APIError(503, "the server is shutting down", type="server_error", code="shutting_down")


@dataclass
class EmbeddingJob:
    """One embedding request: its texts, their token counts, and where the vectors go."""

    texts: list[str]
    token_counts: list[int]
    model: str  # the served model name it asked for
    input_type: str | None = None  # None, "query" or "document"
    instruction: str | None = None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    adapters: tuple[str, ...] = ()
    cursor: int = 0  # texts before this one are in a batch already
    done: int = 0
    vectors: np.ndarray | None = None
    failed: bool = False


@dataclass
class GenerationJob:
    """One generation: prompt ids, sampling settings, and a callback for its events.

    ``emit`` is called on the worker thread with ``("delta", text)``, then once with
    ``("done", finish_reason, prompt_tokens, completion_tokens)`` or ``("error", APIError)``.
    """

    prompt_ids: list[int]
    params: SamplingParams
    model: str
    emit: Callable[..., None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    adapters: tuple[str, ...] = ()
    decoder: Decoder | None = None
    text: TextStream | None = None

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class AdapterOp:
    kind: str  # "load" or "unload"
    name: str
    path: str | None = None
    future: Future = field(default_factory=Future)


class Worker:
    """The thread that owns the model (see the module docstring for one turn of its loop)."""

    def __init__(self, model, model_name: str, settings, metrics=None):
        self.model = model
        self.model_name = model_name
        self.settings = settings
        self.metrics = metrics
        # The served base is the model as handed over: a model loaded with adapter= serves it active.
        self.base_adapters: tuple[str, ...] = tuple(model.active_adapters())
        self.adapters: tuple[str, ...] = tuple(n for n in model.adapter_names() if n not in self.base_adapters)
        # Served adapter name -> its name inside the model (the same name; kept apart so the
        # served set can change before the model's does, see _unload).
        self._inner: dict[str, str] = {name: name for name in self.adapters}
        self._unloading: set[str] = set()  # inner names waiting for their generations to end
        self._cond = threading.Condition()
        self._ops: deque[AdapterOp] = deque()
        self._embeddings: deque[EmbeddingJob] = deque()
        self._waiting: deque[GenerationJob] = deque()
        self._running: list[GenerationJob] = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="gem-serving-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the HTTP side
    def served_models(self) -> list[str]:
        return [self.model_name, *self.adapters]

    def adapters_for(self, name: str) -> tuple[str, ...]:
        """The adapters to activate for served model ``name``; 404 when it is not served."""
        if name == self.model_name:
            return self.base_adapters
        inner = self._inner.get(name)
        if inner is not None and inner not in self._unloading:
            return (inner,)
        raise model_not_found(name, self.served_models())

    def depth(self) -> int:
        """Requests waiting or running (the queue-depth gauge and the ``max_queue`` limit)."""
        return len(self._ops) + len(self._embeddings) + len(self._waiting) + len(self._running)

    def submit_embedding(self, job: EmbeddingJob) -> Future:
        job.adapters = self.adapters_for(job.model)
        self._enqueue(self._embeddings, job)
        return job.future

    def submit_generation(self, job: GenerationJob) -> None:
        job.adapters = self.adapters_for(job.model)
        self._enqueue(self._waiting, job)

    def submit_adapter_op(self, op: AdapterOp) -> Future:
        self._enqueue(self._ops, op)
        return op.future

    def _enqueue(self, queue: deque, item) -> None:
        with self._cond:
            if self._closed:
                raise CLOSED
            depth = self.depth()
            if depth >= self.settings.max_queue:
                raise queue_full(depth, self.settings.retry_after_s)
            queue.append(item)
            self._cond.notify()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker after the turn it is in; waiting requests get a 503."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._has_work():
                    self._cond.wait()
                if self._closed:
                    self._fail_everything()
                    return
                self._wait_for_batch()
                ops, self._ops = list(self._ops), deque()
                batch = self._take_batch()
                starting = self._waiting.popleft() if self._waiting and len(self._running) < self.settings.max_concurrent_generations else None
            self._run_ops(ops)
            if batch:
                self._run_batch(batch)
            if starting is not None:
                self._start(starting)
            for job in list(self._running):
                self._step(job)

    def _has_work(self) -> bool:
        can_start = self._waiting and len(self._running) < self.settings.max_concurrent_generations
        return bool(self._ops or self._embeddings or can_start or self._running)

    def _wait_for_batch(self) -> None:
        """Idle but for embeddings: give concurrent requests ``batch_wait_ms`` to join the batch."""
        if not self._embeddings or self._ops or self._running or self._waiting:
            return
        deadline = self._embeddings[0].arrived + self.settings.batch_wait_ms / 1000
        while not self._closed and time.monotonic() < deadline:
            texts = sum(len(j.texts) - j.cursor for j in self._embeddings)
            tokens = sum(sum(j.token_counts[j.cursor:]) for j in self._embeddings)
            if texts >= self.settings.max_batch_inputs or tokens >= self.settings.max_batch_tokens:
                return
            self._cond.wait(deadline - time.monotonic())

    def _take_batch(self) -> list[tuple[EmbeddingJob, int, int]]:
        """Slices (job, start, end) of the waiting texts, first come first served, within the limits."""
        batch, texts, tokens = [], 0, 0
        while self._embeddings and texts < self.settings.max_batch_inputs:
            job = self._embeddings[0]
            start = end = job.cursor
            while end < len(job.texts) and texts < self.settings.max_batch_inputs:
                cost = job.token_counts[end]
                if texts and tokens + cost > self.settings.max_batch_tokens:
                    break
                texts, tokens, end = texts + 1, tokens + cost, end + 1
            if end > start:
                batch.append((job, start, end))
                job.cursor = end
            if job.cursor < len(job.texts):
                break  # the batch is full; the rest of this job goes in the next turn
            self._embeddings.popleft()
        return batch

    # ------------------------------------------------------------------ work items
    def _activate(self, adapters: tuple[str, ...]) -> None:
        if tuple(self.model.active_adapters()) == adapters:
            return
        if adapters:
            self.model.use_adapter(adapters[0] if len(adapters) == 1 else list(adapters))
        else:
            self.model.disable_adapters()

    def _run_batch(self, batch: list[tuple[EmbeddingJob, int, int]]) -> None:
        groups: dict[tuple, list[tuple[EmbeddingJob, int, int]]] = {}
        for piece in batch:
            job = piece[0]
            groups.setdefault((job.adapters, job.input_type, job.instruction), []).append(piece)
        for (adapters, input_type, instruction), pieces in groups.items():
            pieces = [p for p in pieces if not p[0].failed]
            if not pieces:
                continue
            texts = [text for job, start, end in pieces for text in job.texts[start:end]]
            try:
                self._check_still_served(adapters, pieces[0][0].model)
                self._activate(adapters)
                vectors = self._encode(texts, input_type, instruction, max(c for j, s, e in pieces for c in j.token_counts[s:e]))
            except Exception as exc:  # noqa: BLE001 - a failed batch answers its requests, never kills the worker
                for job, _, _ in pieces:
                    self._fail_embedding(job, exc)
                continue
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(texts))
            offset = 0
            for job, start, end in pieces:
                if job.vectors is None:
                    job.vectors = np.empty((len(job.texts), vectors.shape[1]), dtype=np.float32)
                job.vectors[start:end] = vectors[offset : offset + end - start]
                offset += end - start
                job.done += end - start
                if job.done == len(job.texts) and not job.future.done():
                    job.future.set_result(job.vectors)

    def _encode(self, texts: list[str], input_type: str | None, instruction: str | None, longest: int) -> np.ndarray:
        # The HTTP side already refused (or cut) texts over the token limit, so encode must not
        # cut again: its max_length is the longest text plus room for template, instruction, GEM.
        tokenizer = self.model.tokenizer
        extra = len(self.model.gem_token_ids) + 16
        for part in (self.model.config.template, instruction):
            if part:
                extra += len(tokenizer(part, add_special_tokens=False)["input_ids"]) + 16
        kwargs = {"batch_size": self.settings.encode_batch_size, "max_length": longest + extra,
                  "show_progress_bar": False}
        if input_type == "query":
            return self.model.encode_query(texts, instruction=instruction, **kwargs)
        if input_type == "document":
            return self.model.encode_document(texts, instruction=instruction, **kwargs)
        return self.model.encode(texts, **kwargs)

    def _check_still_served(self, adapters: tuple[str, ...], model: str) -> None:
        loaded = self.model.adapter_names()
        if any(name not in loaded or name in self._unloading for name in adapters):
            raise model_not_found(model, self.served_models())

    def _fail_embedding(self, job: EmbeddingJob, exc: Exception) -> None:
        job.failed = True
        if not job.future.done():
            job.future.set_exception(_as_api_error(exc))

    def _start(self, job: GenerationJob) -> None:
        if job.cancelled.is_set():
            return
        try:
            self._check_still_served(job.adapters, job.model)
            job.decoder = Decoder(self.model, job.prompt_ids, job.params)
            job.text = TextStream(self.model.tokenizer, job.params.stop)
        except Exception as exc:  # noqa: BLE001
            job.emit("error", _as_api_error(exc))
            return
        self._running.append(job)
        self._step(job)

    def _step(self, job: GenerationJob) -> None:
        if job.cancelled.is_set():
            self._finish(job, None)
            return
        try:
            self._activate(job.adapters)
            token = job.decoder.next_token()
            if self.metrics is not None:
                self.metrics.tokens.labels("completion").inc()
            if token in job.decoder.eos:
                job.emit("delta", job.text.flush())
                self._finish(job, "stop")
                return
            delta, stopped = job.text.update(job.decoder.generated)
            if delta:
                job.emit("delta", delta)
            if stopped:
                self._finish(job, "stop")
            elif len(job.decoder.generated) >= job.params.max_tokens:
                job.emit("delta", job.text.flush())
                self._finish(job, "length")
        except Exception as exc:  # noqa: BLE001
            self._finish(job, None)
            job.emit("error", _as_api_error(exc))

    def _finish(self, job: GenerationJob, reason: str | None) -> None:
        if job in self._running:
            self._running.remove(job)
        job.decoder.release()
        if reason is not None:
            job.emit("done", reason, len(job.prompt_ids), len(job.decoder.generated))

    def _run_ops(self, ops: list[AdapterOp]) -> None:
        for op in ops:
            try:
                if op.kind == "load":
                    result = self._load(op)
                else:
                    result = self._unload(op)
            except Exception as exc:  # noqa: BLE001
                op.future.set_exception(_as_api_error(exc))
            else:
                if result is not _DEFERRED:
                    op.future.set_result(result)

    def _load(self, op: AdapterOp) -> str:
        if op.name == self.model_name or op.name in self._inner:
            raise APIError(400, f"the name {op.name!r} is taken (served: {self.served_models()}); pick another lora_name",
                           param="lora_name", code="adapter_exists")
        self.model.load_adapter(op.path, op.name, allow_pickle=self.settings.allow_pickle)
        self._inner[op.name] = op.name
        self.adapters = (*self.adapters, op.name)
        return op.name

    def _unload(self, op: AdapterOp):
        inner = self._inner.get(op.name)
        if inner is None:
            raise APIError(404, f"no adapter named {op.name!r} is loaded (loaded: {list(self.adapters)})",
                           param="lora_name", code="adapter_not_found")
        if any(inner in job.adapters for job in self._running):
            self._unloading.add(inner)  # new requests for it get 404 from now on
            with self._cond:
                self._ops.append(op)  # try again next turn
            return _DEFERRED
        self.model.unload_adapter(inner)
        self._unloading.discard(inner)
        del self._inner[op.name]
        self.adapters = tuple(n for n in self.adapters if n != op.name)
        return op.name

    def _fail_everything(self) -> None:
        for op in self._ops:
            op.future.set_exception(CLOSED)
        for job in self._embeddings:
            if not job.future.done():
                job.future.set_exception(CLOSED)
        for job in itertools.chain(self._waiting, self._running):
            job.emit("error", CLOSED)
        self._ops.clear()
        self._embeddings.clear()
        self._waiting.clear()
        self._running.clear()


_DEFERRED: Any = object()


def _as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (GEMError, ValueError, TypeError)):
        return APIError(400, str(exc))
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
