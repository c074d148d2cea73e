"""The OpenAI-compatible server, through the official ``openai`` client against a real uvicorn server.

Every test talks HTTP to a server on a free 127.0.0.1 port, run in a background thread, serving
tiny random models (the real default model only in the ``real_model`` test). Expected values
come from the same model in-process (``GEMModel.encode`` / ``generate``), never written down.
The GEM adapters are made in the test: a random LoRA plus random GEM rows saved the way
training saves them (no training needed to check that the server applies them).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from conftest import random_gem_adapter, save_tiny_base

from gem_adapter import GEMConfig, GEMModel

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from gem_adapter.serving import create_app

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
TEXTS = ["the dog near the river", "a boat", "Sentence 3 talks about the tree.", "x"]
BASE = "tiny-base"
# The server and the in-process reference compare in float32, whatever dtype="auto" means on this
# processor; the bfloat16 tests at the end compare in bfloat16, to bfloat16's precision.
DTYPE = "float32"


# ----------------------------------------------------------------------------- helpers
class LiveServer:
    """uvicorn serving ``app`` on a free localhost port, in a background thread."""

    def __init__(self, app):
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:  # noqa: PYI034
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs)


def with_chat_template(gem: GEMModel) -> GEMModel:
    gem.tokenizer.chat_template = CHAT_TEMPLATE
    return gem


def vectors_of(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def base_folder(root) -> Path:
    return save_tiny_base(root / "tiny-llama")


@pytest.fixture(scope="module")
def adapters(root, base_folder) -> dict[str, Path]:
    return {
        "gem": random_gem_adapter(base_folder, root / "adapter-gem", seed=1, template="Text: {text}"),
        "other": random_gem_adapter(base_folder, root / "adapter-other", seed=2),
    }


@pytest.fixture(scope="module")
def reference(base_folder, adapters) -> dict[str, GEMModel]:
    """In-process models: the bare base and the base with each adapter (what the server must match)."""
    models = {BASE: with_chat_template(GEMModel.from_pretrained(base_folder, dtype=DTYPE))}
    for name, folder in adapters.items():
        models[name] = with_chat_template(GEMModel.from_pretrained(base_folder, adapter=folder, dtype=DTYPE))
    return models


@pytest.fixture(scope="module")
def server(base_folder):
    """The main server: the bare tiny base, a small body limit for the 413 cases."""
    gem = with_chat_template(GEMModel.from_pretrained(base_folder, dtype=DTYPE))
    app = create_app(gem, model_name=BASE, max_body_bytes=256 * 1024, max_tokens=256)
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def client(server) -> openai.OpenAI:
    return server.client()


# ----------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_equal_in_process_encode(client, reference, encoding_format):
    expected = reference[BASE].encode(TEXTS)
    response = client.embeddings.create(model=BASE, input=TEXTS, encoding_format=encoding_format)
    assert [item.index for item in response.data] == list(range(len(TEXTS)))
    assert response.model == BASE
    tokens = sum(len(reference[BASE].tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (tokens, tokens)
    if encoding_format == "base64":  # the client hands base64 back undecoded when asked for it
        got = np.stack([np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in response.data])
    else:
        got = vectors_of(response)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    single = client.embeddings.create(model=BASE, input=TEXTS[0])
    np.testing.assert_allclose(vectors_of(single)[0], expected[0], atol=1e-5)


def test_embedding_extensions_and_token_ids(client, reference):
    gem = reference[BASE]
    query = client.embeddings.create(model=BASE, input=TEXTS[:2],
                                     extra_body={"gem_input_type": "query", "gem_instruction": "Find boats"})
    np.testing.assert_allclose(vectors_of(query), gem.encode_query(TEXTS[:2], instruction="Find boats"), atol=1e-5)
    document = client.embeddings.create(model=BASE, input=TEXTS[:2], extra_body={"gem_input_type": "document"})
    np.testing.assert_allclose(vectors_of(document), gem.encode_document(TEXTS[:2]), atol=1e-5)
    assert not np.allclose(vectors_of(query), vectors_of(document), atol=1e-3)

    ids = [gem.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    from_ids = client.embeddings.create(model=BASE, input=ids)
    np.testing.assert_allclose(vectors_of(from_ids), gem.encode(TEXTS), atol=1e-5)
    one = client.embeddings.create(model=BASE, input=ids[1])
    np.testing.assert_allclose(vectors_of(one)[0], gem.encode(TEXTS[1]), atol=1e-5)

    long_text = "abcdefghij" * 60  # 600 byte tokens > the 512 limit
    cut = client.embeddings.create(model=BASE, input=[long_text], extra_body={"gem_truncate": True})
    np.testing.assert_allclose(vectors_of(cut)[0], gem.encode(long_text[:512], max_length=600), atol=1e-5)
    assert cut.usage.prompt_tokens == 512


def test_dimensions_cut_and_renormalise_like_encode(client, reference):
    """OpenAI's ``dimensions``: the first d values of each vector, unit length again (Matryoshka)."""
    gem = reference[BASE]
    got = {}
    for dimensions in (8, 32):
        response = client.embeddings.create(model=BASE, input=TEXTS, dimensions=dimensions)
        got[dimensions] = vectors_of(response)
        assert got[dimensions].shape == (len(TEXTS), dimensions)
        np.testing.assert_allclose(got[dimensions], gem.encode(TEXTS, dimensions=dimensions), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got[dimensions], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got[32], gem.encode(TEXTS), atol=1e-5)
    assert not np.allclose(got[8], got[32][:, :8], atol=1e-3)  # re-normalised, not just cut


