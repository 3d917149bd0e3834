"""The batched splitter's eigensolver pieces (graph/eigen.py): stacked ``eigh`` alternatives, their convergence
check (and the re-solve of what misses it), and the seeded ``eigsh`` of large subgraphs. On numpy here; the same
code runs on CuPy, where benchmarks/gpu_check.sh compares the alternatives."""

import logging

import numpy as np
import pytest

import diffcut_engine.graph.eigen as eigen
from diffcut_engine import InputError
from diffcut_engine.graph import affinity
from diffcut_engine.graph.batched import build_trees_batched

from planted import planted_features, planted_regions


def _stack(b=3, n=40, seed=0):
    """(b, n, n) padded affinities (the last one half padding) and their real-node masks."""
    rng = np.random.default_rng(seed)
    A = np.zeros((b, n, n))
    real = np.zeros((b, n), bool)
    for i in range(b):
        m = n if i < b - 1 else n // 2
        x = rng.normal(size=(m, 5))
        A[i, :m, :m] = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 4)
        real[i, :m] = True
    return A, real


@pytest.fixture(autouse=True)
def _restore_method():
    previous = eigen.get_stacked_eigh()
    yield
    eigen.set_stacked_eigh(previous)


@pytest.mark.parametrize("method", ["batched", "loop", "torch"])
def test_stacked_methods_agree(method):
    A, real = _stack()
    ref, d_ref, ok_ref = eigen.stacked_fiedler_vectors(np, A, real, method="batched")
    y, d, ok, conv = eigen.stacked_fiedler_vectors(np, A, real, method=method, return_converged=True)
    np.testing.assert_allclose(y, ref, atol=1e-10)
    assert conv.all() and ok.all() and ok_ref.all()
    # the host reference: the dense eigenvector of the unpadded subgraph
    m = int(real[-1].sum())
    one = eigen.fiedler_vector(A[-1, :m, :m], A[-1, :m, :m].sum(1), solver="dense")
    np.testing.assert_allclose(y[-1, :m], one, atol=1e-10)


def test_method_selection_and_validation():
    assert eigen.STACKED_EIGH_METHODS == ("auto", "batched", "loop", "torch")
    assert eigen.resolve_stacked_method(np, 1000) == "batched"        # numpy: one LAPACK loop either way
    cupy_like = object()
    assert eigen.resolve_stacked_method(cupy_like, 32) == "batched"   # a device: Jacobi up to 32 nodes
    assert eigen.resolve_stacked_method(cupy_like, 33) == "loop"      # then one syevd per matrix
    assert eigen.set_stacked_eigh("torch") == "auto" and eigen.get_stacked_eigh() == "torch"
    assert eigen.resolve_stacked_method(cupy_like, 33) == "torch"
    with pytest.raises(InputError, match="unknown stacked eigensolver"):
        eigen.set_stacked_eigh("jacobi")
    assert eigen.get_stacked_eigh() == "torch"


def test_residual_check_flags_an_unconverged_solve():
    A, real = _stack()
    y, d, ok = eigen.stacked_fiedler_vectors(np, A, real)
    M = A[0] / np.sqrt(np.outer(d[0], d[0]))
    vals, vecs = np.linalg.eigh(M[None])
    assert eigen.eigh_residuals(np, M[None], vals, vecs)[0] < 1e-12
    bad = vecs.copy()
    bad[0, :, -2] = (bad[0, :, -2] + 0.01 * bad[0, :, 0]) / np.sqrt(1 + 1e-4)  # a rotation a Jacobi stop leaves
    assert eigen.eigh_residuals(np, M[None], vals, bad)[0] > eigen.EIGH_RESIDUAL_TOL


def test_unconverged_subgraphs_are_solved_again(monkeypatch, caplog):
    """A stacked solve that stops early on one matrix: the splitter re-solves that one (syevd) and the trees are
    those of a clean solve."""
    W = affinity(planted_features(planted_regions(12, 14, "quadrants"), seed=3), 10.0)
    W2 = affinity(planted_features(planted_regions(12, 14, "disc"), seed=4), 10.0)
    ref = build_trees_batched([W, W2], tau_max=0.5)
    real_eigh = eigen.stacked_eigh
    spoiled = []

    def flaky(xp, M, method=None):
        vals, vecs = real_eigh(xp, M, method)
        if eigen.resolve_stacked_method(xp, M.shape[-1], method) == "batched" and M.shape[0] > 1:
            vecs = vecs.copy()
            vecs[1, :, -2] = vecs[1, :, -3]   # the second matrix: a wrong vector
            spoiled.append(M.shape)
        return vals, vecs

    monkeypatch.setattr(eigen, "stacked_eigh", flaky)
    with caplog.at_level(logging.WARNING, logger="diffcut_engine.graph.batched"):
        got = build_trees_batched([W, W2], tau_max=0.5)
    assert spoiled and "missed the convergence check" in caplog.text
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r.cut(0.5), g.cut(0.5))
        np.testing.assert_allclose(r.split_values(), g.split_values(), rtol=1e-9)


def test_iterative_solves_are_seeded(monkeypatch):
    """Above DENSE_MAX_NODES each subgraph gets eigsh from the seeded start vector, not a random one."""
    W = affinity(planted_features(planted_regions(14, 16, "stripes"), seed=5), 10.0)
    monkeypatch.setattr(eigen, "DENSE_MAX_NODES", 40)
    starts = []
    real_eigsh = eigen._eigsh(np)

    def recording(*args, **kwargs):
        starts.append(kwargs["v0"].copy())
        return real_eigsh(*args, **kwargs)

    monkeypatch.setattr(eigen, "_eigsh", lambda xp: recording)
    np.random.seed(1)
    first = build_trees_batched([W], tau_max=0.5)[0]
    runs = len(starts)
    np.random.seed(2)                                         # ARPACK's own random start would follow this
    second = build_trees_batched([W], tau_max=0.5)[0]
    assert runs and len(starts) == 2 * runs
    for a, b in zip(starts[:runs], starts[runs:]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.cut(0.5), second.cut(0.5))
    # the start vector: zero on the padding, orthogonal to the trivial direction
    real = np.arange(50) < 30
    u1 = np.where(real, 1.0, 0.0) / np.sqrt(30)
    v0 = eigen.eigsh_start_vector(50, real, u1)
    assert np.all(v0[~real] == 0) and abs(v0 @ u1) < 1e-12 and np.all(v0[real] != 0)
    np.testing.assert_array_equal(v0, eigen.eigsh_start_vector(50, real, u1))
