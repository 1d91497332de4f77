"""Which reference tasks exist, looked up by name; the task modules are imported on first use."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from ebai.core.errors import InputError
from ebai.core.plugins import import_object

if TYPE_CHECKING:
    from ebai.tasks._task import Task

__all__ = ["TASK_NAMES", "get_task"]

#: Task name -> ``module:class``, in the order of the EfficientBioAI paper's Table 1.
_TASKS = {
    "denoising": "ebai.tasks._denoising:DenoisingTask",
    "nuclei": "ebai.tasks._nuclei:NucleiTask",
    "labelfree": "ebai.tasks._labelfree:LabelFreeTask",
    "semantic": "ebai.tasks._semantic:SemanticTask",
}
#: The reference tasks' names, in table order.
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


@cache
def get_task(name: str) -> Task:
    """Return the reference task called ``name`` (one of :data:`TASK_NAMES`)."""
    key = str(name).strip().lower()
    if key not in _TASKS:
        msg = f"unknown task {name!r}: use one of {', '.join(TASK_NAMES)}"
        raise InputError(msg)
    return import_object(_TASKS[key])()
