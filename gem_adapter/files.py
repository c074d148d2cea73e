"""Reading adapter folders and writing outputs atomically.

``read_adapter`` validates a folder before any model is loaded: ``adapter_config.json``
must be JSON describing a LoRA, the weights must be ``adapter_model.safetensors`` (a pickle
``adapter_model.bin`` only with ``allow_pickle``) and readable, and ``gem_config.json``, when
present, must be valid. The config must also describe the weights it sits beside: every
LoRA module in the file covered by ``target_modules`` (names, a regex string or
``all-linear``, minus ``exclude_modules`` and layers outside ``layers_to_transform``), and
every A/B pair of the rank ``r`` (or its ``rank_pattern`` entry) says, so an edited or
swapped config is refused instead of silently dropping or mis-sizing weights.
``atomic_output`` hands out a staging folder beside the target and renames it into place
only when everything was written; staging folders left by killed runs are removed by the
next run on the same target (see ``atomic``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import remove_stale_staging, staging_folder, staging_name
from .config import GEM_CONFIG_NAME, GEMConfig
from .errors import GEMError, IncompatibleError, ModelResolutionError

ADAPTER_CONFIG = "adapter_config.json"
SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
TRAINING_CONFIG = "training_config.json"
DTYPES = ("float32", "bfloat16", "float16")
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output layer
_RESTORE = "the config was edited or belongs to other weights - restore it"

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
    opened: bool = True  # False: a pickle read_adapter was not allowed to open (shapes unknown)
    problems: list[GEMError] = field(default_factory=list)  # found by read_adapter(strict=False)

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


def read_adapter(path: str | os.PathLike, allow_pickle: bool = False, *, strict: bool = True) -> AdapterFolder:
    """Validate an adapter folder and read its configs and tensor shapes (no model load).

    Raises ``ModelResolutionError`` for a missing folder or file, ``GEMError`` for a corrupt
    file or a refused pickle, ``IncompatibleError`` for a non-LoRA adapter or a config that
    does not describe its weights (targets, ranks). With ``strict=False`` (for describing a
    broken folder) the problems with the weights are collected in ``problems`` instead; a
    refused pickle is then left unopened (``opened`` False, no shapes).
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
        weights, pickled = pickle_file, True
        if not allow_pickle:
            refused = GEMError(
                f"adapter {folder} holds only the pickle file {PICKLE_WEIGHTS}, which can run code when loaded; "
                f"re-save it as safetensors, or pass allow_pickle=True / --allow-pickle if you trust its source"
            )
            if strict:
                raise refused
            return AdapterFolder(folder, config, gem_config, weights, True, {}, opened=False, problems=[refused])
    problems: list[GEMError] = []
    try:
        shapes = tensor_shapes(weights, pickled)
    except GEMError as exc:
        if strict:
            raise
        return AdapterFolder(folder, config, gem_config, weights, pickled, {}, problems=[exc])
    adapter = AdapterFolder(folder, config, gem_config, weights, pickled, shapes)
    if not adapter.lora_modules:
        problems.append(GEMError(f"{weights} holds no LoRA tensors; the file is not a LoRA adapter - re-save it"))
    if adapter.is_gem:
        try:
            _check_gem_rows(adapter)
        except IncompatibleError as exc:
            problems.append(exc)
    problems.extend(config_problems(adapter))
    if strict and problems:
        raise problems[0]
    adapter.problems = problems
    return adapter


