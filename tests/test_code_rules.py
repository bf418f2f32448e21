"""The package's structural rules, read from its source with ``ast`` (no TensorFlow, well under a second).

- The import graph between the package's own modules has no loop (imports under ``if TYPE_CHECKING:``
  never run and make no edge).
- A module imports another of the package inside a function only where that keeps TensorFlow out of a
  command-line or config path; :data:`LOCAL_IMPORTS_ALLOWED` lists those modules with the reason.
- Every public function and method of ``runs/``, ``losses/``, ``models/``, ``export.py`` and ``gallery.py``
  is fully annotated (parameters and return).
- Every ``noqa`` says why, after its codes.
- No module of ``tf_langdml/`` is over :data:`MODULE_LINES_MAX` lines except those in :data:`LONG_MODULES`.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tf_langdml"

# module -> why its function-local imports of the package stay function-local
LOCAL_IMPORTS_ALLOWED = {
    "tf_langdml.cli": "`tf-langdml --help` and config errors answer without importing TensorFlow (tests/test_cli.py)",
    "tf_langdml.demo": "`tf-langdml demo` checks its three configs (demo_configs) before TensorFlow loads",
}
MODULE_LINES_MAX = 450
# module -> why one concept needs more lines
LONG_MODULES = {
    "tf_langdml.runs.schema": "the whole config: every section's dataclass, its ranges and the YAML reader",
    "tf_langdml.data.preprocessing": "one decoder for every format and path: sizes, alpha, GIF frames, crops",
    "tf_langdml.models.torch_legacy": "the restricted reader of legacy torch pickles, every opcode it allows",
    "tf_langdml.cli": "every sub-command's arguments and its one-line errors",
}
ANNOTATED = ("tf_langdml.runs", "tf_langdml.losses", "tf_langdml.models", "tf_langdml.export", "tf_langdml.gallery")


def _modules():
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _is_package(name):
    return MODULES[name].name == "__init__.py"


def _resolve(module, node):
    """The package modules a ``from ... import`` or ``import`` statement in ``module`` loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if _is_package(module) else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    # ``from package import submodule`` needs only the submodule (the package is already loading or loaded);
    # a name defined by the package itself needs the package.
    needs_package = base in MODULES and base != module and len(submodules) < len(node.names)
    return [base] * needs_package + submodules


def _imports(module):
    """``[(imported module, line, inside a function)]`` of one module."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # never runs: no edge
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((target, child.lineno, in_function) for target in _resolve(module, child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _cycles(graph):
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_import_graph_has_no_loop():
    graph = {module: sorted({target for target, _, _ in _imports(module)}) for module in MODULES}
    assert _cycles(graph) == []


def test_the_loop_finder_finds_a_loop():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["a"]}) == [["a"]]
    assert _cycles({"a": ["b"], "b": []}) == []


def test_function_local_imports_only_where_they_keep_tensorflow_out():
    local = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        if module not in LOCAL_IMPORTS_ALLOWED
        for target, line, in_function in _imports(module)
        if in_function
    ]
    assert local == [], "import these at the top of the module (or list the module in LOCAL_IMPORTS_ALLOWED with why)"


def test_the_allowed_modules_still_need_their_exception():
    for module in LOCAL_IMPORTS_ALLOWED:
        assert any(in_function for _, _, in_function in _imports(module)), f"{module} has no local import left"


def _public_functions(module):
    tree = ast.parse(MODULES[module].read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    not item.name.startswith("_") or item.name == "__init__"
                ):
                    yield f"{node.name}.{item.name}", item, True


def _missing_annotations(function, method):
    arguments = function.args
    positional = [*arguments.posonlyargs, *arguments.args]
    decorators = {getattr(d, "id", getattr(d, "attr", None)) for d in function.decorator_list}
    if method and "staticmethod" not in decorators:
        positional = positional[1:]  # self / cls
    named = [*positional, *arguments.kwonlyargs, *filter(None, [arguments.vararg, arguments.kwarg])]
    missing = [argument.arg for argument in named if argument.annotation is None]
    if function.returns is None and function.name != "__init__":
        missing.append("return")
    return missing


@pytest.mark.parametrize("package", ANNOTATED)
def test_public_functions_are_annotated(package):
    unannotated = [
        f"{module}.{name}: {', '.join(missing)}"
        for module in MODULES
        if module == package or module.startswith(package + ".")
        for name, function, method in _public_functions(module)
        if (missing := _missing_annotations(function, method))
    ]
    assert unannotated == []


def test_the_annotation_check_sees_a_missing_hint():
    tree = ast.parse("def f(a, b: int, *rest, key=1) -> int: ...\nclass C:\n    def m(self, x: int): ...")
    function, cls = tree.body
    assert _missing_annotations(function, False) == ["a", "key", "rest"]
    assert _missing_annotations(cls.body[0], True) == ["return"]


NOQA = re.compile(r"#\s*noqa\b(?P<codes>:?\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?(?P<why>.*)$")


def _noqas_without_reason(text):
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        match = NOQA.search(line)
        if match and (not match["codes"] or not re.search(r"[a-z]{3}", match["why"])):
            found.append(number)
    return found


def test_every_noqa_names_its_codes_and_says_why():
    paths = [
        path
        for folder in ("tf_langdml", "tests", "benchmarks", "examples", "tools")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    bare = [f"{path.relative_to(ROOT)}:{line}" for path in paths for line in _noqas_without_reason(path.read_text())]
    assert bare == []


def test_the_noqa_check_refuses_a_bare_noqa():
    noqa = "# no" + "qa"  # split, so that this file's own line is not a bare one
    text = f"import x  {noqa}\nimport y  {noqa}: F401\nimport z  {noqa}: F401  (registers the ops)\n"
    assert _noqas_without_reason(text) == [1, 2]


def test_no_module_is_over_the_line_limit_unless_one_concept_needs_it():
    long = {
        module: len(path.read_text().splitlines())
        for module, path in MODULES.items()
        if len(path.read_text().splitlines()) > MODULE_LINES_MAX
    }
    assert sorted(set(long) - set(LONG_MODULES)) == [], long
    assert sorted(set(LONG_MODULES) - set(long)) == [], "no longer long: remove it from LONG_MODULES"
