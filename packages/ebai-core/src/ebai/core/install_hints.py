"""Every ``pip install`` line ebai prints for one of its own packages, in one table.

A message about something missing ends with the exact line that fixes it. Keeping those lines here,
rather than typed into each package, lets one test read every ``packages/*/pyproject.toml`` and
check that each named package and extra exists, so a hint cannot point at an extra that was
renamed or never made (as ``ebai-adapters[report]`` once did).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INSTALLS", "PLUGIN_HOMES", "Install", "install_line", "plugin_install_line"]


@dataclass(frozen=True)
class Install:
    """One ebai distribution with the extras that provide a feature.

    Attributes
    ----------
    package
        Distribution name on the package index (``"ebai-adapters"``).
    extras
        Its optional-dependency groups needed for the feature (``("cellpose",)``); empty for the
        package alone.
    """

    package: str
    extras: tuple[str, ...] = ()

    @property
    def line(self) -> str:
        """The command a user types, quoted for the shell when it names extras."""
        if not self.extras:
            return f"pip install {self.package}"
        return f"pip install '{self.package}[{','.join(self.extras)}]'"


#: Feature -> what provides it. The keys are what code asks for; the values are checked by
#: ``tests/test_install_hints.py`` against every package's declared extras.
INSTALLS: dict[str, Install] = {
    "energy": Install("ebai-core", ("energy",)),
    "large": Install("ebai-core", ("large",)),
    "openvino": Install("ebai-openvino"),
    "tensorrt": Install("ebai-tensorrt", ("cu12",)),
    "tensorrt-cu13": Install("ebai-tensorrt", ("cu13",)),
    "tensorrt-lowering": Install("ebai-tensorrt"),
    "torch-target": Install("ebai-torch"),
    "compress": Install("ebai-compress"),
    "onnx-check": Install("ebai-compress", ("verify",)),
    "qat": Install("ebai-compress", ("qat",)),
    "adapters": Install("ebai-adapters"),
    "torch": Install("ebai-adapters", ("torch",)),
    "monai": Install("ebai-adapters", ("monai",)),
    "cellpose": Install("ebai-adapters", ("cellpose",)),
    "mmv_im2im": Install("ebai-adapters", ("mmv_im2im",)),
    "bioio": Install("ebai-adapters", ("bioio",)),
    "bioimageio": Install("ebai-adapters", ("bioimageio",)),
    "core-plot": Install("ebai-core", ("plot",)),
    "tasks": Install("ebai-tasks"),
    "tasks-report": Install("ebai-tasks", ("report",)),
    "tasks-cellpose": Install("ebai-tasks", ("cellpose",)),
    "tasks-tensorrt": Install("ebai-tasks", ("tensorrt",)),
}

#: Where a plugin that is not installed at all comes from: (entry-point group, name) -> feature.
PLUGIN_HOMES: dict[tuple[str, str], str] = {
    ("ebai.backends", "openvino"): "openvino",
    ("ebai.backends", "tensorrt"): "tensorrt",
    ("ebai.backends", "torch"): "torch-target",
    ("ebai.adapters", "torch"): "torch",
    ("ebai.adapters", "monai"): "monai",
    ("ebai.adapters", "cellpose"): "cellpose",
    ("ebai.adapters", "mmv_im2im"): "mmv_im2im",
    ("ebai.adapters", "bioimageio"): "bioimageio",
    ("ebai.adapters", "task"): "tasks",
    ("ebai.cli", "compress"): "compress",
    ("ebai.cli", "export"): "bioimageio",
    ("ebai.cli", "demo"): "tasks",
    ("ebai.cli", "report"): "tasks",
    ("ebai.cli", "sweep"): "tasks",
}


def install_line(feature: str) -> str:
    """Return the ``pip install`` line that provides ``feature`` (a key of :data:`INSTALLS`).

    Raises
    ------
    KeyError
        For a feature not in the table: a programming error, caught by the tests.
    """
    return INSTALLS[feature].line


def plugin_install_line(group: str, name: str) -> str | None:
    """Return the line that installs the plugin ``name`` of entry-point ``group``, or ``None`` if unknown."""
    feature = PLUGIN_HOMES.get((group, name))
    return install_line(feature) if feature else None
