"""Writing files and folders so that an interrupted run leaves nothing half-written.

A file or folder is written under a staging name beside its target,
``.<target name>.staging-<pid>-<random>``, and renamed onto the target when it is whole.
A reader therefore sees the old target, the new one, or none, never a part. Staging
entries whose process is gone are removed by the next write of the same target
(``remove_stale_staging``). Everything created gets the mode a plain ``open``/``mkdir``
would give it under the process umask (``tempfile`` would make it private).

The model cache, merged and exported folders (``files.atomic_output``), embedding chunks,
evaluation results, ``.npy`` outputs and pair files go through this module. Two writers still
stage on their own, with ``tempfile`` and per-file renames into an existing folder: training
checkpoints (``training/trainer.py``) and ``training/run.save_adapter``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path, directory: bool | None = None) -> None:
    """Give ``path`` the mode a plain mkdir/open would have (tempfile makes 0700/0600)."""
    directory = path.is_dir() if directory is None else directory
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


_STAGING = re.compile(r"\.(?P<kind>staging|old)-(?P<pid>\d+)-[0-9a-f]+")


def staging_name(target: Path, kind: str = "staging") -> str:
    """``.<target name>.<kind>-<pid>-<random>``: recognisable, and owned by this process."""
    return f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove the staging folders beside ``target`` whose process is gone; return what was removed.

    A previous ``target`` set aside (``.old-``) by a process killed between its two renames
    is put back when ``target`` is missing, else removed.
    """
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    prefix = f".{target.name}."
    for candidate in target.parent.iterdir():
        if not candidate.name.startswith(prefix):
            continue
        match = _STAGING.fullmatch(candidate.name[len(prefix) - 1:])
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            if match["kind"] == "old" and not target.exists():
                os.replace(candidate, target)
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
        except FileNotFoundError:
            continue  # another process cleaned it first
    return removed


@contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """Yield a new empty folder ``.<target>.staging-<pid>-<random>`` beside ``target`` (umask modes).

    It is removed on the way out if it still exists (the caller renames it on success).
    """
    target = Path(target)
    while True:
        staging = target.parent / staging_name(target)
        try:
            os.mkdir(staging, 0o777)  # the umask applies, as for any mkdir (tempfile.mkdtemp makes 0700)
            break
        except FileExistsError:
            continue
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", *, encoding: str | None = None) -> Iterator[IO]:
    """Open a new staging file beside ``target`` for writing; rename it onto ``target`` when
    the block succeeds, delete it when the block raises (``target`` then stays as it was).

    ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise) or ``"wb"``.
    The parent folder is created when missing; staging files that killed processes left
    beside ``target`` are removed first.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file mode must be 'w' or 'wb', not {mode!r}")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    while True:
        staging = target.parent / staging_name(target)
        try:  # "x": a new file, created with the umask's mode like any plain open
            handle = open(staging, "xb") if mode == "wb" else open(staging, "x", encoding=encoding or "utf-8")  # noqa: SIM115
            break
        except FileExistsError:
            continue
    try:
        with handle:
            yield handle
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


__all__ = ["apply_umask", "atomic_file", "current_umask", "remove_stale_staging", "staging_folder", "staging_name"]
