"""The ``.pt2`` file: a ``torch.export`` program with a dynamic batch axis, saved and loaded safely.

Why ``torch.export`` and not TorchScript or a pickled module: the program is the network's graph
of ATen operators written as JSON plus its weights as raw tensor bytes, so loading it needs
neither the model's source code nor the unpickling of Python objects, and the graph can be run
eagerly, compiled with ``torch.compile`` or lowered further.

What ``torch.export.load`` does (read in torch 2.13's ``torch/export/pt2_archive/_package.py``
and ``torch/_export/serde/serialize.py``): it opens the zip archive, parses the graph JSON, and
rebuilds plain tensors from raw bytes with ``torch.as_strided``; but it calls
``torch.load(weights_only=False)`` for tensors flagged ``use_pickle`` (tensor subclasses),
``pickle.loads`` for "opaque" constants and TorchBind's unpickler for custom objects, falls back
to ``torch.load(weights_only=False)`` when the sample inputs do not load with the safe unpickler,
and ``ExportedProgram.module()`` compiles the archive's ``guards_code`` strings with ``exec`` into a
check that runs them on every call (a file whose guard is ``open('x', 'w')`` writes ``x`` when the
loaded module is called; checked here with torch 2.13). So
:func:`check_archive` reads the archive first, with the stdlib and the safe unpickler only, and
refuses any file that would reach one of those paths; ebai's own files never do (plain tensors,
no guards, ATen operators only).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from ebai.core.errors import ArtifactError, InputError

__all__ = ["MAX_BATCH", "check_archive", "export_program", "load_program", "save_program"]

#: Largest batch the exported program accepts (the batch axis is dynamic from 1 to this).
MAX_BATCH = 4096
#: Operator name prefixes a program may call: ATen and prims operators and Python's ``operator``.
_ALLOWED_TARGETS = ("torch.ops.aten.", "torch.ops.prims.", "_operator.")


def _refuse(path: Path, why: str) -> ArtifactError:
    return ArtifactError(
        f"{str(path)!r} is not a usable torch.export program ({why}): recreate it with ebai compress --target torch"
    )


def export_program(module: Any, sample_shape: tuple[int, ...]) -> Any:
    """Export ``module`` (eval mode, CPU) for inputs ``(N, *sample_shape)`` with ``N`` from 1 to :data:`MAX_BATCH`.

    The example batch has two samples: torch.export specialises a size-1 axis to a constant.
    Raises :class:`InputError` when the network cannot be captured as one graph (data-dependent
    control flow, Python side effects), naming torch's reason.
    """
    import torch
    from torch.export import Dim

    example = torch.zeros((2, *sample_shape), dtype=torch.float32)
    batch = Dim("batch", min=1, max=MAX_BATCH)
    try:
        with torch.no_grad():
            program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"torch.export could not capture the network with a dynamic batch axis ({first}): use the openvino or tensorrt target for it"
        raise InputError(msg) from exc
    for tensor in (*program.state_dict.values(), *program.constants.values()):
        if isinstance(tensor, torch.Tensor) and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            msg = f"the network holds a {type(tensor).__name__} tensor, which a .pt2 file can only store by pickling: convert it to a plain tensor"
            raise InputError(msg)
    return program


def save_program(program: Any, path: Path) -> None:
    """Write ``program`` to ``path`` with ``torch.export.save`` (the caller makes the write atomic)."""
    import torch

    torch.export.save(program, str(path))


def _json(archive: zipfile.ZipFile, name: str) -> Any:
    return json.loads(archive.read(name).decode("utf-8"))


def check_archive(path: Path) -> dict[str, Any]:
    """Read the ``.pt2`` file without torch's loader and refuse anything that would run code.

    Checks: a zip in the ``pt2`` archive format whose members all pass their CRC-32 check, holding
    one program; every weight and constant a
    plain tensor stored as raw bytes (no pickled payloads, no legacy ``.pt`` weights, no custom
    or opaque objects); no ``guards_code``; only ATen/prims operators in the graph; sample inputs
    that the safe unpickler (``torch.load(weights_only=True)``) reads. Returns a summary (operator
    count, torch version that wrote it). Raises :class:`ArtifactError` in one line otherwise.
    """
    import io

    path = Path(path)
    if not path.is_file():
        msg = f"torch.export program {str(path)!r} is missing: the artifact is incomplete, recreate it"
        raise ArtifactError(msg)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _refuse(path, f"not a readable zip archive: {exc}") from exc
    with archive:
        try:
            bad = archive.testzip()  # every member's CRC-32: torch's own reader does not check them
            if bad is not None:
                raise _refuse(path, f"member {bad} is damaged (CRC mismatch)")
            names = archive.namelist()
            roots = {n.split("/", 1)[0] for n in names}
            if len(roots) != 1:
                raise _refuse(path, f"expected one archive folder, found {len(roots)}")
            root = roots.pop()

            def inside(rel: str) -> str:
                return f"{root}/{rel}"

            if inside("archive_format") not in names or archive.read(inside("archive_format")).strip() != b"pt2":
                raise _refuse(path, "no pt2 archive_format record")
            models = [n for n in names if n.startswith(inside("models/")) and n.endswith(".json")]
            if [n.rsplit("/", 1)[-1] for n in models] != ["model.json"]:
                raise _refuse(path, f"expected exactly models/model.json, found {len(models)} program(s)")
            for legacy in ("data/weights/model.pt", "data/constants/model.pt"):
                if inside(legacy) in names:
                    raise _refuse(path, f"legacy pickled {legacy}")
            for kind in ("weights", "constants"):
                config = _json(archive, inside(f"data/{kind}/model_{kind}_config.json"))
                for fqn, payload in (config.get("config") or {}).items():
                    if payload.get("use_pickle"):
                        raise _refuse(path, f"{kind[:-1]} {fqn!r} is stored pickled")
                    if kind == "constants" and not str(payload.get("path_name", "")).startswith("tensor"):
                        raise _refuse(path, f"constant {fqn!r} is a Python object, not a tensor")
            program = _json(archive, models[0])
            if program.get("guards_code"):
                raise _refuse(path, "it carries guards_code, which loading would execute")
            graph = program["graph_module"]["graph"]
            if graph.get("custom_obj_values"):
                raise _refuse(path, "it holds custom (TorchBind) objects")
            targets = [str(node.get("target", "")) for node in graph.get("nodes", [])]
            odd = sorted({t for t in targets if not t.startswith(_ALLOWED_TARGETS)})
            if odd:
                raise _refuse(path, f"operator(s) {', '.join(odd[:3])} outside ATen")
            samples = inside("data/sample_inputs/model.pt")
            if samples in names:
                import torch

                blob = archive.read(samples)
                try:
                    if blob:
                        torch.load(io.BytesIO(blob), weights_only=True)
                except Exception as exc:  # torch would retry with the unsafe unpickler: refuse instead
                    raise _refuse(path, "its sample inputs hold objects the safe unpickler refuses") from exc
        except ArtifactError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError, zipfile.BadZipFile, OSError, RuntimeError) as exc:
            # damaged members (CRC errors, truncated JSON) or a sample the safe unpickler refuses
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _refuse(path, f"damaged or unexpected content: {why}") from exc
    return {"operators": len(targets), "written_by_torch": program.get("torch_version", "")}


def load_program(path: Path) -> Any:
    """Check ``path`` with :func:`check_archive`, then load it with ``torch.export.load``."""
    import torch

    check_archive(path)
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _refuse(Path(path), f"torch {torch.__version__} cannot read it: {why}") from exc
