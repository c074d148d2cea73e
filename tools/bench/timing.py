"""What every section shares: alternating candidates, timing, summary statistics, the texts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench_training import DATA, sts_dev


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def alternate(candidates: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Run each candidate once per repeat, in turn; each returns its own measurement."""
    measured: dict[str, list[Any]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            measured[name].append(run())
    return measured


def seconds(run: Callable[[], object]) -> float:
    """Wall seconds of ``run()``; on a GPU, after its queued kernels have finished."""
    synchronize()
    start = time.perf_counter()
    run()
    synchronize()
    return time.perf_counter() - start


def synchronize() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def sentences(n: int) -> list[str]:
    left, right, _ = sts_dev()
    return (left + right)[:n]


def long_text() -> str:
    return (DATA / "lm" / "wikitext2" / "wiki.test.tokens").read_text(encoding="utf-8")[:200_000]


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")
