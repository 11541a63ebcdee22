"""The package's import layers, read from the source with ``ast``.

Data flows down and imports point down only: a module may import its own layer or any layer below
it, never one above, and no two modules import each other (directly or through others), even
inside functions. ``import visionattn`` must not load the optional heavy extras.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "visionattn"

# Top to bottom. A module's layer is the first entry that is a prefix of its dotted name.
LAYERS = [
    ["visionattn.cli"],  # the command-line programs (console scripts; tools/*.py wrap them)
    ["visionattn"],  # the package __init__: imports what it exposes
    ["visionattn.engine"],
    ["visionattn.evaluation", "visionattn.datasets", "visionattn.visualization"],
    ["visionattn.inference", "visionattn.factory"],
    ["visionattn.models"],
    ["visionattn.ops", "visionattn.cuda_graph"],
    ["visionattn.hub", "visionattn.safe_pickle"],
    ["visionattn.registry", "visionattn.extras", "visionattn.resources"],
]


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer of tests/test_import_layers.py: add it to LAYERS"
    return index


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path):
    """Dotted names of the visionattn modules ``path`` imports (at any depth of its code)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import x` names a module; `from .m import x` names m
            targets = [f"{stem}.{a.name}" for a in node.names] if node.module is None else [stem]
        else:
            continue
        for target in targets:
            if target == "visionattn" or target.startswith("visionattn."):
                yield target, node.lineno


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_a_higher_layer():
    bad = []
    for path in _sources():
        mine = layer_of(module_name(path))
        for target, line in imported_modules(path):
            if layer_of(target) < mine:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (a higher layer)")
    assert not bad, "\n".join(bad)


def _resolve(target: str, modules: set) -> str:
    """The module a dotted import target lands in (``a.b.func`` -> ``a.b``)."""
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def test_no_import_cycles():
    modules = {module_name(p) for p in _sources()}
    graph = {}
    for path in _sources():
        name = module_name(path)
        graph[name] = {_resolve(t, modules) for t, _ in imported_modules(path)} - {name}
    # a package __init__ importing its own children is how packages register them: not a cycle
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".") and
                                                       any(p.name == "__init__.py" and module_name(p) == name
                                                           for p in _sources()))}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # a child importing its own package's __init__ (for a registry it exposes) closes a loop through
    # the package: report only cycles between distinct sibling modules
    real = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".")
                                         for a, b in zip(c.split(" -> "), c.split(" -> ")[1:]))]
    assert not real, "import cycles:\n" + "\n".join(real)


def test_import_visionattn_loads_no_optional_extra():
    code = ("import sys, visionattn, visionattn.engine, visionattn.datasets, visionattn.evaluation; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mmdet', 'mmcv', 'mmseg', 'spconv', 'cumm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import visionattn loaded optional extras: {out.strip()}"


@pytest.mark.parametrize("module,target,expected", [
    ("visionattn.models.x", "visionattn.engine.task_model", False),
    ("visionattn.engine.x", "visionattn.models", True),
    ("visionattn.ops.x", "visionattn.models.backbones", False),
    ("visionattn.models.x", "visionattn.registry", True),
])
def test_the_layer_rule_itself(module, target, expected):
    assert (layer_of(target) >= layer_of(module)) is expected
