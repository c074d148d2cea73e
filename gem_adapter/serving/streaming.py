"""Generation responses: whole (JSON) or streamed as server-sent events, in OpenAI's shapes.

The worker reports a generation as events (see ``scheduler.GenerationJob``); this module turns
them into a ``chat.completion`` / ``text_completion`` body, or into ``data: {chunk}\\n\\n``
events ending with ``data: [DONE]\\n\\n``. A client that goes away cancels its generation:
the event loop checks ``request.is_disconnected()`` while it waits, and a stream that
Starlette closes cancels the job in its ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .errors import APIError
from .generation import SamplingParams
from .scheduler import GenerationJob, Worker
from .schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
    CompletionUsage,
)

DISCONNECT_POLL_S = 0.5


class GenerationCall:
    """One submitted generation and the queue its events arrive on."""

    def __init__(self, worker: Worker, prompt_ids: list[int], params: SamplingParams, model: str):
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

        def emit(*event) -> None:  # called on the worker thread
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the event loop is gone: nobody is listening
                self.job.cancel()

        self.job = GenerationJob(prompt_ids, params, model, emit)
        worker.submit_generation(self.job)

    async def stream(self, request: Request) -> AsyncIterator[tuple]:
        """The job's events until it ends; stops (and cancels the job) if the client disconnects."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if event[0] == "error":
                    raise event[1]
                yield event
                if event[0] == "done":
                    return
        finally:
            self.job.cancel()  # a no-op once the job has ended


def _usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                           total_tokens=prompt_tokens + completion_tokens)


async def complete(call: GenerationCall, request: Request, model: str, chat: bool) -> JSONResponse:
    """The whole generation as one ``chat.completion`` or ``text_completion`` body."""
    parts: list[str] = []
    done = None
    async for event in call.stream(request):
        if event[0] == "delta":
            parts.append(event[1])
        else:
            done = event
    if done is None:  # the client went away; nobody reads this
        return JSONResponse({}, status_code=499)
    _, reason, prompt_tokens, completion_tokens = done
    text, created = "".join(parts), int(time.time())
    if chat:
        body = ChatCompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=created, model=model,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
            usage=_usage(prompt_tokens, completion_tokens))
    else:
        body = CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex}", created=created, model=model,
            choices=[CompletionChoice(text=text, finish_reason=reason)], usage=_usage(prompt_tokens, completion_tokens))
    return JSONResponse(body.model_dump())


def stream_response(call: GenerationCall, request: Request, model: str, chat: bool, include_usage: bool) -> StreamingResponse:
    """The generation as server-sent events of ``chat.completion.chunk`` / ``text_completion`` chunks."""
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model}

    def chunk(text: str | None = None, reason: str | None = None, role: bool = False, usage=None, choices=True) -> str:
        body = dict(head)
        if choices:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
                body["choices"] = [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]
            else:
                body["choices"] = [{"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}]
        else:
            body["choices"] = []
        body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            if chat:
                yield chunk(role=True)
            async for event in call.stream(request):
                if event[0] == "delta":
                    if event[1]:
                        yield chunk(event[1])
                    continue
                _, reason, prompt_tokens, completion_tokens = event
                yield chunk(reason=reason)
                if include_usage:
                    yield chunk(usage=_usage(prompt_tokens, completion_tokens).model_dump(), choices=False)
                yield "data: [DONE]\n\n"
        except APIError as error:  # after the 200 went out, an error can only be one more event
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            call.job.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
