"""CPU feature detection from /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

from ebai.core.hardware import cpu_info

CPUINFO = """\
processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 9R14 96-Core Processor
flags		: fpu vme sse sse2 avx avx2 avx512f avx512_vnni avx512_bf16 sha_ni

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD EPYC 9R14 96-Core Processor
flags		: fpu vme sse sse2 avx avx2 avx512f avx512_vnni avx512_bf16 sha_ni amx_tile
"""


def test_cpu_info_parses_model_and_features(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO, encoding="utf-8")
    info = cpu_info(path)
    assert info.model == "AMD EPYC 9R14 96-Core Processor"
    # the first processor's flags, in the order shown to users
    assert info.features == ("AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16")
    assert info.cores >= 1


def test_cpu_info_without_proc(tmp_path: Path) -> None:
    info = cpu_info(tmp_path / "absent")
    assert info.features == ()
    assert isinstance(info.model, str)


def test_cpu_info_intel_amx(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("model name : Intel Xeon\nflags : avx2 avx_vnni amx_tile amx_int8 amx_bf16\n", encoding="utf-8")
    assert cpu_info(path).features == ("AVX2", "AVX-VNNI", "AMX", "AMX-INT8", "AMX-BF16")
