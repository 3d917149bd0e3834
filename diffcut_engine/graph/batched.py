"""The batched splitter: every pending subgraph of a recursion level, of every image, solved together.

:func:`build_trees_batched` is :func:`~diffcut_engine.graph.tree.grow` with the ``level`` schedule and a
:class:`BatchedSplitter`, which runs in the array namespace of the affinities (numpy on the host, CuPy on a CUDA
device). At each depth the pending subgraphs are grouped into buckets by size (all up to ``SMALL_BUCKET`` nodes in
one, larger ones by ``ceil(log2 n)``), each bucket is gathered zero-padded from a stack of all images, solved by
one stacked eigensolve (:func:`~diffcut_engine.graph.eigen.stacked_fiedler_vectors`) and scored by
:func:`~diffcut_engine.graph.scoring.stacked_scores`; the best value and side of every subgraph of the level come
to the host in **one** transfer (the first also carries one finiteness flag per image). A tree of depth L costs
L + 1 device-to-host copies. The official zero-row rule (``compat="official"``, the default) is applied as on
the host: the first transfer also carries, per image, which nodes have an exact zero in their row of W, and
those are left out of every subgraph below the root. See docs/ALGORITHM.md and docs/PERFORMANCE.md.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import logging

import numpy as np

from ..errors import InputError
from .eigen import fiedler_vector, stacked_fiedler_vectors
from .scoring import NUM_THRESHOLDS, stacked_scores
from .tree import Acceptance, NCutNode, NCutTree, Proposal, grow
from .validation import (DEFAULT_COMPAT, ZERO_ROW_MODES, check_affinity_values, check_compat,
                         check_num_thresholds, check_tau)
from .xp import array_namespace, as_array, to_host

__all__ = ["build_trees_batched", "BatchedSplitter", "SMALL_BUCKET"]

logger = logging.getLogger(__name__)

#: Subgraphs of at most this many nodes share one bucket; larger ones are bucketed by ``ceil(log2 n)``.
SMALL_BUCKET = 32
#: Bytes of the float64 best value at the start of each packed row of the per-level transfer.
VALUE_BYTES = 8


def bucket_key(n: int) -> int:
    """0 for n <= SMALL_BUCKET, else ceil(log2 n)."""
    return 0 if n <= SMALL_BUCKET else (n - 1).bit_length()


def resolve_namespace(arrays: list, xp):
    """(namespace, arrays in it): the inputs' own namespace, or the one forced by ``xp`` (arrays moved there)."""
    if xp is None:
        arrays = [as_array(a) for a in arrays]
        return array_namespace(*arrays), arrays
    name = getattr(xp, "__name__", None)
    if name == "numpy":
        return np, [to_host(a) for a in arrays]
    if name == "cupy":
        return xp, [xp.asarray(as_array(a)) for a in arrays]
    raise InputError(f"xp must be the numpy or the cupy module, got {xp!r}")


def _solve_bucket(xp, stack, img, rows, mask, num_thresholds: int, sanitize: bool, degrees=None, method=None):
    """Fiedler vectors and best threshold splits of one bucket of padded subgraphs, all in namespace ``xp``.

    Returns a (b, 8 + n) uint8 array: each subgraph's best NCut value as float64 bytes, then its "1"-side mask.
    The value is NaN where the stacked eigensolver missed its convergence check (:func:`_resolve_unconverged`).
    ``method``: the stacked eigensolver (:data:`~diffcut_engine.graph.eigen.STACKED_EIGH_METHODS`).
    """
    b, n = rows.shape
    img_d = xp.asarray(img)
    rows_d = xp.asarray(rows)
    real = xp.asarray(mask)
    A = stack[img_d[:, None, None], rows_d[:, :, None], rows_d[:, None, :]].astype(xp.float64)
    if sanitize:
        A = xp.where(xp.isfinite(A), A, 0.0)
    A = xp.where(real[:, :, None] & real[:, None, :], A, 0.0)
    y, d, solvable, converged, degenerate = stacked_fiedler_vectors(xp, A, real, degrees=degrees,
                                                                    return_converged=True, return_degenerate=True,
                                                                    method=method)
    values, thr = stacked_scores(xp, A, d, y, real, num_thresholds)
    values = xp.where(solvable[:, None], values, xp.inf)
    best = xp.argmin(values, axis=1)[:, None]
    value = xp.take_along_axis(values, best, axis=1)[:, 0]
    # NaN: solved again on the host (:func:`_resolve_unconverged`); its sign bit says why (set: a repeated
    # eigenvalue 1, expected for disconnected subgraphs; clear: a missed convergence check, worth a warning)
    value = xp.where(converged | ~solvable, value, xp.where(degenerate, -xp.nan, xp.nan))
    value = xp.ascontiguousarray(value)
    side = (y > xp.take_along_axis(thr, best, axis=1)) & real
    return xp.concatenate([value.view(xp.uint8).reshape(b, VALUE_BYTES), side.astype(xp.uint8)], axis=1)


