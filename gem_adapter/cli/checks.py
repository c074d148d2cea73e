"""The validation pass every command runs before any model loads, and line-exact text input.

Inputs: the file exists, is a file, is readable, decodes as UTF-8 (an error names the file
and the line). Outputs: not a folder where a file is wanted (or the reverse), no file in
the way of a folder to create, the folder it is written in is writable, and an existing
output is refused unless ``--force``: the same rule for every command.

Text lines: only ``\\n`` and ``\\r\\n`` end a line (``str.splitlines`` also splits on
U+2028, U+2029, ``\\v``, ``\\f``, ``\\x1c``-``\\x1e`` and ``\\x85``, which would shift every
later row); a final newline does not add a row; blank lines are rows (an empty text); a
UTF-8 byte order mark at the start is dropped.
"""

from __future__ import annotations

import codecs
import os
import tempfile
from pathlib import Path

from ..atomic import atomic_file
from ..errors import GEMError

ICONV_HINT = "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"


# ---------------------------------------------------------------------------- inputs
def decode_lines(data: bytes, source: str) -> list[str]:
    """``data`` cut at ``\\n`` / ``\\r\\n`` only and decoded as UTF-8; ``source`` names it in errors."""
    data = data.removeprefix(codecs.BOM_UTF8)
    if not data:
        return []
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    lines = []
    for number, piece in enumerate(pieces, 1):
        if piece.endswith(b"\r"):
            piece = piece[:-1]
        try:
            lines.append(piece.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise GEMError(
                f"{source}:{number} is not valid UTF-8 (byte 0x{piece[exc.start]:02x} at column {exc.start + 1}); "
                f"{ICONV_HINT}"
            ) from None
    return lines


def check_input_file(path: Path, what: str = "input file") -> Path:
    """``path`` is an existing, readable file (not a folder)."""
    if not path.exists():
        raise GEMError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise GEMError(f"{what} {path} is a folder; give a file")
    if not os.access(path, os.R_OK):
        raise GEMError(f"{what} {path} is not readable (permission denied); check its permissions")
    return path


def read_bytes(path: Path, what: str = "input file") -> bytes:
    check_input_file(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GEMError(f"cannot read {what} {path} ({(exc.strerror or str(exc)).lower()}); check the path") from None


def texts_from_lines(lines: list[str], source: str, jsonl: bool, field: str) -> list[str]:
    """The texts of decoded lines: every line for text, a field of every non-blank line for JSONL."""
    if not jsonl:
        return lines
    from ..training import jsonl_texts

    return jsonl_texts(lines, source, field)


def read_input_texts(path: Path, field: str = "text") -> list[str]:
    """Texts of a .txt file (row i = line i+1, blank lines kept) or a .jsonl file (``field``).

    Refuses a file with nothing to embed.
    """
    jsonl = path.suffix == ".jsonl"
    source = str(path)
    texts = texts_from_lines(decode_lines(read_bytes(path), source), source, jsonl, field)
    if not texts:
        kind = "JSON records" if jsonl else "lines"
        raise GEMError(f"input file {path} has no {kind}; nothing to embed")
    return texts


def read_stdin_texts(data: bytes) -> list[str]:
    """Texts of standard input, one per line (as for a .txt file)."""
    texts = decode_lines(data, "stdin")
    if not texts:
        raise GEMError("stdin has no lines; nothing to embed")
    return texts


def check_utf8_file(path: Path, what: str) -> None:
    """Decode a whole file as UTF-8 lines so a bad byte is reported with its line."""
    decode_lines(read_bytes(path, what), str(path))


# ---------------------------------------------------------------------------- outputs
def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and not current.is_symlink():
        if current.parent == current:
            break
        current = current.parent
    return current


def _check_writable(folder: Path, output: Path, option: str) -> None:
    """Create (and drop at once) an unnamed file in ``folder``: the real test, root or not."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise GEMError(f"cannot write {output}: folder {folder} is not writable ({reason}); choose another {option}") from None


def check_output(path: Path, *, folder: bool, force: bool, option: str = "--out",
                 force_hint: str = "pass --force to replace it") -> Path:
    """Refuse an output that cannot or should not be written, before any work is done; return the
    resolved path, which the command then writes.

    ``folder``: the output is a folder (else a file). An existing file or non-empty folder
    is refused unless ``force``; ``force_hint`` says what to do about it. The path is resolved
    first (symbolic links followed, ``..`` taken out, as ``os.path.realpath`` does), so a path
    through a missing folder (``ro/sub/../../e.npy/x``) is judged where it really leads instead
    of passing here and failing after the work. Messages name the path as given.
    """
    given = Path(path)
    path = Path(os.path.realpath(given))
    if path.exists():
        if not folder and path.is_dir():
            raise GEMError(f"output {given} is a folder; {option} needs a file path such as {given / 'embeddings.npy'}")
        if folder and not path.is_dir():
            raise GEMError(f"output {given} is a file, not a folder; choose another {option}")
        used = not folder or any(path.iterdir())
        if used and not force:
            what = f"output folder {given} is not empty" if folder else f"output {given} exists"
            raise GEMError(f"{what}; {force_hint}, or choose another {option}")
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise GEMError(f"cannot create {given}: {ancestor} is a file, not a folder; choose another {option}")
    _check_writable(ancestor, given, option)
    if folder and path.is_dir():
        _check_writable(path, given, option)
    return path


# ---------------------------------------------------------------------------- writing
def write_npy_atomically(array, output: Path) -> None:
    """Write to a temporary file beside ``output`` and rename, so a failure leaves nothing.

    The file gets the mode a plain ``open`` would give it (0o666 minus the umask), not the
    temporary file's 0o600.
    """
    import numpy as np

    with atomic_file(output, "wb") as handle:
        np.save(handle, array)
