"""Energy per call, through codecarbon's offline tracker, labelled measured or estimated.

codecarbon reads hardware energy counters where it can (Intel/AMD RAPL on Linux, NVML on NVIDIA
GPUs) and otherwise estimates CPU power from the CPU's TDP and its load. Both are useful to compare
an original and a compressed model side by side, but only the first is a measurement, so every
result says which it is (:attr:`EnergyResult.label`) and how it was obtained
(:attr:`EnergyResult.source`).

codecarbon is an extra (``pip install 'ebai-core[energy]'``): it pulls pandas, pydantic and a
dozen more packages that the core does not otherwise need. Without it, benchmarks print
:data:`NOT_MEASURED` in the energy column.

A single short window of an estimate is noisy (the load codecarbon samples changes with everything
else the machine does), so comparisons use :func:`measure_energy_interleaved`: several windows per
call, interleaved, reported as a median with its spread (:class:`EnergySpread`), and two rows whose
spreads overlap are not told apart.

The tracker runs offline: no network access (no cloud metadata, no carbon-intensity API, no
upload) and no file written (codecarbon's CSV output is switched off), whatever the user's
codecarbon configuration says.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ebai.core.errors import EbaiError, InputError, MissingDependencyError
from ebai.core.install_hints import install_line

__all__ = [
    "NOT_MEASURED",
    "EnergyResult",
    "EnergySpread",
    "energy_available",
    "indistinct_groups",
    "measure_energy",
    "measure_energy_interleaved",
]

#: What the energy column says when codecarbon is not installed.
NOT_MEASURED = f"not measured: {install_line('energy')}"

logger = logging.getLogger("ebai")

#: codecarbon CPU modes that read energy counters, and how to name them.
_CPU_MEASURED = {
    "intel_rapl": "RAPL energy counters",
    "windows_emi": "RAPL through the Windows Energy Meter Interface",
    "intel_power_gadget": "Intel Power Gadget (RAPL)",
    "apple_powermetrics": "Apple powermetrics",
}
#: Carbon intensity handed to codecarbon so it never asks an online service (emissions are not
#: reported by ebai; only energy is).
_CARBON_INTENSITY_G_PER_KWH = 475.0
_JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class EnergyResult:
    """Energy of the measured calls.

    Attributes
    ----------
    joules_per_call
        Energy of the whole window divided by the number of calls, in joules.
    duration_s
        Wall-clock seconds of the measured window (all calls together).
    label
        ``"measured"`` when codecarbon read hardware energy counters (RAPL for the CPU, NVML for an
        NVIDIA GPU), ``"estimated"`` when it modelled power from TDP and load.
    source
        How each part was obtained, in words, for reports.
    calls
        Number of measured calls (warm-up calls excluded).
    """

    joules_per_call: float
    duration_s: float
    label: str
    source: str
    calls: int = 1

    @property
    def watts(self) -> float:
        """Mean power over the window."""
        return self.joules_per_call * self.calls / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form used in reports."""
        return asdict(self)


def _describe(hardware: Iterable[Any], tracking_mode: str) -> tuple[str, str]:
    """Label and source text from the hardware objects codecarbon set up (``tracker._hardware``).

    codecarbon keeps one object per tracked component; its class name says which component and,
    for the CPU, ``_mode`` says how power is read (``intel_rapl``, ``cpu_load``, ``constant``...).
    """
    parts: list[str] = []
    measured = False
    for hw in hardware:
        kind = type(hw).__name__
        if kind == "CPU":
            mode = str(getattr(hw, "_mode", "unknown"))
            if mode in _CPU_MEASURED:
                measured = True
                parts.append(f"CPU: measured with {_CPU_MEASURED[mode]}")
                continue
            tdp = getattr(hw, "_tdp", None)
            tdp_text = f"TDP {tdp:g} W" if isinstance(tdp, (int, float)) else "TDP unknown"
            if mode == "cpu_load":
                whose = "this process's" if tracking_mode == "process" else "the machine's"
                parts.append(f"CPU: estimated from TDP and load ({tdp_text}, {whose} CPU load)")
            elif mode == "constant":
                parts.append(f"CPU: estimated from TDP as a constant draw ({tdp_text})")
            else:
                parts.append(f"CPU: estimated (codecarbon mode {mode!r})")
        elif kind == "GPU":
            measured = True
            parts.append("GPU: measured with NVML/AMD SMI")
        elif kind == "AppleSiliconChip":
            measured = True
            parts.append(f"Apple {getattr(hw, 'chip_part', 'chip')}: measured with powermetrics")
        elif kind == "Raspberry":
            measured = True
            parts.append(f"Raspberry Pi {getattr(hw, 'chip_part', 'board')}: measured by its power monitor")
        elif kind == "RAM":
            parts.append("RAM: estimated from memory size")
        else:
            parts.append(f"{kind}: estimated")
    if not parts:
        parts.append("codecarbon did not say how it measured")
    return ("measured" if measured else "estimated"), "; ".join(parts)


