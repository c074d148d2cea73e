"""MkDocs hooks: the reference sections generated from the code, and the result plots.

A page asks for a generated section with a marker line, ``<!-- gen:NAME -->``, replaced at build
time by ``SECTIONS[NAME]()``:

* ``recipe-fields``: the GEM fields of ``GEMTrainingConfig``, read from the dataclass (name, type,
  default, its ``help`` metadata), so a field added to the trainer appears here without an edit;
* ``recipes``: every ``recipes/*.yaml`` with its first comment line and main settings;
* ``cli``: ``gem --help`` and every ``gem COMMAND --help``, from the click group;
* ``module-map``, ``dependency-tiers``: every module with its docstring's first paragraph, and the
  import tiers ``tests/test_layout.py`` enforces;
* ``server-routes``: the routes ``serving/app.py`` registers (read from its decorators, without
  loading a model) and the fields of each route's request body (``serving/schemas.py``).

An unknown marker, or a generator that fails, fails the build. The plots the tools draw
(``tools/results/**/*.png``) are published under ``results/files/`` as they are, not copied into
``docs/``, so a page shows the plot of the result file it cites. The markdown extension below turns
a docstring's ``>>>`` doctest into a code block (plain Markdown would read it as nested quotes).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
import typing
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tools" / "results"
RESULT_PLOTS_URI = "results/files"
MARKER = re.compile(r"^<!-- gen:([a-z-]+) -->$", re.MULTILINE)


# ----------------------------------------------------------------------------- recipe fields
def _type_name(annotation: typing.Any) -> str:
    if isinstance(annotation, str):
        text = annotation
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


def _cell(text: str) -> str:
    """Text for a table cell: one line, its pipes escaped."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """A code span for a table cell (a pipe inside a code span does not split the cell)."""
    return "`" + str(text).replace("\n", " ") + "`"


def gem_training_fields() -> list[dataclasses.Field]:
    """The fields ``GEMTrainingConfig`` adds to TRL's ``SFTConfig``, in the order they are declared."""
    from trl import SFTConfig

    from gem_adapter.training.trainer import GEMTrainingConfig

    inherited = {item.name for item in dataclasses.fields(SFTConfig)}
    return [item for item in dataclasses.fields(GEMTrainingConfig) if item.name not in inherited]


def recipe_fields_section() -> str:
    rows = ["| field | type | default | what it does |", "|---|---|---|---|"]
    for item in gem_training_fields():
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()  # type: ignore[misc]
        help_text = item.metadata.get("help", "")
        if not help_text:
            raise ValueError(f"GEMTrainingConfig.{item.name} has no help text; add metadata={{'help': ...}}")
        rows.append(f"| `{item.name}` | {_code(_type_name(item.type))} | {_code(repr(default))} | {_cell(help_text)} |")
    return "\n".join(rows)


def _recipe_summary(text: str) -> str:
    """The recipe's opening comment lines, up to the first that ends a sentence (or a colon)."""
    words = []
    for line in text.splitlines():
        comment = line.removeprefix("#").strip()
        if not line.startswith("#") or not comment:
            break
        words.append(comment)
        if comment.endswith((".", ":")):
            break
    return " ".join(words).rstrip(":")


