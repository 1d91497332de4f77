"""A third-party tool registers its own adapter from its own package, through its own entry point.

The tool lives in ``tests/third_party_tool`` (a pyproject and a src tree, as a real tool would
ship). It is made discoverable two ways: as an installed distribution on ``sys.path`` (a
``.dist-info`` written from its pyproject), and, marked ``venv``, by ``pip install`` into a fresh
virtual environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ebai.adapters import Adapter, build_adapter
from ebai.core.plugins import ADAPTERS, clear_cache, get_adapter, get_plugin, plugin_names

pytest.importorskip("torch")
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

TOOL = Path(__file__).parent / "third_party_tool"


def _dist_info(site: Path) -> None:
    """Install the tool as pip would, minus the wheel: its sources plus a .dist-info from its pyproject."""
    meta = tomllib.loads((TOOL / "pyproject.toml").read_text())["project"]
    shutil.copytree(TOOL / "src" / "ebai_example_tool", site / "ebai_example_tool")
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    lines = []
    for group, eps in meta["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def installed_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    _dist_info(site)
    monkeypatch.syspath_prepend(str(site))
    clear_cache()
    yield site
    for name in [m for m in sys.modules if m.startswith("ebai_example_tool")]:
        del sys.modules[name]
    clear_cache()


def test_tool_adapter_is_discovered_and_usable(installed_tool: Path, tmp_path: Path) -> None:
    import torch

    assert "example-denoiser" in plugin_names(ADAPTERS)
    spec = get_plugin(ADAPTERS, "example-denoiser")
    assert spec.package == "ebai-example-tool" and spec.is_available()
    cls = get_adapter("example-denoiser")
    assert issubclass(cls, Adapter) and cls.__module__ == "ebai_example_tool.adapter"

    torch.manual_seed(0)
    net = cls().load_module()
    torch.save(net.state_dict(), tmp_path / "denoiser.pt")
    adapter = cls(weights=str(tmp_path / "denoiser.pt"), tile=32)
    rebuilt = build_adapter(adapter.describe())
    assert type(rebuilt) is cls and rebuilt.describe() == adapter.describe()

    image = np.random.default_rng(0).uniform(0, 1000, size=(1, 48, 40)).astype(np.float32)
    out = rebuilt.predict(image)
    assert out.shape == (1, 48, 40) and 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(out, adapter.predict(image), atol=1e-6)
    assert rebuilt.evaluate(out, out)["ssim"] == pytest.approx(1.0)


def test_ebai_info_lists_the_tool(installed_tool: Path) -> None:
    from ebai.core.cli import cli

    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["adapters"]}
    assert rows["example-denoiser"] == {
        "name": "example-denoiser",
        "package": "ebai-example-tool",
        "available": True,
        "reason": "",
    }


@pytest.mark.venv
def test_pip_install_into_a_fresh_venv(tmp_path: Path) -> None:
    """``pip install`` the tool into a new venv that sees this environment's packages (no network)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # this environment's site-packages (ebai, torch, pip, hatchling) processed as a site dir, .pth files included
    here = sysconfig.get_paths()["purelib"]
    Path(purelib, "_parent_env.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(TOOL)],
        check=True,
        env=env,
        capture_output=True,
    )
    code = (
        "from ebai.core import get_adapter\n"
        "from ebai.adapters import build_adapter\n"
        "cls = get_adapter('example-denoiser')\n"
        "a = build_adapter(cls(tile=32).describe())\n"
        "print(type(a).__module__, a.input_spec.tile)\n"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "ebai_example_tool.adapter (32, 32)"
