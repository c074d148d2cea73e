"""``gem serve``: load a base (and adapters) and serve it with the OpenAI-compatible API (``serving``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import GEMError
from ..serving import ServingSettings
from .common import dtype_option

_DEFAULTS = ServingSettings()


def _adapter_pairs(ctx, param, values: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r} is not NAME=PATH", param=param)
        if name in (n for n, _ in pairs):
            raise click.BadParameter(f"adapter name {name!r} is given twice", param=param)
        pairs.append((name, path))
    return pairs


@click.command("serve")
@click.option("--base", required=True, help="Base model: folder, .gguf file, hub id or alias (e.g. smollm2-135m).")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=PATH", callback=_adapter_pairs,
              help="An adapter folder to serve as model NAME (repeatable).")
@click.option("--no-adapter", is_flag=True,
              help="Serve the bare base under its name, not the adapter shipped for the base alias smollm2-135m.")
@click.option("--model-name", default=None, help="The name clients use for the base.  [default: --base]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--api-key", envvar="GEM_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every route but /health (or set GEM_API_KEY).")
@click.option("--allow-pickle", is_flag=True, help="Allow adapters with pickled (.bin) weights; they can run code.")
@click.option("--no-adapter-updates", is_flag=True, help="Disable /v1/load_lora_adapter and /v1/unload_lora_adapter.")
@click.option("--max-inputs", type=int, default=_DEFAULTS.max_inputs, show_default=True,
              help="Texts in one embedding request.")
@click.option("--max-input-tokens", type=int, default=None,
              help="Tokens of one embedding input.  [default: the model's max_length]")
@click.option("--truncate", is_flag=True, help="Cut embedding inputs over --max-input-tokens instead of refusing them.")
@click.option("--max-body-bytes", type=int, default=_DEFAULTS.max_body_bytes, show_default=True)
@click.option("--max-queue", type=int, default=_DEFAULTS.max_queue, show_default=True,
              help="Requests waiting or running; more are answered 429.")
@click.option("--batch-wait-ms", type=float, default=_DEFAULTS.batch_wait_ms, show_default=True,
              help="How long an idle worker waits to batch embedding requests.")
@click.option("--max-batch-inputs", type=int, default=_DEFAULTS.max_batch_inputs, show_default=True)
@click.option("--max-batch-tokens", type=int, default=_DEFAULTS.max_batch_tokens, show_default=True)
@click.option("--max-tokens", type=int, default=_DEFAULTS.max_tokens, show_default=True,
              help="Most new tokens per generation (also the default).")
@click.option("--max-concurrent-generations", type=int, default=_DEFAULTS.max_concurrent_generations,
              show_default=True)
@click.option("--load-in-4bit", is_flag=True, help="Quantise the base to NF4 with bitsandbytes.")
@dtype_option
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve_command(base, adapters, no_adapter, model_name, host, port, api_key, allow_pickle, no_adapter_updates, max_inputs,
                  max_input_tokens, truncate, max_body_bytes, max_queue, batch_wait_ms, max_batch_inputs,
                  max_batch_tokens, max_tokens, max_concurrent_generations, load_in_4bit, dtype, log_level) -> None:
    """Serve a model with OpenAI's API: embeddings, chat and completions from the same weights.

    \b
    Examples:
      gem serve --base smollm2-135m --adapter gem=runs/smollm2-135m-general
      GEM_API_KEY=secret gem serve --base ./llama --adapter gem=runs/llama --port 9000

    Clients use the base's name (--model-name, default --base) or an adapter's NAME as model.
    The base's name serves the adapter shipped for the base alias (smollm2-135m), active for
    embeddings and generation alike, unless --no-adapter; other bases serve bare.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise click.ClickException("gem serve needs the serve extra: pip install 'gem-adapter[serve]'") from None
    from ..model import GEMModel
    from ..serving import serve

    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"gem: warning: serving on {host} without an API key; anyone who can reach it can use it "
                   "(and load adapters from this machine's disk)", err=True)
    limits = {"allow_adapter_updates": not no_adapter_updates, "max_inputs": max_inputs,
              "max_input_tokens": max_input_tokens, "truncate": truncate, "max_body_bytes": max_body_bytes,
              "max_queue": max_queue, "batch_wait_ms": batch_wait_ms, "max_batch_inputs": max_batch_inputs,
              "max_batch_tokens": max_batch_tokens, "max_tokens": max_tokens,
              "max_concurrent_generations": max_concurrent_generations}
    try:
        ServingSettings(api_key=api_key, allow_pickle=allow_pickle, **limits)  # refuse bad limits before loading
        for name, path in adapters:
            if not Path(path).exists():
                raise GEMError(f"adapter folder {path} (--adapter {name}=...) does not exist; check the path")
        from ..hub import shipped_adapter

        shipped = None if no_adapter else shipped_adapter(base)
        model = GEMModel.from_pretrained(base, adapter=shipped, load_in_4bit=load_in_4bit, dtype=dtype)
        for name, path in adapters:
            model.load_adapter(path, name, allow_pickle=allow_pickle)
        serve(model, host=host, port=port, model_name=model_name or base, api_key=api_key, allow_pickle=allow_pickle,
              log_level=log_level, **limits)
    except (GEMError, TypeError, ValueError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