# ----------------------------------------------------------------------------- generation
def test_chat_and_completions_greedy_equal_generate(client, reference):
    gem = reference[BASE]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the dog?"}]
    prompt = gem.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = gem.generate(prompt, max_new_tokens=12, do_sample=False)

    chat = client.chat.completions.create(model=BASE, messages=messages, max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == expected
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")
    prompt_tokens = len(gem.tokenizer(prompt)["input_ids"])
    assert chat.usage.prompt_tokens == prompt_tokens
    assert chat.usage.total_tokens == prompt_tokens + chat.usage.completion_tokens

    stream = client.chat.completions.create(model=BASE, messages=messages, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        chat.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    completion = client.completions.create(model=BASE, prompt="The dog", max_tokens=10, temperature=0)
    assert completion.choices[0].text == gem.generate("The dog", max_new_tokens=10, do_sample=False)
    # fields this server does not implement are accepted at the values that change nothing
    neutral = client.completions.create(model=BASE, prompt="The dog", max_tokens=10, temperature=0,
                                        presence_penalty=0, frequency_penalty=0.0, logit_bias={})
    assert neutral.choices[0].text == completion.choices[0].text
    streamed = client.completions.create(model=BASE, prompt="The dog", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text


def test_sampling_is_seeded_and_stop_strings_cut(client, reference):
    ask = {"model": BASE, "prompt": "Once upon", "max_tokens": 16, "temperature": 1.0, "top_p": 0.9}
    first = client.completions.create(seed=7, **ask).choices[0].text
    assert client.completions.create(seed=7, **ask).choices[0].text == first
    full = reference[BASE].generate("The dog", max_new_tokens=20, do_sample=False)
    stop = full[5:7]
    assert stop and stop not in full[:5]
    cut = client.completions.create(model=BASE, prompt="The dog", max_tokens=20, temperature=0, stop=[stop])
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (full[:full.index(stop)], "stop")
    streamed = client.completions.create(model=BASE, prompt="The dog", max_tokens=20, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_disconnected_stream_stops_its_generation(base_folder):
    gem = with_chat_template(GEMModel.from_pretrained(base_folder, dtype=DTYPE))
    app = create_app(gem, model_name=BASE)
    worker = app.state.gem_worker

    def completion_tokens(live) -> float:
        metrics = httpx.get(f"{live.url}/metrics").text
        return float(next(line.split()[-1] for line in metrics.splitlines()
                          if line.startswith('gem_tokens_total{kind="completion"}')))

    with LiveServer(app) as live:
        client = live.client()
        # a prompt whose greedy continuation runs the full 150 tokens (no EOS): only a cancel ends it early
        for prompt in ("The dog", "Once upon", "a", "river", "xyz", "Sentence"):
            ask = {"model": BASE, "prompt": prompt, "max_tokens": 150, "temperature": 0}
            if client.completions.create(**ask).choices[0].finish_reason == "length":
                break
        else:
            pytest.skip("every candidate prompt reaches EOS on this random model")
        before = completion_tokens(live)
        slow = gem.model.register_forward_pre_hook(lambda *args: time.sleep(0.02))  # 150 tokens take >= 3 s
        try:
            with httpx.stream("POST", f"{live.url}/v1/completions", json={**ask, "stream": True}, timeout=30) as response:
                assert response.status_code == 200
                assert next(line for line in response.iter_lines() if line.startswith("data:"))
            deadline = time.monotonic() + 20
            while worker.depth() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.depth() == 0  # the generation was dropped, not left running
            assert completion_tokens(live) - before < 150  # it stopped before its 150 tokens
        finally:
            slow.remove()


# ----------------------------------------------------------------------------- adapters
def test_adapter_load_use_unload(server, client, reference, adapters):
    def served() -> list[str]:
        return [m.id for m in client.models.list().data]

    assert served() == [BASE]
    http = httpx.Client(base_url=server.url, timeout=60)
    loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "gem", "lora_path": str(adapters["gem"])})
    assert loaded.status_code == 200, loaded.text
    assert served() == [BASE, "gem"]
    got = vectors_of(client.embeddings.create(model="gem", input=TEXTS))
    np.testing.assert_allclose(got, reference["gem"].encode(TEXTS), atol=1e-5)
    base = vectors_of(client.embeddings.create(model=BASE, input=TEXTS))
    np.testing.assert_allclose(base, reference[BASE].encode(TEXTS), atol=1e-5)
    assert not np.allclose(got, base, atol=1e-3)
    chat = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                          temperature=0)
    prompt = reference["gem"].tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                            add_generation_prompt=True, tokenize=False)
    assert chat.choices[0].message.content == reference["gem"].generate(prompt, max_new_tokens=8, do_sample=False)

    again = http.post("/v1/load_lora_adapter", json={"lora_name": "gem", "lora_path": str(adapters["other"])})
    assert again.status_code == 400 and error_of(again)["code"] == "adapter_exists"
    unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": "gem"})
    assert unloaded.status_code == 200, unloaded.text
    assert served() == [BASE]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gem", input=TEXTS)
    np.testing.assert_allclose(vectors_of(client.embeddings.create(model=BASE, input=TEXTS)), base, atol=1e-6)
    # the same name loads again after the model's last adapter was unloaded
    reloaded = http.post("/v1/load_lora_adapter", json={"lora_name": "gem", "lora_path": str(adapters["gem"])})
    assert reloaded.status_code == 200, reloaded.text
    np.testing.assert_allclose(vectors_of(client.embeddings.create(model="gem", input=TEXTS)), got, atol=1e-5)
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "gem"}).status_code == 200


