"""Fiedler-vector solvers for the recursive Normalized Cut.

Every solver returns the generalised Fiedler vector y = D^-1/2 u2 of a (sub)graph, where u2 is the eigenvector of
the second-smallest eigenvalue of the normalised Laplacian L = I - D^-1/2 A D^-1/2 (equivalently, of the
second-largest eigenvalue of M = D^-1/2 A D^-1/2, whose largest eigenpair is 1 and sqrt(d)). The sign is fixed
so that the entry of largest magnitude is positive, as the official code does.

Solvers (``solver=``):

``"dense"``
    LAPACK ``syevr`` for the two smallest eigenpairs of L only (``scipy.linalg.eigh(subset_by_index=[0, 1])``);
    exact to rounding, O(n^3). The reference every other solver is checked against.
``"full"``
    All eigenpairs with ``syevd``, as ``torch.linalg.eigh`` computes them; used by ``compat="official"``.
``"lobpcg"``
    LOBPCG for the top of M with sqrt(d) as a constraint (deflated), two vectors per block, warm-started from
    the parent's Fiedler vector restricted to the subgraph when one is given; O(n^2) per iteration. It is
    accepted only when its angle to the true eigenvector is provably small: the Davis-Kahan bound
    ``residual / (lambda2 - lambda3)`` must be below ``LOBPCG_ANGLE_TOL``; otherwise (clustered spectra, as in
    graphs of nearly disconnected blobs) the dense solve runs instead, so the split never depends on an
    unconverged vector.
``"auto"``
    ``dense`` up to ``AUTO_DENSE_MAX`` nodes, ``lobpcg`` (with its dense fallback) above.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

SOLVERS = ("auto", "dense", "full", "lobpcg")

#: Largest subgraph the ``auto`` solver hands to the dense solver.
AUTO_DENSE_MAX = 512
#: Davis-Kahan acceptance bound on sin(angle) between the LOBPCG vector and the exact eigenvector.
LOBPCG_ANGLE_TOL = 1e-6
LOBPCG_MAXITER = 400
#: Below this size LOBPCG has nothing to gain (scipy even switches to a dense solve without constraints).
LOBPCG_MIN_NODES = 32


def validate_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise InputError(f"unknown eigensolver {solver!r}; choose one of {', '.join(SOLVERS)}")


def normalized_laplacian(A: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(D^-1/2 (D - A)) D^-1/2, in this association order (the official product of diagonal matrices)."""
    dis = 1.0 / np.sqrt(d)
    lap = -A.copy()
    lap[np.diag_indices_from(lap)] += d
    return (dis[:, None] * lap) * dis[None, :]


def _fix_sign(y: np.ndarray) -> np.ndarray:
    big = np.argmax(np.abs(y))
    return -y if y[big] < 0 else y


def _dense(A, d, full: bool):
    import scipy.linalg

    lap = normalized_laplacian(A, d)
    if full:
        _, vecs = np.linalg.eigh(lap)
    else:
        _, vecs = scipy.linalg.eigh(lap, subset_by_index=[0, 1], driver="evr", check_finite=False)
    return vecs[:, 1]


def _lobpcg(A, d, warm_start):
    """Top non-trivial eigenvector of M = D^-1/2 A D^-1/2 with a convergence certificate, or None."""
    import scipy.sparse.linalg

    n = A.shape[0]
    sqrt_d = np.sqrt(d)
    dis = 1.0 / sqrt_d
    M = (dis[:, None] * A) * dis[None, :]
    u1 = (sqrt_d / np.linalg.norm(sqrt_d))[:, None]
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 2))
    if warm_start is not None and warm_start.shape == (n,) and np.any(warm_start):
        X[:, 0] = warm_start * sqrt_d  # y = D^-1/2 u  ->  u = D^1/2 y
    with np.errstate(all="ignore"):
        try:
            vals, vecs = scipy.sparse.linalg.lobpcg(M, X, Y=u1, largest=True, tol=1e-10,
                                                    maxiter=LOBPCG_MAXITER, verbosityLevel=0)
        except (np.linalg.LinAlgError, ValueError, NotImplementedError):
            return None
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    u = vecs[:, 0] / np.linalg.norm(vecs[:, 0])
    residual = np.linalg.norm(M @ u - vals[0] * u)
    gap = vals[0] - vals[1]
    if not (np.isfinite(residual) and gap > 0 and residual / gap < LOBPCG_ANGLE_TOL):
        return None
    return u


def fiedler_vector(A: np.ndarray, d: np.ndarray, *, solver: str = "auto", warm_start=None) -> np.ndarray:
    """Generalised Fiedler vector of a graph: the y solving (D - A) y = lambda D y for the second-smallest lambda.

    Parameters
    ----------
    A : numpy.ndarray
        (n, n) symmetric non-negative affinity of the (sub)graph, n >= 2, float32 or float64.
    d : numpy.ndarray
        (n,) degrees ``A.sum(1)``, positive.
    solver : {"auto", "dense", "full", "lobpcg"}
        See the module notes.
    warm_start : numpy.ndarray, optional
        (n,) approximation of y (e.g. the parent's Fiedler vector restricted to this subgraph), used by
        ``lobpcg``.

    Returns
    -------
    numpy.ndarray
        (n,) Fiedler vector y = D^-1/2 u2 in the dtype of ``A``, its largest-magnitude entry positive.
    """
    validate_solver(solver)
    n = A.shape[0]
    if solver == "auto":
        solver = "dense" if n <= AUTO_DENSE_MAX else "lobpcg"
    u = None
    if solver == "lobpcg" and n >= LOBPCG_MIN_NODES:
        u = _lobpcg(A, d, warm_start)
        if u is None:
            logger.debug("lobpcg not certified on %d nodes; dense solve instead", n)
    if u is None:
        u = _dense(A, d, full=(solver == "full"))
    y = (1.0 / np.sqrt(d)) * u
    return _fix_sign(y.astype(A.dtype, copy=False))
