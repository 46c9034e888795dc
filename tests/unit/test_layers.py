"""common/ is a strict import DAG over the layers below, and recipes import only from common/.

Every `common.*` import is checked, at module level and inside function bodies: a module may import
its own layer or a lower one, never a higher one, and neither modules nor sub-packages may form a
cycle. A function-local import of common/ is refused outright (module-level imports show the graph).
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A group is a sub-package (common.train) or a top-level module (common.config).
LAYERS = [
    ["common.config", "common.errors", "common.fields", "common.values", "common.dist", "common.hosts",
     "common.launcher", "common.userfiles"],  # config: sections (config), declaring (fields), setting (values)
    ["common.formats", "common.env"],  # checkpoint/export file formats, write agreement; process environment
    ["common.models", "common.data", "common.engines"],
    ["common.train"],  # fit(), run directory, resume, warm start, checkpoint store, runtime
    ["common.lifecycle", "common.metrics", "common.compare"],  # after training: evaluate, export, predict; accuracy, FD judge; comparing run dirs
    ["common.cli", "common.entry"],  # parse, dispatch, exit codes; the Task contract every recipe fulfils
    ["common.tasks"],  # what a classifier / a GAN is: each builds an entry.Task, whose main() runs entry.run
    ["common.sweep"],  # many runs of a recipe: an Optuna study whose trials are dtrain runs
]
LAYER = {group: i for i, groups in enumerate(LAYERS) for group in groups}


def modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


COMMON = modules(ROOT / "common", "common")


def imports(path: Path):
    """(imported name, line, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    local = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(fn) if n is not fn}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                yield name, node.lineno, id(node) in local
        elif isinstance(node, ast.ImportFrom) and node.level:
            yield "." * node.level + (node.module or ""), node.lineno, id(node) in local
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, id(node) in local


def resolve(name: str) -> str | None:
    """The common/ module an imported name lives in (common.formats.checkpoint.verify -> common.formats.checkpoint)."""
    while name and name not in COMMON:
        name = name.rpartition(".")[0]
    return name or None


def group(module: str) -> str:
    return ".".join(module.split(".")[:2])


def edges() -> dict[str, set[str]]:
    graph = {m: set() for m in COMMON}
    for m, f in COMMON.items():
        for name, _, _ in imports(f):
            target = resolve(name) if name.split(".")[0] == "common" else None
            if target and target != "common" and target != m:
                graph[m].add(target)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_every_group_has_a_layer():
    groups = {group(m) for m in COMMON if m != "common"}
    assert groups == set(LAYER), f"not in LAYERS: {sorted(groups - set(LAYER))}; gone: {sorted(set(LAYER) - groups)}"


def test_no_upward_import():
    wrong = []
    for m, f in COMMON.items():
        for name, line, _ in imports(f):
            if name.startswith(".") or name.split(".")[0] == "recipes":
                wrong.append(f"{f.relative_to(ROOT)}:{line} imports {name}")
                continue
            target = resolve(name) if name.split(".")[0] == "common" else None
            if not target or target == "common" or m == "common":
                continue
            if LAYER[group(target)] > LAYER[group(m)]:
                wrong.append(f"{f.relative_to(ROOT)}:{line}: {group(m)} (layer {LAYER[group(m)]}) imports "
                             f"{target} (layer {LAYER[group(target)]})")
    assert not wrong, "imports up the layers (move the imported thing down):\n" + "\n".join(wrong)


def test_no_import_of_common_inside_a_function():
    # A lazy import of a heavy optional dependency (deepspeed, wandb, mlflow) is not a common/ import.
    local = [f"{f.relative_to(ROOT)}:{line} imports {name}" for m, f in COMMON.items()
             for name, line, inside in imports(f) if inside and name.split(".")[0] == "common"]
    assert not local, "import common/ at module level:\n" + "\n".join(local)


def test_no_cycle_between_modules():
    found = cycle(edges())
    assert found is None, "import cycle: " + " -> ".join(found)


def test_no_cycle_between_groups():
    graph = {}
    for m, targets in edges().items():
        graph.setdefault(group(m), set()).update(group(t) for t in targets if group(t) != group(m))
    graph.pop("common", None)
    found = cycle(graph)
    assert found is None, "sub-packages import each other: " + " -> ".join(found)


def test_recipes_import_only_common():
    recipes = {f.stem: f for f in (ROOT / "recipes").glob("*.py")}
    wrong = [f"{f.relative_to(ROOT)}:{line} imports {name}" for f in recipes.values()
             for name, line, _ in imports(f)
             if name.startswith(".") or name.split(".")[0] in {"recipes", *recipes}]
    assert not wrong, "a recipe imports only from common/, never another recipe:\n" + "\n".join(wrong)
