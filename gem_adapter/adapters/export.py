"""``export``: a GEM adapter as a folder that an existing engine loads with its own stock loader.

The caller of an exported model sends **plain text** and gets the embedding ``GEMModel.encode``
gives: the adapter's template and the GEM token are added by the exported tokenizer, not by
the caller. The tokenizer's post-processor (a ``TemplateProcessing`` of Hugging Face
``tokenizers``) wraps every text as ``encode`` does:

    [leading specials + template head] text [template tail] <|gem_0|>

with the head and tail tokenised apart from the text, so truncation cuts the text only. A
last-token pooler then reads the GEM token's final state. That is the whole GEM embedding
only for k = 1: with k > 1 the GEM tokens must not see each other, which plain causal
attention in an engine cannot express, so such adapters are refused (serve them with
``gem serve``).

The same weights generate as the base does, but generation must not get the embedding
template, so each export holds two tokenizers:

| format | folder root | second tokenizer |
|---|---|---|
| ``sentence-transformers`` | weights + embedding tokenizer + ST modules (last-token pooling, normalise) | ``generation-tokenizer/`` |
| ``vllm`` | weights + generation tokenizer (the pooling is given on the command line) | ``embedding-tokenizer/`` (``--tokenizer``) |
| ``gguf`` | ``model.gguf`` from llama.cpp's own converter (see ``gguf_converter``) | - |

Each export carries ``README.md`` with the exact commands and ``export_report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compat import check_compatibility, spec_from_folder
from ..errors import GEMError
from ..files import AdapterFolder, atomic_output, check_output, parse_dtype, read_adapter
from .engine_tokenizer import EMBEDDING_TOKENIZER, GENERATION_TOKENIZER, embedding_tokenizer, save_tokenizer
from .gated import is_gated, require_activatable, write_gated_merged
from .merge import recorded_base, require_gem, write_merged

FORMATS = ("sentence-transformers", "vllm", "gguf")
EXPORT_REPORT = "export_report.json"
GGUF_NAME = "model.gguf"
# vLLM's pooler: the last token's state, normalised (vLLM calls normalisation the embed task's activation)
VLLM_POOLER_CONFIG = {"pooling_type": "LAST", "use_activation": True}
CONVERTER_ENV = "GEM_LLAMA_CPP_CONVERTER"
# the sentence-transformers module a gated export carries (it imports nothing of gem-adapter)
GATED_MODULE = Path(__file__).with_name("gem_gated_transformer.py")


@dataclass
class ExportReport:
    """What ``export`` wrote and how to serve it."""

    out: str
    format: str
    base: str
    adapter: str
    dtype: str
    template: str | None
    gem_token: str
    gem_token_id: int
    max_length: int  # tokens per text, GEM token included, as in encode
    embedding_tokenizer: str  # folder, relative to ``out`` ("." for the root)
    generation_tokenizer: str
    commands: dict[str, str] = field(default_factory=dict)
    merge: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    activated_lora: str | None = None  # a gated adapter: its LoRA's folder (PEFT activated LoRA), kept apart

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        lines = [f"exported {self.adapter} on {self.base} as {self.format} -> {self.out} ({self.dtype})"]
        lines += [f"  {name}: {command}" for name, command in self.commands.items()]
        return lines


def export(
    base: str | os.PathLike | None,
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    format: str,
    *,
    dtype: str = "float32",
    force: bool = False,
    allow_pickle: bool = False,
    converter: str | os.PathLike | None = None,
) -> ExportReport:
    """Export ``adapter`` (merged into ``base``) to ``out`` in ``format`` (one of ``FORMATS``).

    Everything is checked before a weight loads (format, k, template, output, adapter, base);
    ``out`` appears only when complete. ``converter`` (gguf only) is llama.cpp's
    ``convert_hf_to_gguf.py``; default: ``$GEM_LLAMA_CPP_CONVERTER``, else the copy that the
    ``llama-cpp-python`` source distribution carries, fetched once into the cache.
    """
    started = time.time()
    if format not in FORMATS:
        raise GEMError(f"export format {format!r} is not one of {FORMATS}")
    parse_dtype(dtype)
    check_output(out, force, (adapter,))
    folder = read_adapter(adapter, allow_pickle=allow_pickle)
    require_gem(folder, "export")
    gated = is_gated(folder)
    if gated and format == "gguf":
        raise GEMError(f"adapter {folder.path} has adapter_scope 'gem' (its LoRA applies from the GEM token on), which a "
                       "GGUF cannot carry yet - export it to sentence-transformers or vllm (with the plugin)")
    require_last_token_servable(folder, format)
    converter_path = gguf_converter(converter) if format == "gguf" else None
    base_name = str(base) if base is not None else recorded_base(folder)
    base_path, spec = spec_from_folder(base_name)
    check_output(out, force, (adapter, base_path))
    check_compatibility(folder, spec)
    if gated:
        require_activatable(folder, spec, "export")

    with atomic_output(out, force) as staging:
        if gated:
            report = _export_gated(base_path, base_name, folder, staging, dtype, format, out)
        elif format == "gguf":
            report = _export_gguf(base_path, base_name, folder, spec, staging, dtype, converter_path)
        else:
            report = _export_with_tokenizers(base_path, base_name, folder, spec, staging, dtype, format)
        report.out, report.adapter = str(out), str(adapter)
        report.commands = {name: command.replace("{out}", str(out)) for name, command in report.commands.items()}
        report.seconds = round(time.time() - started, 2)
        (staging / EXPORT_REPORT).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        (staging / "README.md").write_text(export_readme(report))
    return report


def require_last_token_servable(folder: AdapterFolder, format: str) -> None:
    """Refuse adapters a last-token pooler cannot serve: k > 1, non-GEM pooling, (gguf) a template."""
    config = folder.gem_config
    if config.num_gem_tokens != 1:
        raise GEMError(
            f"adapter {folder.path} has k = {config.num_gem_tokens} GEM tokens; engines pool one last token under "
            f"causal attention, where the GEM tokens would see each other - train with num_gem_tokens: 1 "
            f"(gem train --set num_gem_tokens=1) to export, or serve this adapter with `gem serve`"
        )
    if config.pooling != "gem":
        raise GEMError(f"adapter {folder.path} pools with {config.pooling!r}; export serves GEM (last-token) pooling only")
    if format == "gguf" and config.template is not None:
        raise GEMError(
            f"adapter {folder.path} wraps texts in the template {config.template!r}; llama.cpp's tokenizer cannot add "
            "text around the input, so callers would have to - export to sentence-transformers or vllm, or train with "
            "embed_template: null for gguf"
        )


def _write_sentence_transformers_modules(staging: Path, max_length: int, gated: bool = False) -> None:
    """modules.json and module configs: Transformer (text only) -> last-token Pooling -> Normalize.

    ``gated``: the Transformer is ``gem_gated_transformer.GatedTransformer`` (copied beside the
    weights), which runs the causal LM through PEFT so that the activated LoRA applies.
    """
    transformer = (f"{GATED_MODULE.stem}.GatedTransformer" if gated
                   else "sentence_transformers.base.modules.transformer.Transformer")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": transformer},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"},
    ]
    _write_json(staging / "modules.json", modules)
    # Text modality only: sentence-transformers 6 would otherwise render strings through the chat template.
    # gated: the causal LM's forward (PEFT's) returns hidden_states; the last one is after the final norm
    output = ["hidden_states", -1] if gated else "last_hidden_state"
    _write_json(staging / "sentence_bert_config.json", {
        "max_seq_length": max_length, "do_lower_case": False,
        "transformer_task": "text-generation" if gated else "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": output}},
        "module_output_name": "token_embeddings",
    })
    if gated:
        shutil.copyfile(GATED_MODULE, staging / GATED_MODULE.name)
    _write_json(staging / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine",
    })
    (staging / "1_Pooling").mkdir()
    _write_json(staging / "1_Pooling" / "config.json", {"embedding_dimension": None, "pooling_mode": "lasttoken",
                                                       "include_prompt": True})
    (staging / "2_Normalize").mkdir()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _export_with_tokenizers(base_path, base_name, folder, spec, staging: Path, dtype: str, format: str) -> ExportReport:
    from transformers import AutoConfig, AutoTokenizer

    merge_info = write_merged(base_path, base_name, folder, spec, staging, dtype)
    generation = AutoTokenizer.from_pretrained(str(staging))
    embedding = embedding_tokenizer(generation, folder.gem_config)
    max_length = folder.gem_config.max_length
    if format == "sentence-transformers":
        _write_sentence_transformers_modules(staging, max_length)
        pooling_config = json.loads((staging / "1_Pooling" / "config.json").read_text())
        pooling_config["embedding_dimension"] = int(AutoConfig.from_pretrained(str(staging)).hidden_size)
        _write_json(staging / "1_Pooling" / "config.json", pooling_config)
        save_tokenizer(generation, staging / GENERATION_TOKENIZER)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            (staging / name).unlink(missing_ok=True)
        save_tokenizer(embedding, staging)
        embedding_dir, generation_dir = ".", GENERATION_TOKENIZER
        commands = {
            "embed (Python)": 'SentenceTransformer("{out}").encode(["plain text"])',
            "generate (Python)": 'AutoModelForCausalLM.from_pretrained("{out}") with '
                                 f'AutoTokenizer.from_pretrained("{{out}}/{GENERATION_TOKENIZER}")',
        }
    else:
        save_tokenizer(embedding, staging / EMBEDDING_TOKENIZER)
        embedding_dir, generation_dir = EMBEDDING_TOKENIZER, "."
        # No sentence-transformers files here: vLLM would take their max_seq_length as the
        # context of the generate runner too. The pooling runner is told instead; its
        # --max-model-len refuses texts that encode would have cut (vLLM does not cut them alike).
        commands = {
            "embeddings server": f"vllm serve {{out}} --runner pooling --tokenizer {{out}}/{EMBEDDING_TOKENIZER} "
                                 f"--pooler-config '{json.dumps(VLLM_POOLER_CONFIG)}' --max-model-len {max_length}",
            "chat server": "vllm serve {out} --runner generate",
        }
    return ExportReport(out="", format=format, base=base_name, adapter="", dtype=dtype,
                        template=folder.gem_config.template, gem_token=folder.gem_config.gem_tokens[0],
                        gem_token_id=int(generation.convert_tokens_to_ids(folder.gem_config.gem_tokens[0])),
                        max_length=folder.gem_config.max_length,
                        embedding_tokenizer=embedding_dir, generation_tokenizer=generation_dir,
                        commands=commands, merge=_merge_summary(merge_info))


def _export_gated(base_path, base_name, folder, staging: Path, dtype: str, format: str, out) -> ExportReport:
    """A gated adapter (k = 1): the merged gated folder (``gated``), arranged for ``format``.

    sentence-transformers: the embedding tokenizer at the root, ``GatedTransformer`` (needs
    ``trust_remote_code=True``). vllm: the merged folder as it is; its architecture is served by
    gem-adapter's vLLM plugin, and refused by a vLLM without it.
    """
    from transformers import AutoConfig

    merge_info = write_gated_merged(base_path, base_name, folder, staging, dtype, out)
    config = folder.gem_config
    max_length = config.max_length
    gem_id = int(merge_info["gem_token_ids"][0])
    if format == "sentence-transformers":
        generation_dir = staging / GENERATION_TOKENIZER
        generation_dir.mkdir()
        embedding_dir = staging / EMBEDDING_TOKENIZER
        for path in list(staging.iterdir()):
            if path.is_file() and (path.name.startswith("tokenizer") or path.name in ("special_tokens_map.json", "chat_template.jinja")):
                path.rename(generation_dir / path.name)
        for path in embedding_dir.iterdir():
            path.rename(staging / path.name)
        embedding_dir.rmdir()
        _write_sentence_transformers_modules(staging, max_length, gated=True)
        pooling_config = json.loads((staging / "1_Pooling" / "config.json").read_text())
        pooling_config["embedding_dimension"] = int(AutoConfig.from_pretrained(str(staging)).hidden_size)
        _write_json(staging / "1_Pooling" / "config.json", pooling_config)
        embedding, generation = ".", GENERATION_TOKENIZER
        commands = {
            "embed (Python)": 'SentenceTransformer("{out}", trust_remote_code=True).encode(["plain text"])',
            "generate (Python)": 'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{out}"), "{out}/alora") with '
                                 f'AutoTokenizer.from_pretrained("{{out}}/{GENERATION_TOKENIZER}")',
        }
    else:
        embedding, generation = EMBEDDING_TOKENIZER, "."
        commands = {
            "embeddings server (gem-adapter installed beside vLLM: its plugin serves the gate)":
                f"vllm serve {{out}} --runner pooling --tokenizer {{out}}/{EMBEDDING_TOKENIZER} "
                f"--pooler-config '{json.dumps(VLLM_POOLER_CONFIG)}' --max-model-len {max_length}",
            "chat server (the base's generation; with the plugin)": "vllm serve {out} --runner generate",
        }
    return ExportReport(out="", format=format, base=base_name, adapter="", dtype=dtype, template=config.template,
                        gem_token=config.gem_tokens[0], gem_token_id=gem_id, max_length=max_length,
                        embedding_tokenizer=embedding, generation_tokenizer=generation, commands=commands,
                        merge=_merge_summary(merge_info), activated_lora=merge_info["activated_lora"])


def _merge_summary(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("probe_min_cosine", "probe_max_logit_diff", "max_abs_weight_diff", "changed_tensors", "compared_tensors")
    return {key: info.get(key) for key in keys}


# ---------------------------------------------------------------------------------------- gguf
def gguf_converter(converter: str | os.PathLike | None = None) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``: the given path, ``$GEM_LLAMA_CPP_CONVERTER``, or the cached sdist's."""
    candidate = converter or os.environ.get(CONVERTER_ENV)
    if candidate:
        path = Path(candidate)
        if not path.is_file():
            raise GEMError(f"llama.cpp converter {path} does not exist; point --converter at convert_hf_to_gguf.py")
        return path
    return _cached_sdist_converter()


