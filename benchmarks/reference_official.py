"""The official DiffCut recursive Normalized Cut, with its original cost structure: the speed baseline.

Every speed ratio reported for the graph stage (``benchmarks/bench_graph.py``) is "this function's time divided
by the engine's time" on the same features, measured in the same run. It is written from the behavioural
description in ``shared/design/DIFFCUT.md`` (sections 2-3) of the official ``diffcut/recursive_normalized_cut.py``
(``PaulCouairon/DiffCut``, commit aa16df4) and keeps what makes that code slow, on purpose:

- torch, float32, on one device (``cpu`` by default, ``cuda`` if asked);
- per visited subgraph (about 2K - 1 of them for K segments, leaves included): the degree matrix built as a
  dense ``torch.diag``, ``L_sym = D^-1/2 (D - A) D^-1/2`` formed with two dense n x n matrix products, and a
  full ``torch.linalg.eigh`` (all n eigenpairs) of which only the second eigenvector is used;
- the 100 candidate thresholds scored one by one in a Python loop with the z-vector formula
  ``z^T (D - A) z / z^T D z`` (dense matrix-vector products) and one ``.item()`` host sync per threshold;
- the "painting" recursion: ``W <- W * (1 - p p^T)`` over the whole N x N matrix at every call, and below the root
  a subgraph made of the rows of the masked W that contain no exact zero;
- the weighted-sum ``assemble_clusters`` relabelling (float32 sums, ``torch.unique``).

``index_sets=True`` replaces the painting mask and the zero-row rule by explicit index sets (the recursion passes
the node indices of each side down), with everything else unchanged. Its partitions are the ones the engine's
``recursive_ncut(..., compat="clean")`` promises (up to float32 vs float64 rounding near a threshold), so it is the
reference the benchmark times and compares against. It skips the two O(N^2) elementwise passes per call (mask
multiply, zero scan), which are small next to the O(n^3) products and eigendecomposition.

``decisions="float64"`` (the benchmark's *exact-decision* reference) takes every decision (the subgraph, the
Fiedler vector, the threshold, NCut < tau) from the same steps solved in float64 on the same float32 W, recorded
by a first, untimed pass (entries of the Fiedler vector tied in magnitude to rounding: the first fixes the sign, as
in the engine), then does all the float32 work above on every subgraph of that recursion, and numbers the segments
by exact (float64) mask sums: the labels of ``tests/graph_reference.py::literal_official(dtype=float64)``, the
partition and label ids ``compat="official"`` promises. (Up to the last bits of W: the engine's float32 W, a
``ssyrk`` Gram matrix raised to alpha by squaring, can differ from torch's by a few ulps, which can turn a near-tie,
such as which node of a two-node subgraph has the larger degree, the other way.) Where the official float32
eigensolve is decided by rounding (a clustered spectrum: nearly disconnected graphs), its own recursion may stop at
once (K = 1) or split in another order, so its time is not the cost of the official computation of *that*
partition; this mode's time, less the float64 pass (``info["decision_seconds"]``), is.

This file is a benchmark baseline, not part of the package; it is deliberately not vectorised.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

#: Candidate thresholds per split (official value).
NUM_THRESHOLDS = 100
#: Exact-decision mode: entries of |y| within this relative distance of the largest tie for the sign (the engine's
#: ``diffcut_engine.graph.eigen.SIGN_TIE_RTOL``, restated: this file does not import the package).
SIGN_TIE_RTOL = 1e-9


class DegenerateSplitError(RuntimeError):
    """The official recursion would loop forever (an accepted split with an empty side)."""


def _tokens(features_hw_c, device) -> tuple:
    """(h, w, C) features -> (C, N) float32 tokens on ``device``, L2-normalised per token, and (h, w)."""
    feats = torch.as_tensor(features_hw_c)
    if feats.ndim != 3:
        raise ValueError(f"features must be an (h, w, C) array, got shape {tuple(feats.shape)}")
    h, w, c = feats.shape
    feats = feats.to(device=device, dtype=torch.float32)
    # generate_masks: (1, C, h, w) normalised over channels, flattened to (C, h*w) in row-major (h, w) order ...
    x = F.normalize(feats.permute(2, 0, 1)[None], dim=1).reshape(c, h * w)
    # ... and recursive_ncut normalises again at level 0 (a no-op up to rounding, kept for bit-faithfulness).
    return F.normalize(x, p=2, dim=0), (h, w)


def _affinity(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """W = ((S - min S) / (max S - min S)) ** alpha, S = X^T X, float32 (global min pair becomes exactly 0)."""
    s = torch.t(x) @ x
    s = (s - s.min()) / (s.max() - s.min())
    return s ** alpha


def _fiedler(A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """y = D^-1/2 u2 from a full eigh of D^-1/2 (D - A) D^-1/2, sign fixed so that max |y| is positive."""
    d_inv_sqrt = torch.diag(1 / torch.diag(D) ** 0.5)
    _, vecs = torch.linalg.eigh(d_inv_sqrt @ (D - A) @ d_inv_sqrt)
    y = d_inv_sqrt @ vecs[:, 1]
    magnitude = torch.abs(y)
    if y.dtype == torch.float64:
        # The exact-decision mode: entries tied in magnitude up to rounding (a two-node subgraph gives y = (x, -x))
        # count as tied and the first one fixes the sign, as the engine's rule (eigen.sign_reference, 1e-9);
        # argmax would follow the last bits of this LAPACK's eigenvector there.
        reference = int(torch.argmax((magnitude >= magnitude.max() * (1.0 - SIGN_TIE_RTOL)).to(torch.uint8)))
    else:
        reference = torch.argmax(magnitude)
    y *= torch.sign(y[reference])
    return y


def _best_split(y: torch.Tensor, A: torch.Tensor, D: torch.Tensor, info: dict) -> tuple:
    """Best of 100 thresholds by exact NCut, scored one at a time with a host sync each (the official loop)."""
    thresholds = torch.linspace(y.min() * 0.99, y.max() * 0.99, NUM_THRESHOLDS, dtype=y.dtype)
    partitions = [(y > t).to(y.dtype) for t in thresholds]  # float32 0/1 as the official 1.0 * (y > t)
    L = D - A
    sum_d = torch.sum(D)
    diag_d = torch.diag(D)
    values = []
    for x in partitions:
        x = 2 * x - 1
        k = torch.sum(diag_d * (x > 0)) / sum_d
        b = k / (1 - k)
        z = (1 + x) - b * (1 - x)
        values.append(((z @ L @ z) / (z @ D @ z)).item())
    info["host_syncs"] += len(values)
    best = int(np.argmin(values))
    return partitions[best] > 0, min(values)


def _split_subgraph(A: torch.Tensor, tau: float, info: dict, decided=None) -> tuple:
    """(side, NCut) of the subgraph A: the official float32 work. With ``decided`` (the exact-decision replay) that
    work still runs, and is timed with the rest, but the answer is ``decided``, the float64 pass's."""
    if decided is None:
        return _solve_subgraph(A, tau, info)
    try:
        _solve_subgraph(A, tau, info)  # the official computation's cost; its float32 answer is not used
    except DegenerateSplitError:
        pass
    return decided


