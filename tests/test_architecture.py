"""The layers point one way: bagnet/ (library) <- experiments/ <- bagnet.run (runner), and reports/ (the
rendered documents) above experiments/, imported by neither. Checked on the source with ``ast``: every
import, top-level or inside a function, counts."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bagnet", "experiments", "reports")
RUNNER = "bagnet.run"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Project modules that ``path`` imports (relative imports resolved)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    # "from bagnet import io" names the module bagnet.io; keep only names that are modules
    return {m: {i for i in imports(p) if i in files} - {m} for m, p in files.items()}


def test_library_imports_neither_experiments_nor_the_runner():
    for mod, deps in graph().items():
        if mod.startswith("bagnet") and mod != RUNNER:
            bad = {d for d in deps if d.startswith(("experiments", "reports")) or d == RUNNER}
            assert not bad, f"{mod} imports {sorted(bad)}"
        if mod.startswith("experiments"):
            assert RUNNER not in deps, f"{mod} imports the runner"
            bad = {d for d in deps if d.startswith("reports")}
            assert not bad, f"{mod} imports {sorted(bad)} (the rendered documents sit above the experiments)"


def test_no_import_cycles_between_files():
    g = graph()
    # A package's __init__ importing its own submodules is how packages expose names; drop those edges.
    g = {m: {d for d in deps if not (m + ".").startswith(d + ".") and not d.startswith(m + ".")}
         for m, deps in g.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in g.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2
    for m in sorted(g):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("folder", ["bagnet", "experiments", "reports", "scripts"])
def test_files_stay_small(folder):
    long = {str(p.relative_to(REPO)): n for p in (REPO / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_tasks_are_derived_from_the_registry_and_no_config_names_code():
    """One list: every registered experiment and pipeline is a task, and no config names a function by a dotted
    path (the runner finds tasks in the registry, the library's compose gets the schemas from it)."""
    import experiments
    from bagnet.run import tasks
    from experiments import registry
    found = tasks()
    assert {"train", "eval", *registry.REGISTRY, *registry.PIPELINES} == set(found)
    assert {"heatmaps", "patches", "accuracy", "pipeline"} <= set(found) and all(map(callable, found.values()))
    assert "demo" in registry.REPORTS
    cfg = OmegaConf.load(REPO / "configs" / "config.yaml")
    assert "tasks" not in cfg and "schemas" not in cfg
    import re
    code_path = re.compile(r"\b(experiments|bagnet|reports)\.[A-Za-z_]+\.[A-Za-z_]+")   # e.g. experiments.suite.task
    dotted = [p for p in (REPO / "configs").rglob("*.yaml")
              if any(code_path.search(line.split("#")[0]) for line in p.read_text().splitlines())]
    assert not dotted, dotted
    assert experiments.registry is registry


def test_the_runner_sits_on_top():
    g = graph()
    assert any(d.startswith("experiments") for d in g[RUNNER]), "the runner finds tasks in the registry"
    assert not [m for m, deps in g.items() if RUNNER in deps], "nothing imports the runner"
