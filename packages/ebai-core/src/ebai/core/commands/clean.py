"""``ebai clean``: remove temporary files that killed ebai runs left behind."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["clean"]


@click.command()
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--dry-run", is_flag=True, help="List what would be removed, remove nothing.")
def clean(folders: tuple[Path, ...], dry_run: bool) -> None:
    """Remove ebai's leftover temporary files in FOLDERS (default: the current folder).

    A run stopped by SIGKILL, a crash of the node or a power cut cannot remove its hidden
    ``.NAME.ebai-HOST-PID-XXXX.part`` files and folders. Only those of processes of this host that
    are no longer running are removed; a live run's files, and those of other hosts sharing the
    file system, are left alone. ``ebai run`` and ``ebai compress`` do the same for the folder they
    write to.
    """
    from ebai.core.files import remove_stale, stale_entries

    count = 0
    for folder in folders or (Path.cwd(),):
        found = stale_entries(folder) if dry_run else remove_stale(folder)
        for path in found:
            click.echo(f"{'would remove' if dry_run else 'removed'} {path}")
        count += len(found)
    if not count:
        click.echo("no leftover temporary files found", err=True)
