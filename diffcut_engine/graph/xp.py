"""Array-namespace helpers: the same graph code on numpy (host) and CuPy (device) arrays.

The graph stage is written against the subset of the array API that numpy and CuPy share (``xp.matmul``,
``xp.linalg.eigh`` on stacks, ``xp.cumsum``, ...). These helpers pick the namespace of the inputs, move arrays to
the host and accept PyTorch tensors without a copy (DLPack). Neither CuPy nor torch is imported unless an input
needs it: ``import diffcut_engine.graph`` stays numpy-only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import InputError

__all__ = ["array_namespace", "as_array", "cupy_available", "is_cuda_tensor", "is_device", "to_host"]

_GPU_HINT = "install 'diffcut-engine[gpu]' (CuPy) or move the tensor to the CPU with .cpu()"


def _module_of(x) -> str:
    return type(x).__module__ or ""


def _is_cupy_array(x) -> bool:
    # CuPy arrays are ``cupy.ndarray`` (defined in ``cupy._core.core``); checked by name so CuPy is never imported.
    return _module_of(x).startswith("cupy")


def _is_torch_tensor(x) -> bool:
    return _module_of(x).startswith("torch")


def _torch_on_cuda(x) -> bool:
    return getattr(getattr(x, "device", None), "type", "cpu") != "cpu"


@lru_cache(maxsize=None)
def cupy_available() -> bool:
    """True if CuPy imports and sees a usable CUDA device (checked once, cached).

    Returns
    -------
    bool
        ``False`` when CuPy is not installed, fails to import (e.g. a missing CUDA library) or finds no device.
    """
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA library error raised at import
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


def _cupy():
    try:
        import cupy
    except Exception as exc:
        raise InputError(f"a device (CUDA) array needs CuPy, which cannot be imported ({exc}); {_GPU_HINT}") \
            from exc
    return cupy


def is_cuda_tensor(x) -> bool:
    """True for a torch tensor on a CUDA device."""
    return _is_torch_tensor(x) and _torch_on_cuda(x)


def is_device(x) -> bool:
    """True for arrays that live on a CUDA device: CuPy arrays and CUDA torch tensors."""
    if _is_cupy_array(x):
        return True
    return _is_torch_tensor(x) and _torch_on_cuda(x)


def array_namespace(*arrays):
    """The array module shared by ``arrays``: ``numpy``, or ``cupy`` if the inputs are CuPy arrays.

    ``None`` and Python scalars are neutral. CUDA torch tensors count as CuPy (see :func:`as_array`), every other
    input as numpy. CuPy is imported only when an input is a device array.

    Parameters
    ----------
    *arrays
        The arrays themselves (containers are not searched: a list counts as one host input).

    Returns
    -------
    module
        ``numpy`` or ``cupy``.

    Raises
    ------
    InputError
        If host and device arrays are mixed, or a device array is given and CuPy cannot be imported.
    """
    device = host = False
    for x in arrays:
        if x is None or isinstance(x, (bool, int, float, complex)):
            continue
        if is_device(x):
            device = True
        else:
            host = True
    if device and host:
        raise InputError("inputs mix host (numpy / CPU) and device (CuPy / CUDA) arrays; move them all to one "
                         "side first")
    return _cupy() if device else np


def to_host(x) -> np.ndarray:
    """A numpy array holding ``x``: CuPy arrays are copied to the host, CPU tensors and numpy arrays are not copied.

    Parameters
    ----------
    x : array_like
        numpy or CuPy array, torch tensor (any device), or anything ``numpy.asarray`` accepts.

    Returns
    -------
    numpy.ndarray
    """
    if isinstance(x, np.ndarray):
        return x
    if _is_cupy_array(x):
        return x.get()
    if _is_torch_tensor(x):
        if _torch_on_cuda(x):
            x = x.detach().cpu()
        return _torch_cpu_to_numpy(x)
    return np.asarray(x)


def host_array(x, name: str) -> np.ndarray:
    """:func:`to_host` for a user's input: what numpy cannot take (a ragged nested list, an object it cannot
    convert) is an :class:`InputError` naming ``name``."""
    try:
        return to_host(x)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name} must be an array convertible to numpy (move device tensors to the host): "
                         f"{exc}") from exc


def _torch_cpu_to_numpy(t) -> np.ndarray:
    t = t.detach()  # shares memory; a tensor that requires grad cannot be exported otherwise
    if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16: widened exactly to float32
        t = t.float()
    try:
        return np.from_dlpack(t)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        pass
    try:
        return t.numpy()  # e.g. a tensor with the conj / neg bit set, or an old numpy without from_dlpack
    except (TypeError, RuntimeError) as exc:
        raise InputError(f"cannot view a torch tensor of dtype {t.dtype} as a numpy array ({exc}); convert it "
                         f"first, e.g. tensor.float()") from exc


def as_array(x):
    """Accept numpy / CuPy arrays as they are and torch tensors without a copy (DLPack).

    Parameters
    ----------
    x : array_like
        A numpy or CuPy array (returned unchanged), a torch tensor (CPU: a numpy view of the same memory; CUDA: a
        CuPy view of the same device memory), or anything ``numpy.asarray`` accepts.

    Returns
    -------
    numpy.ndarray or cupy.ndarray

    Raises
    ------
    InputError
        For a CUDA tensor when CuPy is unavailable, or a tensor dtype numpy / CuPy cannot hold (e.g. bfloat16).
    """
    if isinstance(x, np.ndarray) or _is_cupy_array(x):
        return x
    if _is_torch_tensor(x):
        if not _torch_on_cuda(x):
            return _torch_cpu_to_numpy(x)
        if not cupy_available():
            raise InputError(f"got a CUDA torch tensor but CuPy with a CUDA device is not available; {_GPU_HINT}")
        cupy = _cupy()
        try:
            return cupy.from_dlpack(x.detach())
        except Exception as exc:
            raise InputError(f"cannot view a CUDA torch tensor of dtype {x.dtype} as a CuPy array ({exc}); "
                             f"convert it first, e.g. tensor.float()") from exc
    try:
        return np.asarray(x)
    except Exception as exc:
        raise InputError(f"cannot convert an object of type {type(x).__name__} to an array: {exc}") from exc
