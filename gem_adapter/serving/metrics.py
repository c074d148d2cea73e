"""Prometheus metrics of one app, in a registry of its own (two apps in a process do not collide).

Routes are labelled by their path template, and every unknown path as ``other``, so a client
probing random URLs cannot blow up the number of series.
"""

from __future__ import annotations

from collections.abc import Callable


class Metrics:
    def __init__(self, depth: Callable[[], int]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("gem_requests", "HTTP requests by route, method and status code",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("gem_request_duration_seconds", "Time from request to the end of the response",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batch_size = Histogram("gem_embedding_batch_size", "Texts per embedding forward batch",
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.tokens = Counter("gem_tokens", "Tokens processed: prompt (embedding inputs, prompts) or completion",
                              ["kind"], registry=self.registry)
        self.queue_depth = Gauge("gem_queue_depth", "Requests waiting for or running on the model worker",
                                 registry=self.registry)
        self.queue_depth.set_function(depth)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
