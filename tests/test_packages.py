"""The packages form a tree: each declares what it imports, and nothing depends back on a package above it.

The graph is read from every ``packages/*/pyproject.toml`` (dependencies and extras), and every
``ebai.<name>`` import in a package's source is checked against it, so an undeclared import (as
ebai-compress importing ebai-adapters once was) fails here before it reaches a user's install.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
#: The intended layering: core <- {adapters, openvino, tensorrt, torch} <- compress <- tasks.
LAYER = {
    "ebai-core": 0,
    "ebai-adapters": 1,
    "ebai-openvino": 1,
    "ebai-tensorrt": 1,
    "ebai-torch": 1,
    "ebai-compress": 2,
    "ebai-tasks": 3,
}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def declared_graph() -> dict[str, set[str]]:
    """Map each ebai package to the ebai packages it declares (as dependency or in an extra)."""
    graph = {}
    for pyproject in sorted(PACKAGES.glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        requirements = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        graph[project["name"]] = {_name(r) for r in requirements if _name(r).startswith("ebai-")} - {project["name"]}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """Return one cycle of ``graph`` as a list of names, or ``[]`` when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def imported_packages(package_dir: Path) -> set[str]:
    """Distribution names of the ``ebai.<name>`` modules imported anywhere in a package's source."""
    found = set()
    for path in (package_dir / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found |= {"ebai-" + n.split(".")[1] for n in names if n.startswith("ebai.") and n.count(".") >= 1}
    return found


def test_the_graph_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_declared_dependencies_have_no_cycle():
    graph = declared_graph()
    assert set(graph) == set(LAYER), f"packages found: {sorted(graph)}; update LAYER when adding one"
    assert find_cycle(graph) == [], f"dependency cycle: {' -> '.join(find_cycle(graph))}"
    for package, needs in graph.items():
        upward = sorted(n for n in needs if LAYER[n] >= LAYER[package])
        assert not upward, f"{package} depends on {upward}, which sit at its layer or above"
    assert graph["ebai-adapters"] == {"ebai-core"}
    assert "ebai-adapters" not in graph["ebai-compress"]


@pytest.mark.parametrize("package", sorted(LAYER))
def test_every_ebai_import_is_declared(package):
    graph = declared_graph()
    undeclared = imported_packages(PACKAGES / package) - graph[package] - {package}
    assert not undeclared, f"{package} imports {sorted(undeclared)} without declaring them in its pyproject.toml"


_ENTRY_POINTS = (
    "from importlib.metadata import entry_points; import json; "
    "print(json.dumps({g: sorted(e.name for e in entry_points(group=g)) for g in ('ebai.cli', 'ebai.adapters')}))"
)
_LOADED = (
    "import sys, json, ebai.core.cli, ebai.adapters; "
    "from ebai.core.plugins import get_adapter; get_adapter('torch'); "
    "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ebai.'))))"
)


@pytest.mark.venv
@pytest.mark.slow
def test_adapters_alone_bring_no_tasks_and_ebai_tasks_brings_them(fresh_venv, tmp_path):
    import json

    fresh_venv.pip_install("torch==2.13.0", PACKAGES / "ebai-core", f"{PACKAGES / 'ebai-adapters'}[torch]")
    names = fresh_venv.installed()
    assert "ebai-adapters" in names and not {"ebai-compress", "ebai-tasks", "ebai-openvino", "monai"} & names
    site = Path(
        fresh_venv.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    )
    assert not list(site.rglob("*.safetensors")), "ebai-adapters installed network weights"
    groups = json.loads(fresh_venv.run("python", "-c", _ENTRY_POINTS).stdout)
    assert not {"demo", "report", "sweep"} & set(groups["ebai.cli"]) and "task" not in groups["ebai.adapters"]
    loaded = json.loads(fresh_venv.run("python", "-c", _LOADED, cwd=tmp_path).stdout)
    assert not [m for m in loaded if m.startswith(("ebai.compress", "ebai.tasks"))], loaded
    demo = fresh_venv.run("ebai", "demo", "--quick", cwd=tmp_path)
    assert demo.returncode != 0 and "pip install ebai-tasks" in demo.stderr + demo.stdout

    others = ("ebai-compress", "ebai-openvino", "ebai-tasks")
    fresh_venv.pip_install("torch==2.13.0", *(PACKAGES / p for p in others), timeout=1500)
    assert set(others) <= fresh_venv.installed()
    groups = json.loads(fresh_venv.run("python", "-c", _ENTRY_POINTS).stdout)
    assert {"demo", "report", "sweep"} <= set(groups["ebai.cli"]) and "task" in groups["ebai.adapters"]
    weights = sorted(p.name for p in site.rglob("ebai/tasks/weights/*.safetensors"))
    assert weights == ["denoising.safetensors", "labelfree.safetensors", "nuclei.safetensors", "semantic.safetensors"]
    shipped = fresh_venv.run(
        "python", "-c", "from ebai.tasks import shipped_weights; print(shipped_weights('denoising').name)"
    )
    assert shipped.returncode == 0 and shipped.stdout.strip() == "denoising.safetensors", shipped.stderr
