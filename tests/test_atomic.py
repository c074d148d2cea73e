"""Writing a file atomically: a reader sees the old file, the new one, or none, never a part."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gem_adapter.atomic import atomic_file


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_finished_block_leaves_exactly_the_target_with_the_umask_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "deep" / "out.json") as handle:
            handle.write("é")  # text mode writes UTF-8 whatever the locale
    finally:
        os.umask(previous)
    target = tmp_path / "deep" / "out.json"
    assert target.read_bytes() == "é".encode()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert entries(tmp_path / "deep") == ["out.json"]


def test_the_target_is_not_there_until_the_block_ends(tmp_path):
    target = tmp_path / "chunk.npz"
    with atomic_file(target, "wb") as handle:
        handle.write(b"part")
        assert not target.exists()
        assert len(entries(tmp_path)) == 1 and entries(tmp_path)[0].startswith(".chunk.npz.staging-")
    assert target.read_bytes() == b"part"


def test_a_failing_block_keeps_the_old_file_and_leaves_no_staging_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write("new, half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert entries(tmp_path) == ["results.json"]


def test_a_killed_writer_leaves_a_staging_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "pairs.jsonl"
    script = (
        "import os, sys\n"
        "from gem_adapter.atomic import atomic_file\n"
        "with atomic_file(sys.argv[1]) as handle:\n"
        "    handle.write('half'); handle.flush(); os._exit(9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    assert killed.returncode == 9
    left = entries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".pairs.jsonl.staging-") and not target.exists()
    with atomic_file(target) as handle:
        handle.write("whole")
    assert entries(tmp_path) == ["pairs.jsonl"] and target.read_text() == "whole"


def test_only_write_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="mode must be"), atomic_file(tmp_path / "x", "a"):
        pass
