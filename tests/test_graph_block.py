"""The block Krylov solver and its invariant-subspace certificate (graph/eigen.py, issue 22)."""

import numpy as np
import pytest

from diffcut_engine.graph import fiedler_vector
from diffcut_engine.graph.eigen import _block_krylov, _lanczos, subspace_certificate


def clustered_graph(parts=4, size=60, eps=1e-8, seed=0):
    """Nearly disconnected: ``parts`` dense blocks coupled by weights ~eps, so the top of the spectrum of M is a
    cluster of ``parts - 1`` non-trivial eigenvalues within ~eps of 1 (gaps ~eps inside it, ~0.5 below it)."""
    rng = np.random.default_rng(seed)
    n = parts * size
    block = np.repeat(np.arange(parts), size)
    A = rng.uniform(0.5, 1.0, size=(n, n))
    cross = eps * rng.uniform(0.2, 3.0, size=(parts, parts))
    A = np.where(block[:, None] == block[None, :], A, cross[block][:, block] * rng.uniform(0.5, 1.5, size=(n, n)))
    A = (A + A.T) / 2
    return A, A.sum(1)


def exact_u2(A, d):
    dis = 1 / np.sqrt(d)
    vals, vecs = np.linalg.eigh(dis[:, None] * A * dis[None, :])
    return vals[::-1], vecs[:, -2]


def sin_angle(u, v):
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    return np.sqrt(max(0.0, 1 - (u @ v) ** 2))


def test_only_the_subspace_certificate_passes_on_a_clustered_spectrum():
    A, d = clustered_graph()
    vals, u2 = exact_u2(A, d)
    inner, outer = vals[1] - vals[2], vals[3] - vals[4]
    assert inner < 1e-7 and outer > 0.1  # a tight cluster near 1, far from the rest
    # one vector cannot be certified: residual / inner gap would need a residual below rounding
    assert _lanczos(A, d, None) is None
    u = _block_krylov(A, d, None)
    assert u is not None
    assert sin_angle(u, u2) < 1e-6
    # the same split as the dense solve, through the public entry point
    y_block = fiedler_vector(A, d, solver="block")
    y_dense = fiedler_vector(A, d, solver="dense")
    assert np.array_equal(y_block > 0, y_dense > 0)
    np.testing.assert_allclose(y_block / np.linalg.norm(y_block), y_dense / np.linalg.norm(y_dense), atol=1e-6)


def test_certificate_needs_the_cluster_and_its_outer_gap():
    # Ritz values: a cluster of three within 1e-9, the rest 0.6 below; residuals 1e-10
    theta = np.array([0.999999, 0.999998999, 0.999998998, 0.4, 0.3])
    r = np.full(5, 1e-10)
    bound, m = subspace_certificate(theta, r)
    assert m == 3 and bound < 1e-6
    # the single-vector certificate (m = 1) is residual / gap: hopeless here
    assert r[0] / (theta[0] - theta[1] - r[1]) > 1e-6
    # no outer gap (the next Ritz value not separated, its residual large): nothing certified
    bound, _ = subspace_certificate(np.array([0.9, 0.8999, 0.8998]), np.array([1e-9, 1e-9, 0.5]))
    assert not bound < 1e-6


@pytest.mark.parametrize("seed", range(6))
def test_certificate_bounds_the_true_angle(seed):
    # random symmetric matrices with a clustered top, any subspace (not converged): the bound is never below
    # the true sin(angle) between the top Ritz vector and the top eigenvector
    rng = np.random.default_rng(seed)
    n = 40
    lam = np.concatenate([1 - rng.uniform(0, 1e-3, 4), rng.uniform(-0.5, 0.6, n - 4)])
    Qm, _ = np.linalg.qr(rng.normal(size=(n, n)))
    M = (Qm * lam) @ Qm.T
    top = Qm[:, np.argmax(lam)]
    target = Qm[:, np.argsort(lam)[::-1][:4]]
    K, _ = np.linalg.qr(target + 10.0 ** -rng.uniform(3, 7) * rng.normal(size=(n, 4)) @ np.eye(4)
                        if seed % 2 else np.hstack([target, rng.normal(size=(n, 3))])
                        + 10.0 ** -rng.uniform(3, 7) * rng.normal(size=(n, 4 + 3 * (seed % 2 == 0))))
    theta, S = np.linalg.eigh(K.T @ M @ K)
    theta, S = theta[::-1], S[:, ::-1]
    X = K @ S
    r = np.linalg.norm(M @ X - X * theta, axis=0)
    bound, m = subspace_certificate(theta, r)
    assert np.isfinite(bound) and m >= 1
    assert sin_angle(X[:, 0], top) <= bound * (1 + 1e-9) + 1e-12


