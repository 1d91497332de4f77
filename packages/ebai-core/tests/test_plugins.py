"""Plugin discovery through (fake) entry points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ebai.core import plugins
from ebai.core.artifact import Artifact, ArtifactWriter
from ebai.core.errors import BackendUnavailableError, InputError, MissingDependencyError, PluginNotFoundError
from ebai.core.interfaces import Backend, Engine, Lowering
from ebai.core.manifest import Manifest, TargetRecord
from ebai.core.plugins import ADAPTERS, BACKENDS, PluginSpec, get_adapter, get_backend, get_plugin, plugin_names
from ebai.core.specs import InputSpec, OutputSpec
from ebai.core.tiling import predict_tiled


class DoublingEngine(Engine):
    backend = "fake"
    precision = "fp32"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return batch * 2


class FakeBackend(Backend):
    name = "fake"

    def lower(self, onnx_path, out_dir, *, precision, input_spec, calibration, options=None) -> Lowering:
        (out_dir / "model.bin").write_bytes(onnx_path.read_bytes())
        return Lowering(backend="fake", precision=precision, files=("model.bin",), entry="model.bin")

    def load(self, directory: Path, lowering: Lowering, **options) -> Engine:
        assert (directory / lowering.entry).is_file()
        return DoublingEngine()


def test_fake_backend_is_discovered_and_runs(tmp_path: Path, fake_entry_points, fake_module) -> None:
    fake_module("ebai_fake_impl", FakeBackend=FakeBackend)
    fake_module(
        "ebai_fake_plugin", backend=PluginSpec(name="fake", package="ebai-fake", target="ebai_fake_impl:FakeBackend")
    )
    fake_entry_points({BACKENDS: {"fake": "ebai_fake_plugin:backend"}})
    assert plugin_names(BACKENDS) == ["fake"]
    assert get_plugin(BACKENDS, "fake").package == "ebai-fake"
    backend = get_backend("fake")
    assert isinstance(backend, FakeBackend)

    # an artifact whose target names the backend loads its engine through the plugin
    spec = InputSpec(axes="bcyx", channels=1, tile=(8, 8))
    path = tmp_path / "m.ebai"
    with ArtifactWriter(path) as w:
        (w.root / "reference.onnx").write_bytes(b"onnx")
        (w.root / "fake-fp32").mkdir()
        lowering = backend.lower(
            w.root / "reference.onnx", w.root / "fake-fp32", precision="fp32", input_spec=spec, calibration=[]
        )
        w.commit(
            Manifest(
                name="m",
                input=spec,
                output=OutputSpec(axes="bcyx", channels=1),
                targets=(TargetRecord.from_lowering(lowering, "fake-fp32"),),
                reference="reference.onnx",
            )
        )
    image = np.arange(20 * 12, dtype=np.float32).reshape(1, 20, 12)
    with Artifact.open(path).load_engine("fake", "fp32") as engine:
        out = predict_tiled(image, engine, spec.tile)
    assert np.allclose(out, image * 2)


def test_missing_module_gives_install_line(fake_entry_points, fake_module) -> None:
    spec = PluginSpec(
        name="cellpose",
        package="ebai-adapters",
        target="ebai_missing_impl:Adapter",
        requires=("ebai_no_such_module_xyz",),
        install="pip install 'ebai-adapters[cellpose]'",
    )
    avail = spec.is_available()
    assert not avail
    assert avail.reason == "needs ebai_no_such_module_xyz: pip install 'ebai-adapters[cellpose]'"
    fake_module("ebai_fake_adapters", cellpose=spec)
    fake_entry_points({ADAPTERS: {"cellpose": "ebai_fake_adapters:cellpose"}})
    with pytest.raises(MissingDependencyError, match=r"pip install 'ebai-adapters\[cellpose\]'"):
        get_adapter("cellpose")


def test_default_install_line_and_failed_load() -> None:
    spec = PluginSpec(name="x", package="ebai-x", target="ebai_no_such_module_xyz:Thing")
    assert spec.install_line == "pip install ebai-x"
    assert spec.is_available()  # nothing required
    with pytest.raises(MissingDependencyError, match="pip install ebai-x"):
        spec.load()


def test_probe_decides_availability(fake_entry_points, fake_module) -> None:
    no_gpu = PluginSpec(name="gpu", package="ebai-gpu", target="m:C", probe=lambda: "no NVIDIA GPU found")
    assert no_gpu.is_available().reason == "no NVIDIA GPU found"

    def boom() -> str | None:
        raise OSError("driver exploded")

    assert "availability check failed: driver exploded" in PluginSpec("b", "p", "m:C", probe=boom).is_available().reason
    fake_module("ebai_fake_gpu", backend=no_gpu)
    fake_entry_points({BACKENDS: {"gpu": "ebai_fake_gpu:backend"}})
    with pytest.raises(BackendUnavailableError, match="backend 'gpu' is not available: no NVIDIA GPU found"):
        get_backend("gpu")


def test_known_backend_not_installed(fake_entry_points) -> None:
    fake_entry_points({})
    with pytest.raises(PluginNotFoundError) as info:
        get_backend("tensorrt")
    assert str(info.value) == "backend 'tensorrt' is not installed: pip install 'ebai-tensorrt[cu12]'"


def test_unknown_plugin_lists_installed(fake_entry_points, fake_module) -> None:
    fake_module("ebai_fake_plugin2", backend=PluginSpec(name="fake", package="ebai-fake", target="x:y"))
    fake_entry_points({BACKENDS: {"fake": "ebai_fake_plugin2:backend"}})
    with pytest.raises(PluginNotFoundError, match="unknown backend 'nope': installed backends are fake"):
        get_backend("nope")


def test_broken_plugin_module(fake_entry_points, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ebai_broken_plugin_mod.py").write_text("raise RuntimeError('half-installed')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points({BACKENDS: {"broken": "ebai_broken_plugin_mod:backend"}})
    with pytest.raises(PluginNotFoundError, match=r"backend 'broken' is broken \(half-installed\): reinstall"):
        get_backend("broken")


def test_entry_point_not_naming_a_spec(fake_entry_points, fake_module) -> None:
    fake_module("ebai_fake_notspec", backend=object())
    fake_entry_points({BACKENDS: {"odd": "ebai_fake_notspec:backend"}})
    with pytest.raises(PluginNotFoundError, match="does not name a PluginSpec"):
        get_plugin(BACKENDS, "odd")


def test_only_the_requested_plugin_is_imported(fake_entry_points, fake_module, monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "ebai_never_imported_mod.py").write_text("raise RuntimeError('imported')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_module("ebai_fake_plugin3", backend=PluginSpec(name="fake", package="ebai-fake", target="x:y"))
    fake_entry_points({BACKENDS: {"fake": "ebai_fake_plugin3:backend", "other": "ebai_never_imported_mod:backend"}})
    assert get_plugin(BACKENDS, "fake").name == "fake"
    assert plugin_names(BACKENDS) == ["fake", "other"]


def test_real_discovery_reads_installed_entry_points() -> None:
    # the real lookup (no fakes) finds ebai-core's own command
    assert "info" in plugins.plugin_names(plugins.CLI)


def test_import_object_reads_modules_and_files(tmp_path) -> None:
    from ebai.core.plugins import import_object

    assert import_object("ebai.core.errors:InputError") is InputError
    assert import_object("ebai.core.plugins:PluginSpec.load") is PluginSpec.load  # dotted attribute
    helper = tmp_path / "helper_mod_xyz.py"
    helper.write_text("VALUE = 41\n", encoding="utf-8")
    user = tmp_path / "factory.py"
    user.write_text("from helper_mod_xyz import VALUE\n\ndef build():\n    return VALUE + 1\n", encoding="utf-8")
    assert import_object(f"{user}:build")() == 42  # the file's sibling import works
    assert import_object(f"{user}:build") is import_object(f"{user}:build")  # imported once
    with pytest.raises(FileNotFoundError):
        import_object(f"{tmp_path / 'missing.py'}:build")
    with pytest.raises(ModuleNotFoundError):
        import_object("ebai_no_such_module_xyz:thing")
    with pytest.raises(AttributeError):
        import_object("ebai.core.errors:NoSuchError")
