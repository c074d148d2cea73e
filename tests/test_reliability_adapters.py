"""The adapter reproductions of the reliability issue, through the Python API.

A config that does not describe its weights (fewer targets, another rank, a pattern, an
exclusion, fewer layers), a pickle, a corrupt or other-architecture adapter: every entry
point (``read_adapter``, ``merge``, ``swap``, ``GEMModel.from_pretrained``) refuses it in
one line naming the field, both values and the fix, and ``inspect`` describes it with a
warning instead of crashing. Then outputs killed mid-write, and the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tokenizer, tiny_model, tiny_training_config
from safetensors.torch import load_file, save_file

from gem_adapter import GEMError, GEMModel, IncompatibleError
from gem_adapter.adapters import inspect, merge, swap
from gem_adapter.adapters.describe import format_inspection
from gem_adapter.files import atomic_output, read_adapter
from gem_adapter.training.run import train

SENTENCES = [f"Sentence {i} is about the {w} by the river, and a little more." for i, w in
             enumerate(["dog", "cat", "boat", "tree", "house", "car"] * 10)]
TEXTS = ["the dog near the river", "a boat", ""]
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def trained(root) -> tuple[Path, Path]:
    """A tiny base and a GEM adapter trained on it (r=4, all linear layers, 2 layers)."""
    base = root / "base"
    tiny_model("llama").save_pretrained(base)
    make_tokenizer().save_pretrained(base)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(SENTENCES))
    adapter = train(tiny_training_config(base, corpus, root / "adapter", max_steps=2, save_steps=100))
    return base, Path(adapter)


def edit_config(**changes):
    def apply(folder: Path) -> None:
        path = folder / "adapter_config.json"
        config = json.loads(path.read_text())
        config.update(changes)
        path.write_text(json.dumps(config))

    return apply


def drop_modules(leaf: str):
    """Remove every LoRA tensor of ``leaf`` from the weights (the config still targets it)."""
    def apply(folder: Path) -> None:
        tensors = load_file(str(folder / WEIGHTS))
        save_file({k: v for k, v in tensors.items() if f".{leaf}." not in k}, str(folder / WEIGHTS),
                  metadata={"format": "pt"})

    return apply


def cut_lora_b(folder: Path) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key] = tensors[key][:, :2].contiguous()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})


LEAVES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (case, how the folder is broken, error type, message pattern, does read_adapter alone see it)
CASES = [
    ("fewer target_modules", edit_config(target_modules=["q_proj", "k_proj"]), IncompatibleError,
     r"adapter_config.json says target_modules=\['q_proj', 'k_proj'\] but adapter_model.safetensors holds LoRA "
     r"weights for down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj, 10 of them not targeted "
     r"\(down_proj, gate_proj, o_proj, up_proj, v_proj; e.g. down_proj of layer 0\); the config was edited", True),
    ("r edited", edit_config(r=8), IncompatibleError,
     r"adapter_config.json says r=8 but down_proj of layer 0 has rank 4 in adapter_model.safetensors; "
     r"the config was edited or belongs to other weights - restore it", True),
    ("rank_pattern", edit_config(rank_pattern={"q_proj": 2}), IncompatibleError,
     r"says rank_pattern\['q_proj'\]=2 but q_proj of layer 0 has rank 4", True),
    ("regex too narrow", edit_config(target_modules=r".*\.(q_proj|v_proj)"), IncompatibleError,
     r"says target_modules='\.\*\\\\\.\(q_proj\|v_proj\)' but .* not targeted", True),
    ("exclude_modules", edit_config(exclude_modules=["v_proj"]), IncompatibleError,
     r"says target_modules=.* \(exclude_modules=\['v_proj'\]\) but .*2 of them not targeted \(v_proj; e.g. v_proj of layer 0\)",
     True),
    ("layers_to_transform", edit_config(target_modules=LEAVES, layers_to_transform=[0]), IncompatibleError,
     r"\(layers_to_transform=\[0\]\) but .*7 of them not targeted .*e.g. down_proj of layer 1\)", True),
    ("alpha zero", edit_config(lora_alpha=0), IncompatibleError,
     r"says lora_alpha=0, which is not a positive number", True),
    ("alpha pattern not a number", edit_config(alpha_pattern={"q_proj": "big"}), IncompatibleError,
     r"says alpha_pattern\['q_proj'\]='big', which is not a positive number", True),
    ("lora_B of another rank", cut_lora_b, GEMError,
     r"gives down_proj of layer 0 lora_A rank 4 but lora_B rank 2; the weights file is corrupt - re-save", True),
    ("targets more than the file holds", drop_modules("v_proj"), IncompatibleError,
     r"which in this base also covers v_proj \(2 modules, e.g. v_proj of layer 0\), but adapter_model.safetensors "
     r"holds no LoRA weights for them; the config was edited", False),
]


@pytest.mark.parametrize("case, breaks, error, pattern, seen_by_read", CASES, ids=[c[0] for c in CASES])
def test_a_config_that_does_not_describe_its_weights_is_refused_everywhere(
        tmp_path, trained, case, breaks, error, pattern, seen_by_read):
    base, adapter = trained
    broken = tmp_path / "A"
    shutil.copytree(adapter, broken)
    breaks(broken)

    def refused(call) -> str:
        with pytest.raises(error, match=pattern) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and str(broken) in message
        return message

    if seen_by_read:
        line = refused(lambda: read_adapter(broken))
        text = format_inspection(inspect(broken))  # described, not raised
        assert f"warning: {line}" in text.splitlines()
    else:
        read_adapter(broken)
    refused(lambda: merge(base, broken, tmp_path / "merged"))
    refused(lambda: swap(base, broken, tmp_path / "swapped"))
    refused(lambda: GEMModel.from_pretrained(base, adapter=broken))
    assert not (tmp_path / "merged").exists() and not (tmp_path / "swapped").exists()


@pytest.mark.parametrize("targets", ["all-linear", r".*\.(q|k|v|o|gate|up|down)_proj", ["proj_never", "q_proj", "k_proj",
                                     "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]])
def test_every_form_peft_allows_that_covers_the_weights_is_accepted(tmp_path, trained, targets):
    base, adapter = trained
    folder = tmp_path / "A"
    shutil.copytree(adapter, folder)
    edit_config(target_modules=targets, rank_pattern={"q_proj": 4})(folder)
    assert not read_adapter(folder).problems
    assert "warning" not in format_inspection(inspect(folder))
    expected = GEMModel.from_pretrained(base, adapter=adapter).encode(TEXTS)
    np.testing.assert_allclose(GEMModel.from_pretrained(base, adapter=folder).encode(TEXTS), expected, atol=1e-6)


def test_from_pretrained_applies_the_pickle_policy_and_inspect_does_not_unpickle(tmp_path, trained, monkeypatch):
    base, adapter = trained
    pickled = tmp_path / "pickled"
    shutil.copytree(adapter, pickled)
    torch.save(load_file(str(pickled / WEIGHTS)), pickled / "adapter_model.bin")
    (pickled / WEIGHTS).unlink()

    with pytest.raises(GEMError, match=r"holds only the pickle file adapter_model.bin, which can run code when "
                                       r"loaded; re-save it as safetensors, or pass allow_pickle=True / --allow-pickle"):
        GEMModel.from_pretrained(base, adapter=pickled)
    loaded = GEMModel.from_pretrained(base, adapter=pickled, allow_pickle=True)
    np.testing.assert_allclose(loaded.encode(TEXTS), GEMModel.from_pretrained(base, adapter=adapter).encode(TEXTS),
                               atol=1e-6)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("inspect unpickled the weights without allow_pickle")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", no_unpickling)
        info = inspect(pickled)
    assert info["weights_file"].startswith("adapter_model.bin (pickle, not opened")
    assert info["lora"]["ranks_in_file"] == [] and "allow_pickle" in info["warnings"][0]
    opened = inspect(pickled, allow_pickle=True)
    assert opened["weights_file"] == "adapter_model.bin (pickle)" and opened["lora"]["ranks_in_file"] == [4]
    assert "warnings" not in opened


def test_from_pretrained_refuses_corrupt_and_other_architecture_adapters_in_one_line(tmp_path, trained):
    base, adapter = trained
    truncated = tmp_path / "truncated"
    shutil.copytree(adapter, truncated)
    data = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(GEMError, match="corrupt or truncated.*re-copy or re-train the adapter") as caught:
        GEMModel.from_pretrained(base, adapter=truncated)
    assert "\n" not in str(caught.value)
    assert "warning:" in format_inspection(inspect(truncated))  # inspect still describes the folder

    from transformers import AutoModelForCausalLM

    from conftest import make_config

    other = tmp_path / "other-base"
    config = make_config("llama")
    config.intermediate_size = 48
    AutoModelForCausalLM.from_config(config).save_pretrained(other)
    make_tokenizer().save_pretrained(other)
    with pytest.raises(IncompatibleError, match="adapter intermediate size 64 != base 48") as caught:
        GEMModel.from_pretrained(other, adapter=adapter)
    assert "\n" not in str(caught.value)


def test_library_entry_points_take_allow_pickle_defaulting_to_false():
    import inspect as python_inspect

    from gem_adapter.evaluation.runner import run_evaluation

    for function in (GEMModel.from_pretrained, run_evaluation, inspect, merge, swap):
        assert python_inspect.signature(function).parameters["allow_pickle"].default is False, function


# ----------------------------------------------------------------------------- outputs killed mid-write
def staging_names(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name)


KILLED_WRITE = """
import os, sys
from gem_adapter.files import atomic_output
with atomic_output(sys.argv[1], force=True) as staging:
    (staging / "part.bin").write_bytes(b"x" * 100000)
    os._exit(9)  # killed while writing