def module_label(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q_proj of layer 3`` (the full name otherwise)."""
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return f"{name.rsplit('.', 1)[-1]} of layer {match.group(1)}" if match else name


def targets_module(config: dict[str, Any], name: str, *, embedding: bool = False, output_layer: bool = False) -> bool:
    """Whether PEFT, given ``config``, puts a LoRA on module ``name`` (its path in the causal LM).

    Follows PEFT's rules: ``exclude_modules`` first (a regex string matched in full, or names
    matched as the path or its tail), then ``target_modules`` as a regex string matched in
    full, ``all-linear`` (every linear layer but the output layer), or a list of names
    matched as the path or its tail, the list form also filtered by ``layers_to_transform``.
    ``modules_to_save`` are never targeted.
    """
    excluded = config.get("exclude_modules")
    if excluded:
        if isinstance(excluded, str):
            if re.fullmatch(excluded, name):
                return False
        elif name in excluded or any(name.endswith(f".{e}") for e in excluded):
            return False
    saved = config.get("modules_to_save") or []
    if any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in saved):
        return False  # PEFT never puts a LoRA on a module it saves whole
    targets = config.get("target_modules")
    if not targets:
        return False
    if isinstance(targets, str):
        if targets == ALL_LINEAR:
            return not embedding and not output_layer and name.rsplit(".", 1)[-1] != "lm_head"
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    if not any(name.endswith(f".{t}") for t in targets):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    patterns = config.get("layers_pattern")
    match = None
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match["idx"])
    return index == layers if isinstance(layers, int) else index in layers


def targets_text(targets: Any) -> str:
    """``target_modules`` for a message: in full, or its first names when it lists many paths."""
    if isinstance(targets, (list, tuple, set)) and len(targets) > 8:
        names = sorted(targets)
        return f"[{len(names)} names: {', '.join(map(repr, names[:3]))}, ...]"
    return repr(targets)


def expected_rank(config: dict[str, Any], name: str) -> tuple[int, str]:
    """The rank PEFT gives module ``name`` and the config field it comes from (``r`` or a ``rank_pattern`` entry)."""
    for key, value in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value, f"rank_pattern[{key!r}]={value}"
    return config.get("r", 8), f"r={config.get('r', 8)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_problems(adapter: AdapterFolder) -> list[GEMError]:
    """Ways ``adapter_config.json`` does not describe the weights file beside it (empty when it does).

    Every LoRA module in the file must be one the config targets, and each A/B pair must
    have the rank the config gives that module; ``r``, ``lora_alpha`` and the pattern
    values must be positive numbers.
    """
    config, label, file = adapter.config, f"adapter {adapter.path}", adapter.weights.name
    problems: list[GEMError] = []
    fields = [("r", config.get("r", 8)), ("lora_alpha", config.get("lora_alpha", 8))]
    fields += [(f"rank_pattern[{k!r}]", v) for k, v in (config.get("rank_pattern") or {}).items()]
    fields += [(f"alpha_pattern[{k!r}]", v) for k, v in (config.get("alpha_pattern") or {}).items()]
    for name, value in fields:
        if not _is_number(value) or value <= 0 or (name.startswith(("r", "rank")) and value != int(value)):
            kind = "a positive whole number" if name.startswith(("r", "rank")) else "a positive number"
            problems.append(IncompatibleError(
                f"{label}: {ADAPTER_CONFIG} says {name}={value!r}, which is not {kind}; {_RESTORE}"))
    if problems:
        return problems
    modules = adapter.lora_modules
    targets = config.get("target_modules")
    uncovered = [n for n, m in sorted(modules.items()) if not targets_module(config, n, embedding=m.embedding)]
    if uncovered:
        in_file = sorted({n.rsplit(".", 1)[-1] for n in modules})
        missing = sorted({n.rsplit(".", 1)[-1] for n in uncovered})
        excluded = f" (exclude_modules={config.get('exclude_modules')!r})" if config.get("exclude_modules") else ""
        layers = (f" (layers_to_transform={config.get('layers_to_transform')!r})"
                  if config.get("layers_to_transform") not in (None, []) else "")
        problems.append(IncompatibleError(
            f"{label}: {ADAPTER_CONFIG} says target_modules={targets_text(targets)}{excluded}{layers} but {file} holds LoRA weights "
            f"for {', '.join(in_file)}, {len(uncovered)} of them not targeted ({', '.join(missing)}; e.g. "
            f"{module_label(uncovered[0])}); {_RESTORE}"
        ))
    for name, module in sorted(modules.items()):
        b_rank = None if module.b_shape is None else int(module.b_shape[1] if len(module.b_shape) > 1 else -1)
        if module.a_shape is None or module.b_shape is None:
            part = "lora_B" if module.a_shape is not None else "lora_A"
            problems.append(GEMError(
                f"{label}: {file} has no {part} for {module_label(name)}; the weights file is incomplete - re-save the adapter"))
            break
        if module.rank != b_rank:
            problems.append(GEMError(
                f"{label}: {file} gives {module_label(name)} lora_A rank {module.rank} but lora_B rank {b_rank}; "
                "the weights file is corrupt - re-save the adapter"))
            break
        rank, source = expected_rank(config, name)
        if module.rank != rank:
            problems.append(IncompatibleError(
                f"{label}: {ADAPTER_CONFIG} says {source} but {module_label(name)} has rank {module.rank} in {file}; "
                f"{_RESTORE}"))
            break
    return problems


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

    On any exception the staging folder is removed and ``out`` is left as it was. The
    staging folder is named ``.<out name>.staging-<pid>-<random>``; ones left behind by
    a killed run (their process no longer alive) are removed first, and a previous output
    set aside by a run killed between its two renames is put back. The new folder gets the
    permissions the umask allows (not 0700).
    """
    out = check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    with staging_folder(out) as staging:
        yield staging
        if out.exists():
            old = out.parent / staging_name(out, "old")
            os.replace(out, old)
            os.replace(staging, out)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(staging, out)


__all__ = [
    "ADAPTER_CONFIG",
    "ALL_LINEAR",
    "DTYPES",
    "GEM_CONFIG_NAME",
    "PICKLE_WEIGHTS",
    "SAFE_WEIGHTS",
    "AdapterFolder",
    "LoraModule",
    "atomic_output",
    "check_output",
    "config_problems",
    "expected_rank",
    "folder_files",
    "load_tensors",
    "module_label",
    "parse_dtype",
    "read_adapter",
    "read_json",
    "targets_module",
    "targets_text",
    "tensor_shapes",
]
