"""``train.amp``: "auto" is bf16 autocast only where the device computes bf16 natively (emulated bf16 on an AVX2
CPU is ~50x slower than float32 for a matmul); an explicit "bf16" where it is emulated warns; recipes say "auto"."""
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from zoo.finetune import engine

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def _flags(monkeypatch, flags):
    monkeypatch.setattr(engine, "_cpu_flags", lambda: set(flags))


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "fma"}, False),                                          # e.g. AMD EPYC without AVX512
    ({"avx2", "avx512f", "avx512bw"}, False),                          # AVX512 without its BF16 extension
    ({"avx2", "avx512f", "avx512_bf16"}, True),
    ({"avx2", "amx_tile", "amx_bf16"}, True),
])
def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, flags, native):
    _flags(monkeypatch, flags)
    assert engine.bf16_native(CPU) is native
    ctx, used = engine._autocast("auto", CPU)
    assert used == ("bf16" if native else None)
    with ctx():
        y = torch.randn(4, 4) @ torch.randn(4, 4)
    assert y.dtype == (torch.bfloat16 if native else torch.float32)


def test_explicit_bf16_where_it_is_emulated_warns_and_still_applies(monkeypatch):
    _flags(monkeypatch, {"avx2"})
    with pytest.warns(UserWarning, match="amp=bf16.*emulated.*amp=auto"):
        ctx, used = engine._autocast("bf16", CPU)
    assert used == "bf16"
    _flags(monkeypatch, {"avx512_bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine._autocast("bf16", CPU)


def test_off_is_off_everywhere(monkeypatch):
    _flags(monkeypatch, {"avx512_bf16"})
    assert engine._autocast("off", CPU)[1] is None


def test_without_cpuinfo_the_onednn_probe_decides(monkeypatch):
    monkeypatch.setattr(engine, "_cpu_flags", lambda: None)
    assert engine.bf16_native(CPU) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_recipes_leave_the_precision_to_the_device():
    bad = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        amp = (yaml.safe_load(path.read_text()).get("train") or {}).get("amp", "auto")
        if amp not in ("auto", "off", False):
            bad.append(f"{path.relative_to(ROOT)}: amp {amp!r}")
    assert not bad, "recipes must not force bf16 (emulated, ~50x slower, on CPUs without native bf16):\n" + "\n".join(bad)
