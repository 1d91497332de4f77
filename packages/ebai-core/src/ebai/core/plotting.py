"""Figures drawn without touching the caller's plotting backend.

matplotlib is optional everywhere in ebai (``ebai-core[plot]``, ``ebai-tasks[report]``): the
figure is built through matplotlib's object API on an Agg canvas, so making a plot never switches
the backend of an interactive session, and code that plots asks :func:`figure` first and says
what to install when it returns ``None``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["figure"]


def figure(width: float, height: float, dpi: int = 110) -> Any:
    """Return a matplotlib ``Figure`` on its own Agg canvas, ``width`` x ``height`` inches; ``None`` without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig
