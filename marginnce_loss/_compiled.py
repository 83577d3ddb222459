"""Backend selection and the ``torch.compile`` cache of the fast path.

``backend`` is one of :data:`BACKENDS`:

- ``"eager"``: the kernels of :mod:`marginnce_loss._kernels` as they are (custom autograd
  Functions with hand-derived backward passes; no compiler needed).
- ``"compiled"``: the same kernels built with ``torch.compile`` (inductor) with dynamic shapes, so
  the matrix products run as library calls and every element-wise step, reduction and the loss
  around them are fused, forward and backward. A new batch size does not recompile.
- ``"auto"``: ``"compiled"`` for CUDA tensors, ``"eager"`` otherwise (CPU compile time rarely pays
  for itself in a training loop; pass ``"compiled"`` to ask for it) -- except the max-MIL kernels
  (:data:`CUDA_UNVERIFIED`), which stay eager on CUDA until ``python -m benchmarks.device_check``
  passes ``tests/test_fused.py::test_compiled_matches_eager_on_cuda`` (the record of why:
  ``docs/notes/compiled-history.md``). An explicit ``backend="compiled"`` for them on CUDA runs
  compiled and warns once per kernel.

A learnable temperature (``tau`` a tensor that requires grad) runs the eager kernels, whose loss is
plain autograd in ``tau``; asked for ``"compiled"`` (or ``"auto"`` on CUDA) it warns once per call site.

If compilation is unavailable (no working C++ compiler or Triton, an unsupported Python, ...) a
:class:`CompiledKernel` falls back to eager, warns once for that kernel and stays eager.

Global state, documented: :data:`KERNELS` is a module-level cache of one :class:`CompiledKernel`
per fused kernel. It holds the compiled callables (so each kernel compiles once per process and
input signature, not once per call) and each kernel's fallback flag; nothing else is global.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _kernels
from ._validation import check_choice

__all__ = [
    "BACKENDS",
    "CUDA_UNVERIFIED",
    "CompiledKernel",
    "KERNELS",
    "compile_dynamic",
    "compiled_available",
    "resolve_backend",
    "thresholded",
    "maximum",
    "thresholded_loss",
    "max_loss",
    "max_xmil",
]

BACKENDS = ("auto", "eager", "compiled")


#: Kernels whose compiled CUDA gradients have not passed a GPU check (see the module docstring).
CUDA_UNVERIFIED = frozenset({"max", "max_loss", "max_xmil"})


def resolve_backend(backend: object, device: torch.device, kernel: str | None = None) -> str:
    """``"eager"`` or ``"compiled"`` for ``backend`` on ``device`` (``"auto"``: compiled on CUDA only,
    and never for a ``kernel`` in :data:`CUDA_UNVERIFIED`)."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "compiled" if device.type == "cuda" and kernel not in CUDA_UNVERIFIED else "eager"
    return str(backend)


def compiled_available() -> bool:
    """Whether ``torch.compile`` can run on this interpreter at all (a compiler may still fail later)."""
    try:
        return bool(torch._dynamo.is_dynamo_supported())
    except Exception:  # pragma: no cover - very old or stripped-down torch builds
        return False


def compile_dynamic(fn: Callable[..., Any], backend: Any = "inductor") -> Callable[..., Any]:
    """``torch.compile(fn, backend=backend, dynamic=True)``: one graph serves every batch size."""
    return torch.compile(fn, backend=backend, dynamic=True)


class CompiledKernel:
    """A kernel and its lazily built ``torch.compile`` version, with a per-kernel eager fallback.

    Calling it runs the compiled version. If building or running the compiled version raises,
    the eager kernel is run on the same arguments: if that succeeds, compilation is taken to be
    unavailable, one ``RuntimeWarning`` naming this kernel and the error is issued, and every later
    call runs eager; if eager raises too, its error is the caller's and propagates (nothing is
    disabled). Inside an outer ``torch.compile`` trace the eager kernel is returned to the outer
    compiler. A failure while compiling the *backward* surfaces in ``loss.backward()`` and cannot be
    caught here.

    Args:
        fn: the eager kernel.
        name: a name for messages.
        compiler: builds the compiled callable from ``fn`` (default: inductor, ``dynamic=True``).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        compiler: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self._compiler = compiler if compiler is not None else compile_dynamic
        self._compiled: Callable[..., Any] | None = None
        self.failure: BaseException | None = None
        self._warned_cuda = False

    def warn_unverified_on_cuda(self) -> None:
        """Warn once that this kernel's compiled CUDA gradients are unverified (:data:`CUDA_UNVERIFIED`)."""
        if not self._warned_cuda:
            self._warned_cuda = True
            warnings.warn(
                f"marginnce_loss: backend='compiled' for {self.name} on CUDA is unverified (see "
                "docs/notes/compiled-history.md); use "
                "backend='eager' (what 'auto' picks) unless python -m benchmarks.device_check passes its CUDA "
                "tests on your machine",
                RuntimeWarning,
                stacklevel=4,
            )

    def _disable(self, error: BaseException) -> None:
        self.failure = error
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        warnings.warn(
            f"marginnce_loss: backend='compiled' is unavailable for {self.name} ({reason}); "
            "running the eager kernels instead",
            RuntimeWarning,
            stacklevel=4,
        )

    def __call__(self, *args: Any) -> Any:
        if self.failure is not None or torch.compiler.is_compiling():
            return self.fn(*args)
        if self._compiled is None:
            if not compiled_available():
                result = self.fn(*args)
                self._disable(RuntimeError("torch.compile is not supported on this Python/platform"))
                return result
            try:
                self._compiled = self._compiler(self.fn)
            except Exception as error:  # the compiler could not even be set up
                result = self.fn(*args)
                self._disable(error)
                return result
        try:
            return self._compiled(*args)
        except Exception as error:
            result = self.fn(*args)  # raises the caller's own error if eager fails as well
            self._disable(error)
            return result


