"""Embedding throughput and latency through the OpenAI-compatible server, against in-process encode.

    python tools/bench_serve.py                       # smollm2-135m, 15 s per point
    python tools/bench_serve.py --adapter gem=runs/smollm2-135m-general --duration 30

What it measures (loopback only, a fixed duration per point, closed loop: each client thread
sends its next request when the last one answered, so the load is bounded by --concurrency):

* in-process ``GEMModel.encode`` on the same sentences, one text per call and 32 per call;
* ``POST /v1/embeddings`` with one sentence per request at each --concurrency (default 1, 8,
  32): texts/s, p50 and p99 latency; the server batches concurrent requests itself;
* embedding latency at concurrency 1 while a chat completion streams the whole time (the
  worker interleaves embedding batches between decode steps), and the chat's tokens/s.

The server runs in a subprocess (``gem serve``'s command), so its worker and this load
generator do not share one interpreter lock. Sentences: STSBenchmark test (both columns) from
``../shared/data`` (``--sts``), or one text per line from ``--texts``. Writes
``bench_serve.json`` and ``bench_serve.md`` into --out-dir. Not a test: numbers depend on the
machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STS = ROOT.parent / "shared" / "data" / "sts" / "stsbenchmark" / "sts-test.csv"


def read_sentences(sts: Path, texts: Path | None) -> list[str]:
    if texts is not None:
        return [line.strip() for line in texts.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not sts.is_file():
        raise SystemExit(f"{sts} not found; pass --sts FILE (STSBenchmark CSV) or --texts FILE (one text per line)")
    with sts.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["sentence1"] for row in rows] + [row["sentence2"] for row in rows]


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    values = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 1), "p99_ms": round(float(np.percentile(values, 99)), 1)}


# ----------------------------------------------------------------------------- in-process
def in_process(base: str, adapter: tuple[str, str] | None, sentences: list[str], duration: float) -> list[dict]:
    """Measured on a thread other than the main one, as the server's worker runs: on this busy
    2-core machine an encode called from the main thread took 2-15x longer than the same call
    from any other thread (torch's CPU thread team of the main thread, loaded or not)."""
    from gem_adapter import GEMModel

    model = GEMModel.from_pretrained(base, adapter=adapter[1] if adapter else None)
    rows: list[dict] = []
    thread = threading.Thread(target=_in_process, args=(model, sentences, duration, rows))
    thread.start()
    thread.join()
    return rows


def _in_process(model, sentences: list[str], duration: float, rows: list[dict]) -> None:
    for per_call in (1, 32):
        model.encode(sentences[:per_call])  # warm-up
        texts = itertools.cycle(range(0, len(sentences) - per_call, per_call))
        done, latencies = 0, []
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            start = next(texts)
            began = time.perf_counter()
            model.encode(sentences[start : start + per_call], batch_size=32)
            latencies.append(time.perf_counter() - began)
            done += per_call
        elapsed = sum(latencies)
        rows.append({"setting": f"in-process encode, {per_call} text{'s' if per_call > 1 else ''}/call",
                     "texts_per_s": round(done / elapsed, 1), **percentiles(latencies), "requests": len(latencies)})


# ----------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(base: str, adapter: tuple[str, str] | None, port: int) -> subprocess.Popen:
    command = [sys.executable, "-c", "from gem_adapter.cli import main; main()", "serve",
               "--base", base, "--port", str(port), "--log-level", "warning", "--max-queue", "1024"]
    if adapter:
        command += ["--adapter", f"{adapter[0]}={adapter[1]}"]
    env = {key: value for key, value in os.environ.items() if key != "GEM_API_KEY"}
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit("the server did not answer /health within 10 minutes")


def embedding_load(url: str, model: str, sentences: list[str], concurrency: int, duration: float,
                   check: np.ndarray | None = None) -> dict:
    """``concurrency`` closed-loop client threads, one sentence per request, for ``duration`` seconds."""
    counter = itertools.count()
    latencies: list[float] = []
    errors = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.perf_counter() < deadline:
                index = next(counter) % len(sentences)
                began = time.perf_counter()
                response = http.post("/v1/embeddings", json={"model": model, "input": sentences[index],
                                                              "encoding_format": "base64"})
                took = time.perf_counter() - began
                if response.status_code != 200:
                    with lock:
                        errors.append(response.status_code)
                    continue
                if check is not None and index < len(check):
                    vector = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), dtype="<f4")
                    if not np.allclose(vector, check[index], atol=1e-4):
                        with lock:
                            errors.append("mismatch")
                with lock:
                    latencies.append(took)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"texts_per_s": round(len(latencies) / elapsed, 1), **percentiles(latencies), "requests": len(latencies),
            "errors": len(errors)}