def _solve_subgraph(A: torch.Tensor, tau: float, info: dict) -> tuple:
    D = torch.diag(torch.sum(A, dim=1))
    y = _fiedler(A, D)
    info["solves"] += 1
    side, ncut = _best_split(y, A, D, info)
    if ncut < tau and (bool(side.all()) or not bool(side.any())):
        # A one-signed "Fiedler" vector (a graph that is disconnected to float32 precision): every candidate
        # puts all nodes on one side, rounding makes its NCut ~0 < tau, and the official code recurses on the
        # same subgraph forever. Say so instead of overflowing the stack.
        raise DegenerateSplitError(
            f"accepted a split of a {A.shape[0]}-node subgraph with all nodes on one side (NCut {ncut:.3g}); "
            "the graph is disconnected to float32 precision and the official recursion would not end")
    return side, ncut


def _painting_recursion(W: torch.Tensor, tau: float, info: dict, plan=None, record=None) -> list:
    """The official recursion: painted pairs masked out of W, subgraph = rows with no exact zero (depth >= 1).

    ``record`` (a list): append each visit's (subgraph, (side, NCut) or None) in visit order. ``plan`` (an iterator
    over such a record): the official work on W at every visit, the subgraphs and splits the plan's."""
    n = W.shape[0]
    device = W.device
    masks = []

    def visit(affinity, painting, mask, level):
        painting = painting + mask
        painting[painting > 0] = 1
        painting[painting <= 0] = 0
        row = painting.reshape(1, -1)
        affinity = affinity * (1 - torch.t(row) @ row)
        if level == 0:
            keep = torch.arange(n, device=device)
        else:
            has_zero = torch.zeros(n, dtype=torch.bool, device=device)
            has_zero[torch.unique(torch.where(affinity == 0)[0])] = True
            keep = torch.nonzero(~has_zero).flatten()
        decided = None
        if plan is not None:
            keep, decided = next(plan)
        if keep.numel() > 1:
            side, ncut = _split_subgraph(affinity[keep][:, keep], tau, info, decided)
            if record is not None:
                record.append((keep, (side, ncut)))
            bipartition = torch.zeros(n, device=device)
            bipartition[keep[side]] = 1.0
            if ncut < tau:
                masks.append(bipartition)
                visit(affinity, painting, 1 - bipartition, level + 1)  # the "1"-side first (pre-order)
                visit(affinity, painting, bipartition, level + 1)
        elif record is not None:
            record.append((keep, None))

    zeros = torch.zeros(n, device=device)
    visit(W, zeros, zeros, 0)
    return masks


