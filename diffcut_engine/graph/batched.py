"""Recursive Normalized Cut for a batch of images, solved level by level with stacked eigendecompositions.

:func:`build_trees_batched` returns, for each affinity, the :class:`~diffcut_engine.graph.ncut.NCutTree` that
``build_tree(W, tau_max=..., solver="dense")`` (``compat="clean"``) returns, but runs every computation in the
namespace of the inputs (numpy on the host, CuPy on a CUDA device) and in as few calls as possible.

Schedule (level-synchronous)
----------------------------
The recursion is a tree whose nodes do not depend on each other except through their parent, so the nodes of one
depth can be solved together. At each depth, every pending subgraph of every image joins one batch:

1. gather each subgraph's affinity ``A = W[idx][:, idx]`` (float64) from a stack of all images, zero-padded to the
   size ``n_max`` of its bucket (see below);
2. form ``M = D^-1/2 A D^-1/2`` with the padding block set to ``PAD_EIGENVALUE * I`` and solve the whole bucket with
   one stacked ``xp.linalg.eigh`` call (numpy loops LAPACK ``syevd`` in C; ``cupy.linalg.eigh`` calls cuSOLVER's
   batched Jacobi solver ``syevjBatched``); the Fiedler vector is column ``-2`` (second-largest eigenvalue).
   Buckets of subgraphs above ``DENSE_MAX_NODES`` nodes (the root of a 64x64 grid, say) are solved one by one by
   Lanczos instead (``eigsh`` with the trivial eigenvector deflated; see :func:`_fiedler_iterative`);
3. score all ``num_thresholds`` candidate splits of all subgraphs with one-hot matrix products (below) and take the
   first minimum, all without leaving the device;
4. copy the best value and the side mask of each subgraph to the host in **one** transfer for the whole level
   (all buckets packed into a single ``uint8`` buffer: 8 bytes of float64 value plus ``n_max`` side bytes per
   subgraph), accept the splits with ``value < tau_max`` and build the children's index arrays on the host
   (numpy boolean indexing of the parent's indices; no device work per node).

So a tree of depth ``L`` costs ``L + 1`` device-to-host copies in total, whatever the number of images and nodes
(the first one also carries one finiteness flag per image, which is how NaN / infinite affinities are reported
without a separate synchronisation). The index arrays live on the host throughout, so there is no final copy of
node indices.

Padding
-------
A stacked ``eigh`` needs matrices of one size, so each subgraph of ``n`` nodes is embedded in ``n_max`` rows as
``[[M, 0], [0, p I]]``. This block-diagonal matrix has the eigenvalues of ``M`` plus ``n_max - n`` copies of ``p``,
and its eigenvectors for the eigenvalues of ``M`` are those of ``M`` extended by zeros (the padding coordinates of
an eigenvector of an eigenvalue ``!= p`` are zero). ``M`` is similar to the random-walk matrix ``D^-1 A``, whose
rows are non-negative and sum to one, so its eigenvalues lie in ``[-1, 1]``, and only the top two are used (the
trivial ``1`` and the Fiedler value). Any ``p < -1`` therefore keeps the top two eigenpairs exactly those of
``M``: we use ``p = -2``. (``p = -1`` is enough for every subgraph of three or more nodes: ``trace M >= 0`` rules
out a second eigenvalue of ``-1``, but a two-node subgraph without self-loops has eigenvalues ``{1, -1}``, and its
Fiedler eigenvalue would then be degenerate with the padding; ``-2`` keeps a gap of at least one to the padding.)
The padded rows of ``A`` are zero, so degrees, volumes and cuts are unchanged, and the padded entries of the
Fiedler vector (zero) are masked out of the thresholds and the bins.

Buckets
-------
Padding a 10-node subgraph to 4000 rows would cost the 4000-node solve for nothing, so a level's subgraphs are
grouped by size: all subgraphs of at most ``SMALL_BUCKET`` nodes share one bucket (cuSOLVER's batched Jacobi solver
is at its best there, and the matrices are tiny), larger ones go to the bucket ``ceil(log2 n)`` (sizes in
``(2^(k-1), 2^k]``). Each bucket is padded only to its own largest member, so padding at most doubles ``n`` (at most
8x the eigensolver flops of that node, usually much less) and a level makes at most ``log2(N_max) - 4`` eigh calls.
All buckets of a level still share the single host transfer.

Scoring
-------
With thresholds ``theta_0 <= ... <= theta_{K-1}`` (``numpy.linspace(0.99 min y, 0.99 max y, K)``, reproduced
operation by operation), node ``i`` has bin ``c_i = #{t : y_i > theta_t}`` in ``0..K`` and is on the "1"-side of
candidate ``t`` iff ``c_i > t``. With the one-hot bin matrix ``G`` (``n x (K + 1)``, zero rows for padding),
``B = G^T A G`` is the affinity between bins, and ``cut(t) = sum_{c > t, c' <= t} B[c, c']``,
``vol(S)(t) = sum_{c > t} (G^T d)[c]`` and ``vol(S')(t) = sum_{c <= t} (G^T d)[c]`` come from cumulative sums of
non-negative terms only (no ``vol - assoc`` cancellation). ``NCut = cut / vol(S) + cut / vol(S')``, ``+inf`` where a
side is empty; the first ``argmin`` wins, as on the host.

Agreement with the host
-----------------------
The eigensolver differs from the host's (LAPACK ``syevr`` on ``L = I - M``), so the Fiedler vector agrees only to
rounding; a node lying within rounding of the chosen threshold, or an eigenvector that is not unique (a repeated
Fiedler eigenvalue, e.g. constant features), can give a different split there, exactly as two host solvers can.
On everything else the trees are identical: same nodes, same sorted indices, same depths, values equal to rounding.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import List, Optional, Sequence

import numpy as np

from ..errors import InputError
from .eigen import sign_reference
from .ncut import NUM_THRESHOLDS, NCutNode, NCutTree
from .xp import array_namespace, as_array, to_host

__all__ = ["build_trees_batched", "PAD_EIGENVALUE", "SMALL_BUCKET"]

#: Eigenvalue given to the padding rows of a stacked ``M``; below ``-1``, the least eigenvalue ``M`` can have.
PAD_EIGENVALUE = -2.0
#: Subgraphs of at most this many nodes share one bucket; larger ones are bucketed by ``ceil(log2 n)``.
SMALL_BUCKET = 32
#: Subgraphs above this size get an iterative solve each (``eigsh`` on the deflated M) instead of the stacked
#: dense ``eigh``, whose O(n^3) cost dominates from a few thousand nodes up (PERFORMANCE.md: measure on the device).
DENSE_MAX_NODES = 2048
#: Bytes of the float64 best value at the start of each packed row of the per-level transfer.
_VALUE_BYTES = 8


def _bucket_key(n: int) -> int:
    """0 for n <= SMALL_BUCKET, else ceil(log2 n)."""
    return 0 if n <= SMALL_BUCKET else (n - 1).bit_length()


def _resolve_namespace(Ws: list, xp):
    if xp is None:
        return array_namespace(*Ws), Ws
    name = getattr(xp, "__name__", None)
    if name == "numpy":
        return np, [to_host(W) for W in Ws]
    if name == "cupy":
        return xp, [xp.asarray(W) for W in Ws]
    raise InputError(f"xp must be the numpy or the cupy module, got {xp!r}")


def _validate(tau_max, num_thresholds) -> None:
    if isinstance(tau_max, bool) or not (isinstance(tau_max, (int, float, np.integer, np.floating)) and tau_max > 0):
        raise InputError(f"tau_max must be a positive number, got {tau_max!r}")
    if isinstance(num_thresholds, bool) or not (isinstance(num_thresholds, (int, np.integer)) and num_thresholds >= 2):
        raise InputError(f"num_thresholds must be an integer >= 2, got {num_thresholds!r}")


def _thresholds(xp, y_min, y_max, num: int):
    """Per-row ``numpy.linspace(0.99 * y_min, 0.99 * y_max, num)``, computed as numpy computes it (float64)."""
    start = y_min * 0.99
    stop = y_max * 0.99
    div = num - 1
    delta = stop - start
    step = delta / div
    ramp = xp.arange(num, dtype=xp.float64)[None, :]
    # numpy's linspace divides first when the step underflows to zero (gh-5437)
    thr = xp.where((step == 0)[:, None], (ramp / div) * delta[:, None], ramp * step[:, None])
    thr = thr + start[:, None]
    thr[:, -1] = stop
    return thr


def _solve_bucket(xp, stack, img, rows, mask, num_thresholds: int, sanitize: bool):
    """Fiedler vectors and best threshold splits of one bucket of padded subgraphs, all on the device.

    Parameters
    ----------
    stack : array
        (I, N_max, N_max) affinities of all images (zero-padded to a common size).
    img, rows, mask : numpy.ndarray
        (b,) image of each subgraph, (b, n) its node ids (padded with 0) and (b, n) which entries are real.
    sanitize : bool
        Replace non-finite affinities by 0 before solving (level 0, whose transfer reports them).

    Returns
    -------
    array
        (b, 8 + n) uint8: the best NCut value's float64 bytes, then the "1"-side mask.
    """
    b, n = rows.shape
    K = num_thresholds
    img_d = xp.asarray(img)
    rows_d = xp.asarray(rows)
    real = xp.asarray(mask)
    A = stack[img_d[:, None, None], rows_d[:, :, None], rows_d[:, None, :]].astype(xp.float64)
    if sanitize:
        A = xp.where(xp.isfinite(A), A, 0.0)
    A = xp.where(real[:, :, None] & real[:, None, :], A, 0.0)
    d = A.sum(axis=2)
    positive = d > 0
    solvable = xp.all(positive | ~real, axis=1)  # the host makes a leaf of a subgraph with an isolated node
    dis = xp.where(positive, 1.0 / xp.sqrt(xp.where(positive, d, 1.0)), 0.0)
    M = (dis[:, :, None] * A) * dis[:, None, :]
    diag = xp.arange(n)
    M[:, diag, diag] += xp.where(real, 0.0, PAD_EIGENVALUE)
    if n > DENSE_MAX_NODES:
        u2 = _fiedler_iterative(xp, M, d, real)
    else:
        _, vecs = xp.linalg.eigh(M)
        u2 = vecs[:, :, -2]
    y = dis * u2  # y = D^-1/2 u2; zero on the padding
    big = sign_reference(y)  # (the padding is 0, never the reference)
    y = xp.where(xp.take_along_axis(y, big[:, None], axis=1) < 0, -y, y)

    thr = _thresholds(xp, xp.where(real, y, xp.inf).min(axis=1), xp.where(real, y, -xp.inf).max(axis=1), K)
    bins = (y[:, :, None] > thr[:, None, :]).sum(axis=2)  # c_i in 0..K
    G = ((bins[:, :, None] == xp.arange(K + 1)[None, None, :]) & real[:, :, None]).astype(xp.float64)
    Gt = G.transpose(0, 2, 1)
    B = xp.matmul(Gt, xp.matmul(A, G))  # (b, K+1, K+1) affinity between bins
    vol_bin = xp.matmul(Gt, d[:, :, None])[:, :, 0]
    cnt_bin = G.sum(axis=1)
    # cut(t) = sum_{c > t} sum_{c' <= t} B[c, c']: prefix over c', then suffix over c, read at c = t + 1
    right = xp.cumsum(B, axis=2)
    below = xp.flip(xp.cumsum(xp.flip(right, axis=1), axis=1), axis=1)
    cut = xp.diagonal(below[:, 1:, :K], axis1=1, axis2=2)
    vol_one = xp.flip(xp.cumsum(xp.flip(vol_bin, axis=1), axis=1), axis=1)[:, 1:]
    vol_zero = xp.cumsum(vol_bin, axis=1)[:, :K]
    cnt_one = xp.flip(xp.cumsum(xp.flip(cnt_bin, axis=1), axis=1), axis=1)[:, 1:]
    cnt_zero = xp.cumsum(cnt_bin, axis=1)[:, :K]
    with np.errstate(divide="ignore", invalid="ignore") if xp is np else nullcontext():
        values = cut / vol_one + cut / vol_zero
    bad = (cnt_one == 0) | (cnt_zero == 0) | ~xp.isfinite(values) | ~solvable[:, None]
    values = xp.where(bad, xp.inf, values)
    best = xp.argmin(values, axis=1)[:, None]
    value = xp.ascontiguousarray(xp.take_along_axis(values, best, axis=1)[:, 0])
    side = (y > xp.take_along_axis(thr, best, axis=1)) & real
    return xp.concatenate([value.view(xp.uint8).reshape(b, _VALUE_BYTES), side.astype(xp.uint8)], axis=1)


def _eigsh(xp):
    if xp is np:
        from scipy.sparse.linalg import eigsh
    else:
        from cupyx.scipy.sparse.linalg import eigsh
    return eigsh


def _fiedler_iterative(xp, M, d, real):
    """Second eigenvectors of a bucket of large padded subgraphs, one Lanczos solve (``eigsh``) each.

    For every subgraph, the trivial eigenvector ``u1 = sqrt(d) / ||sqrt(d)||`` (eigenvalue 1) is deflated from
    ``M`` (``M - u1 u1^T``), so the largest eigenpair of what remains is the Fiedler pair; ``eigsh(..., k=1,
    which="LA", tol=0)`` (ARPACK on the host, CuPy's thick-restart Lanczos on the device) computes it to machine
    precision. The padding block (eigenvalue ``PAD_EIGENVALUE``) stays out of the way as in the dense path.
    """
    eigsh = _eigsh(xp)
    out = xp.zeros(M.shape[:2], dtype=M.dtype)
    for i in range(M.shape[0]):
        u1 = xp.where(real[i], xp.sqrt(xp.where(real[i], d[i], 0.0)), 0.0)
        u1 = u1 / xp.linalg.norm(u1)
        deflated = M[i] - u1[:, None] * u1[None, :]
        _, vec = eigsh(deflated, k=1, which="LA", tol=0)
        out[i] = vec[:, 0]
    return out


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
                        shapes: Optional[Sequence] = None, xp=None) -> List[NCutTree]:
    """Recursive-NCut trees of several affinities at once, solved level by level on the host or a CUDA device.

    Gives, image by image, the tree of ``build_tree(W, tau_max=tau_max, solver="dense")`` (``compat="clean"``):
    same nodes and sorted indices, depths, and values up to rounding (see the module notes for the schedule, the
    padding and the one host transfer per level).

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

    Returns
    -------
    list of NCutTree
        One tree per affinity, in input order, with ``compat="clean"``.

    Raises
    ------
    InputError
        On a non-square or non-real affinity, NaN or infinite entries, mixed host and device inputs, a
        non-positive ``tau_max``, ``num_thresholds < 2`` or a shape that does not match its affinity.
    """
    _validate(tau_max, num_thresholds)
    Ws = [as_array(W) for W in Ws]
    if not Ws:
        return []
    xp, Ws = _resolve_namespace(Ws, xp)
    sizes = []
    for i, W in enumerate(Ws):
        if W.ndim != 2 or W.shape[0] != W.shape[1]:
            raise InputError(f"affinity {i} must be a square (N, N) matrix, got shape {tuple(W.shape)}")
        if W.dtype.kind not in "biuf":
            raise InputError(f"affinity {i} must be real-valued, got dtype {W.dtype}")
        sizes.append(int(W.shape[0]))
    if shapes is None:
        shapes = [(n,) for n in sizes]
    else:
        shapes = [tuple(int(s) for s in shape) for shape in shapes]
        if len(shapes) != len(Ws):
            raise InputError(f"got {len(shapes)} shapes for {len(Ws)} affinities")
        for i, (shape, n) in enumerate(zip(shapes, sizes)):
            if int(np.prod(shape)) != n:
                raise InputError(f"shape {shape} of image {i} does not match its affinity of {n} nodes")

    stack = _stack_affinities(xp, Ws, sizes)
    finite = xp.stack([xp.all(xp.isfinite(W)) for W in Ws]).astype(xp.uint8)  # stays on the device until level 0
    roots = [NCutNode(np.arange(n), 0) for n in sizes]
    pending = [(i, root) for i, root in enumerate(roots) if root.indices.size >= 2]
    first = True
    while pending or first:
        groups = {}
        for item in pending:
            groups.setdefault(_bucket_key(item[1].indices.size), []).append(item)
        parts, layout = [], []
        for key in sorted(groups):
            items = groups[key]
            n = max(node.indices.size for _, node in items)
            img = np.empty(len(items), dtype=np.intp)
            rows = np.zeros((len(items), n), dtype=np.intp)
            mask = np.zeros((len(items), n), dtype=bool)
            for k, (i, node) in enumerate(items):
                img[k] = i
                rows[k, :node.indices.size] = node.indices
                mask[k, :node.indices.size] = True
            parts.append(_solve_bucket(xp, stack, img, rows, mask, num_thresholds, sanitize=first).ravel())
            layout.append((items, n))
        if first:
            parts.append(finite)
        host = to_host(xp.concatenate(parts))  # the one device -> host copy of this level
        if first:
            bad = np.flatnonzero(host[-len(Ws):] == 0)
            if bad.size:
                raise InputError(f"affinity {int(bad[0])} contains NaN or infinite values")
            first = False
        pending, offset = [], 0
        for items, n in layout:
            width = _VALUE_BYTES + n
            block = host[offset:offset + len(items) * width].reshape(len(items), width)
            offset += len(items) * width
            values = np.ascontiguousarray(block[:, :_VALUE_BYTES]).view(np.float64)[:, 0]
            sides = block[:, _VALUE_BYTES:].astype(bool)
            for k, (i, node) in enumerate(items):
                node.value = float(values[k])
                if node.value < tau_max:
                    side = sides[k, :node.indices.size]
                    node.one = NCutNode(node.indices[side], node.depth + 1)
                    node.zero = NCutNode(node.indices[~side], node.depth + 1)
                    pending.extend((i, child) for child in (node.one, node.zero) if child.indices.size >= 2)
    return [NCutTree(root, shape, tau_max, "clean") for root, shape in zip(roots, shapes)]