def _tracker_kwargs(tracker_cls: type, tracking_mode: str) -> dict[str, Any]:
    """Keyword arguments for an offline, silent, file-less tracker, for the installed codecarbon."""
    names: set[str] = set()
    for klass in tracker_cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(inspect.signature(init).parameters)
    wanted: dict[str, Any] = {
        "country_iso_code": "USA",  # offline trackers need a country; it only affects emissions
        "project_name": "ebai",
        "log_level": "error",
        "tracking_mode": tracking_mode,
        "allow_multiple_runs": True,  # else codecarbon takes a lock file and the SIGINT handler
        "emissions_endpoint": None,
        "electricitymaps_api_token": None,
        "force_carbon_intensity_g_co2e_kwh": _CARBON_INTENSITY_G_PER_KWH,
        "cloud_provider": None,
        "cloud_region": None,
    }
    if "output_methods" in names:  # codecarbon >= 3.2; save_to_* are deprecated there
        wanted["output_methods"] = []
    else:
        wanted.update(save_to_file=False, save_to_api=False, save_to_logger=False, save_to_prometheus=False)
    return {k: v for k, v in wanted.items() if k in names}


def measure_energy(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    min_duration_s: float = 1.0,
    tracking_mode: str = "process",
) -> EnergyResult:
    """Energy per call of ``fn()``, measured with codecarbon's offline tracker.

    Parameters
    ----------
    fn
        The work to measure, without arguments; it must finish its work before returning.
    repeats
        Least number of measured calls.
    warmup
        Untimed calls made before the tracker starts.
    min_duration_s
        ``fn`` is called until at least this long has passed (and ``repeats`` calls are done), since
        energy counters and load sampling are too coarse for windows of a few milliseconds.
    tracking_mode
        ``"process"`` (default: estimates use this process's CPU load and memory, which is fairer on
        a shared machine) or ``"machine"`` (the whole machine's load). Energy counters always
        measure the whole CPU package or GPU.

    Returns
    -------
    EnergyResult
        Joules per call, the window's duration, and whether they were measured or estimated.

    Raises
    ------
    MissingDependencyError
        When codecarbon is not installed.
    """
    if repeats < 1 or warmup < 0 or min_duration_s < 0:
        msg = (
            f"energy needs repeats >= 1, warmup >= 0 and min_duration_s >= 0, got {repeats}, {warmup}, {min_duration_s}"
        )
        raise InputError(msg)
    if tracking_mode not in ("process", "machine"):
        msg = f"tracking_mode must be 'process' or 'machine', got {tracking_mode!r}"
        raise InputError(msg)
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError as exc:
        msg = f"energy is measured with codecarbon, which is not installed: {install_line('energy')}"
        raise MissingDependencyError(msg) from exc

    for _ in range(warmup):
        fn()

    cc_logger = logging.getLogger("codecarbon")
    saved_level = cc_logger.level
    cc_logger.setLevel(logging.ERROR)  # before construction: the constructor logs at INFO/WARNING
    try:
        tracker = OfflineEmissionsTracker(**_tracker_kwargs(OfflineEmissionsTracker, tracking_mode))
        tracker.start()
        calls = 0
        start = time.perf_counter()
        try:
            while calls < repeats or time.perf_counter() - start < min_duration_s:
                fn()
                calls += 1
            duration = time.perf_counter() - start
        finally:
            tracker.stop()
        data = getattr(tracker, "final_emissions_data", None)
        hardware = list(getattr(tracker, "_hardware", []))
    finally:
        cc_logger.setLevel(saved_level)
    if data is None:
        msg = "codecarbon could not measure energy (see its error above): run with --debug, or skip the energy measurement"
        raise EbaiError(msg)
    label, source = _describe(hardware, tracking_mode)
    try:
        from importlib.metadata import version

        source = f"{source} (codecarbon {version('codecarbon')})"
    except Exception:  # version is informative only
        logger.debug("codecarbon version unknown", exc_info=True)
    joules = float(data.energy_consumed) * _JOULES_PER_KWH
    return EnergyResult(joules_per_call=joules / calls, duration_s=duration, label=label, source=source, calls=calls)