def test_auto_memo_skips_lanczos_after_it_failed_and_keeps_the_vector(monkeypatch):
    import diffcut_engine.graph.eigen as eigen

    A, d = clustered_graph(parts=4, size=60)
    assert A.shape[0] > eigen.AUTO_DENSE_MAX
    memo = {}
    y_first = fiedler_vector(A, d, solver="auto", memo=memo)
    assert memo == {"lanczos_failed": True}
    calls = []
    real = eigen._lanczos
    monkeypatch.setattr(eigen, "_lanczos", lambda *a, **k: calls.append(1) or real(*a, **k))
    y_again = fiedler_vector(A, d, solver="auto", memo=memo)
    assert calls == []                               # straight to block Krylov
    fiedler_vector(A, d, solver="auto", memo={})     # a fresh tree tries Lanczos again
    assert calls == [1]
    y_dense = fiedler_vector(A, d, solver="dense")
    for y in (y_first, y_again):
        np.testing.assert_allclose(y / np.linalg.norm(y), y_dense / np.linalg.norm(y_dense), atol=1e-6)


def test_disconnected_features_same_tree_with_any_solver():
    from diffcut_engine.graph import recursive_ncut

    rng = np.random.default_rng(5)
    h, w, k = 20, 24, 5
    yy, xx = np.mgrid[0:h, 0:w]
    seeds = rng.uniform(0, 1, size=(k, 2)) * (h, w)
    regions = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    centres = rng.normal(size=(k, 256))
    feats = centres[regions] / 16 + 0.02 * rng.normal(size=(h, w, 256))
    dense = recursive_ncut(feats.astype(np.float32), tau=0.5, solver="dense")
    assert dense.max() + 1 >= 3
    for solver in ("auto", "block"):
        np.testing.assert_array_equal(recursive_ncut(feats.astype(np.float32), tau=0.5, solver=solver), dense)


def _stripes(h, w, k):
    """k exactly orthogonal stripes of one-hot features: W is exactly zero between stripes (a disconnected graph
    whose eigenvalue 1 of M has multiplicity k)."""
    f = np.zeros((h, w, k), np.float32)
    for j in range(k):
        f[:, j * w // k:(j + 1) * w // k, j] = 1
    return f


@pytest.mark.parametrize("h,w,k", [(20, 20, 3), (14, 30, 3), (24, 24, 5), (16, 16, 4)])
def test_every_solver_and_backend_takes_the_canonical_split_of_a_disconnected_graph(h, w, k):
    """Above 192 nodes ``auto`` solves iteratively; block Krylov certifies the eigenvalue-1 cluster of a disconnected
    graph and used to return an arbitrary vector of it ({stripe 0, stripe 2} vs {stripe 1} on 20x20/3), where the
    dense solve takes component_split's canonical split. Every solver now takes it there."""
    from diffcut_engine.graph import native_available, recursive_ncut

    f = _stripes(h, w, k)
    for tau in (0.5, 0.2):
        want = recursive_ncut(f, tau=tau, graph_backend="numpy", solver="dense")
        assert want.max() >= 1
        for solver in ("auto", "block"):
            assert np.array_equal(recursive_ncut(f, tau=tau, graph_backend="numpy", solver=solver), want), solver
        if native_available():
            assert np.array_equal(recursive_ncut(f, tau=tau, graph_backend="native"), want)


@pytest.mark.parametrize("h,w,k", [(20, 20, 3), (14, 30, 3)])
def test_block_krylov_returns_component_split_on_a_disconnected_graph(h, w, k):
    """Where block Krylov certifies the eigenvalue-1 cluster of a disconnected W (these two grids; it declines on
    others, which then go to the dense solve), it returns component_split's vector itself."""
    from diffcut_engine.graph.affinity import affinity_from_tokens, as_token_matrix, l2_normalize
    from diffcut_engine.graph.eigen import component_split

    W = affinity_from_tokens(l2_normalize(as_token_matrix(_stripes(h, w, k))[0]), 10.0, dtype=np.float64)
    d = W.sum(1)
    u = _block_krylov(W, d, None)
    assert u is not None
    np.testing.assert_array_equal(u, component_split(W, d))
