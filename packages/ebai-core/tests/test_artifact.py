"""The artifact on disk: round trip, tamper detection, atomic and refused writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ebai.core.artifact import MANIFEST, Artifact, ArtifactWriter, write_artifact
from ebai.core.errors import ArtifactError, OutputExistsError
from ebai.core.files import atomic_dir, atomic_file
from ebai.core.manifest import SCHEMA_VERSION, Manifest


def _write(path: Path, manifest: Manifest, overwrite: bool = False, payload: bytes = b"weights") -> Manifest:
    with ArtifactWriter(path, overwrite=overwrite) as w:
        (w.root / "reference.onnx").write_bytes(b"onnx:" + payload)
        target = w.root / "openvino-int8"
        target.mkdir()
        (target / "model.xml").write_text("<net/>", encoding="utf-8")
        (target / "model.bin").write_bytes(payload * 100)
        return w.commit(manifest)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "denoiser.ebai"
    written = _write(path, manifest)
    art = Artifact.open(path)
    assert art.manifest == written
    assert set(art.manifest.files) == {"reference.onnx", "openvino-int8/model.xml", "openvino-int8/model.bin"}
    assert art.manifest.created  # filled in on commit
    assert art.target("openvino", "int8").fidelity.pearson == pytest.approx(0.995)
    assert art.file("openvino-int8/model.xml").read_text(encoding="utf-8") == "<net/>"
    # the JSON on disk is the manifest's own serialisation, schema first
    data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    assert data["schema"] == "ebai.artifact" and data["schema_version"] == SCHEMA_VERSION
    assert Manifest.from_dict(data) == written
    assert _leftovers(tmp_path) == []


def test_cache_folder_is_not_hashed(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest)
    art = Artifact.open(path)
    art.cache_dir.mkdir()
    (art.cache_dir / "engine.plan").write_bytes(b"x")
    Artifact.open(path)  # still verifies


def test_flipped_byte_is_detected(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest)
    blob = path / "openvino-int8" / "model.bin"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        Artifact.open(path)
    Artifact.open(path, verify=False)  # the manifest itself is still readable


def test_missing_file_is_detected(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest)
    (path / "reference.onnx").unlink()
    with pytest.raises(ArtifactError, match="'reference.onnx' is missing"):
        Artifact.open(path)


def test_extra_file_is_detected(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest)
    (path / "openvino-int8" / "sneaky.py").write_text("print('hi')", encoding="utf-8")
    with pytest.raises(ArtifactError, match="does not list"):
        Artifact.open(path)


def test_corrupt_manifest_is_refused(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest)
    text = (path / MANIFEST).read_text(encoding="utf-8")
    (path / MANIFEST).write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Artifact.open(path)


def test_malformed_manifest_is_refused(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest)
    data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    del data["input"]
    (path / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ArtifactError, match="malformed"):
        Artifact.open(path)


def test_future_schema_version_is_refused(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest)
    data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    data["schema_version"] = SCHEMA_VERSION + 1
    (path / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ArtifactError, match="pip install -U ebai-core"):
        Artifact.open(path)


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not an ebai artifact folder"):
        Artifact.open(tmp_path / "nothing.ebai")
    (tmp_path / "empty.ebai").mkdir()
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        Artifact.open(tmp_path / "empty.ebai")
    (tmp_path / "other.ebai").mkdir()
    (tmp_path / "other.ebai" / MANIFEST).write_text('{"schema": "something-else"}', encoding="utf-8")
    with pytest.raises(ArtifactError, match="this is not an ebai artifact"):
        Artifact.open(tmp_path / "other.ebai")


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_nothing(tmp_path: Path, manifest: Manifest, interrupt: type[BaseException]) -> None:
    path = tmp_path / "a.ebai"
    with pytest.raises(interrupt), ArtifactWriter(path) as w:
        (w.root / "reference.onnx").write_bytes(b"half")
        raise interrupt("stop")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_interrupted_replacement_keeps_old_artifact(
    tmp_path: Path, manifest: Manifest, interrupt: type[BaseException]
) -> None:
    path = tmp_path / "a.ebai"
    old = _write(path, manifest, payload=b"old")
    with pytest.raises(interrupt), ArtifactWriter(path, overwrite=True) as w:
        (w.root / "reference.onnx").write_bytes(b"new")
        raise interrupt("stop")
    art = Artifact.open(path)
    assert art.manifest == old
    assert (path / "reference.onnx").read_bytes() == b"onnx:old"
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest, payload=b"old")
    new = _write(path, manifest, overwrite=True, payload=b"new")
    assert Artifact.open(path).manifest == new
    assert (path / "reference.onnx").read_bytes() == b"onnx:new"
    assert _leftovers(tmp_path) == []


def test_existing_output_is_refused(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    _write(path, manifest)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    with pytest.raises(OutputExistsError, match="--overwrite"):
        ArtifactWriter(path)
    with pytest.raises(OutputExistsError):
        write_artifact(path, manifest, {})
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before


def test_uncommitted_writer_publishes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.ebai"
    with pytest.raises(ArtifactError, match="not committed"), ArtifactWriter(path) as w:
        (w.root / "x").write_bytes(b"x")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_commit_checks_listed_files(tmp_path: Path, manifest: Manifest) -> None:
    path = tmp_path / "a.ebai"
    with pytest.raises(ArtifactError, match="no such file was written"), ArtifactWriter(path) as w:
        (w.root / "reference.onnx").write_bytes(b"x")
        w.commit(manifest)
    assert not path.exists()


def test_write_artifact_copies_files(tmp_path: Path, manifest: Manifest) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("ref.onnx", "m.xml", "m.bin"):
        (src / name).write_bytes(name.encode())
    art = write_artifact(
        tmp_path / "b.ebai",
        manifest,
        {
            "reference.onnx": src / "ref.onnx",
            "openvino-int8/model.xml": src / "m.xml",
            "openvino-int8/model.bin": src / "m.bin",
        },
    )
    assert art.manifest.files.keys() == {"reference.onnx", "openvino-int8/model.xml", "openvino-int8/model.bin"}


def test_atomic_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.txt"
    with atomic_file(path) as tmp:
        assert tmp != path and tmp.parent == path.parent
        tmp.write_text("one", encoding="utf-8")
        assert not path.exists()  # nothing visible until the block ends
    assert path.read_text(encoding="utf-8") == "one"

    with pytest.raises(OutputExistsError):
        with atomic_file(path):
            pass
    for interrupt in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(interrupt), atomic_file(path, overwrite=True) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise interrupt("stop")
        assert path.read_text(encoding="utf-8") == "one"
        assert os.listdir(path.parent) == ["out.txt"]

    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text("two", encoding="utf-8")
    assert path.read_text(encoding="utf-8") == "two"
    assert os.listdir(path.parent) == ["out.txt"]


def test_atomic_dir(tmp_path: Path) -> None:
    path = tmp_path / "out"
    with atomic_dir(path) as tmp:
        (tmp / "a").write_text("a", encoding="utf-8")
        assert not path.exists()
    assert (path / "a").read_text(encoding="utf-8") == "a"
    with pytest.raises(ValueError), atomic_dir(path, overwrite=True) as tmp:
        (tmp / "b").write_text("b", encoding="utf-8")
        raise ValueError("stop")
    assert sorted(os.listdir(path)) == ["a"]
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_outputs_get_default_permissions(tmp_path: Path, manifest: Manifest) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    with atomic_file(tmp_path / "f.txt") as tmp:
        tmp.write_text("x", encoding="utf-8")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    _write(tmp_path / "a.ebai", manifest)
    assert (tmp_path / "a.ebai").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "a.ebai" / MANIFEST).stat().st_mode & 0o777 == 0o666 & ~mask


def test_timing_against_the_default_round_trips_and_older_manifests_read(tmp_path: Path, manifest: Manifest) -> None:
    from dataclasses import replace

    from ebai.core.manifest import TimingRecord

    timing = TimingRecord(
        median_s=0.011,
        default_median_s=0.033,
        default_precision="bf16",
        speedup=3.0,
        rounds=10,
        batch_shape=(1, 1, 8, 32, 32),
        note="",
    )
    timed = replace(manifest, targets=(replace(manifest.targets[0], timing=timing),))
    path = tmp_path / "t.ebai"
    _write(path, timed)
    assert Artifact.open(path).manifest.targets[0].timing == timing
    # a version-1 manifest (before timing was recorded) still reads, without timing
    data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    data["schema_version"] = 1
    del data["targets"][0]["timing"]
    assert Manifest.from_dict(data).targets[0].timing is None
