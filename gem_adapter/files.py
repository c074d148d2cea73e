"""Reading adapter folders and writing outputs atomically.

``read_adapter`` validates a folder before any model is loaded: ``adapter_config.json``
must be JSON describing a LoRA, the weights must be ``adapter_model.safetensors`` (a pickle
``adapter_model.bin`` only with ``allow_pickle``) and readable, and ``gem_config.json``, when
present, must be valid. ``atomic_output`` hands out a staging folder beside the target and
renames it into place only when everything was written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import GEM_CONFIG_NAME, GEMConfig
from .errors import GEMError, IncompatibleError, ModelResolutionError

ADAPTER_CONFIG = "adapter_config.json"
SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
TRAINING_CONFIG = "training_config.json"
DTYPES = ("float32", "bfloat16", "float16")

# A saved PEFT key: base_model.model.<module path>.<adapter part>
_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+?)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector|token_adapter\.trainable_tokens_delta|lora_A|lora_B)$"
)


@dataclass
class LoraModule:
    """One LoRA-adapted module of an adapter file: its A and B shapes."""

    name: str
    a_shape: tuple[int, ...] | None = None
    b_shape: tuple[int, ...] | None = None
    embedding: bool = False

    @property
    def rank(self) -> int | None:
        return None if self.a_shape is None else int(self.a_shape[0])

    @property
    def in_features(self) -> int | None:
        """Input width of the adapted module (vocabulary rows for an embedding LoRA)."""
        return None if self.a_shape is None else int(self.a_shape[1])

    @property
    def out_features(self) -> int | None:
        return None if self.b_shape is None else int(self.b_shape[0])


@dataclass
class AdapterFolder:
    """A validated PEFT LoRA folder, GEM adapter or plain LoRA (see ``read_adapter``)."""

    path: Path
    config: dict[str, Any]
    gem_config: GEMConfig | None
    weights: Path
    pickled: bool
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def is_gem(self) -> bool:
        """True for a GEM adapter (it carries ``gem_config.json``)."""
        return self.gem_config is not None

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 8))

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", 8))

    @property
    def token_indices(self) -> list[int]:
        """The trainable-token rows (the GEM token ids of a GEM adapter); [] for none."""
        indices = self.config.get("trainable_token_indices")
        if not indices:
            return []
        if isinstance(indices, dict):
            if len(indices) != 1:
                raise IncompatibleError(
                    f"adapter {self.path} trains token rows of several layers ({sorted(indices)}); "
                    "only the input embedding's rows are supported"
                )
            indices = next(iter(indices.values()))
        return [int(i) for i in indices]

    @property
    def gem_rows_key(self) -> str | None:
        """The tensor key holding the trained token rows, if the file has one."""
        return next((k for k in self.shapes if k.endswith("token_adapter.trainable_tokens_delta")), None)

    @property
    def lora_modules(self) -> dict[str, LoraModule]:
        """Module path (relative to the causal LM) -> its LoRA shapes."""
        modules: dict[str, LoraModule] = {}
        for key, shape in self.shapes.items():
            match = _KEY.match(key)
            if match is None or match["part"].startswith("token_adapter") or match["part"] == "lora_magnitude_vector":
                continue
            module = modules.setdefault(match["module"], LoraModule(match["module"]))
            part = match["part"]
            # Embedding LoRA: A is (r, num_embeddings), B is (embedding_dim, r).
            module.embedding = module.embedding or part.startswith("lora_embedding")
            if part in ("lora_A.weight", "lora_A", "lora_embedding_A"):
                module.a_shape = tuple(shape)
            else:
                module.b_shape = tuple(shape)
        return modules

    @property
    def trained_in_4bit(self) -> bool | None:
        """Whether ``training_config.json`` (here or one folder up) says the base was 4-bit."""
        for folder in (self.path, self.path.parent):
            candidate = folder / TRAINING_CONFIG
            if candidate.is_file():
                try:
                    return bool(json.loads(candidate.read_text()).get("load_in_4bit", False))
                except (json.JSONDecodeError, OSError):
                    return None
        return None

    def tensors(self) -> dict[str, Any]:
        """All tensors of the weights file (CPU)."""
        return load_tensors(self.weights, self.pickled)


def read_adapter(path: str | os.PathLike, allow_pickle: bool = False) -> AdapterFolder:
    """Validate an adapter folder and read its configs and tensor shapes (no model load).

    Raises ``ModelResolutionError`` for a missing folder or file, ``GEMError`` for a corrupt
    file or a refused pickle, ``IncompatibleError`` for a non-LoRA adapter.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelResolutionError(f"adapter folder {folder} does not exist; check the path")
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        if (folder / "config.json").is_file() and GEMConfig.exists(folder):
            raise GEMError(
                f"{folder} is a merged GEM checkpoint, not an adapter; load it as a base "
                f"(GEMModel.from_pretrained({str(folder)!r}) or --base {folder})"
            )
        raise ModelResolutionError(
            f"adapter folder {folder} lacks {ADAPTER_CONFIG}; point at a folder written by `gem train` or PEFT"
        )
    config = read_json(config_path)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise IncompatibleError(
            f"adapter {folder} is a {peft_type or 'unknown'} adapter (peft_type in {ADAPTER_CONFIG}); only LoRA is supported"
        )
    gem_config = GEMConfig.load(folder) if GEMConfig.exists(folder) else None
    weights, pickled = folder / SAFE_WEIGHTS, False
    if not weights.is_file():
        pickle_file = folder / PICKLE_WEIGHTS
        if not pickle_file.is_file():
            raise ModelResolutionError(
                f"adapter folder {folder} has no {SAFE_WEIGHTS}; the adapter was not saved completely - re-save or re-train it"
            )
        if not allow_pickle:
            raise GEMError(
                f"adapter {folder} holds only the pickle file {PICKLE_WEIGHTS}, which can run code when loaded; "
                f"re-save it as safetensors, or pass allow_pickle=True / --allow-pickle if you trust its source"
            )
        weights, pickled = pickle_file, True
    adapter = AdapterFolder(folder, config, gem_config, weights, pickled, tensor_shapes(weights, pickled))
    if not adapter.lora_modules:
        raise GEMError(f"{weights} holds no LoRA tensors; the file is not a LoRA adapter - re-save it")
    if adapter.is_gem:
        _check_gem_rows(adapter)
    return adapter


