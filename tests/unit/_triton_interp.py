"""Shared by the kernel tests: whether the Triton kernels of an op run in the CPU interpreter.

Each test module sets ``TRITON_INTERPRET=1`` before anything imports triton; if another
module imported the kernels first, they are compiled (GPU) functions and the Triton cases
skip with that reason instead of failing on a CPU-only machine.
"""

from __future__ import annotations

import importlib

import pytest


def triton_skip_reason(op: str, kernel: str) -> str | None:
    """None when ``rayrec.ops_kernels.<op>.triton_impl.<kernel>`` is interpreted, else why not."""
    try:
        impl = importlib.import_module(f"rayrec.ops_kernels.{op}.triton_impl")
        from triton.runtime.interpreter import InterpretedFunction
    except Exception as exc:  # pragma: no cover - depends on the install
        return f"triton unavailable: {exc!r}"
    if not isinstance(getattr(impl, kernel), InterpretedFunction):
        return "triton kernels were imported before TRITON_INTERPRET=1"
    return None


def triton_mark(reason: str | None) -> pytest.MarkDecorator:
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def backends(reason: str | None) -> list:
    """``["reference", "triton"]`` for parametrize, the Triton case skipped with ``reason``."""
    return ["reference", pytest.param("triton", marks=triton_mark(reason))]
