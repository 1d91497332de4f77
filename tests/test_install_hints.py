"""Every install hint names a package and extras that exist, and comes from the one table in ebai.core.

The packages' real extras are read from each ``packages/*/pyproject.toml``; a hint that names an
extra nobody declares (``ebai-adapters[report]`` once did) fails here.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from ebai.core.install_hints import INSTALLS, PLUGIN_HOMES, Install, install_line, plugin_install_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
HINTS_MODULE = PACKAGES / "ebai-core/src/ebai/core/install_hints.py"
#: ``pip install ebai-x`` or ``pip install 'ebai-x[a,b]'`` inside any text.
LINE = re.compile(r"pip install '?(ebai-[a-z]+)(?:\[([A-Za-z0-9_,\-]+)\])?")


def projects() -> dict[str, dict]:
    out = {}
    for pyproject in PACKAGES.glob("*/pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        out[project["name"]] = project
    return out


def _check(package: str, extras: tuple[str, ...], where: str) -> None:
    known = projects()
    assert package in known, f"{where}: no package {package!r} in packages/ (have {sorted(known)})"
    declared = set(known[package].get("optional-dependencies", {}))
    missing = sorted(set(extras) - declared)
    assert not missing, f"{where}: {package} has no extra {missing} (it declares {sorted(declared)})"


@pytest.mark.parametrize("feature", sorted(INSTALLS))
def test_each_hint_names_a_real_package_and_extras(feature):
    hint = INSTALLS[feature]
    _check(hint.package, hint.extras, f"hint {feature!r}")
    match = LINE.fullmatch(install_line(feature).rstrip("'"))
    assert match and match.group(1) == hint.package


def test_the_check_catches_an_extra_that_does_not_exist():
    with pytest.raises(AssertionError, match=r"ebai-adapters has no extra \['report'\]"):
        _check("ebai-adapters", ("report",), "test")
    assert Install("ebai-tasks", ("report",)).line == "pip install 'ebai-tasks[report]'"


@pytest.mark.parametrize(("group", "name"), sorted(PLUGIN_HOMES))
def test_each_plugin_home_registers_that_plugin(group, name):
    hint = INSTALLS[PLUGIN_HOMES[(group, name)]]
    entry_points = projects()[hint.package].get("entry-points", {}).get(group, {})
    assert name in entry_points, f"{hint.package} does not register {name!r} in {group}"
    assert plugin_install_line(group, name) == hint.line
    assert plugin_install_line(group, "no-such-plugin") is None


def _strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module except docstrings (those may quote a hint for people)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


SOURCES = sorted(p for p in PACKAGES.glob("*/src/**/*.py") if p != HINTS_MODULE)


def test_no_package_spells_its_own_ebai_install_line():
    typed = [
        f"{path.relative_to(PACKAGES)}:{line}: {text.strip()[:80]!r}"
        for path in SOURCES
        for line, text in _strings(path)
        if LINE.search(text)
    ]
    assert not typed, "take these from ebai.core.install_hints.install_line:\n" + "\n".join(typed)


def test_hints_quoted_in_docs_and_docstrings_are_real():
    texts = [(p, p.read_text()) for p in SOURCES]
    texts += [(p, p.read_text()) for p in [*PACKAGES.glob("*/README.md"), PACKAGES.parent / "README.md"]]
    ours = projects()
    for path, text in texts:
        for match in LINE.finditer(text):
            if match.group(1) not in ours and not match.group(1).startswith("ebai-ad"):
                continue  # a third-party tool in an example (ebai-example-tool)
            extras = tuple(e for e in (match.group(2) or "").split(",") if e)
            _check(match.group(1), extras, f"{path.relative_to(PACKAGES.parent)}: {match.group(0)!r}")
