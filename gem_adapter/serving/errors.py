"""The one error the serving code raises for a client: an HTTP status plus OpenAI's error fields.

Every failure the server answers, including FastAPI's own validation errors, goes out as
``{"error": {"message", "type", "param", "code"}}`` (see ``app.install_error_handlers``).
"""

from __future__ import annotations

INVALID_REQUEST = "invalid_request_error"


class APIError(Exception):
    """An error answered to the client with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_not_found(name: str, known: list[str]) -> APIError:
    return APIError(404, f"model {name!r} does not exist; served models: {known}", param="model",
                    code="model_not_found")


def queue_full(depth: int, retry_after_s: int) -> APIError:
    return APIError(429, f"the server queue is full ({depth} requests waiting or running); retry in {retry_after_s} s",
                    type="rate_limit_error", code="queue_full", headers={"Retry-After": str(retry_after_s)})
