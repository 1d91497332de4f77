"""`ebai demo --quick`: the README's first command, end to end on the CPU."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("matplotlib")

from click.testing import CliRunner

from ebai.core.cli import cli


@pytest.mark.slow
def test_demo_quick_writes_the_table_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("EBAI_PROGRESS", "0")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["demo", "--quick", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for row in ("PyTorch eager", "OpenVINO + NNCF", "pruned 50%"):
        assert row in result.output
    assert (out / "README.md").is_file()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) >= 2
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run refuses to replace the report without --overwrite, and leaves it intact
    again = CliRunner().invoke(cli, ["demo", "--quick", "-o", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert (out / "README.md").is_file()
    assert json.loads((out / "results.json").read_text())