def test_concurrent_requests_over_adapters_do_not_cross_talk(server, client, adapters, base_folder):
    http = httpx.Client(base_url=server.url, timeout=60)
    for name, key in (("a1", "gem"), ("a2", "other")):
        assert http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapters[key])}).status_code == 200
    try:
        names = [BASE, "a1", "a2"]
        texts = [f"request {i}: the {w} near the river" for i, w in enumerate(["dog", "cat", "boat", "tree"] * 8)]
        expected = {(name, text): vectors_of(client.embeddings.create(model=name, input=[text]))[0]
                    for name in names for text in texts}
        for a, b in ((BASE, "a1"), (BASE, "a2"), ("a1", "a2")):  # cross-talk would show
            assert not np.allclose(expected[(a, texts[0])], expected[(b, texts[0])], atol=1e-3)
        start = threading.Barrier(33)

        def load_in_the_middle():
            start.wait()
            time.sleep(0.005)
            response = http.post("/v1/load_lora_adapter", json={"lora_name": "a3", "lora_path": str(adapters["other"])})
            return response.status_code

        def embed(i: int):
            name = names[i % 3]
            start.wait()
            return name, texts[i], vectors_of(client.embeddings.create(model=name, input=[texts[i]]))[0]

        with ThreadPoolExecutor(max_workers=33) as pool:
            loading = pool.submit(load_in_the_middle)
            results = list(pool.map(embed, range(32)))
            assert loading.result() == 200
        for name, text, vector in results:
            np.testing.assert_allclose(vector, expected[(name, text)], atol=1e-5, err_msg=f"{name}: {text}")
        assert len(results) == 32
        a3 = vectors_of(client.embeddings.create(model="a3", input=texts[:4]))
        other = GEMModel.from_pretrained(base_folder, adapter=adapters["other"], dtype=DTYPE)
        np.testing.assert_allclose(a3, other.encode(texts[:4]), atol=1e-5)
    finally:
        for name in ("a1", "a2", "a3"):
            http.post("/v1/unload_lora_adapter", json={"lora_name": name})


