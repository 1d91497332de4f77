"""The manifest of an ``.ebai`` artifact: what is inside and how it was made.

``manifest.json`` is the artifact's table of contents and its lab notebook: input/output layout,
the pruning, fine-tuning, calibration and fidelity records, the tool versions, and the sha256 of
every file so that a tampered or truncated artifact is refused on load. The manifest carries the
sha256 of its own content (:data:`DIGEST_KEY`), so an edited or damaged manifest is refused too.
That catches damage, not forgery (anyone can rehash): what keeps a received artifact harmless is
that nothing it names is ever imported or run without the user's ``--trust-source``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ebai.core.errors import ArtifactError
from ebai.core.interfaces import Lowering
from ebai.core.specs import InputSpec, OutputSpec

__all__ = [
    "DIGEST_KEY",
    "SCHEMA",
    "SCHEMA_VERSION",
    "FidelityRecord",
    "Manifest",
    "TargetRecord",
    "TimingRecord",
    "manifest_digest",
]

SCHEMA = "ebai.artifact"
#: Bumped on any change older readers cannot understand (2: targets carry ``timing``).
SCHEMA_VERSION = 2
#: Key of ``manifest.json`` holding the sha256 of every other key (see :func:`manifest_digest`).
DIGEST_KEY = "manifest_sha256"


def manifest_digest(data: Mapping[str, Any]) -> str:
    """Hex sha256 of a manifest's JSON content, its own :data:`DIGEST_KEY` left out.

    The JSON is canonical (sorted keys, no spaces), so the digest does not depend on indentation
    and a manifest read and written again keeps it.
    """
    body = {k: v for k, v in data.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FidelityRecord:
    """How closely a compressed target reproduces the original model, measured by the guard.

    ``pearson`` and ``max_abs_error`` are always measured on held-out samples (never the
    calibration ones); ``metrics`` holds the task metric(s) the adapter gives (e.g. ``ap50``).
    ``metric``/``threshold`` name the criterion that decided ``passed``.
    """

    pearson: float
    max_abs_error: float
    samples: int
    metric: str
    threshold: float
    passed: bool
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "pearson": self.pearson,
            "max_abs_error": self.max_abs_error,
            "samples": self.samples,
            "metric": self.metric,
            "threshold": self.threshold,
            "passed": self.passed,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FidelityRecord:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**data)


@dataclass(frozen=True)
class TimingRecord:
    """How fast a target ran against its backend's default precision, on the machine that made it.

    Both were timed in the same interleaved rounds, one tile per call, so a busy neighbour slows
    them alike; the figures hold for that machine only. ``note`` says plainly when the gain over
    the default is too small to be worth having (empty otherwise).

    Attributes
    ----------
    median_s
        Median seconds per call of the target.
    default_median_s
        Median seconds per call of the same network run at the backend's default precision.
    default_precision
        What the default computes in here (``bf16`` for OpenVINO on a CPU with AVX-512 BF16).
    speedup
        How many times faster than the default the target ran, paired round by round
        (:func:`ebai.core.latency.paired_speedup`: the median over rounds of the ratio of the two
        calls in that round; close to ``default_median_s / median_s`` on a steady machine, and
        fair on one whose speed switches state for seconds at a time).
    rounds
        Interleaved rounds timed.
    batch_shape
        Shape of the batch each call ran.
    note
        One line for the user when the gain is small, else ``""``.
    """

    median_s: float
    default_median_s: float
    default_precision: str
    speedup: float
    rounds: int
    batch_shape: tuple[int, ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {**asdict(self), "batch_shape": list(self.batch_shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingRecord:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**{**data, "batch_shape": tuple(data.get("batch_shape", ()))})


@dataclass(frozen=True)
class TargetRecord:
    """One lowered model inside the artifact (one backend at one precision).

    ``directory`` is the target's folder relative to the artifact root; ``files`` and ``entry``
    are relative to that folder, as the backend wrote them.
    """

    backend: str
    precision: str
    directory: str
    files: tuple[str, ...]
    entry: str
    options: Mapping[str, Any] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    fidelity: FidelityRecord | None = None
    timing: TimingRecord | None = None

    @property
    def key(self) -> str:
        """``backend:precision``, the name users pick a target by."""
        return f"{self.backend}:{self.precision}"

    def lowering(self) -> Lowering:
        """Return the :class:`Lowering` a backend's ``load`` takes."""
        return Lowering(
            backend=self.backend,
            precision=self.precision,
            files=self.files,
            entry=self.entry,
            options=self.options,
            record=self.record,
        )

    @classmethod
    def from_lowering(
        cls,
        lowering: Lowering,
        directory: str,
        *,
        calibration: Mapping[str, Any] | None = None,
        fidelity: FidelityRecord | None = None,
    ) -> TargetRecord:
        """Record a backend's :class:`Lowering` stored under ``directory``."""
        return cls(
            backend=lowering.backend,
            precision=lowering.precision,
            directory=directory,
            files=tuple(lowering.files),
            entry=lowering.entry,
            options=dict(lowering.options),
            record=dict(lowering.record),
            calibration=dict(calibration or {}),
            fidelity=fidelity,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "backend": self.backend,
            "precision": self.precision,
            "directory": self.directory,
            "files": list(self.files),
            "entry": self.entry,
            "options": dict(self.options),
            "record": dict(self.record),
            "calibration": dict(self.calibration),
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
            "timing": self.timing.to_dict() if self.timing else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetRecord:
        """Rebuild from :meth:`to_dict` output."""
        data = dict(data)
        data["files"] = tuple(data["files"])
        fid = data.get("fidelity")
        data["fidelity"] = FidelityRecord.from_dict(fid) if fid else None
        timing = data.get("timing")
        data["timing"] = TimingRecord.from_dict(timing) if timing else None
        return cls(**data)


@dataclass(frozen=True)
class Manifest:
    """Everything recorded about an artifact; ``files`` is filled in by the writer.

    Attributes
    ----------
    name
        Artifact name (the folder name without ``.ebai``).
    input, output
        Model input/output layout.
    targets
        Every lowered model in the artifact.
    reference
        Path of the fp32 ONNX of the (pruned, fine-tuned) model, or ``None``.
    source
        What the model came from: adapter name and config, model path, weights hash.
    pruning, fine_tuning
        What was done to the network before lowering, or ``None``.
    versions
        Package versions of the tools that made the artifact.
    created
        ISO 8601 time the artifact was written.
    files
        sha256 of every file, by path relative to the artifact root.
    """

    name: str
    input: InputSpec
    output: OutputSpec
    targets: tuple[TargetRecord, ...] = ()
    reference: str | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    pruning: Mapping[str, Any] | None = None
    fine_tuning: Mapping[str, Any] | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    files: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def target(self, backend: str | None = None, precision: str | None = None) -> TargetRecord:
        """Pick a target; with nothing given, the first one (the preferred, as written)."""
        for t in self.targets:
            if (backend is None or t.backend == backend) and (precision is None or t.precision == precision):
                return t
        have = ", ".join(t.key for t in self.targets) or "none"
        want = f"{backend or '*'}:{precision or '*'}"
        msg = f"artifact {self.name!r} holds no target {want} (it holds: {have}); pick one of those"
        raise ArtifactError(msg)

    def with_files(self, files: Mapping[str, str]) -> Manifest:
        """Return a copy with the file hashes set."""
        return replace(self, files=dict(files))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "schema": SCHEMA,
            "schema_version": self.schema_version,
            "name": self.name,
            "created": self.created,
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "reference": self.reference,
            "source": dict(self.source),
            "pruning": dict(self.pruning) if self.pruning is not None else None,
            "fine_tuning": dict(self.fine_tuning) if self.fine_tuning is not None else None,
            "targets": [t.to_dict() for t in self.targets],
            "versions": dict(self.versions),
            "files": dict(sorted(self.files.items())),
        }

    def to_json(self) -> str:
        """Serialise to indented JSON, ending with the content's own sha256 (:data:`DIGEST_KEY`)."""
        data = self.to_dict()
        data[DIGEST_KEY] = manifest_digest(data)
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Rebuild from :meth:`to_dict` output, refusing unknown schemas with a clear error."""
        if data.get("schema") != SCHEMA:
            msg = f"manifest schema is {data.get('schema')!r}, not {SCHEMA!r}: this is not an ebai artifact"
            raise ArtifactError(msg)
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            msg = (
                f"artifact schema version {version!r} is not supported by this ebai-core "
                f"(reads up to {SCHEMA_VERSION}): upgrade with pip install -U ebai-core"
            )
            raise ArtifactError(msg)
        try:
            return cls(
                name=data["name"],
                input=InputSpec.from_dict(data["input"]),
                output=OutputSpec.from_dict(data["output"]),
                targets=tuple(TargetRecord.from_dict(t) for t in data.get("targets", [])),
                reference=data.get("reference"),
                source=data.get("source") or {},
                pruning=data.get("pruning"),
                fine_tuning=data.get("fine_tuning"),
                versions=data.get("versions") or {},
                created=data.get("created", ""),
                files=data.get("files") or {},
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"manifest is malformed ({exc}): the artifact is damaged, recreate it"
            raise ArtifactError(msg) from exc
