"""Every ``gem`` command refuses bad inputs and outputs with one line, before any model loads.

The table-driven test runs each command on each bad case with model loading made
impossible (``GEMModel``, transformers and PEFT loaders all raise): the command must exit
non-zero with exactly one ``Error: ...`` line naming the value, no traceback, and leave
the work folder exactly as it was (no output, an existing output unchanged).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner

from gem_adapter import GEMModel
from gem_adapter.cli import main

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Make every way of loading a model or tokenizer fail loudly."""
    import peft
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs and outputs were checked")

    monkeypatch.setattr(GEMModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", refuse)


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture
def paths(tmp_path, tiny_model_folder):
    """A work folder holding good and bad inputs and outputs, and a folder nobody can write."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "texts.txt").write_text("a\nb\n")
    (work / "corpus.txt").write_text("Some training text. " * 20 + "\n")
    (work / "latin1.txt").write_bytes(b"ok\ncaf\xe9\n")
    (work / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (work / "empty.txt").write_bytes(b"")
    (work / "a-file").write_text("keep")
    (work / "empty-dir").mkdir()
    (work / "existing.npy").write_bytes(b"keep")
    (work / "used-dir").mkdir()
    (work / "used-dir" / "keep.txt").write_text("keep")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if _writable(readonly):  # root writes anywhere; a pseudo file system refuses even root
        readonly.chmod(0o755)
        readonly = Path("/sys")
        if not readonly.is_dir() or _writable(readonly):
            pytest.skip("no folder this user cannot write")
    yield SimpleNamespace(work=work, model=tiny_model_folder, readonly=readonly)
    if readonly != Path("/sys"):
        readonly.chmod(0o755)


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
            for p in sorted(root.rglob("*"))}


def assert_one_line_error(result, expected: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    assert expected in lines[0], f"expected {expected!r} in {lines[0]!r}"


# ----------------------------------------------------------------------------- the table
# each case: id -> (arguments, stdin or None, expected text of the error line); placeholders
# {work} {model} {readonly} are filled from the `paths` fixture
EMBED = ["embed", "--base", "{model}", "--input", "{work}/texts.txt"]
TRAIN = ["train", "--base", "{model}", "--data", "{work}/corpus.txt"]
EVAL = ["eval", "--base", "{model}", "--tasks", "STSBenchmark", "--data-dir", "{work}"]
MERGE = ["merge", "--base", "{model}", "--adapter", "{work}/empty-dir"]
STACK = ["stack", "--base", "{model}", "--adapter", "gem={work}/empty-dir", "--adapter", "b={work}/empty-dir"]
SWAP = ["swap", "--base", "{model}", "--adapter", "{work}/empty-dir"]
EXPORT = ["export", "--base", "{model}", "--adapter", "{work}/empty-dir", "--format", "sentence-transformers"]
PAIRS = ["pairs", "--data-dir", "{work}"]


def output_cases(command: str, prefix: list[str], file_output: bool) -> list:
    """The four bad outputs, for a command writing a file or a folder at --out."""
    name = "e.npy" if file_output else "out"
    cases = [
        (f"{command}-out-in-read-only-folder", prefix + ["--out", f"{{readonly}}/{name}"], None,
         f"cannot write {{readonly}}/{name}: folder {{readonly}} is not writable"),
        (f"{command}-out-under-a-file", prefix + ["--out", f"{{work}}/a-file/{name}"], None,
         f"cannot create {{work}}/a-file/{name}: {{work}}/a-file is a file, not a folder; choose another --out"),
        # through a missing folder and back out of it: judged where it leads (under a file), not let through
        (f"{command}-out-through-a-missing-folder", prefix + ["--out", f"{{work}}/none/sub/../../a-file/{name}"], None,
         f"cannot create {{work}}/none/sub/../../a-file/{name}: {{work}}/a-file is a file, not a folder"),
    ]
    if file_output:
        cases += [
            (f"{command}-out-is-a-folder", prefix + ["--out", "{work}/empty-dir"], None,
             "output {work}/empty-dir is a folder; --out needs a file path"),
            (f"{command}-out-exists", prefix + ["--out", "{work}/existing.npy"], None,
             "output {work}/existing.npy exists; pass --force to replace it, or choose another --out"),
        ]
    else:
        hint = {"train": "pass --force to replace it, --resume to continue it",
                "eval": "pass --force to replace its run, --resume to continue it"}.get(command, "pass --force to replace it")
        cases += [
            (f"{command}-out-is-a-file", prefix + ["--out", "{work}/a-file"], None,
             "output {work}/a-file is a file, not a folder; choose another --out"),
            (f"{command}-out-exists", prefix + ["--out", "{work}/used-dir"], None,
             f"output folder {{work}}/used-dir is not empty; {hint}, or choose another --out"),
        ]
    return cases


CASES = [
    *output_cases("embed", EMBED, file_output=True),
    ("embed-input-not-utf8", ["embed", "--base", "{model}", "--input", "{work}/latin1.txt", "--out", "{work}/e.npy"],
     None, "{work}/latin1.txt:2 is not valid UTF-8 (byte 0xe9 at column 4); convert it to UTF-8"),
    ("embed-jsonl-not-utf8", ["embed", "--base", "{model}", "--input", "{work}/latin1.jsonl", "--out", "{work}/e.npy"],
     None, "{work}/latin1.jsonl:2 is not valid UTF-8"),
    ("embed-input-empty", ["embed", "--base", "{model}", "--input", "{work}/empty.txt", "--out", "{work}/e.npy"],
     None, "input file {work}/empty.txt has no lines; nothing to embed"),
    ("embed-input-missing", ["embed", "--base", "{model}", "--input", "{work}/none.txt", "--out", "{work}/e.npy"],
     None, "input file {work}/none.txt does not exist; check the path"),
    ("embed-input-is-a-folder", ["embed", "--base", "{model}", "--input", "{work}/empty-dir", "--out", "{work}/e.npy"],
     None, "input file {work}/empty-dir is a folder; give a file"),
    ("embed-stdin-not-utf8", ["embed", "--base", "{model}", "--input", "-", "--out", "{work}/e.npy"],
     b"fine\nna\xefve\n", "stdin:2 is not valid UTF-8 (byte 0xef at column 3)"),
    ("embed-stdin-empty", ["embed", "--base", "{model}", "--input", "-", "--out", "{work}/e.npy"],
     b"", "stdin has no lines; nothing to embed"),
    ("embed-adapter-missing", EMBED + ["--adapter", "{work}/no-adapter", "--out", "{work}/e.npy"],
     None, "adapter folder {work}/no-adapter does not exist; check the path"),
    *output_cases("train", TRAIN, file_output=False),
    ("train-data-missing", ["train", "--base", "{model}", "--data", "{work}/none.jsonl", "--out", "{work}/t"],
     None, "training data {work}/none.jsonl does not exist"),
    ("train-pairs-missing", TRAIN + ["--out", "{work}/t", "--set", "pairs_data={work}/no-pairs.jsonl"],
     None, "pairs_data {work}/no-pairs.jsonl does not exist; give a pairs .jsonl file"),
    ("train-data-not-utf8", ["train", "--base", "{model}", "--data", "{work}/latin1.jsonl", "--out", "{work}/t"],
     None, "{work}/latin1.jsonl:2 is not valid UTF-8"),
    ("train-resume-nothing", TRAIN + ["--out", "{work}/t", "--resume"],
     None, "--resume: output folder {work}/t does not exist; nothing to resume"),
    *output_cases("eval", EVAL, file_output=False),
    ("eval-adapter-missing", EVAL + ["--adapter", "{work}/no-adapter", "--out", "{work}/ev"],
     None, "adapter folder {work}/no-adapter does not exist; check the path"),
    *output_cases("merge", MERGE, file_output=False),
    ("merge-adapter-missing", ["merge", "--adapter", "{work}/no-adapter", "--out", "{work}/m"],
     None, "adapter folder {work}/no-adapter does not exist; check the path"),
    ("merge-nothing-shipped", ["merge", "--base", "{model}", "--out", "{work}/m"],
     None, "no adapter is shipped for base '{model}'; give --adapter FOLDER"),
    ("merge-no-adapter-no-base", ["merge", "--out", "{work}/m"],
     None, "give --adapter FOLDER, or --base smollm2-135m for the adapter shipped for it"),
    *output_cases("stack", STACK, file_output=False),
    ("stack-adapter-missing", ["stack", "--base", "{model}", "--adapter", "gem={work}/no-adapter",
                               "--adapter", "b={work}/empty-dir", "--out", "{work}/s"],
     None, "adapter folder {work}/no-adapter does not exist; check the path"),
    *output_cases("swap", SWAP, file_output=False),
    ("swap-merged-out-exists", SWAP + ["--out", "{work}/w", "--merged-out", "{work}/used-dir"],
     None, "output folder {work}/used-dir is not empty; pass --force to replace it, or choose another --merged-out"),
    ("swap-adapter-missing", ["swap", "--base", "{model}", "--adapter", "{work}/no-adapter", "--out", "{work}/w"],
     None, "adapter folder {work}/no-adapter does not exist; check the path"),
    *output_cases("export", EXPORT, file_output=False),
    ("export-nothing-shipped", ["export", "--base", "{model}", "--format", "vllm", "--out", "{work}/x"],
     None, "no adapter is shipped for base '{model}'; give --adapter FOLDER"),
    *output_cases("pairs", PAIRS, file_output=True),
    ("inspect-missing", ["inspect", "{work}/nothing-here"], None, "{work}/nothing-here does not exist"),
    ("inspect-a-file", ["inspect", "{work}/a-file"], None, "{work}/a-file is a file, not a folder"),
    ("inspect-not-an-adapter", ["inspect", "{work}/used-dir"], None,
     "{work}/used-dir is neither an adapter (no adapter_config.json) nor a merged GEM checkpoint"),
]


def test_every_command_has_cases():
    covered = {case[1][0] for case in CASES}
    assert covered == {"embed", "train", "eval", "merge", "stack", "swap", "export", "pairs", "inspect"}


@pytest.mark.parametrize("case_id, arguments, stdin, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_input_or_output_is_one_line_before_any_model_loads(runner, paths, no_model_loading, case_id, arguments,
                                                                 stdin, expected):
    fill = lambda text: text.format(work=paths.work, model=paths.model, readonly=paths.readonly)
    before = snapshot(paths.work)
    result = runner.invoke(main, [fill(a) for a in arguments], input=stdin)
    assert_one_line_error(result, fill(expected))
    assert snapshot(paths.work) == before  # nothing written, nothing changed


# ----------------------------------------------------------------------------- lines
def test_line_separators_inside_a_line_do_not_make_rows(runner, tiny_model_folder, tmp_path):
    source = tmp_path / "u.txt"
    source.write_bytes(b"a\nb\xe2\x80\xa8c\x0bx\x0cy\xc2\x85z\nd\n")  # U+2028, \v, \f, U+0085 inside line 2
    output = tmp_path / "e.npy"
    result = runner.invoke(main, ["embed", "--base", str(tiny_model_folder), "--input", str(source), "--out", str(output)])
    assert result.exit_code == 0, result.output
    vectors = np.load(output)
    assert vectors.shape == (3, 32)
    expected = GEMModel.from_pretrained(tiny_model_folder).encode(["a", "b\u2028c\vx\fy\x85z", "d"])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


@pytest.mark.parametrize("data, lines", [
    (b"a\nb\n", ["a", "b"]),
    (b"a\nb", ["a", "b"]),                      # no final newline
    (b"a\r\nb\r\n", ["a", "b"]),                # CRLF
    (b"a\n\nb\n\n", ["a", "", "b", ""]),        # blank lines are rows
    (b"\n", [""]),
    (b"\xef\xbb\xbfa\nb\n", ["a", "b"]),        # a UTF-8 byte order mark is dropped
    (b"a\rb\n", ["a\rb"]),                      # a lone CR does not end a line
    (b"a\xe2\x80\xa9b\x1cc\n", ["a\u2029b\x1cc"]),
])
def test_decode_lines_is_line_exact(data, lines):
    from gem_adapter.cli.checks import decode_lines

    assert decode_lines(data, "x") == lines


def test_blank_lines_keep_row_i_equal_to_line_i_plus_1(runner, tiny_model_folder, tmp_path):
    source = tmp_path / "t.txt"
    source.write_text("one\n\nthree\n", newline="")
    output = tmp_path / "e.npy"
    result = runner.invoke(main, ["embed", "--base", str(tiny_model_folder), "--input", str(source), "--out", str(output)])
    assert result.exit_code == 0, result.output
    expected = GEMModel.from_pretrained(tiny_model_folder).encode(["one", "", "three"])
    np.testing.assert_allclose(np.load(output), expected, atol=1e-6)


def test_non_utf8_error_names_file_and_line(runner, tmp_path, no_model_loading):
    source = tmp_path / "names.txt"
    source.write_bytes("Zoë\nRenée\n".encode() + "Jos\xe9\n".encode("latin-1"))
    result = runner.invoke(main, ["embed", "--input", str(source), "--out", str(tmp_path / "e.npy")])
    assert result.exit_code == 1
    assert result.output == (f"Error: {source}:3 is not valid UTF-8 (byte 0xe9 at column 4); "
                             "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)\n")


# ----------------------------------------------------------------------------- outputs
def test_force_replaces_an_existing_output_and_the_file_respects_the_umask(runner, tiny_model_folder, tmp_path):
    output = tmp_path / "e.npy"
    output.write_bytes(b"old")
    args = ["embed", "--base", str(tiny_model_folder), "--text", "hi", "--out", str(output)]
    assert runner.invoke(main, args).exit_code == 1 and output.read_bytes() == b"old"
    previous = os.umask(0o027)
    try:
        result = runner.invoke(main, args + ["--force"])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert np.load(output).shape == (1, 32)
    assert output.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_deprecated_spellings_still_work(runner, tiny_model_folder, tmp_path):
    output = tmp_path / "e.npy"
    result = runner.invoke(main, ["embed", "--base", str(tiny_model_folder), "--text", "hi", "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "note: --output is deprecated; use --out" in result.stderr
    assert output.is_file()
    both = runner.invoke(main, ["embed", "--text", "hi", "--output", str(output), "--out", str(tmp_path / "x.npy")])
    assert both.exit_code == 2 and "--out and --output are the same option; give only --out" in both.output
    missing = runner.invoke(main, ["embed", "--text", "hi"])
    assert missing.exit_code == 2 and "Missing option '--out'" in missing.output


def test_eval_accepts_overwrite_as_force(runner, tmp_path, monkeypatch):
    from gem_adapter import evaluation

    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        return {"wall_time_s": 0.0}

    monkeypatch.setattr(evaluation, "run_evaluation", fake_run)
    monkeypatch.setattr(evaluation, "table_rows", lambda summary: (["Model"], []))
    out = tmp_path / "ev"
    out.mkdir()
    (out / "old.json").write_text("{}")
    result = runner.invoke(main, ["eval", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert seen["overwrite"] is True and "note: --overwrite is deprecated; use --force" in result.stderr


# ----------------------------------------------------------------------------- error handling
def test_os_errors_are_one_line_naming_the_path(runner, tiny_model_folder, tmp_path, monkeypatch):
    import gem_adapter.cli.embed as embed_module

    def deny(array, output):
        raise PermissionError(13, "Permission denied", str(output))

    monkeypatch.setattr(embed_module, "write_npy_atomically", deny)
    output = tmp_path / "e.npy"
    result = runner.invoke(main, ["embed", "--base", str(tiny_model_folder), "--text", "hi", "--out", str(output)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output  # progress bars come before it on stderr
    assert result.stderr.splitlines()[-1] == f"Error: permission denied for {output}; check its permissions or choose another path"


def test_unexpected_errors_are_one_internal_error_line_and_debug_shows_the_traceback(runner, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(GEMModel, "from_pretrained", boom)
    args = ["embed", "--text", "hi", "--out", str(tmp_path / "e.npy")]
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert result.output == "Error: internal error: RuntimeError: boom; second line (run with --debug for the traceback)\n"
    debug = runner.invoke(main, ["--debug", *args])
    assert isinstance(debug.exception, RuntimeError) and debug.exit_code == 1
    monkeypatch.setenv("GEM_DEBUG", "1")
    assert isinstance(runner.invoke(main, args).exception, RuntimeError)
    monkeypatch.setenv("GEM_DEBUG", "0")
    assert runner.invoke(main, args).exception.__class__ is SystemExit


def test_debug_prints_a_traceback_in_a_real_process(tmp_path):
    source = tmp_path / "bad.txt"
    source.write_bytes(b"caf\xe9\n")
    command = [sys.executable, "-m", "gem_adapter.cli", "embed", "--input", str(source), "--out", str(tmp_path / "e.npy")]
    env = {**os.environ, "GEM_CACHE": str(tmp_path / "cache")}
    env.pop("GEM_DEBUG", None)
    plain = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == f"Error: {source}:1 is not valid UTF-8 (byte 0xe9 at column 4); convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    debug = subprocess.run(command[:3] + ["--debug"] + command[3:], check=False, capture_output=True, text=True, cwd=ROOT, env=env,
                           timeout=300)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "GEMError" in debug.stderr


# ----------------------------------------------------------------------------- max_length
def test_max_length_zero_and_too_small_are_refused():
    from conftest import tiny_gem

    gem = tiny_gem(k=2)
    with pytest.raises(ValueError, match=r"max_length must be at least 3 \(2 GEM tokens \+ 1 text token\), got 0"):
        gem.encode(["hello"], max_length=0)
    with pytest.raises(ValueError, match="max_length must be at least 3"):
        gem.encode(["hello"], max_length=2)
    assert gem.encode(["hello"], max_length=3).shape == (1, 32)
    with pytest.raises(ValueError, match=r"max_length 6 leaves no room for the text after 2 GEM tokens, 0 leading "
                                         r"special tokens and 4 template tokens; max_length must be at least 7"):
        gem.encode(["hello"], max_length=6, template="ab {text}c")
    assert gem.encode(["hello"], max_length=7, template="ab {text}c").shape == (1, 32)
    with pytest.raises(TypeError, match="max_length must be an int or None"):
        gem.encode(["hello"], max_length=2.5)
    assert gem.encode(["hello"], max_length=np.int64(8)).shape == (1, 32)


def test_cli_max_length_below_the_minimum_is_a_usage_error(runner, tmp_path, no_model_loading):
    result = runner.invoke(main, ["embed", "--text", "hi", "--out", str(tmp_path / "e.npy"), "--max-length", "0"])
    assert result.exit_code == 2 and "Invalid value for '--max-length': 0 is not in the range x>=2" in result.output
    assert not (tmp_path / "e.npy").exists()


# ----------------------------------------------------------------------------- --allow-pickle
def test_allow_pickle_reaches_the_library(runner, tmp_path, monkeypatch):
    from gem_adapter import adapters, evaluation

    seen = {}

    def fake_from_pretrained(base, adapter=None, *, load_in_4bit=False, allow_pickle=False, dtype="auto"):
        seen["embed"] = allow_pickle
        raise RuntimeError("stop here")

    def fake_inspect(path, *, allow_pickle=False):
        seen["inspect"] = allow_pickle
        return {"kind": "x"}

    def fake_run(*, allow_pickle=False, **kwargs):
        seen["eval"] = allow_pickle
        return {"wall_time_s": 0.0}

    monkeypatch.setattr(GEMModel, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(adapters, "inspect", fake_inspect)
    monkeypatch.setattr(adapters, "format_inspection", lambda info: "x")
    monkeypatch.setattr(evaluation, "run_evaluation", fake_run)
    monkeypatch.setattr(evaluation, "table_rows", lambda summary: (["Model"], []))
    runner.invoke(main, ["embed", "--text", "a", "--out", str(tmp_path / "e.npy"), "--allow-pickle"])
    runner.invoke(main, ["inspect", str(tmp_path), "--allow-pickle"])
    runner.invoke(main, ["eval", "--out", str(tmp_path / "ev"), "--allow-pickle"])
    assert seen == {"embed": True, "inspect": True, "eval": True}
    runner.invoke(main, ["embed", "--text", "a", "--out", str(tmp_path / "e.npy")])
    runner.invoke(main, ["inspect", str(tmp_path)])
    runner.invoke(main, ["eval", "--out", str(tmp_path / "ev2")])
    assert seen == {"embed": False, "inspect": False, "eval": False}


# ----------------------------------------------------------------------------- help
COMMANDS = ["embed", "train", "eval", "merge", "stack", "swap", "inspect", "info"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_documents_every_option_without_mid_word_wrapping(runner, name):
    command = main.commands[name]
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.name != "help":
            assert param.help, f"gem {name} {param.opts[0]} has no help"
            has_default = param.default not in (None, False, ()) and not isinstance(param.default, type(click.core.UNSET)) \
                if hasattr(click.core, "UNSET") else param.default not in (None, False, ())
            if has_default and not param.is_flag and not param.required:
                assert param.show_default or "[default:" in param.help, f"gem {name} {param.opts[0]}: default not shown"
    result = runner.invoke(main, [name, "--help"], terminal_width=80)
    assert result.exit_code == 0
    for line in result.output.splitlines():
        assert not re.search(r"[A-Za-z]-$", line), f"gem {name} --help breaks a word: {line!r}"


def test_train_help_lists_the_recipes():
    from gem_adapter.training import RECIPE_DIR

    result = CliRunner().invoke(main, ["train", "--help"])
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert names and all(name in result.output for name in names)


def test_eval_help_lists_the_library_task_and_baseline_names():
    from gem_adapter.cli.evaluate import BASELINE_NAMES, TASK_NAMES
    from gem_adapter.evaluation.runner import ALL_TASKS, BASELINES

    assert TASK_NAMES == ALL_TASKS and BASELINE_NAMES == BASELINES
    result = CliRunner().invoke(main, ["eval", "--help"])
    assert all(name in result.output for name in ALL_TASKS + BASELINES)


def test_one_vocabulary_across_commands():
    for name in ("embed", "train", "eval", "merge", "stack", "swap"):
        visible = {opt for p in main.commands[name].params if isinstance(p, click.Option) and not p.hidden for opt in p.opts}
        assert "--out" in visible and "--force" in visible, name
        assert not visible & {"--output", "--overwrite"}, name
