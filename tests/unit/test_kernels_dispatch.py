"""RAYREC_KERNELS dispatch: auto falls back quietly, forced choices fail loudly."""

from __future__ import annotations

import pytest
import torch

from rayrec.ops_kernels import (
    KernelUnavailableError,
    _dispatch,
    linear_cross_entropy,
    resolve_backend,
)


def test_auto_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("RAYREC_KERNELS", raising=False)
    assert resolve_backend("op", "cpu") == "reference"
    monkeypatch.setenv("RAYREC_KERNELS", "auto")
    assert resolve_backend("op", "cpu") == "reference"
    # even with the interpreter on, auto keeps CPU tensors on the (much faster) reference
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("op", "cpu") == "reference"


def test_reference_forced_always_works(monkeypatch):
    monkeypatch.setenv("RAYREC_KERNELS", "reference")
    assert resolve_backend("op", "cpu") == "reference"
    assert resolve_backend("op", "cuda") == "reference"


def test_forced_cuda_is_an_error(monkeypatch):
    monkeypatch.setenv("RAYREC_KERNELS", "cuda")
    with pytest.raises(KernelUnavailableError, match="no CUDA C\\+\\+ kernel"):
        resolve_backend("linear_cross_entropy", "cpu")
    h, w = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(KernelUnavailableError, match="linear_cross_entropy"):
        linear_cross_entropy(h, w, torch.tensor([0, 1]))


def test_forced_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailableError, match="CUDA tensors|not installed"):
        resolve_backend("topk_scores", "cpu", "triton")


def test_forced_triton_without_triton_package(monkeypatch):
    monkeypatch.setattr(_dispatch, "_triton_import_error", lambda: "the 'triton' package is not installed")
    with pytest.raises(KernelUnavailableError, match="not installed"):
        resolve_backend("gru_step", "cuda", "triton")
    assert resolve_backend("gru_step", "cuda", "auto") == "reference"


def test_op_without_triton_falls_back_or_fails():
    assert resolve_backend("x", "cuda", "auto", has_triton=False) == "reference"
    with pytest.raises(KernelUnavailableError, match="no Triton implementation"):
        resolve_backend("x", "cuda", "triton", has_triton=False)


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("RAYREC_KERNELS", "fastest")
    with pytest.raises(ValueError, match="RAYREC_KERNELS"):
        resolve_backend("op", "cpu")


def test_backend_argument_overrides_env(monkeypatch):
    monkeypatch.setenv("RAYREC_KERNELS", "cuda")
    assert resolve_backend("op", "cpu", "reference") == "reference"
