"""ebai-core installs alone from PyPI into a fresh venv, without any deep-learning runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
FORBIDDEN = {"torch", "openvino", "tensorrt", "onnxruntime", "nncf"}
#: What codecarbon would bring: energy is the extra ebai-core[energy], not part of the core.
NOT_IN_CORE = {"codecarbon", "pandas", "pydantic"}


@pytest.mark.venv
def test_fresh_venv_install(fresh_venv, tmp_path: Path) -> None:
    fresh_venv.pip_install("--timeout", "30", PACKAGE, timeout=300)

    info = fresh_venv.run("ebai", "info", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "ebai-core" in info.stdout and "none installed (pip install ebai-openvino)" in info.stdout

    names = fresh_venv.installed()
    assert "ebai-core" in names
    assert not names & FORBIDDEN, f"ebai-core pulled {sorted(names & FORBIDDEN)}"
    assert not names & NOT_IN_CORE, f"ebai-core pulled {sorted(names & NOT_IN_CORE)}"
    assert not {n for n in names if n.startswith("nvidia-") and n != "nvidia-ml-py"}, sorted(names)
