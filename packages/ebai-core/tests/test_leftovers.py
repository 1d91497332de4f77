"""Nothing ebai leaves behind: SIGTERM, SIGKILL'd runs, and replacing a regular file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ebai.core.cli import cli
from ebai.core.files import _temp_prefix, atomic_dir, atomic_file, remove_stale, stale_entries
from ebai.core.plugins import CLI


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def clean_command(fake_entry_points) -> None:
    fake_entry_points({CLI: {"clean": "ebai.core.commands.clean:clean"}})


def test_overwrite_onto_a_regular_file_leaves_nothing_hidden(tmp_path: Path) -> None:
    target = tmp_path / "out.ebai"
    target.write_text("a file the user chose to replace", encoding="utf-8")
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "manifest.json").write_text("{}", encoding="utf-8")
    assert (target / "manifest.json").is_file()
    assert _hidden(tmp_path) == []


def test_temporary_names_carry_host_and_pid(tmp_path: Path) -> None:
    with atomic_file(tmp_path / "a.tif") as tmp:
        assert tmp.name.startswith(_temp_prefix("a.tif")) and tmp.name.endswith(".part")
        assert stale_entries(tmp_path) == []  # ours, and we are alive


def test_stale_entries_of_dead_processes_are_removed(clean_command, tmp_path: Path) -> None:
    dead = _temp_prefix("a.tif").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    (tmp_path / f"{dead}x1y2.part").write_bytes(b"half a tiff")
    folder = tmp_path / f"{dead.replace('a.tif', 'm.ebai')}z9.part"
    folder.mkdir()
    (folder / "reference.onnx").write_bytes(b"half")
    live = _temp_prefix("b.tif").replace(f"-{os.getpid()}-", "-1-")  # pid 1 is always alive
    (tmp_path / f"{live}q.part").write_bytes(b"someone else's")
    other_host = f".c.tif.ebai-otherhost-{_dead_pid()}-k.part"
    (tmp_path / other_host).write_bytes(b"another node's")
    (tmp_path / ".hidden-user-file").write_bytes(b"not ours")
    assert {p.name for p in stale_entries(tmp_path)} == {f"{dead}x1y2.part", folder.name}
    result = CliRunner().invoke(cli, ["clean", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0 and result.output.count("would remove") == 2
    assert len(remove_stale(tmp_path)) == 2
    assert _hidden(tmp_path) == sorted([".hidden-user-file", f"{live}q.part", other_host])


def test_ebai_clean_command(clean_command, tmp_path: Path) -> None:
    dead = _temp_prefix("x.tif").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    (tmp_path / f"{dead}a.part").write_bytes(b"")
    result = CliRunner().invoke(cli, ["clean", str(tmp_path)])
    assert result.exit_code == 0 and "removed" in result.output
    assert _hidden(tmp_path) == []
    result = CliRunner().invoke(cli, ["clean", str(tmp_path)])
    assert "no leftover temporary files found" in result.output


_BLOCKING_COMMAND = textwrap.dedent(
    """
    import sys
    import click
    from importlib.metadata import EntryPoint
    from ebai.core import plugins
    from ebai.core.cli import main
    from ebai.core.files import atomic_dir, atomic_file

    @click.command()
    @click.argument("out")
    def write(out):
        # what ebai run / compress do while working: an artifact folder and a file half written
        with atomic_dir(out + "/model.ebai") as tmp, atomic_file(out + "/pred.tif") as part:
            (tmp / "reference.onnx").write_bytes(b"half")
            part.write_bytes(b"half")
            print("ready", flush=True)
            sys.stdin.readline()  # blocks until the test has sent the signal

    sys.modules["blocking_cli"] = type(sys)("blocking_cli")
    sys.modules["blocking_cli"].write = write
    plugins._entry_points = lambda group: (
        {"write": EntryPoint("write", "blocking_cli:write", group)} if group == plugins.CLI else {}
    )
    sys.argv = ["ebai", "write", sys.argv[1]]
    main()
    """
)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_write_leaves_nothing(tmp_path: Path, sig: int, code: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _BLOCKING_COMMAND, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert len(_hidden(out)) == 2  # the temporaries exist while it works
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "nothing unfinished was written" in err and "Traceback" not in err
    assert list(out.iterdir()) == []