def _index_set_recursion(W: torch.Tensor, tau: float, info: dict, plan=None, record=None) -> list:
    """Same splits and order, but each subgraph is the explicit index set of its parent's side (``plan`` and
    ``record`` as in :func:`_painting_recursion`)."""
    n = W.shape[0]
    masks = []

    def visit(idx):
        if idx.numel() > 1:
            decided = next(plan)[1] if plan is not None else None
            side, ncut = _split_subgraph(W[idx][:, idx], tau, info, decided)
            if record is not None:
                record.append((idx, (side, ncut)))
            if ncut < tau:
                bipartition = torch.zeros(n, device=W.device)
                bipartition[idx[side]] = 1.0
                masks.append(bipartition)
                visit(idx[side])
                visit(idx[~side])

    visit(torch.arange(n, device=W.device))
    return masks


def _assemble_clusters(masks: list, h: int, w: int, device, dtype=torch.float32) -> torch.Tensor:
    """Sum the masks with weights max(current) + 1 (float32 as the official code; float64 sums are exact for the
    exact-decision mode), then number the distinct sums 0..K-1."""
    if not masks:
        masks = [torch.zeros(h * w, device=device)]
    total = torch.zeros((h, w), device=device, dtype=dtype)
    final = torch.zeros((h, w), device=device)
    weight = 1
    for m in masks:
        total += weight * m.reshape(h, w).to(dtype)
        weight = total.max() + 1
    for i, value in enumerate(torch.unique(total)):
        final[total == value] = i
    return final


def official_recursive_ncut(features_hw_c, alpha: float = 10.0, tau: float = 0.5, device="cpu", *,
                            index_sets: bool = False, return_info: bool = False, decisions: str = "float32"):
    """Official-style DiffCut recursive NCut of one feature grid (slow on purpose: the speed baseline).

    Parameters
    ----------
    features_hw_c : numpy.ndarray or torch.Tensor
        (h, w, C) feature grid, any float dtype (cast to float32); any grid shape (the official code assumes a
        square grid, this port does not need to).
    alpha : float, default 10
        Affinity exponent.
    tau : float, default 0.5
        A split is accepted while its NCut value is below ``tau``.
    device : str or torch.device, default "cpu"
        Where the torch work runs (``"cuda"`` as the official code).
    index_sets : bool, default False
        False: the official painting mask and "rows without an exact zero" subgraph rule (reproduces the
        official partitions, quirk included; compare with ``tests/graph_reference.py::literal_official``).
        True: explicit index sets instead, same cost structure otherwise (compare with the engine's
        ``compat="clean"``).
    return_info : bool, default False
        Also return ``{"solves": number of eigendecompositions, "host_syncs": number of per-threshold .item()
        calls, "segments": K, "decision_seconds": time of the float64 decisions (0 for "float32")}``.
    decisions : {"float32", "float64"}, default "float32"
        ``"float32"``: the official computation. ``"float64"``: the same float32 work on every visited subgraph,
        the decisions from float64 solves of the same float32 subgraphs (module docstring): the labels are the
        float64 rule's, the call's time less ``decision_seconds`` is the official cost of that partition.

    Returns
    -------
    labels : numpy.ndarray
        (h, w) int32 labels 0..K-1, numbered as the official ``assemble_clusters`` (ranked weighted sums; exact up to
        about 24 nested accepted splits, beyond which the float32 sums lose precision as in the official code).
    info : dict
        Only if ``return_info``.

    Raises
    ------
    ValueError
        If the features are not 3-D.
    torch.linalg.LinAlgError
        If an eigendecomposition fails (the official code has no fallback either).
    DegenerateSplitError
        Where the official code would recurse forever: the graph (or a subgraph) is disconnected to float32
        precision, e.g. regions whose cross weights are ~1e-11 of the within-region weights, so ``eigh`` returns
        a one-signed second eigenvector and the best "split" (everything on one side) has NCut ~0 < tau.
    """
    if decisions not in ("float32", "float64"):
        raise ValueError(f"decisions must be 'float32' or 'float64', got {decisions!r}")
    device = torch.device(device)
    info = {"solves": 0, "host_syncs": 0, "decision_seconds": 0.0, "exact": decisions == "float64"}
    with torch.no_grad():
        x, (h, w) = _tokens(features_hw_c, device)
        W = _affinity(x, alpha)
        recursion = _index_set_recursion if index_sets else _painting_recursion
        plan = None
        if decisions == "float64":  # first the decisions, in one untimed float64 pass; then the official work
            start = time.perf_counter()
            record = []
            recursion(W.double(), float(tau), {"solves": 0, "host_syncs": 0}, record=record)
            plan = iter(record)
            info["decision_seconds"] = time.perf_counter() - start
        masks = recursion(W, float(tau), info, plan=plan)
        labels = _assemble_clusters(masks, h, w, device, torch.float64 if info["exact"] else torch.float32)
        labels = labels.cpu().numpy().astype(np.int32)
    info["segments"] = int(labels.max()) + 1
    del info["exact"]
    return (labels, info) if return_info else labels
