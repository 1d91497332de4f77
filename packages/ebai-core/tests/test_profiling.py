"""Per-layer profiles: grouping by layer type and precision, the side-by-side table, engines without one."""

from __future__ import annotations

import numpy as np
import pytest

from ebai.core.errors import InputError
from ebai.core.interfaces import Engine
from ebai.core.profiling import LayerProfile, profile_table, profiles_in_turns


def _records() -> list[tuple[str, str, str, str, float]]:
    # seconds summed over 2 calls
    return [
        ("conv1", "Convolution", "i8", "brgconv_avx512_amx_I8", 0.004),
        ("conv2", "Convolution", "i8", "brgconv_avx512_amx_1x1_I8", 0.002),
        ("conv3", "Convolution", "bf16", "brgconv_avx512_amx_bf16", 0.002),
        ("norm1", "MVN", "bf16", "jit_avx512_bf16", 0.0016),
        ("r1", "Reorder", "i8", "jit_uni_I8", 0.0004),
        ("tiny", "Reshape", "i8", "unknown_I8", 0.000002),
    ]


def test_layers_are_grouped_by_type_and_precision_per_call() -> None:
    p = LayerProfile.from_layers(_records(), calls=2)
    assert [(g.layer_type, g.precision, g.layers) for g in p.groups] == [
        ("Convolution", "i8", 2),
        ("Convolution", "bf16", 1),
        ("MVN", "bf16", 1),
        ("Reorder", "i8", 1),
        ("Reshape", "i8", 1),
    ]
    first = p.groups[0]
    assert first.seconds == pytest.approx(0.003) and first.kernels == (
        "brgconv_avx512_amx_I8",
        "brgconv_avx512_amx_1x1_I8",
    )
    assert p.total_s == pytest.approx(0.005001)
    assert p.seconds("Convolution") == pytest.approx(0.004) and p.seconds(precision="i8") == pytest.approx(0.003201)
    assert p.layers["conv3"] == ("Convolution", "bf16", pytest.approx(0.001))


def test_table_puts_profiles_side_by_side() -> None:
    int8 = LayerProfile.from_layers(_records(), calls=2)
    default = LayerProfile.from_layers([("conv1", "Convolution", "bf16", "brgconv_avx512_amx_bf16", 0.008)], calls=1)
    lines = profile_table({"default": default, "int8": int8, "eager": None}).splitlines()
    assert lines[0].split() == ["layer", "type", "precision", "kernel", "default", "ms", "(%)", "int8", "ms", "(%)"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[2:-1]}
    assert rows[("Convolution", "bf16")][-4:] == ["8.00", "(100%)", "1.00", "(20%)"]
    assert rows[("Convolution", "i8")][-3:] == ["-", "3.00", "(60%)"]
    assert rows[("other", "1")][-2:] == ["0.00", "(0%)"]  # the Reshape, under 0.5% of every total
    assert ("Reshape", "i8") not in rows
    assert lines[-2].split() == ["total", "8.00", "5.00"]
    assert lines[-1] == "eager: its backend gives no per-layer profile"
    assert profile_table({"eager": None}) == "eager: its backend gives no per-layer profile"


def test_an_engine_without_counters_gives_no_profile() -> None:
    class Identity(Engine):
        def infer(self, batch: np.ndarray) -> np.ndarray:
            return batch

    assert Identity().profile(np.zeros((1, 1, 4, 4), np.float32)) is None


def test_profiles_are_taken_in_turns_round_by_round() -> None:
    order: list[str] = []

    class Counting(Engine):
        def __init__(self, name: str) -> None:
            self.name = name

        def infer(self, batch: np.ndarray) -> np.ndarray:
            return batch

        def profile(self, batch: np.ndarray, calls: int = 5) -> LayerProfile:
            order.append(self.name)
            return LayerProfile.from_layers([("c", "Convolution", "bf16", "k_bf16", 0.001 * len(order))], calls)

    x = np.zeros((1, 1, 4, 4), np.float32)
    runs = profiles_in_turns({"a": Counting("a"), "b": Counting("b")}, x, calls=2, rounds=3)
    assert order == ["a", "b"] * 3  # in turns, not all of a's rounds first
    assert [len(v) for v in runs.values()] == [3, 3]
    assert runs["b"][0].total_s > runs["a"][0].total_s  # each engine's profiles in round order
    assert runs["a"][1].total_s > runs["b"][0].total_s

    class Identity(Engine):
        def infer(self, batch: np.ndarray) -> np.ndarray:
            return batch

    with pytest.raises(InputError, match="counts no per-layer time"):
        profiles_in_turns({"eager": Identity()}, x, calls=1, rounds=1)
