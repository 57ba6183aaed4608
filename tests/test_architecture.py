"""The rules of docs/ARCHITECTURE.md, read from the code: every import statement in ea_core
(inside functions too: they hide a cycle, they do not remove it), resolved to ea_core's modules.

No import cycles; each module imports only its own layer and the layers below; the routing maths
and the data never reach the small models or the LM, and the small models never reach the LM.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ea_core"
ROOT = PACKAGE.name

#: Bottom to top. A module may import its own layer and the layers below. A name covers that
#: module and, for a package, every module in it (the root package ``ea_core`` only itself).
LAYERS = (
    ("foundations", ("ea_core", "ea_core.errors", "ea_core.events", "ea_core.metrics", "ea_core.process",
                     "ea_core.resources", "ea_core.runfolder", "ea_core.archives", "ea_core.quotas", "ea_core.logins",
                     "ea_core.rouge")),
    ("data", ("ea_core.data", "ea_core.image_data", "ea_core.imaging", "ea_core.splits")),
    ("small models and LM", ("ea_core.models", "ea_core.llm")),
    ("routing maths", ("ea_core.router", "ea_core.calibration", "ea_core.tuning", "ea_core.operating_point")),
    ("mining", ("ea_core.mining", "ea_core.learned_router")),
    ("run state", ("ea_core.runconfig", "ea_core.runstate", "ea_core.summary_config")),
    ("engine and services", ("ea_core.pipeline", "ea_core.report", "ea_core.bundle", "ea_core.explore",
                             "ea_core.system", "ea_core.inputs", "ea_core.monitor", "ea_core.findings",
                             "ea_core.cascade", "ea_core.batch_predict", "ea_core.ray_predict", "ea_core.plan",
                             "ea_core.summarization", "ea_core.summary_bundle", "ea_core.summary_run",
                             "ea_core.summary_explore")),
    ("runs and entry points", ("ea_core.runs", "ea_core.runqueue", "ea_core.opened", "ea_core.uploads",
                               "ea_core.worker", "ea_core.cli", "ea_core.__main__", "ea_core.serve",
                               "ea_core.summarize_cli", "ea_core.summary_opened")),
)

#: (modules, what they must never reach, directly or through other ea_core modules).
NEVER_REACH = (
    (("ea_core.router", "ea_core.calibration", "ea_core.tuning", "ea_core.operating_point"),
     ("ea_core.models", "ea_core.llm")),
    (("ea_core.data", "ea_core.image_data", "ea_core.imaging", "ea_core.splits"), ("ea_core.models", "ea_core.llm")),
    (("ea_core.models",), ("ea_core.llm",)),
)

#: Top-level packages no ea_core module may import: the UI is a client of the library.
UI_PACKAGES = ("gradio", "gradio_client", "pages", "app")


def covers(name: str, module: str) -> bool:
    return module == name or (name != ROOT and module.startswith(name + "."))


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    """Every module of ea_core by dotted name, found on disk (a new module or package counts at once)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """(dotted name, line) of everything `module` imports, relative imports resolved; for
    ``from X import y`` both ``X.y`` (y may be a module) and ``X``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names] + [(base, node.lineno)]
    return names


def resolve(name: str) -> str | None:
    """The ea_core module a dotted name lives in (None outside ea_core)."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@lru_cache(maxsize=1)
def graph() -> dict[str, dict[str, int]]:
    """module -> {ea_core module it imports: first line}. A module importing its own package is not
    an edge: Python runs the package's __init__ first, and the cycle tool counts the same way."""
    edges: dict[str, dict[str, int]] = {}
    for module, path in modules().items():
        edges[module] = {}
        for name, line in imported_names(module, path):
            target = resolve(name)
            if target and target != module and not module.startswith(target + "."):
                edges[module].setdefault(target, line)
    return edges


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph()[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph()):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    matches = [(len(name), i) for i, (_, names) in enumerate(LAYERS) for name in names if covers(name, module)]
    return max(matches)[1] if matches else None


def path_to(start: str, targets: tuple[str, ...]) -> list[str] | None:
    """An import chain from `start` to a module under one of `targets` (None if there is none)."""
    seen, todo = {start}, [[start]]
    while todo:
        chain = todo.pop(0)
        for nxt in sorted(graph()[chain[-1]]):
            if any(covers(t, nxt) for t in targets):
                return chain + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                todo.append(chain + [nxt])
    return None


def where(module: str, target: str) -> str:
    return f"{modules()[module].relative_to(PACKAGE.parent)}:{graph()[module][target]}"


def test_the_walk_sees_every_module_and_imports_inside_functions():
    assert {"ea_core", "ea_core.pipeline", "ea_core.runstate", "ea_core.llm.base", "ea_core.models.base"} <= set(modules())
    # pipeline imports the report at the top; the CLI imports the runs module inside a function.
    assert "ea_core.report" in graph()["ea_core.pipeline"]
    assert "ea_core.runs" in graph()["ea_core.cli"]


def test_no_import_cycles_in_ea_core():
    found = cycles()
    described = []
    for component in found:
        inner = [f"{m} -> {t} ({where(m, t)})" for m in component for t in sorted(graph()[m]) if t in component]
        described.append(" <-> ".join(component) + ":\n    " + "\n    ".join(inner))
    assert not found, "import cycles in ea_core:\n" + "\n".join(described)


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if layer_of(m) is None)
    assert not missing, (f"modules in no layer: {missing}; add each to LAYERS here and to docs/ARCHITECTURE.md")


def test_each_module_imports_only_its_own_layer_and_below():
    wrong = []
    for module, targets in sorted(graph().items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}) at "
                             f"{where(module, target)}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_routing_maths_and_data_never_reach_models_or_the_lm_and_models_never_reach_the_lm():
    wrong = []
    for sources, banned in NEVER_REACH:
        for module in sorted(m for m in modules() if any(covers(s, m) for s in sources)):
            chain = path_to(module, banned)
            if chain:
                wrong.append(" -> ".join(chain) + f" (first step at {where(chain[0], chain[1])})")
    assert not wrong, "forbidden imports:\n" + "\n".join(wrong)


def test_ea_core_never_imports_the_ui():
    wrong = sorted({f"{modules()[m].relative_to(PACKAGE.parent)}:{line} imports {name.partition('.')[0]}"
             for m, path in sorted(modules().items()) for name, line in imported_names(m, path)
             if name.partition(".")[0] in UI_PACKAGES})
    assert not wrong, "ea_core must not import the UI:\n" + "\n".join(wrong)
