"""Data flows one way (issue 19): every module of ``sane`` imports only from its own layer or
lower ones, and no modules import each other in a cycle.

The check reads the source with :mod:`ast` (nothing is imported): every ``import sane.x`` and
``from sane.x import ...``, at module level or inside a function, counts. Imports under
``if TYPE_CHECKING:`` never run, so the layer order ignores them; they still make two modules
depend on each other, so the cycle check counts them.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module belongs to the first layer with a prefix that names it or a package
# above it; top-level helper modules not named here (sane.errors, sane.atomic, ...) are "base".
LAYERS = [
    ("base", ()),
    ("data", ("sane.data",)),
    ("zoo", ("sane.zoo",)),
    ("weights", ("sane.weights",)),
    ("model", ("sane.model",)),
    ("downstream", ("sane.downstream",)),
    ("run", ("sane.run",)),
    ("pipeline", ("sane.pipeline",)),
    ("train", ("sane.train",)),
    ("stages", ("sane.stages",)),
    ("reproduce", ("sane.reproduce",)),
    ("cli", ("sane.commands", "sane.cli", "sane.__main__", "sane")),
]
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def _layer(module: str) -> str:
    """The layer of a dotted module name under ``sane``."""
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if prefix == "sane":
                if module == "sane":
                    return name
            elif module == prefix or module.startswith(prefix + "."):
                return name
    return "base"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _sane_imports(tree: ast.AST, module: str, is_package: bool, *,
                  type_checking: bool = False) -> set[str]:
    """The ``sane`` modules a module imports, wherever the import statement stands; those
    under ``if TYPE_CHECKING:`` only with ``type_checking``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names
                         if alias.name == "sane" or alias.name.startswith("sane."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target == "sane" or target.startswith("sane."):
                # ``from sane.zoo import storage`` imports the module sane.zoo.storage
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if _is_module(sub) else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _import_graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    """Every module of ``sane`` -> the ``sane`` modules it imports."""
    graph = {}
    for path in sorted((SRC / "sane").rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = _sane_imports(tree, module, path.name == "__init__.py",
                                      type_checking=type_checking)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in graph:
                continue
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def test_imports_flow_one_way():
    upward = []
    for module, targets in sorted(_import_graph().items()):
        own = _layer(module)
        for target in sorted(targets):
            theirs = _layer(target)
            if RANK[theirs] > RANK[own]:
                upward.append(f"{module} -> {target} ({own} -> {theirs})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_tokenizer_takes_state_dicts_not_a_zoo():
    # fitting on a zoo is sane.weights.zoo_tokenizer's; the tokenizer knows state dicts only
    assert not {m for m in _import_graph(type_checking=True)["sane.weights.tokenizer"]
                if _layer(m) == "zoo"}


def test_no_import_cycles():
    # a package counts as the module of its __init__: ``from sane.zoo import Zoo`` inside
    # sane.zoo.storage would be a cycle through sane/zoo/__init__.py
    cycles = _cycles(_import_graph(type_checking=True))
    assert not cycles, "modules importing each other:\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles)


def test_the_check_sees_function_level_imports_and_skips_type_checking():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import sane.zoo\n"
        "if TYPE_CHECKING:\n"
        "    from sane.pipeline import Pipeline\n"
        "def f():\n"
        "    from sane.stages.probe import probe\n"
        "    from .halo import chunks\n"
    )
    tree = ast.parse(source)
    found = _sane_imports(tree, "sane.model.sane", is_package=False)
    assert found == {"sane.zoo", "sane.stages.probe", "sane.model.halo"}
    assert _sane_imports(tree, "sane.model.sane", is_package=False,
                         type_checking=True) == found | {"sane.pipeline"}
    assert _layer("sane.errors") == "base" and _layer("sane") == "cli"
    assert _layer("sane.runner") == "base" and _layer("sane.run") == "run"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