def recipes_section() -> str:
    rows = ["| recipe | what it is | base | scope | k | steps | 4-bit |", "|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}
        first = _recipe_summary(text)
        rows.append(
            f"| `{path.stem}` | {_cell(first)} | `{values.get('base_model', 'smollm2-135m')}` "
            f"| {values.get('adapter_scope', 'all')} | {values.get('num_gem_tokens', 1)} "
            f"| {values.get('max_steps', '')} | {'yes' if values.get('load_in_4bit') else 'no'} |"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------------- server routes
@dataclasses.dataclass
class Route:
    method: str
    path: str
    handler: str
    body: str | None  # the request schema's class name
    doc: str
    condition: str | None  # the setting the route depends on, e.g. "allow_adapter_updates"
    line: int


def server_routes(source: Path = ROOT / "gem_adapter" / "serving" / "app.py") -> list[Route]:
    """The routes ``create_app`` registers with ``@app.get`` / ``@app.post``, read from the source."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    routes: list[Route] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for decorator in node.decorator_list:
            if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                    and isinstance(decorator.func.value, ast.Name) and decorator.func.value.id == "app"
                    and decorator.func.attr in ("get", "post", "put", "delete", "patch")):
                continue
            body = next((ast.unparse(a.annotation) for a in node.args.args if a.arg == "body" and a.annotation), None)
            routes.append(Route(decorator.func.attr.upper(), decorator.args[0].value, node.name, body,  # type: ignore[attr-defined]
                                ast.get_docstring(node) or "", _condition(node, parents), node.lineno))
    return sorted(routes, key=lambda route: route.line)


def _condition(node: ast.AST, parents: dict) -> str | None:
    """The test of the nearest ``if`` a route is registered under (``config.`` left out)."""
    child, parent = node, parents.get(node)
    while parent is not None and not isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if isinstance(parent, ast.If):
            test = ast.unparse(parent.test).removeprefix("config.")
            return test if child in parent.body else f"not {test}"
        child, parent = parent, parents.get(parent)
    return None


def _schema_rows(name: str) -> list[str]:
    from gem_adapter.serving import schemas

    model = getattr(schemas, name)
    rows = []
    for field_name, info in model.model_fields.items():
        annotation = _type_name(info.annotation)
        if info.is_required():
            default = "required"
        else:
            default = _code(repr(info.default))
        constraints = ", ".join(str(m) for m in info.metadata)
        note = "; ".join(part for part in (info.description or "", constraints) if part)
        rows.append(f"| `{field_name}` | {_code(annotation)} | {default} | {_cell(note)} |")
    return rows


def server_routes_section() -> str:
    routes = server_routes()
    lines = ["| method | route | request body | served when |", "|---|---|---|---|"]
    for route in routes:
        body = f"[`{route.body}`](#{route.body.lower()})" if route.body else ""
        lines.append(f"| {route.method} | `{route.path}` | {body} | {route.condition or 'always'} |")
    for route in routes:
        lines += ["", f"### `{route.method} {route.path}`", ""]
        if route.doc:
            lines += [" ".join(route.doc.split()), ""]
        if route.body:
            lines += [f"#### Request body: `{route.body}` {{ #{route.body.lower()} }}", "",
                      "| field | type | default | notes |", "|---|---|---|---|", *_schema_rows(route.body)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
HELP_WIDTH = 100


def cli_section() -> str:
    """``gem --help`` and ``gem COMMAND --help``, as click prints them, one heading per command.

    click's own formatter keeps the ``\\b`` example blocks and each command's epilog (``gem train``
    lists the recipes) exactly as a user sees them in a terminal.
    """
    import click

    from gem_adapter.cli.main import main

    root = click.Context(main, info_name="gem", terminal_width=HELP_WIDTH, max_content_width=HELP_WIDTH)
    parts = ["## gem", "", "```text", main.get_help(root), "```"]
    for name in sorted(main.list_commands(root)):
        command = main.get_command(root, name)
        context = click.Context(command, info_name=name, parent=root,
                                terminal_width=HELP_WIDTH, max_content_width=HELP_WIDTH)
        parts += ["", f"## gem {name}", "", "```text", command.get_help(context), "```"]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- layout
def _first_sentence(doc: str) -> str:
    first = " ".join(doc.strip().split("\n\n", 1)[0].split())
    return first


def module_map_section(package: Path = ROOT / "gem_adapter") -> str:
    """Every module of the package with the first paragraph of its docstring."""
    rows = ["| module | what it is |", "|---|---|"]
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).with_suffix("")
        parts = list(relative.parts[:-1]) if relative.name == "__init__" else list(relative.parts)
        if relative.name == "__main__":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        rows.append(f"| `{'.'.join(parts)}` | {_cell(_first_sentence(doc))} |")
    return "\n".join(rows)


def dependency_tiers_section(layout_test: Path = ROOT / "tests" / "test_layout.py") -> str:
    """The import tiers ``tests/test_layout.py`` enforces, lowest first, read from its constants."""
    values: dict[str, typing.Any] = {}
    for node in ast.parse(layout_test.read_text(encoding="utf-8")).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        for target in targets:
            if isinstance(target, ast.Name) and target.id in ("CORE_TIERS", "WINGS", "WING_TIER", "CLI_TIER"):
                values[target.id] = ast.literal_eval(node.value)
    tiers: dict[int, list[str]] = {}
    for module, tier in values["CORE_TIERS"].items():
        tiers.setdefault(tier, []).append(f"`{module}`")
    tiers.setdefault(values["WING_TIER"], []).extend(f"`{wing}/`" for wing in values["WINGS"])
    tiers.setdefault(values["CLI_TIER"], []).append("`cli/`")
    rows = ["| tier | modules (may import only from lower tiers, or within their own wing) |", "|---|---|"]
    rows += [f"| {tier} | {', '.join(names)} |" for tier, names in sorted(tiers.items())]
    return "\n".join(rows)


SECTIONS = {
    "recipe-fields": recipe_fields_section,
    "recipes": recipes_section,
    "server-routes": server_routes_section,
    "module-map": module_map_section,
    "cli": cli_section,
    "dependency-tiers": dependency_tiers_section,
}


# ----------------------------------------------------------------------------- doctest blocks
def doctest_blocks(lines: list[str]) -> list[str]:
    """``>>>`` lines and the output after them, up to a blank line, as a ``pycon`` code block."""
    out: list[str] = []
    in_block = in_fence = False
    for line in lines:
        if line.lstrip().startswith(("```", "~~~")) and not in_block:
            in_fence = not in_fence
        if not in_block and not in_fence and line.lstrip().startswith(">>> "):
            out += ["", "```pycon"]
            in_block = True
        elif in_block and not line.strip():
            out += ["```", ""]
            in_block = False
        out.append(line)
    if in_block:
        out.append("```")
    return out


def doctest_extension():
    """A Markdown extension running ``doctest_blocks`` before fenced code is read (priority 25)."""
    from markdown import Extension
    from markdown.preprocessors import Preprocessor

    class DoctestBlocks(Preprocessor):
        def run(self, lines: list[str]) -> list[str]:
            return doctest_blocks(lines)

    class DoctestExtension(Extension):
        def extendMarkdown(self, md) -> None:  # Markdown's name for it
            md.preprocessors.register(DoctestBlocks(md), "gem_doctest_blocks", 40)

    return DoctestExtension()


# ----------------------------------------------------------------------------- mkdocs events
def on_config(config):
    config.markdown_extensions.append(doctest_extension())
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    for plot in sorted(RESULTS.rglob("*.png")):
        uri = f"{RESULT_PLOTS_URI}/{plot.relative_to(RESULTS).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    def generate(match: re.Match) -> str:
        if str(ROOT) not in sys.path:  # document this working tree, as mkdocstrings does (paths: [.])
            sys.path.insert(0, str(ROOT))
        name = match.group(1)
        if name not in SECTIONS:
            raise ValueError(f"{page.file.src_uri}: unknown generated section {name!r}; known: {sorted(SECTIONS)}")
        return SECTIONS[name]()

    return MARKER.sub(generate, markdown)
