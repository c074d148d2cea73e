"""The gem command line, through click's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gem_adapter import GEMModel
from gem_adapter.cli import main

TEXTS = ["first line", "", "third, a little longer"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("mode", ["txt", "jsonl"])
def test_embed_writes_rows_in_file_order(runner, tiny_model_folder, tmp_path, mode):
    source = tmp_path / f"texts.{mode}"
    if mode == "txt":
        source.write_text("\n".join(TEXTS) + "\n")
    else:
        source.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    output = tmp_path / "out" / "emb.npy"
    result = runner.invoke(main, ["embed", "--base", str(tiny_model_folder), "--input", str(source), "--out", str(output)])
    assert result.exit_code == 0, result.output
    assert f"wrote 3 x 32 embeddings to {output}" in result.output
    expected = GEMModel.from_pretrained(tiny_model_folder).encode(TEXTS)
    np.testing.assert_allclose(np.load(output), expected, atol=1e-6)


def test_embed_jsonl_field_option(runner, tiny_model_folder, tmp_path):
    source = tmp_path / "t.jsonl"
    source.write_text('{"body": "x"}\n{"body": "y"}\n')
    output = tmp_path / "e.npy"
    args = ["embed", "--base", str(tiny_model_folder), "--input", str(source), "--out", str(output)]
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "has no string field 'text'; name the text field (--field" in result.output
    assert runner.invoke(main, args + ["--field", "body"]).exit_code == 0
    assert np.load(output).shape == (2, 32)


def test_bad_input_writes_nothing(runner, tiny_model_folder, tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "ok"}\nnot json\n')
    output = tmp_path / "emb.npy"
    result = runner.invoke(main, ["embed", "--base", str(tiny_model_folder), "--input", str(source), "--out", str(output)])
    assert result.exit_code == 1
    assert "bad.jsonl:2 is not valid JSON" in result.output
    assert list(tmp_path.glob("emb.npy*")) == [] and list(tmp_path.glob(".emb.npy*")) == []


def test_missing_input_and_base_are_one_line_errors(runner, tiny_model_folder, tmp_path):
    result = runner.invoke(main, ["embed", "--base", str(tiny_model_folder), "--input", str(tmp_path / "none.txt"), "--out", str(tmp_path / "e.npy")])
    assert result.exit_code == 1 and result.output.strip() == f"Error: input file {tmp_path / 'none.txt'} does not exist; check the path"
    source = tmp_path / "t.txt"
    source.write_text("hi\n")
    result = runner.invoke(main, ["embed", "--base", str(tmp_path / "nope" / "x" / "y"), "--input", str(source), "--out", str(tmp_path / "e.npy")])
    assert result.exit_code == 1 and "does not exist; check the path" in result.output


def test_info_reports_versions_cache_and_default_model(runner):
    result = runner.invoke(main, ["info"])
    assert result.exit_code == 0
    assert "gem-adapter 0.1.0" in result.output
    assert "transformers: 5." in result.output
    assert "cache: " in result.output
    assert "default model smollm2-135m: not cached" in result.output
    assert "shipped adapter: " in result.output and "smollm2-135m" in result.output.split("shipped adapter: ")[1]


def test_embed_inline_texts_and_stdin(runner, tiny_model_folder, tmp_path):
    output = tmp_path / "inline.npy"
    args = ["embed", "--base", str(tiny_model_folder), "--out", str(output)]
    result = runner.invoke(main, args + ["--text", "one", "--text", "two"])
    assert result.exit_code == 0, result.output
    assert "cosine similarity:" in result.output
    inline = np.load(output)
    refused = runner.invoke(main, args + ["--input", "-"], input="one\ntwo\n")
    assert refused.exit_code == 1 and f"output {output} exists; pass --force to replace it" in refused.output
    result = runner.invoke(main, args + ["--input", "-", "--force"], input="one\r\ntwo\n")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(output), inline, atol=1e-6)


def test_embed_needs_exactly_one_source(runner, tiny_model_folder, tmp_path):
    args = ["embed", "--base", str(tiny_model_folder), "--out", str(tmp_path / "e.npy")]
    assert runner.invoke(main, args).exit_code == 2
    source = tmp_path / "t.txt"
    source.write_text("a\n")
    result = runner.invoke(main, args + ["--input", str(source), "--text", "b"])
    assert result.exit_code == 2 and "either --input FILE or one or more --text" in result.output
