"""Imports go one way: no cycle among the loading/saving core modules, nor inside ``torchdiffusion.training``.

Every ``import`` statement counts, at module level or inside a function (imports under ``if TYPE_CHECKING:``
are for type checkers only and are skipped). ``import torchdiffusion`` reaches the package's lazy name table,
which imports nothing by itself, so it is a leaf here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torchdiffusion

PACKAGE_ROOT = Path(torchdiffusion.__file__).parent
CORE = ("configuration", "hub", "weights", "models.modeling", "pipelines.pipeline")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, known: set[str]) -> set[str]:
    """Package modules (names relative to ``torchdiffusion``) that the file at ``path`` imports anywhere."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        if target in known:
            found.add(target)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("torchdiffusion."):
                        add(alias.name.removeprefix("torchdiffusion."))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (child.level - 1)] if child.level > 1 else base
                    target = ".".join(base + ([child.module] if child.module else []))
                elif child.module and child.module.startswith("torchdiffusion."):
                    target = child.module.removeprefix("torchdiffusion.")
                elif child.module == "torchdiffusion":
                    target = ""
                else:
                    continue
                add(target)
                for alias in child.names:  # `from . import checkpoint` imports a module
                    add(f"{target}.{alias.name}" if target else alias.name)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    found.discard("")  # the package's lazy name table
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (module level and function level)."""
    files = sorted(PACKAGE_ROOT.rglob("*.py"))
    known = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, known) for p in files}


def _cycle(graph: dict[str, set[str]], nodes: set[str]) -> list[str] | None:
    """A cycle of the graph restricted to ``nodes`` (as a list of modules), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, set()) & nodes):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(nodes):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "training.trainer" in graph["training.recipes"]  # from .trainer import Trainer, inside train()
    assert "pipelines.generate" in graph["training.tasks"]  # inside PixelTask.sample_grid
    assert "training.checkpoint" in graph["training.trainer"]  # from . import checkpoint as ckpt


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}, {"a", "b", "c"}) is None


def test_no_import_cycle_among_the_core_modules():
    graph = import_graph()
    assert _cycle(graph, set(CORE)) is None


def test_core_modules_do_not_reach_back_through_other_modules():
    """Not even through a module outside the five: none of them imports, however indirectly, one that imports it."""
    graph = import_graph()
    for module in CORE:
        assert module not in _reaches(graph, module), module


def test_no_import_cycle_inside_training():
    graph = import_graph()
    # the package __init__ (which imports its modules to re-export names) is left out: `from . import checkpoint`
    # names a module, not the package's exports
    training = {m for m in graph if m.startswith("training.")}
    assert _cycle(graph, training) is None


def _function_imports(module: str, function: str, known: set[str]) -> set[str]:
    """Package modules imported inside ``function`` of ``module``."""
    path = PACKAGE_ROOT.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    package = module.rpartition(".")[0].split(".") if "." in module else []
    found = set()
    for child in ast.walk(node):
        if isinstance(child, ast.ImportFrom) and child.level and child.module:
            base = package[: len(package) - (child.level - 1)] if child.level > 1 else package
            found.add(".".join(base + [child.module]))
    return found & known


def test_generate_does_not_import_training():
    """``torchdiffusion generate`` (and the sample grids it shares with the Trainer) sample without training/."""
    graph = import_graph()
    start = _function_imports("cli", "main", set(graph)) | _function_imports("cli", "_save_grid", set(graph))
    assert "pipelines.generate" in start
    start = {"pipelines.generate"} | _function_imports("cli", "_save_grid", set(graph))
    for function in ("generate_from_pretrained", "use_lcm_lora", "lcm_lora_for", "is_lcm_lora"):  # its lazy imports
        start |= _function_imports("pipelines.generate", function, set(graph))
    assert {"pipelines.pipeline", "schedulers.lcm", "pretrained"} <= start
    reached = set(start)
    for module in start:
        reached |= _reaches(graph, module)
    assert not [m for m in reached if m.split(".")[0] == "training"]
