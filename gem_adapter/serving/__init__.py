"""An OpenAI-compatible HTTP server for one ``GEMModel``: embeddings and generation from the same weights.

``create_app(model, model_name=...)`` returns a FastAPI app (mount it in another ASGI app, or
run it); ``serve(model, ...)`` runs it with uvicorn; ``gem serve`` is the command line.
Needs the ``serve`` extra: ``pip install 'gem-adapter[serve]'``.

Routes: ``POST /v1/embeddings``, ``/v1/chat/completions``, ``/v1/completions``,
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (vLLM's names); ``GET /v1/models``,
``/health`` (never needs the key) and ``/metrics`` (Prometheus). One worker thread owns the
model (``scheduler``); the routes only check and queue.

Behaviour worth knowing (limits are ``ServingSettings`` fields, defaults in brackets):

* ``model`` is ``model_name`` (the model as handed over, with the adapters active then) or
  the name of a loaded adapter; anything else is a 404 ``model_not_found``.
* Embedding ``input``: a string, a list of strings, a list of token ids or a list of id lists.
  Token ids are decoded to text and embedded as text (so the adapter's template and the GEM
  tokens go around them as for any text). Empty strings and lists are refused.
* Token limit: each input may have ``max_input_tokens`` tokens of its own [the model's
  ``GEMConfig.max_length``]; template, instruction and GEM tokens come on top. Longer inputs
  are a 400 naming the count and the limit, unless ``truncate`` [False] or the request's
  ``gem_truncate: true`` cuts them to the limit (``usage`` counts what was embedded).
* ``dimensions`` (1 to the hidden size; else a 400): the first values of each vector,
  re-normalised, as ``encode(dimensions=)``; meant for adapters trained with ``matryoshka_dims``
  (their ``gem_config.json`` lists the sizes). ``encoding_format: base64`` is little-endian float32.
* Extensions (OpenAI client: ``extra_body``): ``gem_input_type`` ``"query"`` or ``"document"``
  embeds with ``encode_query`` / ``encode_document``; ``gem_instruction`` is their instruction;
  ``gem_truncate`` as above.
* Generation: temperature [1.0, OpenAI's default; 0 is greedy and equals
  ``model.generate(prompt, do_sample=False)``], ``top_p``, ``seed``, ``stop`` (up to 4),
  ``max_tokens`` / ``max_completion_tokens`` (at most ``max_tokens`` [1024], which is also the
  default, and within the model's context); ``n`` > 1, logprobs and tools are refused. Chat
  prompts use the tokenizer's chat template with the generation prompt.
* Limits: ``max_inputs`` [2048] texts per request, ``max_body_bytes`` [16 MiB] (413),
  ``max_queue`` [256] requests waiting or running (429 with ``Retry-After``),
  ``max_concurrent_generations`` [4]; micro-batches of ``max_batch_inputs`` [64] texts or
  ``max_batch_tokens`` [8192] tokens after waiting up to ``batch_wait_ms`` [3].
* ``/v1/load_lora_adapter`` reads a folder on the server's disk (so set ``api_key`` when the
  server is reachable by others; ``allow_adapter_updates=False`` removes both routes); a path
  that does not exist is a 404 ``adapter_not_found``, an adapter that fails the checks a 400.
  Pickled weights are refused unless ``allow_pickle``.
"""

from __future__ import annotations

from typing import Any

from .settings import ServingSettings


def __getattr__(name: str) -> Any:
    # FastAPI loads with the first use of create_app, so `gem serve --help` and the rest of the
    # package work without the serve extra.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(model, host: str = "127.0.0.1", port: int = 8000, *, model_name: str | None = None,
          api_key: str | None = None, allow_pickle: bool = False, log_level: str = "info", **settings) -> None:
    """Serve ``model`` with uvicorn until interrupted (``settings``: see ``ServingSettings``).

    ``model_name`` defaults to the base the model was loaded from (``model.config.base_model``).
    """
    import uvicorn

    from .app import create_app

    name = model_name or getattr(model.config, "base_model", None) or "gem"
    app = create_app(model, model_name=str(name), api_key=api_key, allow_pickle=allow_pickle, **settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["ServingSettings", "create_app", "serve"]
