"""The FastAPI app: OpenAI-compatible routes in front of the model worker.

Routes only check and queue; the model is touched by the worker thread alone (``scheduler``).
Every failure is answered with OpenAI's error body ``{"error": {message, type, param, code}}``:
our ``APIError``, FastAPI's validation errors and malformed JSON (400), unknown routes (404),
a body over the limit (413), a missing or wrong key (401), a full queue (429 + Retry-After),
and anything unexpected (500) - the server keeps answering after each.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..errors import GEMConfigError
from .errors import INVALID_REQUEST, APIError
from .inputs import InputChecker
from .metrics import Metrics
from .scheduler import AdapterOp, EmbeddingJob, Worker
from .schemas import (
    UNSUPPORTED_EMBEDDING,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    LoadLoraAdapterRequest,
    ModelCard,
    ModelList,
    UnloadLoraAdapterRequest,
    refused_field,
)
from .settings import ServingSettings
from .streaming import GenerationCall, complete, stream_response

OPEN_PATHS = ("/health",)
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


def create_app(model, *, model_name: str, api_key: str | None = None, allow_pickle: bool = False,
               **settings) -> FastAPI:
    """An ASGI app serving ``model`` (a ``GEMModel``) under OpenAI's API; mount it anywhere.

    ``model_name`` is the name clients pass as ``model`` for the model as handed over (with the
    adapters active that were active then); every adapter loaded into it is served under its
    own name. ``settings`` are the limits of ``ServingSettings`` (``max_inputs``,
    ``max_input_tokens``, ``truncate``, ``max_body_bytes``, ``max_queue``, ``batch_wait_ms``,
    ``max_batch_inputs``, ``max_batch_tokens``, ``max_tokens``, ``max_concurrent_generations``,
    ``allow_adapter_updates`` ...). The app starts its worker thread at once; the app's
    lifespan shutdown (or ``app.state.gem_worker.close()`` when mounted) stops it.
    """
    if not model_name or not isinstance(model_name, str):
        raise GEMConfigError(f"model_name must be a non-empty string, got {model_name!r}")
    try:
        config = ServingSettings(api_key=api_key, allow_pickle=allow_pickle, **settings)
    except TypeError as exc:
        raise GEMConfigError(f"unknown serving setting: {exc}") from None
    import copy

    tokenizer = copy.deepcopy(model.tokenizer)  # the HTTP side's own; the worker keeps the model's
    max_input_tokens = config.max_input_tokens or model.config.max_length
    context = getattr(getattr(model.model, "config", None), "max_position_embeddings", None)
    checker = InputChecker(tokenizer, model.gem_token_ids, config, max_input_tokens, context)
    hidden_size = model.hidden_size
    created = int(time.time())

    worker_box: list[Worker] = []
    metrics = Metrics(lambda: worker_box[0].depth() if worker_box else 0)
    worker = Worker(model, model_name, config, metrics)
    worker_box.append(worker)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.close()

    app = FastAPI(title="gem-adapter", description="OpenAI-compatible embeddings and generation from one GEM model",
                  lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gem_worker = worker
    app.state.gem_metrics = metrics
    app.state.gem_settings = config
    install_error_handlers(app)

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> Response:
        if not worker._thread.is_alive():
            raise APIError(503, "the model worker has stopped", type="server_error", code="worker_stopped")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    @app.get("/v1/models")
    async def list_models() -> Response:
        cards = [ModelCard(id=model_name, created=created, root=model_name)]
        cards += [ModelCard(id=name, created=created, root=name, parent=model_name) for name in worker.adapters]
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Response:
        """Embed ``input``; extension fields ``gem_input_type`` ("query" / "document", for
        ``encode_query`` / ``encode_document``), ``gem_instruction`` (their task instruction) and
        ``gem_truncate`` (cut texts over the token limit instead of a 400). ``dimensions`` keeps
        the first values of each vector, re-normalised (Matryoshka; ``encode(dimensions=)``)."""
        worker.adapters_for(body.model)  # 404 before any work
        refused = refused_field(body, UNSUPPORTED_EMBEDDING)
        if refused is not None:
            raise APIError(400, f"{refused} = {getattr(body, refused)!r} is not supported by this server; leave it out"
                                + (" (gem_truncate: true cuts long inputs)" if refused == "truncate_prompt_tokens" else ""),
                           param=refused)
        if body.dimensions is not None and not 1 <= body.dimensions <= hidden_size:
            raise APIError(400, f"dimensions = {body.dimensions}: must lie in 1..{hidden_size}, the size of this "
                                "model's embeddings", param="dimensions")
        if body.gem_instruction and body.gem_input_type is None:
            raise APIError(400, "gem_instruction needs gem_input_type ('query' or 'document')", param="gem_instruction")
        truncate = config.truncate if body.gem_truncate is None else body.gem_truncate
        texts, counts = await run_in_threadpool(checker.embedding_texts, body.input, truncate)
        n_gem = len(model.gem_token_ids)
        job = EmbeddingJob(texts, [c + n_gem for c in counts], body.model, body.gem_input_type, body.gem_instruction)
        vectors = await asyncio.wrap_future(worker.submit_embedding(job))
        if body.dimensions is not None and body.dimensions < vectors.shape[1]:
            vectors = vectors[:, : body.dimensions]  # unit vectors cut, then made unit length again
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        metrics.tokens.labels("prompt").inc(sum(counts))
        if body.encoding_format == "base64":
            encode = lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
        else:
            encode = lambda v: v.tolist()
        data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})

    async def generate(request: Request, body, prompt_ids: list[int], max_tokens: int | None, chat: bool) -> Response:
        params = checker.sampling(body, len(prompt_ids), max_tokens)
        call = GenerationCall(worker, prompt_ids, params, body.model)
        metrics.tokens.labels("prompt").inc(len(prompt_ids))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return stream_response(call, request, body.model, chat, include_usage)
        return await complete(call, request, body.model, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        worker.adapters_for(body.model)
        prompt_ids = await run_in_threadpool(checker.chat_prompt, body.messages)
        return await generate(request, body, prompt_ids, body.max_completion_tokens or body.max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        worker.adapters_for(body.model)
        prompt_ids = await run_in_threadpool(checker.completion_prompt, body.prompt)
        return await generate(request, body, prompt_ids, body.max_tokens, chat=False)

    if config.allow_adapter_updates:
        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(body: LoadLoraAdapterRequest) -> Response:
            """Load an adapter folder on the server's disk under ``lora_name`` (vLLM's route).

            A path that does not exist is a 404 (code ``adapter_not_found``); an adapter that
            fails the checks (wrong base, pickled weights without ``allow_pickle``...) a 400.
            """
            if not ADAPTER_NAME.match(body.lora_name):
                raise APIError(400, f"lora_name {body.lora_name!r} may hold only letters, digits and . _ : / -",
                               param="lora_name")
            if not Path(body.lora_path).exists():
                raise APIError(404, f"lora_path {body.lora_path} does not exist on the server", param="lora_path",
                               code="adapter_not_found")
            name = await asyncio.wrap_future(worker.submit_adapter_op(AdapterOp("load", body.lora_name, body.lora_path)))
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(body: UnloadLoraAdapterRequest) -> Response:
            """Unload adapter ``lora_name`` (404 when not loaded); waits for generations using it."""
            name = await asyncio.wrap_future(worker.submit_adapter_op(AdapterOp("unload", body.lora_name)))
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    app.add_middleware(Gatekeeper, settings=config, metrics=metrics, routes={r.path for r in app.routes})
    return app


# ----------------------------------------------------------------------------- errors
def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI's error body for every failure, FastAPI's own included."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "")
            return error_response(APIError(400, f"the request body is not valid JSON: {detail}".rstrip(": "),
                                           code="invalid_json"))
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        if first.get("type") == "missing" and not location:
            message = "the request body is missing; send a JSON object"
        else:
            message = f"{param or 'body'}: {first.get('msg')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        message = messages.get(exc.status_code, str(exc.detail))
        error = APIError(exc.status_code, message, type=INVALID_REQUEST if exc.status_code < 500 else "server_error",
                         headers=dict(exc.headers or {}))
        return error_response(error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))


# ----------------------------------------------------------------------------- middleware
def _route_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class Gatekeeper:
    """Pure ASGI middleware: metrics for every request, the API key, and the body size limit.

    The body is read here (Content-Length is checked first, then the bytes actually sent) and
    handed on whole, so an oversized body is refused before FastAPI parses any of it.
    """

    def __init__(self, app, settings: ServingSettings, metrics: Metrics, routes: set[str]):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        route = path if path in self.routes else "other"
        status = [500]
        started = time.perf_counter()

        async def send_with_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            error = None if path in OPEN_PATHS else self._check_key(scope)
            body = b""
            if error is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                body, error = await self._read_body(scope, receive)
                if body is None:  # the client left while sending
                    status[0] = 499
                    return
            if error is not None:
                await error_response(error)(scope, receive, send_with_status)
                return
            await self.app(scope, _replay(body, receive), send_with_status)
        finally:
            self.metrics.requests.labels(route, scope.get("method", ""), str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def _check_key(self, scope) -> APIError | None:
        key = self.settings.api_key
        if key is None:
            return None
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'",
                            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            return APIError(401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return None

    async def _read_body(self, scope, receive) -> tuple[bytes | None, APIError | None]:
        limit = self.settings.max_body_bytes
        too_large = APIError(413, f"the request body is over this server's limit of {limit} bytes",
                             code="request_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return b"", too_large
            except ValueError:
                return b"", APIError(400, f"Content-Length {length!r} is not a number")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive):
    """A ``receive`` that gives the already-read body once, then the client's own messages."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