# ----------------------------------------------------------------------------- refusals
def _chunked(data: bytes):
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


def bad_requests(tmp_path: Path):
    """(name, method, path, httpx kwargs, status, code or None, substring of the message)."""
    embed = lambda **body: {"json": {"model": BASE, **body}}
    big = json.dumps({"model": BASE, "input": "x" * 300_000}).encode()
    not_an_adapter = tmp_path / "not-an-adapter"
    not_an_adapter.mkdir(exist_ok=True)
    return [
        ("malformed json", "POST", "/v1/embeddings", {"content": b'{"model": "x", "input": [1,', "headers": {"content-type": "application/json"}}, 400, "invalid_json", "JSON"),
        ("body not an object", "POST", "/v1/embeddings", {"json": ["a"]}, 400, None, ""),
        ("no body", "POST", "/v1/embeddings", {}, 400, None, "body"),
        ("missing model", "POST", "/v1/embeddings", {"json": {"input": "a"}}, 400, None, "model"),
        ("empty input", "POST", "/v1/embeddings", embed(input=""), 400, None, "empty"),
        ("empty list", "POST", "/v1/embeddings", embed(input=[]), 400, None, "empty"),
        ("non-string item", "POST", "/v1/embeddings", embed(input=["a", "b", 3]), 400, None, "input[2] is int"),
        ("null item", "POST", "/v1/embeddings", embed(input=["a", None]), 400, None, "input[1] is NoneType"),
        ("input is a dict", "POST", "/v1/embeddings", embed(input={"a": 1}), 400, None, "input is dict"),
        ("token id out of range", "POST", "/v1/embeddings", embed(input=[[1, 2], [3, 99999]]), 400, None, "input[1][1] = 99999"),
        ("GEM token id", "POST", "/v1/embeddings", embed(input=[257]), 400, None, "GEM token"),
        ("too long", "POST", "/v1/embeddings", embed(input=["a" * 600]), 400, "input_too_long", "600 tokens, over the limit of 512"),
        ("too many inputs", "POST", "/v1/embeddings", embed(input=["a"] * 2049), 400, "too_many_inputs", "2049"),
        ("body too large", "POST", "/v1/embeddings", {"content": big, "headers": {"content-type": "application/json"}}, 413, "request_too_large", "limit"),
        ("body too large, chunked", "POST", "/v1/embeddings", {"content": _chunked(big), "headers": {"content-type": "application/json"}}, 413, "request_too_large", "limit"),
        ("unknown model", "POST", "/v1/embeddings", {"json": {"model": "nope", "input": "a"}}, 404, "model_not_found", "nope"),
        ("dimensions over the hidden size", "POST", "/v1/embeddings", embed(input="a", dimensions=33), 400, None, "1..32"),
        ("dimensions 0", "POST", "/v1/embeddings", embed(input="a", dimensions=0), 400, None, "dimensions = 0"),
        ("dimensions not a number", "POST", "/v1/embeddings", embed(input="a", dimensions="x"), 400, None, "dimensions"),
        ("bad encoding format", "POST", "/v1/embeddings", embed(input="a", encoding_format="int8"), 400, None, "encoding_format"),
        ("instruction without type", "POST", "/v1/embeddings", embed(input="a", gem_instruction="x"), 400, None, "gem_input_type"),
        ("chat: unknown model", "POST", "/v1/chat/completions", {"json": {"model": "nope", "messages": [{"role": "user", "content": "a"}]}}, 404, "model_not_found", "nope"),
        ("chat: no messages", "POST", "/v1/chat/completions", {"json": {"model": BASE, "messages": []}}, 400, None, "messages"),
        ("chat: n=2", "POST", "/v1/chat/completions", {"json": {"model": BASE, "n": 2, "messages": [{"role": "user", "content": "a"}]}}, 400, None, "n = 2"),
        ("chat: image part", "POST", "/v1/chat/completions", {"json": {"model": BASE, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}}, 400, None, "messages[0].content[0]"),
        ("chat: max_tokens over limit", "POST", "/v1/chat/completions", {"json": {"model": BASE, "max_tokens": 10_000, "messages": [{"role": "user", "content": "a"}]}}, 400, None, "max_tokens"),
        *[(f"chat: {field}", "POST", "/v1/chat/completions", {"json": {"model": BASE, field: value, "messages": [{"role": "user", "content": "a"}]}}, 400, None, field)
          for field, value in (("presence_penalty", 0.5), ("frequency_penalty", -1), ("logit_bias", {"5": 10}),
                               ("top_logprobs", 2), ("top_k", 5), ("repetition_penalty", 1.2))],
        ("completion: presence_penalty", "POST", "/v1/completions", {"json": {"model": BASE, "prompt": "ab", "presence_penalty": 1}}, 400, None, "presence_penalty"),
        ("completion: logit_bias", "POST", "/v1/completions", {"json": {"model": BASE, "prompt": "ab", "logit_bias": {"5": -100}}}, 400, None, "logit_bias"),
        ("embeddings: vLLM's truncate_prompt_tokens", "POST", "/v1/embeddings", embed(input="a", truncate_prompt_tokens=4), 400, None, "gem_truncate"),
        ("embeddings: normalize false", "POST", "/v1/embeddings", embed(input="a", normalize=False), 400, None, "normalize"),
        ("chat: temperature 3", "POST", "/v1/chat/completions", {"json": {"model": BASE, "temperature": 3, "messages": [{"role": "user", "content": "a"}]}}, 400, None, "temperature"),
        ("completion: two prompts", "POST", "/v1/completions", {"json": {"model": BASE, "prompt": ["a", "b"]}}, 400, None, "one prompt"),
        ("completion: prompt over the context", "POST", "/v1/completions", {"json": {"model": BASE, "prompt": "a" * 600}}, 400, "context_length_exceeded", "600 tokens"),
        ("load: missing path", "POST", "/v1/load_lora_adapter", {"json": {"lora_name": "x", "lora_path": str(tmp_path / "nowhere")}}, 404, "adapter_not_found", "does not exist"),
        ("load: not an adapter", "POST", "/v1/load_lora_adapter", {"json": {"lora_name": "x", "lora_path": str(not_an_adapter)}}, 400, None, "adapter_config.json"),
        ("load: bad name", "POST", "/v1/load_lora_adapter", {"json": {"lora_name": "a b", "lora_path": str(not_an_adapter)}}, 400, None, "lora_name"),
        ("unload: not loaded", "POST", "/v1/unload_lora_adapter", {"json": {"lora_name": "x"}}, 404, "adapter_not_found", "x"),
        ("unknown route", "GET", "/v1/nothing", {}, 404, None, "/v1/nothing"),
        ("wrong method", "GET", "/v1/embeddings", {}, 405, None, "GET"),
    ]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, reference, tmp_path):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        failures = []
        for name, method, path, kwargs, status, code, message in bad_requests(tmp_path):
            response = http.request(method, path, **kwargs)
            if response.status_code != status:
                failures.append(f"{name}: {response.status_code} {response.text[:200]}")
                continue
            error = error_of(response)
            if code is not None and error["code"] != code or message not in error["message"]:
                failures.append(f"{name}: {error}")
        assert not failures, "\n".join(failures)
        assert http.get("/health").status_code == 200
    np.testing.assert_allclose(vectors_of(client.embeddings.create(model=BASE, input=TEXTS)),
                               reference[BASE].encode(TEXTS), atol=1e-5)


