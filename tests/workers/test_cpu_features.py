"""The warning an 8-bit int8 export earns on an x86 CPU without VNNI, where onnxruntime's int8
kernel can saturate, and no warning elsewhere."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from workers import Embedder, cpu_features
from workers.cpu_features import cpu_flags, int8_saturation_warning
from workers.model_dir import read_card

AVX2_ONLY = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})


@pytest.fixture
def on_x86(monkeypatch):
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")


def test_flags_come_from_the_first_processor_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_vnni\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") is None


def test_an_8_bit_int8_export_without_vnni_is_told_to_use_7_bit_weights(minilm_int8_dir, on_x86):
    card = read_card(minilm_int8_dir)
    warning = int8_saturation_warning(card, lambda: AVX2_ONLY)
    assert warning is not None and "--weight-bits 7" in warning
    assert int8_saturation_warning(dataclasses.replace(card, weight_bits=None), lambda: AVX2_ONLY)


def test_no_warning_with_vnni_7_bit_weights_a_float_export_or_unknown_flags(
    minilm_dir, minilm_int8_dir, on_x86
):
    int8, fp32 = read_card(minilm_int8_dir), read_card(minilm_dir)
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert int8_saturation_warning(int8, lambda flag=vnni: AVX2_ONLY | {flag}) is None
    assert (
        int8_saturation_warning(dataclasses.replace(int8, weight_bits=7), lambda: AVX2_ONLY) is None
    )
    assert int8_saturation_warning(fp32, lambda: AVX2_ONLY) is None
    assert int8_saturation_warning(int8, lambda: None) is None


def test_loading_the_export_on_such_a_cpu_logs_the_warning(
    minilm_int8_dir, on_x86, monkeypatch, caplog
):
    import workers.embedder as embedder_module

    monkeypatch.setattr(embedder_module, "cpu_flags", lambda: AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="workers.embedder"):
        Embedder.load(minilm_int8_dir, canary=False)
    assert any("--weight-bits 7" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(embedder_module, "cpu_flags", lambda: AVX2_ONLY | {"avx512_vnni"})
    with caplog.at_level(logging.WARNING, logger="workers.embedder"):
        Embedder.load(minilm_int8_dir, canary=False)
    assert not any("weight-bits" in r.getMessage() for r in caplog.records)
