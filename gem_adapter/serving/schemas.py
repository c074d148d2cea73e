"""Request and response bodies of the OpenAI-compatible API, field for field as OpenAI names them.

Requests ignore fields they do not know and that change nothing (clients send ``user``,
``metadata`` and friends). Fields that would change the result and are not implemented are
declared here so that they are never dropped unseen: the routes refuse each with a 400 naming
the field unless it holds its neutral value (``UNSUPPORTED_SAMPLING``, ``UNSUPPORTED_EMBEDDING``;
also ``n`` > 1, ``logprobs``, tools). The ``gem_*`` fields are this server's extensions (pass
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


# Result-changing fields of OpenAI's (and vLLM's) requests that this server does not implement,
# with the values that change nothing (accepted: a client may send the default explicitly).
UNSUPPORTED_SAMPLING: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "top_logprobs": (0,),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "prediction": (),
    "modalities": (["text"],),
    "audio": (),
    "reasoning_effort": (),
    "top_k": (0, -1),
    "min_p": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "min_tokens": (0,),
    "ignore_eos": (False,),
    "guided_json": (),
    "guided_regex": (),
    "guided_choice": (),
    "guided_grammar": (),
}
UNSUPPORTED_EMBEDDING: dict[str, tuple[Any, ...]] = {
    "truncate_prompt_tokens": (),  # vLLM's; here: gem_truncate
    "normalize": (True,),  # vLLM's; vectors here are always unit length
}


def refused_field(body: BaseModel, fields: dict[str, tuple[Any, ...]]) -> str | None:
    """The first of ``fields`` that ``body`` sets to a value other than its neutral ones, or None."""
    for name, neutral in fields.items():
        value = getattr(body, name, None)
        if value is not None and not any(_same(value, ok) for ok in neutral):
            return name
    return None


def _same(value: Any, neutral: Any) -> bool:
    if isinstance(value, bool) or isinstance(neutral, bool):  # True == 1 and False == 0 in Python
        return value is neutral
    return value == neutral


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
    # declared only to be refused when set (UNSUPPORTED_EMBEDDING)
    truncate_prompt_tokens: Any = None
    normalize: Any = None


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
    # declared only to be refused when set (UNSUPPORTED_SAMPLING)
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    top_logprobs: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    prediction: Any = None
    modalities: Any = None
    audio: Any = None
    reasoning_effort: Any = None
    top_k: Any = None
    min_p: Any = None
    repetition_penalty: Any = None
    min_tokens: Any = None
    ignore_eos: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None


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
