"""Which dtype the worker loads the model in: bfloat16 only where the CPU runs it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.worker.engine import cpu_flags, resolve_dtype

pytestmark = pytest.mark.unit
AVX2 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw"}


@pytest.mark.parametrize(
    ("requested", "on_cpu", "flags", "expected"),
    [
        ("auto", True, AVX2, "float32"),  # bfloat16 would be emulated: float32 is several times faster
        ("auto", True, AVX512, "auto"),
        ("auto", True, frozenset({"fp", "asimd", "bf16"}), "auto"),  # Arm with BF16
        ("auto", False, AVX2, "auto"),  # a GPU: vLLM decides
        ("bfloat16", True, AVX2, "bfloat16"),  # an explicit choice is kept
        ("auto", True, frozenset(), "float32"),  # unknown CPU: the safe choice
    ],
)
def test_auto_dtype_follows_the_cpu(requested: str, on_cpu: bool, flags: frozenset[str], expected: str) -> None:
    assert resolve_dtype(requested, on_cpu, flags) == expected  # type: ignore[arg-type]


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(x86) == {"fpu", "avx", "avx2", "fma"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
