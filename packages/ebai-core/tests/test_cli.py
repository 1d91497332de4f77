"""The ``ebai`` command line: version, info, lazy and broken commands, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import ebai.core
from ebai.core.cli import cli
from ebai.core.errors import InputError
from ebai.core.plugins import BACKENDS, CLI, PluginSpec


@click.command()
def failing() -> None:
    """Fail the way ebai fails on purpose."""
    raise InputError("image 'a.tif' has 3 channels but the model takes 1: select or stack channels to match")


@click.command()
def interrupted() -> None:
    """Pretend the user pressed Ctrl-C."""
    raise KeyboardInterrupt


@pytest.fixture
def commands(fake_entry_points, fake_module, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ebai_broken_cli_mod.py").write_text("import ebai_no_such_dependency_xyz\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_module("ebai_fake_cli", failing=failing, interrupted=interrupted, not_a_command=42)
    fake_module(
        "ebai_fake_backend_spec",
        backend=PluginSpec(name="fake", package="ebai-fake", target="x:y", requires=("ebai_no_such_mod",)),
    )
    fake_entry_points(
        {
            CLI: {
                "info": "ebai.core.commands.info:info",
                "broken": "ebai_broken_cli_mod:command",
                "failing": "ebai_fake_cli:failing",
                "interrupted": "ebai_fake_cli:interrupted",
                "odd": "ebai_fake_cli:not_a_command",
            },
            BACKENDS: {"fake": "ebai_fake_backend_spec:backend"},
        }
    )


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ebai, version {ebai.core.__version__}"


def test_info(commands) -> None:
    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    assert "packages:" in result.output and "ebai-core" in result.output
    assert "fake" in result.output and "unavailable: needs ebai_no_such_mod: pip install ebai-fake" in result.output
    assert "cpu:" in result.output and "gpus:" in result.output


def test_info_json(commands) -> None:
    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["packages"]["ebai-core"] == ebai.core.__version__
    assert data["backends"] == [
        {
            "name": "fake",
            "package": "ebai-fake",
            "available": False,
            "reason": "needs ebai_no_such_mod: pip install ebai-fake",
        }
    ]
    assert data["adapters"] == []
    assert set(data["commands"]) == {"info", "broken", "failing", "interrupted", "odd"}
    assert data["cpu"]["cores"] >= 1


def test_broken_command_does_not_break_the_cli(commands) -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["--help"])
    assert listing.exit_code == 0
    assert "broken" in listing.output and "(unavailable" in listing.output
    assert "info" in listing.output
    result = runner.invoke(cli, ["broken", "--some-option"])
    assert result.exit_code != 0
    assert "command 'broken' cannot be loaded" in result.output
    assert "ebai_no_such_dependency_xyz" in result.output
    odd = runner.invoke(cli, ["odd"])
    assert odd.exit_code != 0 and "is not a click command" in odd.output
    assert runner.invoke(cli, ["info"]).exit_code == 0


def test_ebai_error_prints_one_line(commands) -> None:
    result = CliRunner().invoke(cli, ["failing"])
    assert result.exit_code == 1
    assert (
        result.stderr
        == "error: image 'a.tif' has 3 channels but the model takes 1: select or stack channels to match\n"
    )
    assert result.stdout == ""


def test_debug_shows_the_exception(commands) -> None:
    result = CliRunner().invoke(cli, ["--debug", "failing"])
    assert isinstance(result.exception, InputError)


def test_interrupt_exits_130(commands) -> None:
    result = CliRunner().invoke(cli, ["interrupted"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr


def test_unknown_command(commands) -> None:
    result = CliRunner().invoke(cli, ["nonexistent"])
    assert result.exit_code == 2
    assert "No such command" in result.output