def test_api_key(base_folder):
    gem = GEMModel.from_pretrained(base_folder, dtype=DTYPE)
    with LiveServer(create_app(gem, model_name=BASE, api_key="sekret")) as live:
        assert httpx.get(f"{live.url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            response = httpx.get(f"{live.url}/v1/models", headers=headers)
            assert response.status_code == 401, headers
            assert error_of(response)["code"] == "invalid_api_key"
        assert httpx.get(f"{live.url}/metrics").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            live.client(api_key="wrong").embeddings.create(model=BASE, input="a")
        good = live.client(api_key="sekret")
        assert [m.id for m in good.models.list().data] == [BASE]
        assert len(good.embeddings.create(model=BASE, input="a").data) == 1
        assert httpx.get(f"{live.url}/metrics", headers={"Authorization": "Bearer sekret"}).status_code == 200


def test_metrics_and_a_full_queue(base_folder):
    gem = GEMModel.from_pretrained(base_folder, dtype=DTYPE)
    encode = gem.encode
    entered, release = threading.Event(), threading.Event()

    def held_encode(*args, **kwargs):  # the first batch holds the worker until released
        entered.set()
        release.wait(30)
        return encode(*args, **kwargs)

    gem.encode = held_encode
    app = create_app(gem, model_name=BASE, max_queue=1, retry_after_s=2)
    with LiveServer(app) as live, ThreadPoolExecutor(max_workers=2) as pool:
        client = live.client()
        first = pool.submit(client.embeddings.create, model=BASE, input=["one"])
        assert entered.wait(30)  # the worker is busy with the first request
        second = pool.submit(client.embeddings.create, model=BASE, input=["two"])
        deadline = time.monotonic() + 30
        while app.state.gem_worker.depth() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = httpx.post(f"{live.url}/v1/embeddings", json={"model": BASE, "input": "three"})
        assert full.status_code == 429
        assert full.headers["retry-after"] == "2"
        assert error_of(full)["code"] == "queue_full"
        release.set()
        gem.encode = encode
        assert len(first.result(30).data) == len(second.result(30).data) == 1
        client.completions.create(model=BASE, prompt="ab", max_tokens=3, temperature=0)
        text = httpx.get(f"{live.url}/metrics").text
    for name in ("gem_requests_total", "gem_request_duration_seconds_bucket", "gem_embedding_batch_size_bucket",
                 "gem_tokens_total", "gem_queue_depth"):
        assert name in text, name
    assert 'route="/v1/embeddings"' in text and 'status="429"' in text and 'kind="completion"' in text


def test_app_mounts_inside_another_asgi_app(base_folder):
    from fastapi import FastAPI

    gem = GEMModel.from_pretrained(base_folder, dtype=DTYPE)
    outer = FastAPI()
    outer.mount("/gem", create_app(gem, model_name=BASE))
    with LiveServer(outer) as live:
        response = openai.OpenAI(base_url=f"{live.url}/gem/v1", api_key="x", max_retries=0).embeddings.create(
            model=BASE, input=TEXTS)
        np.testing.assert_allclose(vectors_of(response), gem.encode(TEXTS), atol=1e-5)
        assert httpx.get(f"{live.url}/gem/health").status_code == 200


# ----------------------------------------------------------------------------- bfloat16
def test_bfloat16_server_gives_encode_s_vectors(base_folder, adapters):
    """In bfloat16 a text's vector depends, by bfloat16 rounding, on what else is in its batch
    (tests/test_bfloat16.py): the same batch gives the same vectors, another batch vectors within
    BF16_EPS = 2**-7 (L2 of unit vectors). The server batches requests with others, so it is held
    to the same: equal to ``encode`` of the same texts, within BF16_EPS of any other batching."""
    bf16_eps = torch.finfo(torch.bfloat16).eps
    gem = GEMModel.from_pretrained(base_folder, dtype="bfloat16")
    adapted = GEMModel.from_pretrained(base_folder, adapter=adapters["gem"], dtype="bfloat16", fuse=False)
    expected = gem.encode(TEXTS)
    with LiveServer(create_app(gem, model_name=BASE)) as live:
        client = live.client()
        batch = vectors_of(client.embeddings.create(model=BASE, input=TEXTS))
        np.testing.assert_array_equal(batch, expected)
        np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
        for index, text in enumerate(TEXTS):
            alone = vectors_of(client.embeddings.create(model=BASE, input=text))[0]
            np.testing.assert_array_equal(alone, gem.encode(text))
            assert np.linalg.norm(alone - expected[index]) <= bf16_eps
        cut = vectors_of(client.embeddings.create(model=BASE, input=TEXTS, dimensions=8))
        np.testing.assert_allclose(cut, gem.encode(TEXTS, dimensions=8), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
        http = httpx.Client(base_url=live.url, timeout=60)
        assert http.post("/v1/load_lora_adapter", json={"lora_name": "gem", "lora_path": str(adapters["gem"])}).status_code == 200
        served = vectors_of(client.embeddings.create(model="gem", input=TEXTS))
        np.testing.assert_array_equal(served, adapted.encode(TEXTS))


# ----------------------------------------------------------------------------- real model
@pytest.mark.real_model
def test_real_default_model_through_the_server():
    gem = GEMModel.from_pretrained("smollm2-135m", dtype=DTYPE)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = gem.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected_text = gem.generate(prompt, max_new_tokens=12, do_sample=False)  # in-process, before serving
    expected_vectors = gem.encode(TEXTS)
    with LiveServer(create_app(gem, model_name="smollm2-135m")) as live:
        client = live.client()
        got = vectors_of(client.embeddings.create(model="smollm2-135m", input=TEXTS))
        np.testing.assert_allclose(got, expected_vectors, atol=1e-5)
        chat = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=12, temperature=0)
        assert chat.choices[0].message.content == expected_text
        streamed = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=12,
                                                  temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected_text
    # the shipped adapter is scoped to the GEM tokens: what the server generates is the bare base's
    bare = GEMModel.from_pretrained("smollm2-135m", adapter=None, dtype=DTYPE)
    assert bare.generate(prompt, max_new_tokens=12, do_sample=False) == expected_text


@pytest.mark.real_model
def test_serve_command_serves_the_shipped_adapter_under_the_base_name(monkeypatch):
    from click.testing import CliRunner

    from gem_adapter import serving
    from gem_adapter.cli.serve import serve_command

    seen = {}
    monkeypatch.setattr(serving, "serve", lambda model, **kwargs: seen.update(active=model.active_adapters(),
                                                                             scope=model.config.adapter_scope))
    result = CliRunner().invoke(serve_command, ["--base", "smollm2-135m"])
    assert result.exit_code == 0, result.output
    assert seen == {"active": ["default"], "scope": "gem"}
    result = CliRunner().invoke(serve_command, ["--base", "smollm2-135m", "--no-adapter"])
    assert result.exit_code == 0, result.output
    assert seen["active"] == []


# ----------------------------------------------------------------------------- gem serve
def test_serve_command_loads_adapters_and_passes_settings(base_folder, adapters, monkeypatch):
    from click.testing import CliRunner

    from gem_adapter import serving
    from gem_adapter.cli.serve import serve_command

    seen = {}

    def fake_serve(model, **kwargs):
        seen.update(kwargs, adapters=model.adapter_names(), active=model.active_adapters())

    monkeypatch.setattr(serving, "serve", fake_serve)
    monkeypatch.setenv("GEM_API_KEY", "from-env")
    result = CliRunner().invoke(serve_command, ["--base", str(base_folder), "--adapter", f"g={adapters['gem']}",
                                                "--port", "9123", "--max-queue", "7", "--truncate"])
    assert result.exit_code == 0, result.output
    assert seen["adapters"] == ["g"] and seen["active"] == []
    assert (seen["port"], seen["api_key"], seen["max_queue"], seen["truncate"]) == (9123, "from-env", 7, True)
    assert seen["model_name"] == str(base_folder)

    bad = CliRunner().invoke(serve_command, ["--base", str(base_folder), "--adapter", "no-equals-sign"])
    assert bad.exit_code == 2 and "NAME=PATH" in bad.output
    missing = CliRunner().invoke(serve_command, ["--base", str(base_folder), "--adapter", f"g={base_folder / 'nowhere'}"])
    assert missing.exit_code == 1
    assert missing.output.startswith("Error: ") and len(missing.output.strip().splitlines()) == 1
    assert "does not exist" in missing.output
    broken = CliRunner().invoke(serve_command, ["--base", str(base_folder), "--adapter", f"g={base_folder}"])
    assert broken.exit_code == 1 and broken.output.strip().splitlines()[-1].startswith("Error: ")
    refused = CliRunner().invoke(serve_command, ["--base", str(base_folder), "--max-queue", "0"])
    assert refused.exit_code == 1 and "max_queue" in refused.output