"""


def test_atomic_output_killed_mid_write_is_cleaned_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    assert subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out)]).returncode == 9
    left = staging_names(tmp_path)
    assert len(left) == 1 and left[0].startswith(".out.staging-")  # named after the target and the dead pid
    alive = tmp_path / f".out.staging-{os.getpid()}-0000abcd"  # a live process's staging is not touched
    alive.mkdir()
    with atomic_output(out, force=False) as staging:
        (staging / "done.txt").write_text("complete")
    assert (out / "done.txt").read_text() == "complete"
    assert staging_names(tmp_path) == [alive.name]


def test_output_set_aside_by_a_killed_replace_is_put_back(tmp_path):
    out = tmp_path / "out"
    script = """
import os, sys
from gem_adapter.atomic import staging_name
from pathlib import Path
out = Path(sys.argv[1])
os.replace(out, out.parent / staging_name(out, "old"))  # first of the two renames, then killed
os._exit(9)
"""
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    assert subprocess.run([sys.executable, "-c", script, str(out)]).returncode == 9
    assert not out.exists()
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_output(out, force=True):
            raise RuntimeError("crash before anything was written")
    assert (out / "keep.txt").read_text() == "previous" and staging_names(tmp_path) == []


def test_merge_killed_mid_write_then_a_clean_merge_leaves_no_staging(tmp_path, trained):
    base, adapter = trained
    out = tmp_path / "merged"
    script = f"""
import os
from gem_adapter import GEMConfig
from gem_adapter.adapters import merge
GEMConfig.save = lambda self, folder: os._exit(9)  # killed after the weights were written
merge({str(base)!r}, {str(adapter)!r}, {str(out)!r})
"""
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == 9
    assert not out.exists() and [n for n in staging_names(tmp_path) if n.startswith(".merged.staging-")]
    merge(base, adapter, out)
    assert (out / "model.safetensors").is_file() and staging_names(tmp_path) == []


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o027, 0o750, 0o640), (0o002, 0o775, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    previous = os.umask(umask)
    try:
        with atomic_output(tmp_path / "out", force=False) as staging:
            (staging / "file.txt").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == folder_mode
    assert stat.S_IMODE((tmp_path / "out" / "file.txt").stat().st_mode) == file_mode
