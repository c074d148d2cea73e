"""Request and response bodies of the OpenAI-compatible API, field for field as OpenAI names them.

Requests ignore fields they do not know (clients send ``user`` and friends); fields that would
change the result and are not supported (``n`` > 1, ``logprobs``, tools) are refused by the
routes with a 400 naming the field. The ``gem_*`` fields are this server's extensions (pass
them with the OpenAI client's ``extra_body``).

``input`` and ``prompt`` are typed ``Any`` on purpose: the routes check them item by item, so
an error can say ``input[2] is int`` instead of pydantic's list of union branches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- errors
class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorDetail


# ----------------------------------------------------------------------------- embeddings
class EmbeddingRequest(_Request):
    input: Any = Field(..., description="str, list[str], list[int] (token ids) or list[list[int]]")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    gem_input_type: Literal["query", "document"] | None = Field(
        None, description="extension: embed as a search query (encode_query) or a document (encode_document)")
    gem_instruction: str | None = Field(
        None, description="extension: the task instruction for gem_input_type (query: 'Instruct: ...\\nQuery: text')")
    gem_truncate: bool | None = Field(
        None, description="extension: cut inputs over the token limit instead of refusing them (default: server setting)")


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ----------------------------------------------------------------------------- generation
class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingRequest(_Request):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    logprobs: bool | int | None = None
    user: str | None = None


class ChatMessage(_Request):
    role: str
    content: Any = None
    name: str | None = None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    response_format: Any = None


class CompletionRequest(_SamplingRequest):
    prompt: Any
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class CompletionUsage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Response):
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None


class CompletionChoice(_Response):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class CompletionResponse(_Response):
    """Both the whole answer and, with ``stream``, each chunk (OpenAI uses one schema for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


# ----------------------------------------------------------------------------- models and adapters
class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gem-adapter"
    root: str | None = None
    parent: str | None = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadLoraAdapterRequest(_Request):
    lora_name: str = Field(..., min_length=1, max_length=128)
    lora_path: str = Field(..., min_length=1)


class UnloadLoraAdapterRequest(_Request):
    lora_name: str = Field(..., min_length=1, max_length=128)
    lora_int_id: int | None = None