def _check_gem_rows(adapter: AdapterFolder) -> None:
    k = adapter.gem_config.num_gem_tokens
    indices = adapter.token_indices
    if len(indices) != k:
        raise IncompatibleError(
            f"adapter {adapter.path} trains {len(indices)} token rows ({ADAPTER_CONFIG} trainable_token_indices) "
            f"but gem_config.json says k = {k}; the folder mixes files of different adapters - re-save it"
        )
    key = adapter.gem_rows_key
    if key is None or adapter.shapes[key][0] != k:
        raise IncompatibleError(
            f"{adapter.weights} lacks the {k} trained GEM rows (token_adapter.trainable_tokens_delta); re-save the adapter"
        )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; errors name the file and the fix."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelResolutionError(f"{path} does not exist; check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GEMError(f"{path} is not valid JSON ({exc}); the file is corrupt - re-save the adapter") from None
    if not isinstance(data, dict):
        raise GEMError(f"{path} holds a JSON {type(data).__name__}, expected an object; the file is corrupt")
    return data


def tensor_shapes(weights: Path, pickled: bool = False) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the file header (the whole pickle for .bin)."""
    if pickled:
        return {k: tuple(v.shape) for k, v in load_tensors(weights, True).items()}
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        raise GEMError(f"{weights} is corrupt or truncated ({exc}); re-copy or re-train the adapter") from None


def load_tensors(weights: Path, pickled: bool = False) -> dict[str, Any]:
    """Every tensor of an adapter weights file, on the CPU."""
    import torch

    try:
        if pickled:
            return dict(torch.load(weights, map_location="cpu", weights_only=True))
        from safetensors.torch import load_file

        return load_file(str(weights))
    except Exception as exc:
        raise GEMError(f"{weights} could not be read ({exc}); re-copy or re-train the adapter") from None


def parse_dtype(name: str):
    """``float32`` / ``bfloat16`` / ``float16`` -> torch dtype."""
    import torch

    if name not in DTYPES:
        raise GEMError(f"dtype {name!r} is not one of {DTYPES}")
    return getattr(torch, name)


def folder_files(folder: Path) -> dict[str, int]:
    """File name -> size in bytes, for the files directly inside ``folder``."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def check_output(out: str | os.PathLike, force: bool, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse an existing output unless ``force``; never allow writing over an input."""
    out = Path(out)
    resolved = out.resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if resolved == source_path or source_path.is_relative_to(resolved):
            raise GEMError(f"output {out} would overwrite the input {source}; choose another output folder")
    if out.exists():
        used = out.is_file() or any(out.iterdir())
        if used and not force:
            raise GEMError(f"output {out} exists; pass --force (force=True) to replace it, or choose another folder")
    return out


@contextmanager
def atomic_output(out: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield a staging folder beside ``out``; rename it to ``out`` when the block succeeds.

    On any exception the staging folder is removed and ``out`` is left as it was.
    """
    out = check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield staging
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(staging, out)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "ADAPTER_CONFIG",
    "DTYPES",
    "GEM_CONFIG_NAME",
    "PICKLE_WEIGHTS",
    "SAFE_WEIGHTS",
    "AdapterFolder",
    "LoraModule",
    "atomic_output",
    "check_output",
    "folder_files",
    "load_tensors",
    "parse_dtype",
    "read_adapter",
    "read_json",
    "tensor_shapes",
]