def energy_available() -> bool:
    """Whether codecarbon can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("codecarbon") is not None


@dataclass(frozen=True)
class EnergySpread:
    """Energy per call over several measurement windows: the median and the range around it.

    Attributes
    ----------
    joules_per_call
        Median over the windows of joules per call: the figure to compare by.
    low, high
        Least and greatest window's joules per call: the spread.
    windows
        Number of windows measured.
    label, source
        ``"measured"`` or ``"estimated"`` and how, as in :class:`EnergyResult`.
    """

    joules_per_call: float
    low: float
    high: float
    windows: int
    label: str
    source: str

    @property
    def relative_spread(self) -> float:
        """``(high - low) / median``: 0.1 means the windows differed by 10% of the median."""
        return (self.high - self.low) / self.joules_per_call if self.joules_per_call > 0 else float("inf")

    def overlaps(self, other: EnergySpread) -> bool:
        """Whether the two ranges overlap: then the measurement cannot tell the two apart."""
        return self.low <= other.high and other.low <= self.high

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form used in reports."""
        return asdict(self)


def measure_energy_interleaved(
    calls: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 3,
    min_duration_s: float = 1.0,
    warmup: int = 1,
    desc: str | None = None,
    tracking_mode: str = "process",
) -> dict[str, EnergySpread]:
    """Energy per call of several calls, each over ``rounds`` windows taken in turn.

    One window per call per round, as :func:`ebai.core.latency.measure_interleaved` does for time,
    so a change in the machine's load lands on every call alike; the spread of the windows says how
    far the figures can be trusted.

    Parameters
    ----------
    calls
        Name -> the work to measure, without arguments.
    rounds
        Windows per call, at least 2 for a spread (1 gives a zero spread).
    min_duration_s
        Least duration of each window (see :func:`measure_energy`).
    warmup
        Untimed calls of each entry before the first round.
    desc
        Label of a progress bar over the rounds; ``None`` shows none.
    tracking_mode
        As in :func:`measure_energy`.

    Returns
    -------
    dict of str to EnergySpread
        For each name, in the order given.

    Raises
    ------
    MissingDependencyError
        When codecarbon is not installed.
    """
    if rounds < 1 or warmup < 0:
        msg = f"interleaved energy needs rounds >= 1 and warmup >= 0, got {rounds} and {warmup}"
        raise InputError(msg)
    from ebai.core.latency import interleave

    windows: dict[str, list[EnergyResult]] = {name: [] for name in calls}
    for name, fn in interleave(calls, rounds=rounds, warmup=warmup, desc=desc):
        windows[name].append(
            measure_energy(fn, repeats=1, warmup=0, min_duration_s=min_duration_s, tracking_mode=tracking_mode)
        )
    return {name: _spread(results) for name, results in windows.items()}


def _spread(results: list[EnergyResult]) -> EnergySpread:
    import statistics

    joules = [r.joules_per_call for r in results]
    return EnergySpread(
        joules_per_call=float(statistics.median(joules)),
        low=float(min(joules)),
        high=float(max(joules)),
        windows=len(joules),
        label=results[-1].label,
        source=results[-1].source,
    )


def indistinct_groups(spreads: Mapping[str, EnergySpread | None]) -> dict[str, str]:
    """Letter the rows whose energies the measurement cannot tell apart.

    Rows whose spreads overlap, directly or through a chain of overlaps, share a letter (``"A"``,
    ``"B"``...); a row apart from all others gets none. Tables print the letter beside the energy
    so that a reader does not take a difference inside the noise for a saving.

    Returns
    -------
    dict of str to str
        Row name -> letter, for the rows in a group of two or more only.
    """
    names = [n for n, s in spreads.items() if s is not None]
    group = {n: i for i, n in enumerate(names)}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = spreads[a], spreads[b]
            if sa is not None and sb is not None and sa.overlaps(sb) and group[a] != group[b]:
                old, new = group[b], group[a]
                group = {n: new if g == old else g for n, g in group.items()}
    sizes: dict[int, int] = {}
    for g in group.values():
        sizes[g] = sizes.get(g, 0) + 1
    letters: dict[int, str] = {}
    for n in names:  # letters in row order
        if sizes[group[n]] > 1 and group[n] not in letters:
            letters[group[n]] = chr(ord("A") + len(letters) % 26)
    return {n: letters[group[n]] for n in names if group[n] in letters}