class BatchedSplitter:
    """Solves a level of nodes of several affinities at once (``schedule="level"``, ``tau`` rule only).

    Parameters
    ----------
    xp : module
        numpy or cupy.
    Ws : list of array
        Validated square affinities in ``xp``.
    num_thresholds : int
    degrees : list of array or None, optional
        Root degrees of each affinity when already known (e.g. the fused Triton kernel's float64 row sums).
    zero_rows : bool, default True
        Apply the official zero-row rule (``compat="official"``): below the root, nodes whose row of their W
        holds an exact zero are left out of every subgraph.
    """

    def __init__(self, xp, Ws: list, num_thresholds: int, degrees=None, zero_rows: bool = True):
        self.xp = xp
        self.sizes = [int(W.shape[0]) for W in Ws]
        self.stack = _stack_affinities(xp, Ws, self.sizes)
        self.num_thresholds = num_thresholds
        self.degrees = degrees
        # stay on the device until the first level's transfer: one finiteness flag per image, then (zero-row
        # rule) one flag per node of every image
        self.finite = xp.stack([xp.all(xp.isfinite(W)) for W in Ws]).astype(xp.uint8)
        self.zero_flags = (xp.concatenate([(W == 0).any(axis=1) for W in Ws]).astype(xp.uint8)
                           if zero_rows else None)
        self.zero_row = None  # per image, on the host after the first level
        self.first = True

    def _solved_nodes(self, node: NCutNode, image: int) -> np.ndarray:
        """The node ids a node's subgraph is solved on (the zero-row rule below the root)."""
        if self.zero_row is None or node.depth == 0:
            return node.indices
        return node.indices[~self.zero_row[image][node.indices]]

    def propose(self, batch, accept: Acceptance):
        xp = self.xp
        groups = {}
        for pos, (node, image) in enumerate(batch):
            idx = self._solved_nodes(node, image)
            if idx.size >= 2:
                groups.setdefault(bucket_key(idx.size), []).append((pos, image, idx))
        parts, layout = [], []
        for key in sorted(groups):
            items = groups[key]
            n = max(idx.size for _, _, idx in items)
            img = np.empty(len(items), dtype=np.intp)
            rows = np.zeros((len(items), n), dtype=np.intp)
            mask = np.zeros((len(items), n), dtype=bool)
            for k, (_, i, idx) in enumerate(items):
                img[k] = i
                rows[k, :idx.size] = idx
                mask[k, :idx.size] = True
            degrees = None
            if self.first and self.degrees is not None:  # roots only: their degrees are known
                degrees = xp.zeros((len(items), n), dtype=xp.float64)
                for k, (_, i, idx) in enumerate(items):
                    degrees[k, :idx.size] = self.degrees[i]
            parts.append(_solve_bucket(xp, self.stack, img, rows, mask, self.num_thresholds, sanitize=self.first,
                                       degrees=degrees).ravel())
            layout.append((items, n))
        tail = 0
        if self.first:
            parts.append(self.finite)
            tail = len(self.sizes)
            if self.zero_flags is not None:
                parts.append(self.zero_flags)
                tail += sum(self.sizes)
        out = [None] * len(batch)
        if not parts:
            return out
        host = to_host(xp.concatenate(parts))  # the one device -> host copy of this level
        if self.first:
            flags = host[host.size - tail:]
            bad = np.flatnonzero(flags[:len(self.sizes)] == 0)
            if bad.size:
                raise InputError(f"affinity {int(bad[0])} contains NaN or infinite values")
            if self.zero_flags is not None:
                bounds = np.cumsum([len(self.sizes)] + self.sizes)
                self.zero_row = [flags[a:b].astype(bool) for a, b in zip(bounds[:-1], bounds[1:])]
                self.zero_flags = None
            self.first = False
        offset = 0
        for items, n in layout:
            width = VALUE_BYTES + n
            block = host[offset:offset + len(items) * width].reshape(len(items), width)
            offset += len(items) * width
            values = np.ascontiguousarray(block[:, :VALUE_BYTES]).view(np.float64)[:, 0]
            sides = block[:, VALUE_BYTES:].astype(bool)
            if np.isnan(values).any():  # the stacked eigensolver did not converge for some: solve them again
                values, sides = _resolve_unconverged(xp, self.stack, items, n, values, sides, self.num_thresholds)
            for k, (pos, i, idx) in enumerate(items):
                side = sides[k, :idx.size]
                out[pos] = Proposal(float(values[k]), accept.baseline(), idx[side], idx[~side],
                                    lambda one, zero, i=i: (i, i))
        return out


