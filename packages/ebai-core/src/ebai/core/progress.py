"""One progress helper for every step longer than a couple of seconds.

Bars go to stderr and disappear when stderr is not a terminal or ``EBAI_PROGRESS=0``, so logs and
CI output stay clean.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["progress", "progress_bar", "progress_enabled"]

T = TypeVar("T")


def progress_enabled() -> bool:
    """Whether progress bars are shown: ``EBAI_PROGRESS`` if set, else whether stderr is a terminal.

    Other libraries' bars (NNCF's) follow the same switch, so one setting quiets them all.
    """
    flag = os.environ.get("EBAI_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kwargs: Any
) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar labelled ``desc``."""
    yield from progress_bar(desc, total, unit, iterable=iterable, **kwargs)


def progress_bar(desc: str, total: float | None, unit: str = "it", **kwargs: Any) -> Any:
    """Make a progress bar advanced by hand (``bar.update(n)``), for work counted in units other than items.

    Use as a context manager; shown and hidden like :func:`progress`.
    """
    from tqdm.auto import tqdm

    return tqdm(
        desc=desc,
        total=total,
        unit=unit,
        disable=not progress_enabled(),
        file=sys.stderr,
        leave=False,
        **kwargs,
    )
