"""The adapter SDK: base class, description round trip, config files, plugin registration, CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ebai.adapters import Adapter, TorchAdapter, build_adapter, normalization_from
from ebai.core import InputError, InputSpec, MissingDependencyError, ModelSource, Normalization, OutputSpec
from ebai.core.plugins import ADAPTERS, clear_cache, get_adapter, get_plugin, plugin_names


class Doubler(Adapter):
    """A minimal adapter: a 1x1 convolution that doubles its input."""

    name = "doubler"
    path_keys = ("notes",)

    def __init__(self, tile: int = 16, factor: float = 2.0, notes: str | None = None) -> None:
        self.factor = float(factor)
        self.notes = notes
        self.input_spec = InputSpec(axes="bcyx", channels=1, tile=(tile, tile), normalization=Normalization("minmax"))

    @property
    def output_spec(self) -> OutputSpec:
        return OutputSpec(axes="bcyx", channels=1)

    def load_module(self) -> Any:
        import torch

        conv = torch.nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            conv.weight.fill_(self.factor)
        return conv.eval()

    def config(self) -> dict[str, Any]:
        return {"tile": self.input_spec.tile[0], "factor": self.factor, "notes": self.notes}


def test_adapter_is_abstract() -> None:
    with pytest.raises(TypeError):
        Adapter()  # type: ignore[abstract]


def test_adapter_is_a_model_source() -> None:
    assert isinstance(Doubler(), ModelSource)


def test_default_preprocess_checks_and_normalises() -> None:
    adapter = Doubler()
    out = adapter.preprocess(np.arange(16 * 16, dtype=np.uint16).reshape(1, 16, 16))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(InputError, match="channels"):
        adapter.preprocess(np.zeros((2, 16, 16)))
    with pytest.raises(InputError, match="2D"):
        adapter.preprocess(np.zeros((16, 16)))


def test_defaults_of_postprocess_and_evaluate() -> None:
    adapter = Doubler()
    out = adapter.postprocess(np.ones((1, 4, 4), np.float64))
    assert out.dtype == np.float32
    assert adapter.evaluate(out, out) == {}


def test_describe_round_trip() -> None:
    adapter = Doubler(tile=8, factor=3.0)
    described = adapter.describe()
    assert described == {"adapter": "doubler", "config": {"tile": 8, "factor": 3.0, "notes": None}}
    json.dumps(described)
    again = Doubler.from_config(described["config"])
    assert again.describe() == described


def test_from_config_refuses_unknown_keys() -> None:
    with pytest.raises(InputError, match="does not take tilesize: accepted settings are tile, factor, notes"):
        Doubler.from_config({"tilesize": 8})


def test_describe_refuses_values_json_cannot_hold() -> None:
    adapter = Doubler(notes=object())  # type: ignore[arg-type]
    with pytest.raises(InputError, match="JSON"):
        adapter.describe()


def test_from_file_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    cfg = tmp_path / "doubler.yaml"
    cfg.write_text("adapter: doubler\ntile: 8\nnotes: readme.txt\n")
    adapter = Doubler.from_file(cfg)
    assert adapter.notes == str((tmp_path / "readme.txt").resolve())
    assert adapter.input_spec.tile == (8, 8)


@pytest.mark.parametrize(
    ("text", "match"),
    [("- a\n- b\n", "not a mapping"), ("tile: [8\n", "not valid YAML")],
)
def test_from_file_errors(tmp_path: Path, text: str, match: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(InputError, match=match):
        Doubler.from_file(cfg)
    with pytest.raises(InputError, match="does not exist"):
        Doubler.from_file(tmp_path / "missing.yaml")


def test_predict_tiles_and_matches_direct_inference() -> None:
    adapter = Doubler(tile=16)
    image = np.random.default_rng(0).uniform(0, 10, size=(1, 40, 24)).astype(np.float32)
    out = adapter.predict(image)
    expected = 2.0 * adapter.preprocess(image)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_normalization_from() -> None:
    assert normalization_from(None) == Normalization()
    assert normalization_from("zscore").kind == "zscore"
    assert normalization_from({"kind": "percentile", "low": 2, "high": 98}) == Normalization("percentile", 2, 98)
    norm = Normalization("minmax")
    assert normalization_from(norm) is norm
    with pytest.raises(InputError, match="not understood"):
        normalization_from({"kind": "percentile", "lo": 1})
    with pytest.raises(InputError):
        normalization_from("histogram")
    with pytest.raises(InputError):
        normalization_from(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- plugins
def test_builtin_adapters_are_registered() -> None:
    names = plugin_names(ADAPTERS)
    assert {"torch", "monai", "cellpose", "mmv_im2im"} <= set(names)
    assert get_adapter("torch") is TorchAdapter
    spec = get_plugin(ADAPTERS, "cellpose")
    assert spec.install_line == "pip install 'ebai-adapters[cellpose]'"
    for name in ("torch", "monai", "cellpose", "mmv_im2im"):
        assert get_plugin(ADAPTERS, name).package == "ebai-adapters"


def test_build_adapter_from_description(net_file: Path) -> None:
    adapter = TorchAdapter(f"{net_file}:build", axes="yx", channels=1, tile=16)
    again = build_adapter(adapter.describe())
    assert isinstance(again, TorchAdapter)
    assert again.describe() == adapter.describe()
    named = build_adapter("torch", adapter.config())
    assert named.describe() == adapter.describe()
    with pytest.raises(InputError, match="names no adapter"):
        build_adapter({"config": {}})


def test_missing_extra_gives_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "cellpose" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError) as err:
        get_adapter("cellpose")
    assert str(err.value) == "adapter 'cellpose' needs: pip install 'ebai-adapters[cellpose]'"

    from ebai.core.cli import cli

    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.strip().startswith("cellpose"))
    assert "unavailable: needs cellpose: pip install 'ebai-adapters[cellpose]'" in line


def test_ebai_info_lists_adapters() -> None:
    from ebai.core.cli import cli

    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["adapters"]}
    assert {"torch", "monai", "cellpose", "mmv_im2im"} <= set(rows)
    assert rows["torch"]["available"] is True
    assert rows["monai"]["available"] is True


def test_importing_ebai_adapters_imports_no_tool() -> None:
    code = (
        "import sys, ebai.adapters\n"
        "heavy = [m for m in ('torch', 'monai', 'cellpose', 'mmv_im2im', 'bioio', 'openvino') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_clear_cache_keeps_lookups_working() -> None:
    clear_cache()
    assert get_adapter("torch") is TorchAdapter


def test_describe_of_every_builtin_is_json(net_file: Path) -> None:
    adapter = TorchAdapter(f"{net_file}:build", axes="bcyx", channels=1, tile=(16, 16))
    described: Mapping[str, Any] = adapter.describe()
    assert json.loads(json.dumps(described)) == described


def test_empty_config_file_has_no_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("")
    assert Doubler.read_config(cfg) == {}