def _resolve_unconverged(xp, stack, items, n: int, values, sides, num_thresholds: int):
    """Solve again on the host, as ``build_tree(W, solver="dense")`` solves them (LAPACK ``dsyevr``, the exact
    component rule of a disconnected subgraph: :func:`~.eigen.fiedler_vector`), the subgraphs of a bucket whose
    stacked solve missed the convergence check or found the eigenvalue 1 more than once (NaN values); one extra
    transfer per such subgraph, only when that happens."""
    redo = np.flatnonzero(np.isnan(values))
    missed = int(np.count_nonzero(~np.signbit(values[redo])))
    if missed:
        logger.warning("stacked eigensolver: %d of %d subgraphs of %d nodes missed the convergence check; solving "
                       "them again on the host", missed, values.size, n)
    if redo.size > missed:
        logger.debug("%d subgraphs of %d nodes are (nearly) disconnected; solving them again on the host",
                     redo.size - missed, n)
    values, sides = values.copy(), sides.copy()
    for k in redo:
        _, i, indices = items[k]
        idx = xp.asarray(indices)
        A = to_host(stack[i][idx[:, None], idx[None, :]]).astype(np.float64)
        A = np.where(np.isfinite(A), A, 0.0)
        d = A.sum(axis=1)
        m = indices.size
        real = np.ones((1, m), dtype=bool)
        if not np.all(d > 0):  # an isolated node: a leaf, as the stacked path decides it
            values[k], sides[k, :m] = np.inf, False
            continue
        y = fiedler_vector(A, d, solver="dense")
        scores, thr = stacked_scores(np, A[None], d[None], y[None], real, num_thresholds)
        best = int(np.argmin(scores[0]))
        values[k] = scores[0, best]
        sides[k, :m] = y > thr[0, best]
    return values, sides


def _stack_affinities(xp, Ws: list, sizes: List[int]):
    if len(Ws) == 1:
        return Ws[0][None]
    if len(set(sizes)) == 1 and len({W.dtype for W in Ws}) == 1:
        return xp.stack(Ws)
    n_max = max(sizes)
    stack = xp.zeros((len(Ws), n_max, n_max), dtype=xp.result_type(*Ws))
    for i, (W, n) in enumerate(zip(Ws, sizes)):
        stack[i, :n, :n] = W
    return stack


