"""Backend selection for the fused ops: ``RAYREC_KERNELS=auto|reference|triton|cuda``.

* ``reference`` -- the pure-torch, chunked implementation (``<op>/reference.py``); runs on any
  device and is the oracle of every test.
* ``triton`` -- the Triton kernels (``<op>/triton_impl.py``). They run on CUDA tensors, or on
  CPU tensors when ``TRITON_INTERPRET=1`` is set *before* triton is imported (the test mode:
  slow, small shapes only).
* ``cuda`` -- hand-written CUDA C++ kernels. None of the ops ships one yet (Triton covers them),
  so forcing it is an error that says so.
* ``auto`` (default) -- the fastest available: Triton for CUDA tensors when triton imports and
  the op has a Triton implementation, otherwise the reference. Falls back quietly.

A forced choice that cannot run raises :class:`KernelUnavailableError` naming the op, the
backend and the reason. Every public op also takes ``backend=`` to override the variable
for one call (tests use it).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "KernelUnavailableError",
    "available_backends",
    "requested_backend",
    "resolve_backend",
    "triton_available",
    "triton_interpret",
]

ENV_VAR = "RAYREC_KERNELS"
BACKENDS = ("auto", "reference", "triton", "cuda")


class KernelUnavailableError(RuntimeError):
    """A forced backend (``RAYREC_KERNELS`` or ``backend=``) cannot run this op here."""


def triton_interpret() -> bool:
    """True when Triton's CPU interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0", "false", "False")


@functools.cache
def _triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "the 'triton' package is not installed (pip install triton)"
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the install
        return f"'import triton' failed: {exc!r}"
    return None


def triton_available() -> bool:
    """Whether ``import triton`` works in this process."""
    return _triton_import_error() is None


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: ``backend`` if given, else ``$RAYREC_KERNELS``, else ``auto``."""
    name = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {name!r}")
    return name


def _triton_reason(device: torch.device, has_triton: bool) -> str | None:
    """Why Triton cannot run on ``device`` (None when it can)."""
    if not has_triton:
        return "the op has no Triton implementation"
    err = _triton_import_error()
    if err is not None:
        return err
    if device.type == "cuda":
        return None
    if triton_interpret():
        return None
    return (
        f"tensors are on {device.type!r}; Triton kernels need CUDA tensors "
        "(or TRITON_INTERPRET=1 set before triton is imported, the slow CPU test mode)"
    )


def resolve_backend(
    op: str,
    device: torch.device | str,
    backend: str | None = None,
    *,
    has_triton: bool = True,
    has_cuda: bool = False,
) -> str:
    """The backend that will run ``op`` for tensors on ``device``: ``reference``/``triton``/``cuda``.

    ``auto`` never raises: it takes Triton on CUDA when possible and the reference otherwise
    (CPU tensors always get the reference under ``auto``, even with TRITON_INTERPRET=1, since
    the interpreter is far slower). A forced backend that cannot run raises
    :class:`KernelUnavailableError`.
    """
    dev = torch.device(device)
    want = requested_backend(backend)
    if want == "reference":
        return "reference"
    if want == "cuda":
        if not has_cuda:
            raise KernelUnavailableError(
                f"{op}: {ENV_VAR}=cuda was forced but rayrec ships no CUDA C++ kernel for this op "
                "(its fused GPU path is Triton); use 'triton' or 'auto'"
            )
        if dev.type != "cuda":
            raise KernelUnavailableError(f"{op}: {ENV_VAR}=cuda needs CUDA tensors, got {dev.type!r}")
        return "cuda"
    reason = _triton_reason(dev, has_triton)
    if want == "triton":
        if reason is not None:
            raise KernelUnavailableError(f"{op}: {ENV_VAR}=triton was forced but {reason}")
        return "triton"
    # auto
    if dev.type == "cuda" and reason is None:
        return "triton"
    return "reference"


def available_backends(op_has_triton: bool = True) -> dict[str, bool]:
    """Which backends could run here for CUDA tensors (``reference`` always can)."""
    cuda = torch.cuda.is_available()
    return {
        "reference": True,
        "triton": bool(op_has_triton and triton_available() and (cuda or triton_interpret())),
        "cuda": False,
    }
