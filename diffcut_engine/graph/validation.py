"""Checks of the graph stage's public parameters, defined once (the engine's configuration uses them too)."""

from __future__ import annotations

import math
import numbers

from ..errors import InputError
from .xp import to_host

#: ``compat`` modes of the recursion (see :func:`~diffcut_engine.graph.ncut.recursive_ncut`): ``official`` (the
#: default: the official partitions, the zero-row rule on the fast float64 solvers), ``official-float32`` (the
#: official float32 full-``syevd`` computation itself, for reproduction studies), ``clean`` (plain index sets).
COMPAT_MODES = ("official", "official-float32", "clean")
#: The default ``compat``: what the published numbers were computed with.
DEFAULT_COMPAT = "official"
#: Modes that apply the official zero-row rule.
ZERO_ROW_MODES = ("official", "official-float32")


#: ``graph_backend`` choices (:func:`~diffcut_engine.graph.ncut.ncut_tree`, ``EngineConfig``): see
#: :func:`~diffcut_engine.graph.native.resolve_graph_backend`.
GRAPH_BACKENDS = ("auto", "native", "numpy", "cupy")


def check_graph_backend(backend) -> str:
    if backend not in GRAPH_BACKENDS:
        raise InputError(f"unknown graph_backend {backend!r}; choose one of {', '.join(GRAPH_BACKENDS)}")
    return backend


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < math.inf:
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_alpha(alpha) -> float:
    """``alpha`` as a float; :class:`InputError` unless it is a finite positive number."""
    return _positive(alpha, "alpha")


def tau_name(tau) -> str:
    """``tau`` as it appears in file names and record keys: Python's shortest repr of the float, so two different
    taus never share a name (``f"{tau:g}"`` keeps 6 digits: 0.0340443 and 0.03404432 were one name)."""
    return repr(float(tau))


def check_tau(tau, name: str = "tau") -> float:
    """``tau`` (or ``tau_max``) as a float; :class:`InputError` unless it is a finite positive number."""
    return _positive(tau, name)


#: The most candidate thresholds a split may score (the C++ core counts them in a C int; every backend has the
#: limit, far above any use: the official code scores 100).
MAX_THRESHOLDS = 2**31 - 2


def check_num_thresholds(num_thresholds) -> int:
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, numbers.Integral) \
            or not 2 <= num_thresholds <= MAX_THRESHOLDS:
        raise InputError(f"num_thresholds must be an integer in [2, {MAX_THRESHOLDS}], got {num_thresholds!r}")
    return int(num_thresholds)


def check_compat(compat) -> str:
    if compat not in COMPAT_MODES:
        raise InputError(f"unknown compat {compat!r}; choose one of {', '.join(COMPAT_MODES)}")
    return compat


def check_node_shape(shape, n: int, nodes: str = "affinity's") -> tuple:
    """``shape`` (a tuple of positive ints holding the ``n`` nodes; None: ``(n,)``), or :class:`InputError`
    (``nodes`` names them in the message: "the affinity's {n} nodes", "the transition matrix's {n} nodes")."""
    if shape is None:
        return (n,)
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if not dims or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in dims):
        raise InputError(f"shape must be a tuple of positive ints, got {shape!r}")
    dims = tuple(int(v) for v in dims)
    if math.prod(dims) != n:
        raise InputError(f"shape {dims} does not hold the {nodes} {n} nodes")
    return dims


def check_affinity_values(xp, Ws, names=None) -> list:
    """``build_tree``'s value checks of square affinities ``Ws`` (arrays of namespace ``xp``, numpy or CuPy):
    finite, non-negative, symmetric within 1e-5 of the largest entry; read back to the host in one transfer for
    all of them. ``names``: how the messages name each one (default ``"affinity"``). Returns, per affinity,
    whether every entry is the same positive value (a uniform complete graph: every split has NCut exactly 1).

    Raises
    ------
    InputError
        Naming the first affinity and the first check it fails.
    """
    names = list(names) if names is not None else ["affinity"] * len(Ws)
    stats, named, uniform = [], [], [False] * len(Ws)
    at = []
    for i, (W, name) in enumerate(zip(Ws, names)):
        if not W.size:
            continue
        Wf = W.astype(xp.float64) if W.dtype == bool else W
        stats.append(xp.stack([xp.all(xp.isfinite(Wf)), xp.any(Wf < 0), xp.max(xp.abs(Wf - Wf.T)),
                               xp.max(xp.abs(Wf)), (Wf[0, 0] > 0) & xp.all(Wf == Wf[0, 0])]).astype(xp.float64))
        named.append(name)
        at.append(i)
    if not stats:
        return uniform
    for (finite, negative, asym, largest, same), name, i in zip(to_host(xp.stack(stats)).tolist(), named, at):
        uniform[i] = bool(same)
        if not finite:
            raise InputError(f"{name} contains NaN or infinite values")
        if negative:
            raise InputError(f"{name} must be non-negative")
        if asym > 1e-5 * largest:
            raise InputError(f"{name} must be symmetric (max |W - W^T| = {asym:.3g})")
    return uniform
