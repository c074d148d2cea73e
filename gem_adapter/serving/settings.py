"""The server's limits, each with a default and a one-line reason; checked when the app is made."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import GEMConfigError


@dataclass
class ServingSettings:
    """Limits and switches of one served model (``create_app(**settings)``; ``gem serve`` options)."""

    api_key: str | None = None  # when set, every route but /health needs "Authorization: Bearer KEY"
    allow_pickle: bool = False  # let /v1/load_lora_adapter read pickled (.bin) weights; they can run code
    allow_adapter_updates: bool = True  # serve /v1/load_lora_adapter and /v1/unload_lora_adapter
    max_inputs: int = 2048  # texts in one embedding request (OpenAI's own limit)
    max_input_tokens: int | None = None  # tokens of one text; None: the model's GEMConfig.max_length
    truncate: bool = False  # cut texts over max_input_tokens instead of answering 400 (request: gem_truncate)
    max_body_bytes: int = 16 * 1024 * 1024  # request body size; larger gets 413
    max_queue: int = 256  # requests waiting or running; more get 429 with Retry-After
    retry_after_s: int = 1  # the Retry-After a 429 carries
    batch_wait_ms: float = 3.0  # how long an idle worker waits for more embedding requests to batch
    max_batch_inputs: int = 64  # texts in one embedding micro-batch
    max_batch_tokens: int = 8192  # tokens in one embedding micro-batch (GEM tokens included)
    encode_batch_size: int = 32  # batch_size handed to GEMModel.encode inside a micro-batch
    max_tokens: int = 1024  # the most new tokens one generation may ask for (and the default)
    max_concurrent_generations: int = 4  # generations decoding at once; more wait in the queue
    max_stop_sequences: int = 4  # entries in "stop" (OpenAI's limit)

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("api_key", "allow_pickle", "allow_adapter_updates", "truncate") or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GEMConfigError(f"{item.name} must be a number, got {value!r}")
            if value < 0 or (value == 0 and item.name != "batch_wait_ms"):
                raise GEMConfigError(f"{item.name} must be > 0, got {value!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise GEMConfigError("api_key is empty; give a key or None for no authentication")


def setting_names() -> list[str]:
    return [item.name for item in fields(ServingSettings)]
