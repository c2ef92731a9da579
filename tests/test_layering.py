"""The modules' imports show the data flow: no import cycles, and the lower layers never reach up
(config/ imports none of the later layers; data/ and infer/ do not import train/ or ship/; train/
does not import ship/; hf.py and modelref.py import none of the layers above).

Every `import` counts, also those inside functions: a lazy import still ties two modules together.
"""
import ast
from pathlib import Path

import tunesmith

PACKAGE = Path(tunesmith.__file__).parent
# module prefix -> the tunesmith packages it must not import
FORBIDDEN = {
    "tunesmith.hf": ("tunesmith.data", "tunesmith.train", "tunesmith.infer", "tunesmith.ship", "tunesmith.config"),
    "tunesmith.modelref": ("tunesmith.data", "tunesmith.train", "tunesmith.infer", "tunesmith.ship", "tunesmith.config",
                           "tunesmith.hf"),
    "tunesmith.data": ("tunesmith.train", "tunesmith.infer", "tunesmith.ship"),
    "tunesmith.infer": ("tunesmith.train", "tunesmith.ship"),
    "tunesmith.train": ("tunesmith.ship",),  # cards and exports come after training: cli.py calls them
    "tunesmith.config": ("tunesmith.data", "tunesmith.train", "tunesmith.infer", "tunesmith.ship"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the tunesmith modules it imports (a `from pkg import name` counts as pkg.name when
    that is a module, else as pkg)."""
    files = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "tunesmith"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tunesmith":
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, deps in sorted(graph.items()):
        for prefix, forbidden in FORBIDDEN.items():
            if module == prefix or module.startswith(prefix + "."):
                out += [f"{module} imports {d}" for d in sorted(deps) if any(d == f or d.startswith(f + ".") for f in forbidden)]
    return out


def test_the_checks_find_a_cycle_and_a_reach_up():
    """The checks themselves can fail: a planted cycle and a planted upward import are reported."""
    planted = {"tunesmith.infer.a": {"tunesmith.infer.b"}, "tunesmith.infer.b": {"tunesmith.train.c"},
               "tunesmith.train.c": {"tunesmith.infer.a"}, "tunesmith.hf": set()}
    assert cycles(planted) == [["tunesmith.infer.a", "tunesmith.infer.b", "tunesmith.train.c"]]
    assert layer_violations(planted) == ["tunesmith.infer.b imports tunesmith.train.c"]


def test_the_graph_sees_lazy_and_from_imports():
    graph = import_graph()
    assert "tunesmith.data.render" in graph["tunesmith.infer.generate"]  # top-level from-import
    assert "tunesmith.infer.merge" in graph["tunesmith.train.artifacts"]  # import inside a function
    assert "tunesmith.train.distributed" in graph["tunesmith.cli"]  # `from tunesmith.train import distributed`


def test_no_import_cycles_among_tunesmith_modules():
    assert cycles(import_graph()) == []


def test_lower_layers_do_not_import_upper_ones():
    assert layer_violations(import_graph()) == []


def test_the_ignore_index_is_defined_once():
    """Only hf.py assigns IGNORE; every other module imports it (a second -100 can drift)."""
    defined = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == "IGNORE" for t in targets):
                defined.append(module_name(path))
    assert defined == ["tunesmith.hf"]
