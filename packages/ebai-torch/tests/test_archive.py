"""The .pt2 file: what loading checks before torch.export.load, and damaged files refused in one line."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ebai.core.errors import ArtifactError, InputError
from ebai.core.specs import InputSpec
from ebai.torch import TorchBackend, check_archive, load_program

SPEC = InputSpec(axes="bczyx", channels=1, tile=(8, 16, 16))


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm3d(4)
        self.up = torch.nn.ConvTranspose3d(4, 1, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.norm(self.conv(x))))[..., ::2, ::2, ::2]


@pytest.fixture(scope="module")
def program_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("art") / "model.ebai" / "torch-fp32"
    TorchBackend().lower_module(_Net().eval(), target, precision="fp32", input_spec=SPEC, calibration=[])
    return target / "model.pt2"


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the zip ``src`` to ``dst`` with ``change(name, data) -> data`` applied to every member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, change(item.filename, zin.read(item.filename)))
    return dst


def _json_edit(key_suffix: str, edit):
    def change(name: str, data: bytes) -> bytes:
        if not name.endswith(key_suffix):
            return data
        obj = json.loads(data)
        edit(obj)
        return json.dumps(obj).encode()

    return change


def _refused(path: Path, *phrases: str) -> None:
    with pytest.raises(ArtifactError) as info:
        load_program(path)
    text = str(info.value)
    assert "\n" not in text and "is not a usable torch.export program" in text
    for phrase in phrases:
        assert phrase in text


def test_good_file_passes_and_loads(program_file):
    summary = check_archive(program_file)
    assert summary["operators"] >= 4 and summary["written_by_torch"]
    program = load_program(program_file)
    x = torch.randn(3, 1, 8, 16, 16)
    assert program.module()(x).shape == (3, 1, 8, 16, 16)


def test_truncated_flipped_and_foreign_files_are_refused(program_file, tmp_path):
    data = program_file.read_bytes()
    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "cut.pt2", "not a readable zip archive")
    for suffix in ("models/model.json", "weights/weight_0"):
        flipped = bytearray(data)
        with zipfile.ZipFile(program_file) as z:
            member = next(i for i in z.infolist() if i.filename.endswith(suffix))
        name_len, extra_len = struct.unpack_from("<HH", data, member.header_offset + 26)
        start = member.header_offset + 30 + name_len + extra_len  # the member's bytes
        flipped[start + member.file_size // 2] ^= 0xFF
        (tmp_path / "flip.pt2").write_bytes(bytes(flipped))
        _refused(tmp_path / "flip.pt2", "is damaged (CRC mismatch)", suffix)
    (tmp_path / "text.pt2").write_text("not a program")
    _refused(tmp_path / "text.pt2")
    with pytest.raises(ArtifactError, match="is missing"):
        load_program(tmp_path / "absent.pt2")


def test_pickled_payloads_guard_code_and_foreign_operators_are_refused(program_file, tmp_path):
    def pickle_first(obj):
        first = next(iter(obj["config"].values()))
        first["use_pickle"] = True

    _refused(
        _rewrite(program_file, tmp_path / "p.pt2", _json_edit("model_weights_config.json", pickle_first)),
        "stored pickled",
    )

    def add_guard(obj):
        obj["guards_code"] = ["__import__('os').system('echo owned')"]

    _refused(_rewrite(program_file, tmp_path / "g.pt2", _json_edit("models/model.json", add_guard)), "guards_code")

    def foreign_op(obj):
        obj["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.evil.run.default"

    _refused(
        _rewrite(program_file, tmp_path / "o.pt2", _json_edit("models/model.json", foreign_op)),
        "torch.ops.evil.run.default",
    )

    def opaque_constant(obj):
        obj["config"]["x"] = {"path_name": "opaque_obj_0", "use_pickle": False}

    _refused(
        _rewrite(program_file, tmp_path / "c.pt2", _json_edit("model_constants_config.json", opaque_constant)),
        "is a Python object",
    )

    def evil_samples(name: str, data: bytes) -> bytes:
        if not name.endswith("sample_inputs/model.pt"):
            return data
        import io

        buf = io.BytesIO()
        torch.save({"x": _Net}, buf)  # a class: only the unsafe unpickler would build it
        return buf.getvalue()

    _refused(
        _rewrite(program_file, tmp_path / "s.pt2", evil_samples),
        "sample inputs hold objects the safe unpickler refuses",
    )


def test_the_checks_do_not_run_the_archive(program_file, tmp_path):
    """A guard-code payload is refused before torch.export.load / .module() could exec it."""
    marker = tmp_path / "ran"

    def add_guard(obj):
        obj["guards_code"] = [f"open({str(marker)!r}, 'w')"]

    bad = _rewrite(program_file, tmp_path / "g.pt2", _json_edit("models/model.json", add_guard))
    with pytest.raises(ArtifactError):
        load_program(bad)
    assert not marker.exists()


def test_backend_load_compares_the_recorded_sha256(program_file, tmp_path, user_cache):
    target = tmp_path / "model.ebai" / "torch-fp32"
    lowering = TorchBackend().lower_module(_Net().eval(), target, precision="fp32", input_spec=SPEC, calibration=[])
    other = tmp_path / "other"
    TorchBackend().lower_module(_Net().eval(), other, precision="fp32", input_spec=SPEC, calibration=[])
    shutil.copy(other / "model.pt2", target / "model.pt2")  # a valid program, but not this artifact's
    with pytest.raises(ArtifactError, match="differs from the one the artifact recorded"):
        TorchBackend().load(target, lowering, device="cpu", tune=False)


def test_network_torch_export_cannot_capture_is_a_one_line_input_error(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # control flow on values
                return x * 2
            return x

    with pytest.raises(InputError) as info:
        TorchBackend().lower_module(DataDependent(), tmp_path, precision="fp32", input_spec=SPEC, calibration=[])
    assert "\n" not in str(info.value) and "torch.export could not capture the network" in str(info.value)


def test_importing_ebai_torch_imports_no_torch():
    code = "import sys, ebai.torch; from ebai.torch._plugin import details; details(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
