"""Reading settings files (adapter configs, recipes) with errors a user can act on in one line.

PyYAML reports a syntax error over several lines with a caret drawing, while the CLI prints each error
as one line; the problem and its position are folded into that line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ebai.core.errors import InputError

__all__ = ["load_yaml", "parse_problem"]


def parse_problem(exc: BaseException) -> str:
    """Describe a parser's error in one line, with the line and column where the parser says it is."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(exc, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"{context}: {problem} at {where}" if context else f"{problem} at {where}"
    return " ".join(str(exc).split())


def load_yaml(path: Path, what: str, missing_hint: str) -> Any:
    """Parse a YAML file, turning a missing file or bad syntax into a one-line :class:`InputError`.

    ``what`` names the file in the message ("adapter config"); ``missing_hint`` says what to give instead.
    """
    import yaml

    if not path.is_file():
        msg = f"{what} {str(path)!r} does not exist: {missing_hint}"
        raise InputError(msg)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        msg = f"{what} {str(path)!r} is not valid YAML ({parse_problem(exc)}): fix the file"
        raise InputError(msg) from exc
