"""``pip install ./packages/ebai-tensorrt`` in a fresh virtual environment, then ``ebai info`` there.

Marked ``venv``; skips with the reason when the package registry cannot be reached.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.venv

PACKAGES = Path(__file__).resolve().parents[2]


def test_plain_install_lowers_without_tensorrt_and_info_says_how_to_get_it(fresh_venv):
    fresh_venv.pip_install(PACKAGES / "ebai-core", PACKAGES / "ebai-tensorrt")
    check = fresh_venv.run(
        "python",
        "-c",
        "import sys, ebai.tensorrt; print(sorted(m for m in ('tensorrt', 'torch', 'cuda') if m in sys.modules))",
    )
    assert check.returncode == 0 and check.stdout.strip() == "[]", check.stderr
    info = fresh_venv.run("ebai", "info")
    assert info.returncode == 0, info.stderr
    line = next(x for x in info.stdout.splitlines() if x.strip().startswith("tensorrt"))
    assert "unavailable: needs tensorrt: pip install 'ebai-tensorrt[cu12]'" in line, info.stdout