def _cached_sdist_converter() -> Path:
    """Fetch the llama-cpp-python source distribution once (it carries llama.cpp) and return its converter."""
    import tarfile

    from ..hub import cache_dir

    root = cache_dir() / "llama-cpp"
    found = sorted(root.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if found:
        return found[-1]
    downloads = root / "sdist"
    downloads.mkdir(parents=True, exist_ok=True)
    # --no-binary for this package only: its build backend comes as wheels, so only metadata is prepared
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python", "--quiet",
               "-d", str(downloads), "llama-cpp-python"]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(downloads.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise GEMError("could not fetch llama-cpp-python's source distribution (it carries llama.cpp's converter); "
                       f"pass --converter PATH/convert_hf_to_gguf.py or set {CONVERTER_ENV}")
    with tarfile.open(archives[-1]) as archive:
        # the converter script, the packages it imports (conversion/, gguf-py/), nothing of the C++
        members = [m for m in archive.getmembers() if "/vendor/llama.cpp/" in m.name and (
            m.name.endswith("/convert_hf_to_gguf.py") or "/vendor/llama.cpp/conversion/" in m.name
            or "/vendor/llama.cpp/gguf-py/" in m.name)]
        archive.extractall(root, members=members, filter="data")
    found = sorted(root.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        raise GEMError(f"{archives[-1].name} holds no vendor/llama.cpp/convert_hf_to_gguf.py; pass --converter")
    return found[-1]


def _export_gguf(base_path, base_name, folder, spec, staging: Path, dtype: str, converter: Path) -> ExportReport:
    """Merge into a scratch folder, let llama.cpp's converter write the GGUF, keep the GGUF only."""
    from transformers import AutoTokenizer

    scratch = staging / ".hf-checkpoint"
    scratch.mkdir()
    merge_info = write_merged(base_path, base_name, folder, spec, scratch, "float32")
    tokenizer = AutoTokenizer.from_pretrained(str(scratch))
    gem_id = tokenizer.convert_tokens_to_ids(folder.gem_config.gem_tokens[0])
    outtype = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[dtype]
    environment = dict(os.environ)
    gguf_py = converter.parent / "gguf-py"
    if gguf_py.is_dir():  # the converter's own gguf package, matching its version
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(gguf_py), environment.get("PYTHONPATH")]))
    command = [sys.executable, str(converter), str(scratch), "--outfile", str(staging / GGUF_NAME), "--outtype", outtype]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        last = ((result.stderr or result.stdout).strip().splitlines() or ["no output"])[-1]
        if "ModuleNotFoundError" in last:
            raise GEMError(f"llama.cpp's converter needs a module this environment lacks ({last}); install it "
                           "(pip install 'gem-adapter[gguf]' brings sentencepiece) or pass --converter from a llama.cpp checkout")
        raise GEMError(f"llama.cpp's converter failed on the merged model: {last}")
    shutil.rmtree(scratch)
    overrides = " ".join(f"--override-kv {key}={kind}:{value}" for key, kind, value in gguf_embedding_overrides(gem_id))
    commands = {
        # float32 KV cache: llama.cpp's default f16 cache moves pair similarities by ~1e-4
        "embeddings server": f"llama-server -m {{out}}/{GGUF_NAME} --embeddings --pooling last {overrides} "
                             "--cache-type-k f32 --cache-type-v f32",
        "chat server": f"llama-server -m {{out}}/{GGUF_NAME}",
    }
    return ExportReport(out="", format="gguf", base=base_name, adapter="", dtype=dtype, template=None,
                        gem_token=folder.gem_config.gem_tokens[0], gem_token_id=int(gem_id), max_length=folder.gem_config.max_length,
                        embedding_tokenizer=GGUF_NAME,
                        generation_tokenizer=GGUF_NAME, commands=commands, merge=_merge_summary(merge_info))