def build_trees_batched(Ws: Sequence, *, tau_max: float, num_thresholds: int = NUM_THRESHOLDS,
                        shapes: Optional[Sequence] = None, xp=None, degrees=None,
                        compat: str = DEFAULT_COMPAT) -> List[NCutTree]:
    """Recursive-NCut trees of several affinities at once, solved level by level on the host or a CUDA device.

    Gives, image by image, the tree of ``build_tree(W, tau_max=tau_max, compat=compat, solver="dense")``: same
    nodes and sorted indices, depths, and values up to rounding (see the module notes for the schedule, the
    padding and the one host transfer per level), after ``build_tree``'s value checks of every W (finite,
    non-negative, symmetric; one more host transfer for the whole batch).

    Parameters
    ----------
    Ws : sequence of array
        One (N_i, N_i) symmetric non-negative affinity per image, all numpy or all CuPy (CPU torch tensors are
        viewed as numpy arrays and CUDA tensors as CuPy arrays, without a copy). Sizes may differ.
    tau_max : float
        Largest tau the trees will be cut at: splits with NCut < ``tau_max`` are kept.
    num_thresholds : int, default 100
        Candidate thresholds per split.
    shapes : sequence of tuple of int, optional
        Label-map shape of each tree (default ``(N_i,)``); ``prod(shape)`` must equal ``N_i``.
    xp : module, optional
        ``numpy`` or ``cupy`` to force a namespace (inputs are moved to it); default: the inputs' namespace.
    degrees : sequence of array, optional
        Row sums of each affinity, float64, in the same namespace, when already computed (the fused Triton
        kernel returns them); used for the roots instead of summing again.
    compat : {"official", "clean"}, default "official"
        ``official``: the official zero-row rule (see :func:`~diffcut_engine.graph.ncut.recursive_ncut`);
        ``clean``: plain index sets. (``official-float32`` is the host's float32 computation only.)

    Returns
    -------
    list of NCutTree
        One tree per affinity, in input order, with this ``compat``.

    Raises
    ------
    InputError
        On a non-square or non-real affinity, NaN or infinite entries, mixed host and device inputs, a
        non-positive ``tau_max``, ``num_thresholds < 2`` or a shape that does not match its affinity.
    """
    tau_max = check_tau(tau_max, "tau_max")
    check_num_thresholds(num_thresholds)
    if check_compat(compat) == "official-float32":
        raise InputError("compat='official-float32' (the official float32 full-syevd computation) runs on the "
                         "host only; the batched path takes compat='official' (the same rule) or 'clean'")
    Ws = [as_array(W) for W in Ws]
    if not Ws:
        return []
    xp, Ws = resolve_namespace(Ws, xp)
    sizes = []
    for i, W in enumerate(Ws):
        if W.ndim != 2 or W.shape[0] != W.shape[1]:
            raise InputError(f"affinity {i} must be a square (N, N) matrix, got shape {tuple(W.shape)}")
        if W.dtype.kind not in "biuf":
            raise InputError(f"affinity {i} must be real-valued, got dtype {W.dtype}")
        sizes.append(int(W.shape[0]))
    uniform = check_affinity_values(xp, Ws, [f"affinity {i}" for i in range(len(Ws))])
    if degrees is not None:
        degrees = list(degrees)
        if len(degrees) != len(Ws) or any(tuple(getattr(d, "shape", ())) != (n,) for d, n in zip(degrees, sizes)):
            raise InputError(f"degrees must be one (N_i,) array per affinity, got shapes "
                             f"{[tuple(getattr(d, 'shape', ())) for d in degrees]} for affinities of {sizes} nodes")
    if shapes is None:
        shapes = [(n,) for n in sizes]
    else:
        shapes = [tuple(int(s) for s in shape) for shape in shapes]
        if len(shapes) != len(Ws):
            raise InputError(f"got {len(shapes)} shapes for {len(Ws)} affinities")
        for i, (shape, n) in enumerate(zip(shapes, sizes)):
            if int(np.prod(shape)) != n:
                raise InputError(f"shape {shape} of image {i} does not match its affinity of {n} nodes")

    splitter = BatchedSplitter(xp, Ws, num_thresholds, degrees=degrees, zero_rows=compat in ZERO_ROW_MODES)
    roots = [NCutNode(np.arange(n), 0) for n in sizes]
    # a uniform complete graph (constant features: W = 1) is a leaf at every tau <= 1, with NCut exactly 1 for
    # every split, as on the host (host.uniform); the others are solved level by level
    solve = []
    for i, root in enumerate(roots):
        if uniform[i] and tau_max <= 1.0 and sizes[i] >= 2:
            root.value = 1.0
        else:
            solve.append(i)
    grow([roots[i] for i in solve], solve, splitter.propose, Acceptance("tau", tau_max), schedule="level")
    return [NCutTree(root, shape, tau_max, compat) for root, shape in zip(roots, shapes)]
