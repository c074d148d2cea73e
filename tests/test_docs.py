"""The documentation keeps its promises: what it tells a user to run runs, and what it draws is the code's.

* the Python blocks of docs/getting-started.md run, in order, in one namespace, against the real
  default model (what a new user copies first), and so do its shell blocks marked
  ``<!-- test: run -->`` and the README's Python example;
* docs/img/gem-mask.png shows the masks ``masking.build_gem_attention_mask`` builds today (the masks
  drawn are stored in the PNG; docs/_gen/mask_figure.py redraws it);
* the server-route reference, generated from serving/app.py's source, lists the routes a running app
  serves.

``mkdocs build --strict`` (in .ci/run) checks the rest: links, pages, API names.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_base

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GETTING_STARTED = DOCS / "getting-started.md"
RUN_MARKER = "<!-- test: run -->"
FENCE = re.compile(r"^```(\w*)\s*$")


def load_script(name: str):
    """A module of docs/_gen/ (not a package: MkDocs loads its hooks by path, and so do we)."""
    spec = importlib.util.spec_from_file_location(f"docs_gen_{name}", DOCS / "_gen" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def code_blocks(page: Path) -> list[tuple[str, str, bool]]:
    """(language, code, marked to run) of every fenced block of a page, in order."""
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    previous, index = "", 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening:
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            blocks.append((opening.group(1), "\n".join(lines[index + 1:end]), previous == RUN_MARKER))
            index, previous = end + 1, ""
            continue
        if lines[index].strip():
            previous = lines[index].strip()
        index += 1
    return blocks


def test_code_blocks_are_read_with_their_language_and_run_marker(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Intro\n\n```python\nx = 1\n```\n\n<!-- test: run -->\n```bash\necho hi\n```\n\n```bash\nrm -rf /\n```\n")
    assert code_blocks(page) == [("python", "x = 1", False), ("bash", "echo hi", True), ("bash", "rm -rf /", False)]


def test_getting_started_has_python_blocks_and_cheap_shell_blocks_to_run():
    blocks = code_blocks(GETTING_STARTED)
    assert sum(language == "python" for language, _, _ in blocks) >= 3
    marked = [code for language, code, run in blocks if run]
    assert marked and all(code.startswith("gem ") for code in marked)  # gem commands only, nothing that installs


@pytest.mark.real_model
def test_getting_started_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__getting_started__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for language, code, _ in code_blocks(GETTING_STARTED):
            if language == "python":
                exec(compile(code, str(GETTING_STARTED), "exec"), namespace)  # noqa: S102 - our own page
    # what the page says the blocks show
    vectors = namespace["vectors"]
    assert vectors.shape == (3, 576)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    scores = namespace["documents"] @ namespace["query"]
    assert scores[0] > scores[1]
    assert "Paris" in printed.getvalue()


@pytest.mark.real_model
def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [code for language, code, _ in code_blocks(ROOT / "README.md") if language == "python"]
    assert blocks
    namespace: dict = {"__name__": "__readme__"}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["vectors"].shape == (2, 576) and namespace["short"].shape == (1, 128)
    scores = namespace["documents"] @ namespace["query"]
    assert scores[0] > scores[1]


@pytest.mark.real_model
def test_getting_started_marked_shell_blocks_run(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for _, code, run in code_blocks(GETTING_STARTED):
        if run:
            result = subprocess.run(["bash", "-e", "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=600)
            assert result.returncode == 0, f"{code}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert np.load(tmp_path / "demo.npy").shape == (3, 576)


def test_mask_figure_is_what_masking_builds_today():
    figure = load_script("mask_figure")
    stored = figure.stored_description()
    assert stored == figure.description(), (
        "docs/img/gem-mask.png no longer shows what gem_adapter.masking builds (or the panels the script "
        "draws); redraw it: .venv/bin/python docs/_gen/mask_figure.py")


def test_mask_figure_check_fails_when_the_mask_changes(monkeypatch):
    """The check above can fail: a mask rule changed in masking.py changes the description."""
    import torch

    from gem_adapter import masking

    figure = load_script("mask_figure")
    real = masking.build_gem_attention_mask

    def gem_tokens_see_each_other(segment_ids):
        mask = real(segment_ids)
        gem = segment_ids == masking.Segment.GEM
        causal = torch.ones(mask.shape[-2:], dtype=torch.bool).tril()
        return mask | (gem[:, None, :, None] & gem[:, None, None, :] & causal)

    monkeypatch.setattr(figure, "build_gem_attention_mask", gem_tokens_see_each_other)
    assert figure.description() != figure.stored_description()


@pytest.mark.parametrize("adapter_updates", [True, False])
def test_route_reference_lists_the_routes_the_app_serves(tmp_path, adapter_updates):
    from gem_adapter import GEMModel
    from gem_adapter.serving import create_app

    hooks = load_script("hooks")
    gem = GEMModel.from_pretrained(save_tiny_base(tmp_path / "tiny"), dtype="float32")
    app = create_app(gem, model_name="tiny", allow_adapter_updates=adapter_updates)
    try:
        served = {(method, route.path) for route in app.routes if hasattr(route, "methods")
                  for method in route.methods - {"HEAD"}}
    finally:
        app.state.gem_worker.close()
    documented = {(route.method, route.path) for route in hooks.server_routes()
                  if adapter_updates or route.condition != "allow_adapter_updates"}
    assert documented == served
    assert {route.condition for route in hooks.server_routes()} == {None, "allow_adapter_updates"}