def gguf_embedding_overrides(gem_id: int) -> list[tuple[str, str, str]]:
    """llama.cpp metadata overrides that make its tokenizer end every text with the GEM token.

    llama.cpp's BPE tokenizer appends only the EOS token (when ``add_eos_token``), so the
    embedding server runs with EOS set to the GEM token; generation stops on the model's
    end-of-generation tokens, which llama.cpp keeps in a list of its own, so the chat server
    runs on the file unchanged.
    """
    return [("tokenizer.ggml.add_eos_token", "bool", "true"), ("tokenizer.ggml.eos_token_id", "int", str(gem_id))]


def export_readme(report: ExportReport) -> str:
    """The export's README: what it is and the exact commands."""
    lines = [
        f"# GEM export ({report.format})",
        "",
        f"Made by gem-adapter from adapter `{report.adapter}` on base `{report.base}` ({report.dtype}).",
        "Send plain text: the embedding tokenizer adds the adapter's template"
        + (f" (`{report.template}`)" if report.template else "")
        + f" and `{report.gem_token}` itself; the embedding is the last token's final hidden state, L2-normalised.",
        f"Embedding tokenizer: `{report.embedding_tokenizer}`; generation tokenizer: `{report.generation_tokenizer}`.",
        "",
        "```",
        *[f"# {name}\n{command}" for name, command in report.commands.items()],
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = ["EXPORT_REPORT", "FORMATS", "VLLM_POOLER_CONFIG", "ExportReport", "embedding_tokenizer", "export", "gguf_converter",
           "gguf_embedding_overrides"]
