"""A command prints its result and nothing else; library noise shows only with ``--verbose``.

Each test starts a fresh interpreter, since what was imported before (bitsandbytes, PEFT) is the
point: PEFT imports bitsandbytes whenever it is installed, and bitsandbytes' import on an
AVX512-BF16 CPU fetches a hub kernel and logs a warning when it cannot (gem_adapter/quiet.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import QUANTIZABLE, make_tokenizer, random_gem_adapter, save_tiny_base, tiny_model


def run_python(source: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "GEM_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    environment.pop("GEM_VERBOSE", None)
    environment.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=600)


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    base = save_tiny_base(tmp_path / "base")
    quantizable = tmp_path / "base-64"
    tiny_model("llama", **QUANTIZABLE).save_pretrained(quantizable)
    make_tokenizer().save_pretrained(quantizable)
    return {"base": base, "adapter": random_gem_adapter(base, tmp_path / "adapter", seed=1),
            "quantizable": quantizable,
            "adapter-64": random_gem_adapter(quantizable, tmp_path / "adapter-64", seed=1)}


def test_a_plain_load_leaves_bitsandbytes_out_and_a_later_4bit_load_still_works(folders, tmp_path):
    pytest.importorskip("bitsandbytes")
    result = run_python(f"""
        import sys
        from gem_adapter import GEMModel
        plain = GEMModel.from_pretrained({str(folders['base'])!r}, adapter={str(folders['adapter'])!r}, dtype="float32")
        plain.encode(["a dog"])
        plain.load_adapter({str(folders['adapter'])!r}, "again")
        assert "bitsandbytes" not in sys.modules, "a full-precision load imported bitsandbytes"
        four = GEMModel.from_pretrained({str(folders['quantizable'])!r}, adapter={str(folders['adapter-64'])!r},
                                        load_in_4bit=True)
        kinds = {{type(module).__module__ + "." + type(module).__name__ for module in four.model.modules()}}
        assert "peft.tuners.lora.bnb.Linear4bit" in kinds, sorted(kinds)
        print(four.encode(["a dog"]).shape)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 64)"


def test_embed_prints_the_result_and_nothing_else_unless_verbose(folders, tmp_path):
    command = f"""
        from gem_adapter.cli import main
        main(["embed", "--base", {str(folders['base'])!r}, "--adapter", {str(folders['adapter'])!r},
              "--text", "a dog", "--text", "a cat", "--out", "two.npy"] + {{}}, standalone_mode=True)
    """
    quiet = run_python(command.replace("{}", "[]"), tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    lines = quiet.stdout.splitlines()
    assert lines[0] == "wrote 2 x 32 embeddings to two.npy" and lines[1] == "cosine similarity:" and len(lines) == 4
    (tmp_path / "two.npy").unlink()
    verbose = run_python(command.replace("{}", "[]"), tmp_path, GEM_VERBOSE="1")
    assert verbose.returncode == 0, verbose.stderr
    assert "Loading weights" in verbose.stderr  # transformers' bar, shown when asked for