#: One compiled kernel per fused computation (see the module docstring: a documented cache).
KERNELS: dict[str, CompiledKernel] = {
    "thresholded": CompiledKernel(_kernels.thresholded, "thresholded_similarity"),
    "max": CompiledKernel(_kernels.maximum, "max_similarity"),
    "thresholded_loss": CompiledKernel(_kernels.thresholded_loss, "LocalizationMarginNCE(similarity='thresholded')"),
    "max_loss": CompiledKernel(_kernels.max_loss, "LocalizationMarginNCE(similarity='max')"),
    "max_xmil": CompiledKernel(_kernels.max_xmil, "adapters.ezvsl.max_xmil_loss"),
}


def _run(name: str, backend: str, device: torch.device, *args: Any) -> Any:
    """Run kernel ``name`` of :data:`KERNELS` eagerly or compiled, per :func:`resolve_backend`."""
    kernel = KERNELS[name]
    if resolve_backend(backend, device, name) == "compiled":
        if device.type == "cuda" and name in CUDA_UNVERIFIED:
            kernel.warn_unverified_on_cuda()
        return kernel(*args)
    return kernel.fn(*args)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package and torch (the user's call site)."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


_INSIDE = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))


def _loss_backend(backend: str, device: torch.device, name: str, tau: float | torch.Tensor) -> str:
    """``backend``, or ``"eager"`` with one warning per call site when ``tau`` is learnable and it would compile."""
    if isinstance(tau, torch.Tensor) and resolve_backend(backend, device, name) == "compiled":
        warnings.warn(
            f"marginnce_loss: a learnable tau (a tensor that requires grad) runs {KERNELS[name].name} with the "
            "eager kernels (exact gradients for tau), not backend='compiled'; pass backend='eager' to silence this",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )
        return "eager"
    return backend


def thresholded(img: Tensor, aud: Tensor, *, epsilon: float, beta: float, recompute: bool, backend: str) -> Tensor:
    """Eq. 1, ``[B, B']`` (:func:`marginnce_loss._kernels.thresholded`), eager or compiled."""
    return _run("thresholded", backend, img.device, img, aud, epsilon, beta, recompute)  # type: ignore[no-any-return]


def maximum(img: Tensor, aud: Tensor, *, backend: str) -> Tensor:
    """Max-MIL similarity, ``[B, B']`` (:func:`marginnce_loss._kernels.maximum`), eager or compiled."""
    return _run("max", backend, img.device, img, aud)  # type: ignore[no-any-return]


def thresholded_loss(
    img: Tensor, aud: Tensor, *, epsilon: float, beta: float, recompute: bool, margin: float,
    tau: float | Tensor, symmetric: bool, reduction: str, backend: str,
) -> Tensor:
    """Eq. 1 + eq. 3 as one kernel (:func:`marginnce_loss._kernels.thresholded_loss`); learnable ``tau``: eager."""
    backend = _loss_backend(backend, img.device, "thresholded_loss", tau)
    return _run(  # type: ignore[no-any-return]
        "thresholded_loss", backend, img.device, img, aud, epsilon, beta, recompute, margin, tau, symmetric, reduction
    )


def max_loss(
    img: Tensor, aud: Tensor, *, margin: float, tau: float | Tensor, symmetric: bool, reduction: str, backend: str
) -> Tensor:
    """Max-MIL + eq. 3 as one kernel (:func:`marginnce_loss._kernels.max_loss`); a learnable ``tau`` runs eager."""
    backend = _loss_backend(backend, img.device, "max_loss", tau)
    return _run("max_loss", backend, img.device, img, aud, margin, tau, symmetric, reduction)  # type: ignore[no-any-return]


def max_xmil(img: Tensor, aud: Tensor, *, tau: float, margin: float, backend: str) -> tuple[Tensor, Tensor]:
    """EZ-VSL's ``(loss, Slogits)`` (:func:`marginnce_loss._kernels.max_xmil`), eager or compiled."""
    return _run("max_xmil", backend, img.device, img, aud, tau, margin)  # type: ignore[no-any-return]