def chat_stream_loop(url: str, model: str, stop: threading.Event, result: dict) -> None:
    """Stream chat completions back to back until ``stop``; count the streamed chunks (about one per token)."""
    tokens, began = 0, time.perf_counter()
    body = {"model": model, "max_tokens": 256, "temperature": 0.7, "seed": 0, "stream": True,
            "messages": [{"role": "user", "content": "Write a long story about a guitar player in a small town."}]}
    with httpx.Client(base_url=url, timeout=300) as http:
        while not stop.is_set():
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {") and '"content"' in line:
                        tokens += 1
                    if stop.is_set():
                        break
    result["chat_chunks_per_s"] = round(tokens / (time.perf_counter() - began), 1)


# ----------------------------------------------------------------------------- report
def markdown(result: dict) -> str:
    lines = [f"# Serving benchmark: {result['base']}{' + ' + result['adapter'] if result['adapter'] else ''}", "",
             (f"{result['machine']}; {result['duration_s']} s per point; one sentence per request "
             f"(STSBenchmark test), base64 responses; server in a subprocess on 127.0.0.1."), "",
             "| setting | texts/s | p50 ms | p99 ms | requests | errors |", "|---|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['setting']} | {row['texts_per_s']} | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{row['requests']} | {row.get('errors', 0)} |")
    if "chat_chunks_per_s" in result:
        lines += ["", (f"Chat stream running during the last row: {result['chat_chunks_per_s']} content chunks/s "
                      "(about one per generated token).")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapter", default=None, metavar="NAME=PATH", help="embed through this adapter")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured point")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--sts", type=Path, default=DEFAULT_STS)
    parser.add_argument("--texts", type=Path, default=None, help="one text per line, instead of STSBenchmark")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "tools" / "results" / "cpu-2core")
    args = parser.parse_args()

    adapter = tuple(args.adapter.split("=", 1)) if args.adapter else None
    sentences = read_sentences(args.sts, args.texts)
    rows = in_process(args.base, adapter, sentences, args.duration)
    from gem_adapter import GEMModel

    checker = GEMModel.from_pretrained(args.base, adapter=adapter[1] if adapter else None)
    check = checker.encode(sentences[:64])  # spot-check that served vectors are the in-process ones
    del checker

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model = adapter[0] if adapter else args.base
    server = start_server(args.base, adapter, port)
    result: dict = {"base": args.base, "adapter": args.adapter, "duration_s": args.duration,
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"}
    try:
        embedding_load(url, model, sentences, 4, min(3.0, args.duration))  # warm-up
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            row = embedding_load(url, model, sentences, concurrency, args.duration, check)
            rows.append({"setting": f"server, concurrency {concurrency}", **row})
            print(rows[-1], flush=True)
        stop, chat = threading.Event(), {}
        streamer = threading.Thread(target=chat_stream_loop, args=(url, args.base, stop, chat))
        streamer.start()
        time.sleep(1.0)
        row = embedding_load(url, model, sentences, 1, args.duration, check)
        stop.set()
        streamer.join()
        rows.append({"setting": "server, concurrency 1, chat stream running", **row})
        result.update(chat)
    finally:
        server.terminate()
        server.wait(30)
    result["rows"] = rows
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "bench_serve.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
