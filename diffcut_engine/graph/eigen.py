"""Every Fiedler-vector solver of the graph stage, and the spectral leaf bound.

Each returns the generalised Fiedler vector y = D^-1/2 u2 (u2 the eigenvector of the second-largest eigenvalue of
M = D^-1/2 A D^-1/2), its largest-magnitude entry positive (:func:`sign_reference`). Host solvers
(:func:`fiedler_vector`, ``solver=``): ``dense`` (LAPACK ``syevr``, two pairs; the reference), ``full`` (all
pairs by ``syevd``, as ``torch.linalg.eigh``; ``compat="official-float32"``), ``lanczos`` and ``lobpcg``
(accepted only with a Davis-Kahan certificate sin(angle) < 1e-6, else the dense solve), ``block`` (block Krylov
with an invariant-subspace certificate, :func:`subspace_certificate`: for clustered spectra, nearly disconnected
graphs), ``auto`` (``dense`` up to ``AUTO_DENSE_MAX`` nodes; above, ``lanczos``, then ``block`` where Lanczos
cannot certify, then ``dense``). Stacks of padded subgraphs in any array namespace:
:func:`stacked_fiedler_vectors`. :func:`spectral_lower_bound` proves leaves without solving. Accuracy,
certificates and measured crossovers: docs/ALGORITHM.md and docs/PERFORMANCE.md.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np

from ..errors import InputError
from ._blas import matmul, matvec, project_out, rmatvec, single_threaded_blas, symv
from .xp import to_host

logger = logging.getLogger(__name__)

SOLVERS = ("auto", "dense", "full", "lobpcg", "lanczos", "block")

#: Largest subgraph the ``auto`` solver hands to the dense solver.
AUTO_DENSE_MAX = 192
#: Davis-Kahan acceptance bound on sin(angle) between the LOBPCG vector and the exact eigenvector.
LOBPCG_ANGLE_TOL = 1e-6
LOBPCG_MAXITER = 400
#: Below this size LOBPCG has nothing to gain (scipy even switches to a dense solve without constraints).
LOBPCG_MIN_NODES = 32
#: Block Krylov (``solver="block"``, and ``auto``'s second try): block size, the most Krylov columns, the largest
#: cluster of near-top eigenvalues whose invariant subspace is certified, and columns between certificate checks.
BLOCK_SIZE = 8
BLOCK_MAX_COLUMNS = 320
BLOCK_MAX_CLUSTER = 32
#: Davis-Kahan acceptance bound on sin(angle) between the Lanczos Ritz vector and the exact eigenvector.
LANCZOS_ANGLE_TOL = 1e-6
#: Krylov dimensions: the first certificate check, and the last one.
LANCZOS_MIN_STEPS = 6
LANCZOS_MAX_STEPS = 160
#: Steps between certificate checks: every step from ``LANCZOS_EVERY_STEP_MIN_NODES`` nodes up (a check, a
#: 2-pair MRRR solve of the small tridiagonal matrix, costs a fraction of a step there), else every
#: ``LANCZOS_CHECK_EVERY`` steps.
LANCZOS_CHECK_EVERY = 3
LANCZOS_EVERY_STEP_MIN_NODES = 384
#: Largest factor by which the top Ritz residual is assumed to shrink per step when scheduling the next check
#: (only when the check runs, never whether the result is accepted, depends on it).
LANCZOS_FASTEST_RATE = 4.0
#: Give up (dense solve) when the certificate would need a residual below this (rounding level of ||M|| = 1).
LANCZOS_HOPELESS = 1e-13
#: Weight of the random part of a warm-started Lanczos start vector (the warm part has norm 1).
LANCZOS_NOISE = 1e-2
#: Below this size Lanczos has nothing to gain over the dense solve.
LANCZOS_MIN_NODES = 32
#: A subgraph is a leaf without solving when its spectral lower bound is at least tau_max plus this margin.
LEAF_BOUND_MARGIN = 1e-9
#: Largest subgraph for which :func:`spectral_lower_bound` also tries the sharper trace(M^4) bound.
LEAF_BOUND_GEMM_MAX = 512
#: Row-block size (in elements) of streamed passes over a subgraph's affinity.
BLOCK_ELEMENTS = 1 << 18
#: Eigenvalue given to the padding rows of a stacked ``M``; below ``-1``, the least eigenvalue ``M`` can have.
PAD_EIGENVALUE = -2.0
#: Padded subgraphs above this size get an iterative solve each (``eigsh`` on the deflated M) instead of the
#: stacked dense ``eigh``, whose O(n^3) cost dominates from a few thousand nodes up.
DENSE_MAX_NODES = 2048
#: Reorthogonalise a second time only when the first pass kept less than this fraction of the vector's norm.
REORTH_KEEP = 0.7071
#: A dense solve whose second-smallest normalised-Laplacian eigenvalue is at most this checks whether the graph is
#: disconnected (:func:`component_split`); exactly disconnected graphs give ~1e-16, connected ones far more.
DISCONNECTED_EIGENVALUE = 1e-10
#: Eigenvalues of the normalised Laplacian at most this are at rounding level (:func:`near_null_split`): a connected
#: graph whose second one is there has no meaningful Fiedler vector, and takes the canonical one; above it, however
#: weakly connected (the nearly disconnected benchmark family: lambda_2 ~ 1e-11), it keeps its eigenvector.
#: The stacked paths (no host sync, so no component search) use it too: a subgraph with a second eigenvalue of M
#: within it of 1 counts as (nearly) disconnected.
NEAR_NULL_EIGENVALUE = 1e-13
#: Dense solves below this many nodes run with SciPy's OpenBLAS single-threaded (``dsyevr``'s result depends on
#: its thread count in the last bits, which decides the split of a graph whose lambda_2 is at rounding level: a
#: nearly disconnected one), as the C++ core runs them (``kThreadedDenseMin`` in csrc/src/tree.cpp), so both
#: backends, and any ``OPENBLAS_NUM_THREADS``, give the same labels there.
DENSE_THREADED_MIN_NODES = 512


def validate_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise InputError(f"unknown eigensolver {solver!r}; choose one of {', '.join(SOLVERS)}")


def normalized_laplacian(A: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(D^-1/2 (D - A)) D^-1/2, in this association order (the official product of diagonal matrices)."""
    dis = 1.0 / np.sqrt(d)
    lap = -A.copy()
    lap[np.diag_indices_from(lap)] += d
    return (dis[:, None] * lap) * dis[None, :]


#: Entries of |y| within this relative distance of the largest count as tied for the sign convention: above the
#: differences between two certified solvers' vectors (certified to 1e-6 in angle: the numpy and native Lanczos
#: were ~1e-9 apart on a 37 x 23 checkerboard and ~1e-7 on a doubly mirrored photo, and mirrored the root split at
#: tolerances 1e-9 and 1e-7), so that exact ties of symmetric images are found by every solver.
SIGN_TIE_RTOL = 1e-5


def sign_reference(y):
    """Index of the entry whose sign fixes the vector's sign: the first entry of (near-)largest magnitude.

    The official rule is "the entry of largest magnitude is positive". When the largest magnitudes tie up to
    rounding with opposite signs (a two-token split gives y = (x, -x)), that rule follows rounding noise, so two
    correct solvers (or two backends' features equal to 1e-7) could give mirrored splits and swapped label ids;
    taking the first entry within ``SIGN_TIE_RTOL`` of the largest makes the choice deterministic. Without a tie it
    is the official entry (all near-largest entries then have one sign). Works on numpy and cupy arrays and on
    stacks (along the last axis).
    """
    a = abs(y)
    return (a >= a.max(axis=-1, keepdims=True) * (1.0 - SIGN_TIE_RTOL)).argmax(axis=-1)


def _fix_sign(y: np.ndarray) -> np.ndarray:
    return -y if y[sign_reference(y)] < 0 else y


def _dense(A, d, full: bool):
    import scipy.linalg

    lap = normalized_laplacian(A, d)
    if full:  # (the official float32 computation, literally: no rule for disconnected graphs)
        _, vecs = np.linalg.eigh(lap)
        return vecs[:, 1]
    with single_threaded_blas(lap.shape[0] < DENSE_THREADED_MIN_NODES):
        vals, vecs = scipy.linalg.eigh(lap, subset_by_index=[0, 1], driver="evr", check_finite=False)
    if vals[1] <= DISCONNECTED_EIGENVALUE:
        u = component_split(A, d)
        if u is None and vals[1] <= NEAR_NULL_EIGENVALUE:
            with single_threaded_blas(lap.shape[0] < DENSE_THREADED_MIN_NODES):
                u = near_null_split(lap, d)
        if u is not None:
            return u
    return vecs[:, 1]


def component_split(A, d):
    """``u`` of the canonical split of a disconnected graph, or None when ``A`` is connected.

    A graph whose affinity has several connected components (its non-zero entries) has the eigenvalue 1 of
    ``M = D^-1/2 A D^-1/2`` once per component, so its Fiedler vector is not unique: any eigensolver returns an
    arbitrary vector of that eigenspace, and two solvers (or two LAPACK builds) split it differently. The
    engine then takes the one vector every backend computes alike, from exact zero patterns only:
    ``y = 1_C - vol(C) / vol(V)`` (``u = D^1/2 y``, orthogonal to ``sqrt(d)``), ``C`` the component of the
    subgraph's first node, a split of NCut 0. (Triggered only when the dense solve finds a second eigenvalue of
    the normalised Laplacian below ``DISCONNECTED_EIGENVALUE``; a connected graph keeps its eigenvector.)
    """
    import scipy.sparse
    from scipy.sparse.csgraph import breadth_first_order

    reached = breadth_first_order(scipy.sparse.csr_matrix(np.asarray(A) != 0), 0, directed=False,
                                  return_predecessors=False)
    if reached.size == A.shape[0]:
        return None
    first = np.zeros(A.shape[0], dtype=np.float64)
    first[reached] = 1.0
    d = np.asarray(d, dtype=np.float64)
    c = float(np.dot(first, d)) / float(d.sum())
    return np.sqrt(d) * (first - c)


#: The lower end of the eigenvalue interval :func:`near_null_split` asks LAPACK for (the normalised Laplacian's
#: eigenvalues lie in [0, 2]; rounding may put the trivial one a little below 0).
NEAR_NULL_LOWER = -1.0
#: :func:`near_null_split` gives up when its projection is this small against the eigenvectors' largest entry
#: (the first node's share is then rounding noise; a proper one is at least ~1 / sqrt(n) of it).
NEAR_NULL_FLOOR = 1e-8


def near_null_split(lap, d):
    """``u`` of the canonical split of a graph connected only through weights at rounding level, or None.

    Weak links (a cluster whose affinity to the rest is ~1e-20 of its own, say) keep a graph connected in its
    non-zero pattern, so :func:`component_split` does not apply, but its normalised Laplacian has more than one
    eigenvalue within rounding of 0: the eigensolver's second vector is then an arbitrary vector of that
    eigenspace, mixed with the trivial one, and two solvers or two LAPACK builds split it differently (seen:
    mirrored sides, hence other label ids, between the host and the batched path). The canonical vector is the
    one the batched path takes: the projection of the first node's unit vector on the eigenvectors of eigenvalue
    at most ``NEAR_NULL_EIGENVALUE`` (one more LAPACK ``dsyevr`` call, eigenvalues in
    (``NEAR_NULL_LOWER``, ``NEAR_NULL_EIGENVALUE``]), less its component along ``sqrt(d)``. For an exactly
    disconnected graph that is a positive multiple of :func:`component_split`'s vector; for weakly linked clusters
    it splits them as the weak links' limit does. The C++ core computes the same floats in the same order
    (csrc/src/tree.cpp ``near_null_split``). None where LAPACK finds fewer than two such eigenvalues or the
    projection vanishes (the caller then keeps its eigenvector).
    """
    import scipy.linalg

    _, V = scipy.linalg.eigh(lap, subset_by_value=(NEAR_NULL_LOWER, NEAR_NULL_EIGENVALUE), driver="evr",
                             check_finite=False)
    if V.shape[1] < 2:
        return None
    p = V[:, 0] * V[0, 0]
    for j in range(1, V.shape[1]):
        p = p + V[:, j] * V[0, j]
    s = np.sqrt(np.asarray(d, dtype=np.float64))
    p = p - s * (np.sum(p * s) / np.sum(s * s))
    if not np.max(np.abs(p)) > NEAR_NULL_FLOOR * np.max(np.abs(V)):
        return None
    return p


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


def _top_ritz_pairs(alpha: np.ndarray, beta: np.ndarray):
    """The two largest eigenpairs of the symmetric tridiagonal matrix with diagonal ``alpha`` and off-diagonal
    ``beta``: ``((theta2, theta1), (s2, s1))``, ascending. LAPACK ``dstemr`` (MRRR) called directly: the same
    solver that ``scipy.linalg.eigh_tridiagonal`` picks, without its per-call argument handling."""
    from scipy.linalg.lapack import dstemr

    k = alpha.size
    e = np.zeros(k)
    e[:k - 1] = beta
    m, w, z, info = dstemr(alpha, e, 2, 0.0, 0.0, k - 1, k)  # range 2: eigenvalues il..iu (1-based)
    if info != 0 or m != 2:
        import scipy.linalg

        w, z = scipy.linalg.eigh_tridiagonal(alpha, beta, select="i", select_range=(k - 2, k - 1),
                                             check_finite=False)
    return w[:2], z[:, :2].T


def _lanczos(A, d, warm_start):
    """Top non-trivial eigenvector u2 of M = D^-1/2 A D^-1/2 by Lanczos, with a certificate; or None.

    The certificate. Let P = I - u1 u1^T (u1 = sqrt(d)/||sqrt(d)||, M u1 = u1) and lambda_2 >= lambda_3 >= ... the
    eigenvalues of M on range(P). For the top Ritz pair (theta_1, x_1) with residual r_1 = ||P M x_1 - theta_1 x_1||,
    Davis-Kahan gives sin angle(x_1, u2) <= r_1 / delta with delta = the distance from theta_1 to the rest of the
    spectrum of M, i.e. min(1 - theta_1, theta_1 - lambda_3) (theta_1 <= lambda_2 < 1 by Cauchy interlacing).
    lambda_3 is not known. The second Ritz value is *not* an upper bound for it: interlacing gives
    theta_2 <= lambda_3, so theta_1 - theta_2 over-estimates theta_1 - lambda_3 (unsafe). What is known is that an
    eigenvalue of M lies within r_2 of theta_2 (r_2 the second Ritz pair's residual), and Lanczos resolves the
    top of the spectrum in order, so when x_2 has converged that eigenvalue is lambda_3 and lambda_3 <= theta_2 + r_2.
    Hence we require ``r_1 / min(1 - theta_1 - r_1, theta_1 - theta_2 - r_2) < LANCZOS_ANGLE_TOL`` (both terms
    positive), which demands that the second Ritz pair be converged to a fraction of the gap as well. The one
    assumption, that no eigenvalue between theta_2 + r_2 and lambda_2 was missed, fails only for a start vector
    (almost) orthogonal to its eigenvector, which the seeded random component of the start vector rules out in
    practice; the same assumption underlies every Krylov/LOBPCG certificate. With full reorthogonalisation the
    Ritz residuals are |beta_k s_i[-1]|; the accepted vector's residual is recomputed explicitly before use.
    """

    n = A.shape[0]
    A = np.asarray(A, dtype=np.float64)
    sqrt_d = np.sqrt(np.asarray(d, dtype=np.float64))
    dis = 1.0 / sqrt_d
    u1 = sqrt_d / np.linalg.norm(sqrt_d)

    def matvec(x):  # M x = D^-1/2 A D^-1/2 x, without forming M (saves a pass over the n x n matrix)
        return dis * symv(A, dis * x)

    rng = np.random.default_rng(n)
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    if warm_start is not None and warm_start.shape == (n,) and np.all(np.isfinite(warm_start)):
        w = np.asarray(warm_start, dtype=np.float64) * sqrt_d  # y = D^-1/2 u  ->  u = D^1/2 y
        w -= u1 * (u1 @ w)
        norm = np.linalg.norm(w)
        if norm > 0:
            v = w / norm + LANCZOS_NOISE * v
    kmax = min(LANCZOS_MAX_STEPS, n - 1)  # range(P) has dimension n - 1
    # row 0: u1; rows 1..: the Lanczos vectors q_0, q_1, ... (one projection removes u1 and all of them)
    Q = np.empty((kmax + 2, n))
    Q[0] = u1
    alpha = np.empty(kmax)
    beta = np.empty(kmax)
    for _ in range(2):
        v -= u1 * (u1 @ v)
    Q[1] = v / np.linalg.norm(v)
    every = 1 if n >= LANCZOS_EVERY_STEP_MIN_NODES else LANCZOS_CHECK_EVERY
    next_check = min(LANCZOS_MIN_STEPS, kmax)
    for j in range(kmax):
        q = Q[j + 1]
        w = matvec(q)
        alpha[j] = q @ w
        w -= alpha[j] * q
        if j > 0:
            w -= beta[j - 1] * Q[j]
        # full reorthogonalisation against u1 and every previous Lanczos vector; a second pass only when the
        # first one removed most of w (Kahan-Parlett: "twice is enough", and once is when the norm stays)
        norm_before = math.sqrt(w @ w)
        for _ in range(2):
            project_out(Q[:j + 2], w)
            beta[j] = math.sqrt(w @ w)
            if beta[j] > REORTH_KEEP * norm_before:
                break
            norm_before = beta[j]
        k = j + 1
        breakdown = not beta[j] > 1e-12 * max(1.0, abs(alpha[j]))
        if breakdown and k < n - 1:
            return None  # an invariant subspace that is not the whole space: the gap cannot be trusted
        if not breakdown:
            np.multiply(w, 1.0 / beta[j], out=Q[k + 1])
        if (k < next_check and not breakdown) or k < 3:
            continue
        (theta2, theta1), (s2, s1) = _top_ritz_pairs(alpha[:k], beta[:k - 1])
        b = 0.0 if breakdown else beta[j]
        r1, r2 = abs(b * s1[-1]), abs(b * s2[-1])
        gap = min(1.0 - theta1 - r1, theta1 - theta2 - r2)
        if not min(1.0 - theta1, theta1 - theta2) * LANCZOS_ANGLE_TOL > LANCZOS_HOPELESS:
            # both over-estimate their true gaps (interlacing): the residual needed is below rounding level
            return None
        if gap > 0 and r1 < LANCZOS_ANGLE_TOL * gap:
            u = rmatvec(Q[1:k + 1], s1)
            u -= u1 * (u1 @ u)
            u /= np.linalg.norm(u)
            Mu = matvec(u)
            rho = u @ Mu
            true_r1 = np.linalg.norm(Mu - rho * u - u1 * (u1 @ Mu))
            gap = min(1.0 - rho - true_r1, rho - theta2 - r2)
            if np.isfinite(true_r1) and gap > 0 and true_r1 < LANCZOS_ANGLE_TOL * gap:
                return u
            return None
        if breakdown:
            break
        # the next check: the top Ritz residual shrinks by a roughly constant factor per step, never (in
        # practice) faster than LANCZOS_FASTEST_RATE; skip the steps it cannot have converged in
        wait = every
        if gap > 0 and r1 > 0:
            wait = max(every, int(math.log(r1 / (LANCZOS_ANGLE_TOL * gap)) / math.log(LANCZOS_FASTEST_RATE)))
        next_check = min(k + wait, kmax)
    return None


def subspace_certificate(theta: np.ndarray, r: np.ndarray):
    """Bound on sin(angle) between the top Ritz vector and u2 from a cluster's invariant-subspace certificate.

    ``theta`` are Ritz values of M on range(P) (descending) from one Rayleigh-Ritz projection, ``r`` the explicit
    residual norms of their Ritz vectors. For a cluster of the top ``m`` pairs (Ritz vectors X_m, residual
    block R_m, ||R_m|| <= ||R_m||_F):

    1. Outer gap (Davis-Kahan sin(Theta)): the eigenvalues of M outside the cluster's invariant subspace U_m lie
       at or below theta_{m+1} + r_{m+1} (an eigenvalue lies within r_{m+1} of theta_{m+1}, and Krylov methods
       resolve the top of the spectrum in order: the assumption every Krylov certificate here makes, see
       :func:`_lanczos`), so sin angle(X_m, U_m) <= ||R_m|| / delta_out, delta_out = theta_m - theta_{m+1} -
       r_{m+1}. u2 lies in U_m, so sin angle(u2, span X_m) obeys the same bound.
    2. Inner gap (Rayleigh-Ritz inside span X_m; Saad, Numerical Methods for Large Eigenvalue Problems, Thm 4.6):
       sin angle(x_1, u2) <= sqrt(1 + gamma^2 / delta_in^2) sin angle(u2, span X_m) with gamma =
       ||P_X M (I - P_X)|| = ||R_m|| (X_m are Ritz vectors) and delta_in = min_{j >= 2} |lambda_2 - theta_j| >=
       theta_1 - theta_2 (lambda_2 >= theta_1 by interlacing).

    So sin angle(x_1, u2) <= sqrt(1 + ||R_m||^2 / (theta_1 - theta_2)^2) * ||R_m|| / delta_out: about residual^2
    / (inner gap * outer gap) once the residual exceeds the inner gap. With m = 1 this is Davis-Kahan for one
    vector (the Lanczos certificate). Returns ``(bound, m)``, the smallest bound over m = 1 .. len(theta) - 1.
    """
    best, best_m = np.inf, 0
    sq = np.cumsum(np.square(r))
    inner = theta[0] - theta[1] if theta.size > 1 else np.inf
    for m in range(1, theta.size):
        outer = theta[m - 1] - theta[m] - r[m]
        if not outer > 0:
            continue
        res = math.sqrt(sq[m - 1])
        factor = 1.0 if m == 1 else (math.sqrt(1.0 + (res / inner) ** 2) if inner > 0 else np.inf)
        bound = factor * res / outer
        if bound < best:
            best, best_m = bound, m
    return best, best_m


def _orthonormal_rows(V: np.ndarray, Q: np.ndarray, rng) -> np.ndarray:
    """The rows of V made orthonormal and orthogonal to the (orthonormal) rows of Q: two block Gram-Schmidt
    passes and a QR; rank-deficient directions are replaced by random ones (a breakdown of the block Krylov
    space: an invariant subspace was found, and the search goes on in fresh directions)."""
    import scipy.linalg

    for attempt in range(3):
        for _ in range(2):
            V -= matmul(matmul(V, Q.T), Q)
        q, r = scipy.linalg.qr(V.T, mode="economic", check_finite=False)
        diag = np.abs(np.diag(r))
        small = diag <= 1e-10 * max(diag.max(initial=0.0), 1e-300)
        if not small.any():
            return np.ascontiguousarray(q.T)
        V = np.ascontiguousarray(q.T)
        V[small] = rng.standard_normal((int(small.sum()), V.shape[1]))
    return None


def _block_krylov(A, d, warm_start, tol: float = LANCZOS_ANGLE_TOL):
    """u2 of M = D^-1/2 A D^-1/2 by block Krylov with an invariant-subspace certificate, or None.

    For nearly disconnected graphs the top of the spectrum is a cluster (one eigenvalue near 1 per weakly
    linked part) with tiny gaps inside it but a wide gap below it. A single vector cannot be certified there
    (residual / inner gap); a block Krylov space of ``BLOCK_SIZE`` vectors per step converges on the cluster's
    whole invariant subspace at the rate of the outer gap, and Rayleigh-Ritz inside it then gives u2 with the
    error bound of :func:`subspace_certificate`. Products are BLAS-3 (``gemm``) with full reorthogonalisation
    in float64 (two passes), against u1 too; residuals are computed explicitly from the stored products.
    """
    import scipy.linalg

    n = A.shape[0]
    A = np.asarray(A, dtype=np.float64)
    sqrt_d = np.sqrt(np.asarray(d, dtype=np.float64))
    dis = 1.0 / sqrt_d
    u1 = sqrt_d / np.linalg.norm(sqrt_d)
    b = max(1, min(BLOCK_SIZE, (n - 1) // 4))
    kmax = min(BLOCK_MAX_COLUMNS, n - 1)
    rng = np.random.default_rng(n)
    V = rng.standard_normal((b, n))
    if warm_start is not None and warm_start.shape == (n,) and np.all(np.isfinite(warm_start)):
        w = np.asarray(warm_start, dtype=np.float64) * sqrt_d
        norm = np.linalg.norm(w)
        if norm > 0:
            V[0] = w / norm * math.sqrt(n) + LANCZOS_NOISE * V[0]
    Q = np.empty((kmax + 1, n))  # row 0: u1; rows 1..k: the orthonormal Krylov basis
    Q[0] = u1
    MQ = np.empty((kmax, n))
    T = np.empty((kmax, kmax))
    V = _orthonormal_rows(V, Q[:1], rng)
    k = 0
    while V is not None and k + V.shape[0] <= kmax:
        b = V.shape[0]
        Q[1 + k:1 + k + b] = V
        MQ[k:k + b] = matmul(V * dis, A) * dis  # rows of (M V^T)^T = V M
        k += b
        # T = Q^T M Q, one new block column (and row, by symmetry) per step
        T[:k, k - b:k] = matmul(Q[1:1 + k], MQ[k - b:k].T)
        T[k - b:k, :k - b] = T[:k - b, k - b:k].T
        Tk = (T[:k, :k] + T[:k, :k].T) / 2
        theta, S = scipy.linalg.eigh(Tk, check_finite=False)
        theta, S = theta[::-1], S[:, ::-1]
        p = min(k, BLOCK_MAX_CLUSTER + 1)
        X = matmul(np.ascontiguousarray(S[:, :p].T), Q[1:1 + k])
        R = matmul(np.ascontiguousarray(S[:, :p].T), MQ[:k]) - theta[:p, None] * X
        r = np.sqrt(np.einsum("ij,ij->i", R, R))
        bound, m = subspace_certificate(theta[:p], r)
        if np.isfinite(bound) and bound < tol and 1.0 - theta[0] - r[0] > 0:
            if 1.0 - theta[0] <= DISCONNECTED_EIGENVALUE:
                # lambda_2 at rounding level: a disconnected graph has the eigenvalue 1 once per component and the
                # certified vector is an arbitrary one of that eigenspace; the dense solve's canonical split then
                split = component_split(A, d)
                if split is not None or 1.0 - theta[0] <= NEAR_NULL_EIGENVALUE:
                    # (a graph connected only through weights at rounding level has no certified canonical vector
                    # here: None, so that the dense solve applies near_null_split)
                    return split
            u = X[0] - u1 * (u1 @ X[0])
            return u / np.linalg.norm(u)
        if k + b > kmax:
            break
        V = _orthonormal_rows(MQ[k - b:k].copy(), Q[:1 + k], rng)
    return None


#: The iterative solvers run only where every degree is at least this fraction of the largest: they certify u to
#: sin(angle) < 1e-6, and y = D^-1/2 u magnifies that error by sqrt(max d / d_i) at node i. A nearly isolated
#: token (an all-zero feature vector among signed ones: degree 1e-28 against 50) put y's range at 2243 where the
#: dense solve's is 0.004, and the numpy and native Lanczos split such a root differently from each other and from
#: the dense solve (9% of labels equal). Realistic features stay above 1e-3 (benchmarks' families, alpha 10 and 30).
ITERATIVE_DEGREE_SPREAD = 1e-6


def iterative_degrees(d) -> bool:
    """Whether degrees ``d`` allow the iterative solvers (:data:`ITERATIVE_DEGREE_SPREAD`; else the dense solve)."""
    return float(np.min(d)) >= ITERATIVE_DEGREE_SPREAD * float(np.max(d))


def fiedler_vector(A: np.ndarray, d: np.ndarray, *, solver: str = "auto", warm_start=None,
                   memo: Optional[dict] = None) -> np.ndarray:
    """Generalised Fiedler vector of a graph: the y solving (D - A) y = lambda D y for the second-smallest lambda.

    Parameters
    ----------
    A : numpy.ndarray
        (n, n) symmetric non-negative affinity of the (sub)graph, n >= 2, float32 or float64. It must be
        symmetric: the ``lanczos`` products read its lower triangle only.
    d : numpy.ndarray
        (n,) degrees ``A.sum(1)``, positive.
    solver : {"auto", "dense", "full", "lobpcg", "lanczos", "block"}
        See the module notes.
    warm_start : numpy.ndarray, optional
        (n,) approximation of y (e.g. the parent's Fiedler vector restricted to this subgraph), used by
        ``lobpcg`` and ``lanczos``.
    memo : dict, optional
        Shared by the solves of one tree (``auto`` only): once Lanczos could not certify a subgraph (a clustered
        spectrum: a nearly disconnected graph, whose subgraphs are so too), the later solves go to block Krylov
        first. Every accepted vector still carries its certificate, so the result does not depend on it.

    Returns
    -------
    numpy.ndarray
        (n,) Fiedler vector y = D^-1/2 u2 in the dtype of ``A``, its largest-magnitude entry positive.
    """
    validate_solver(solver)
    n = A.shape[0]
    if solver == "auto":
        solver = "dense" if n <= AUTO_DENSE_MAX else "auto_iterative"
    if solver not in ("dense", "full") and n and not iterative_degrees(d):
        solver = "dense"
    u = None
    skip_lanczos = solver == "auto_iterative" and memo is not None and memo.get("lanczos_failed", False)
    if solver in ("lanczos", "auto_iterative") and n >= LANCZOS_MIN_NODES and not skip_lanczos:
        u = _lanczos(A, d, warm_start)
        if u is None and memo is not None:
            memo["lanczos_failed"] = True
        if u is None:
            logger.debug("lanczos not certified on %d nodes; %s instead", n,
                         "block Krylov" if solver == "auto_iterative" else "dense solve")
    if u is None and solver in ("block", "auto_iterative") and n >= LANCZOS_MIN_NODES:
        u = _block_krylov(A, d, warm_start)
        if u is None:
            logger.debug("block Krylov not certified on %d nodes; dense solve instead", n)
    if solver == "lobpcg" and n >= LOBPCG_MIN_NODES:
        u = _lobpcg(A, d, warm_start)
        if u is None:
            logger.debug("lobpcg not certified on %d nodes; dense solve instead", n)
    if u is None:
        u = _dense(A, d, full=(solver == "full"))
    y = (1.0 / np.sqrt(d)) * u
    return _fix_sign(y.astype(A.dtype, copy=False))


#: Degrees below which :func:`spectral_lower_bound` claims nothing: with every degree above it, a weight whose square
#: underflows (below ~1.5e-154) contributes less than 2.2e-308 / 1e-280 to a term of ||M||_F^2, so the sum is
#: short by less than 1e-18 for any grid a dense affinity holds.
_BOUND_MIN_DEGREE = 1e-140
#: ... nor where a degree exceeds this: a weight's square may then overflow (a float64 W near 1e299 warned of an
#: overflow and bounded nothing); below it every A_ij^2 <= d_i^2 is finite. (The native core's float32 W never
#: comes near.)
_BOUND_MAX_DEGREE = 1e150


def spectral_lower_bound(A: np.ndarray, d: np.ndarray, stop_below=None) -> float:
    """A cheap, rigorous lower bound on the NCut of *every* bipartition of a graph.

    Every NCut value is a Rayleigh quotient of the normalised Laplacian on a vector orthogonal to its trivial
    eigenvector (Shi and Malik's z), so NCut >= lambda_2 = 1 - mu_2, mu_2 the second-largest eigenvalue of
    M = D^-1/2 A D^-1/2. Since mu_1 = 1, ``sum_{i >= 2} mu_i^(2p) = trace(M^(2p)) - 1 >= mu_2^(2p)``, which gives
    mu_2 <= (||M||_F^2 - 1)^(1/2) (p = 1, O(n^2)) and, for graphs up to ``LEAF_BOUND_GEMM_MAX`` nodes,
    mu_2 <= (||M^2||_F^2 - 1)^(1/4) (p = 2, one matrix product). A subgraph whose bound reaches tau is a leaf at
    that tau without any eigensolve: near-uniform segments (the typical leaves) have mu_2 close to 0.

    Parameters
    ----------
    stop_below : float, optional
        Return early once the bound is certain to be below this value (the caller only asks whether it reaches
        it). ||M||_F^2 is a sum of non-negative row terms, so a partial sum already caps the bound: big subgraphs
        far from a leaf are settled after a few rows.

    Returns
    -------
    float
        1 - (upper bound of mu_2), in (-inf, 1]; meaningless (<= 0) for graphs that are far from a leaf. With
        ``stop_below``, a value below it is only known to be below it.
    """
    n = A.shape[0]
    if n and (float(np.min(d)) < _BOUND_MIN_DEGREE or float(np.max(d)) > _BOUND_MAX_DEGREE):
        # the squares A_ij^2 of such a graph's weights may underflow to 0 while A_ij^2 / (d_i d_j) does not (a
        # float64 W scaled by 1e-200 "proved" every subgraph a leaf), or overflow: no bound is claimed (NCut >= 0
        # always holds)
        return 0.0
    dinv = 1.0 / d
    # the row sum of ||M||_F^2 above which neither form can reach stop_below (the trace(M^4) form needs
    # ||M||_F^2 < 2)
    give_up = np.inf
    if stop_below is not None:
        if stop_below > 1.0:
            return 1.0  # the bound never exceeds 1
        give_up = 1.0 + max(1.0 - stop_below, 0.0) ** 2
        if n <= LEAF_BOUND_GEMM_MAX:
            give_up = max(give_up, 2.0)
    # ||M||_F^2 = sum_ij A_ij^2 / (d_i d_j), in row blocks so that no (n, n) temporary is allocated; the blocks
    # start small and double, to give up early on subgraphs far from a leaf
    step = max(1, BLOCK_ELEMENTS // n)
    buf = np.empty((min(step, n), n), dtype=A.dtype)
    fro2 = 0.0
    start, size = 0, max(1, min(step, n // 16))
    while start < n:
        rows = A[start:start + size]
        sq = np.square(rows, out=buf[:rows.shape[0]])
        fro2 += float(dinv[start:start + size] @ matvec(sq, dinv))
        start += size
        size = min(2 * size, step)
        if fro2 > give_up:
            return 1.0 - np.sqrt(max(fro2 - 1.0, 0.0))
    mu2 = np.sqrt(max(fro2 - 1.0, 0.0))
    if mu2 < 1.0 and n <= LEAF_BOUND_GEMM_MAX:
        dis = np.sqrt(dinv)
        M = (dis[:, None] * A) * dis[None, :]
        M2 = matmul(M, M)
        mu2 = min(mu2, max(float(np.einsum("ij,ij->", M2, M2)) - 1.0, 0.0) ** 0.25)
    return 1.0 - mu2


def _eigsh(xp):
    if xp is np:
        from scipy.sparse.linalg import eigsh
    else:
        from cupyx.scipy.sparse.linalg import eigsh
    return eigsh


#: Seed of the start vectors of :func:`_fiedler_iterative` (with the subgraph's size and position in the stack).
EIGSH_SEED = 20240602


def eigsh_start_vector(n: int, real_mask: np.ndarray, u1: np.ndarray, index: int = 0) -> np.ndarray:
    """The seeded start vector of one iterative solve: uniform in [0.5, 1.5) on the real nodes, zero on the
    padding, the trivial direction ``u1`` projected out. The same numbers on the host and on a device (drawn by
    numpy, then copied), so near-tie splits do not depend on ARPACK's or CuPy's own random start."""
    rng = np.random.default_rng([EIGSH_SEED, int(n), int(index)])
    v0 = np.where(real_mask, rng.random(n) + 0.5, 0.0)
    return v0 - u1 * float(u1 @ v0)


def _fiedler_iterative(xp, M, d, real):
    """Second eigenvectors of a stack of large padded M, one Lanczos solve (``eigsh``) each.

    For every subgraph, the trivial eigenvector ``u1 = sqrt(d) / ||sqrt(d)||`` (eigenvalue 1) is deflated from
    ``M`` (``M - u1 u1^T``), so the largest eigenpair of what remains is the Fiedler pair; ``eigsh(..., k=1,
    which="LA", tol=0)`` (ARPACK on the host, CuPy's thick-restart Lanczos on the device) computes it to machine
    precision, from the seeded start vector of :func:`eigsh_start_vector` (not the library's unseeded random one).
    The padding block (eigenvalue ``PAD_EIGENVALUE``) stays out of the way as in the dense path. On a device
    this still runs subgraph by subgraph, and CuPy's ``eigsh`` synchronises at its restarts.
    """
    eigsh = _eigsh(xp)
    out = xp.zeros(M.shape[:2], dtype=M.dtype)
    real_host = np.asarray(real.get() if hasattr(real, "get") else real)
    d_host = np.asarray(d.get() if hasattr(d, "get") else d)
    for i in range(M.shape[0]):
        u1 = np.where(real_host[i], np.sqrt(np.where(real_host[i], d_host[i], 0.0)), 0.0)
        u1 = u1 / np.linalg.norm(u1)
        v0 = eigsh_start_vector(M.shape[1], real_host[i], u1, i)
        u1_x = xp.asarray(u1)
        deflated = M[i] - u1_x[:, None] * u1_x[None, :]
        val, vec = eigsh(deflated, k=1, which="LA", tol=0, v0=xp.asarray(v0))
        out[i] = vec[:, 0]
        if float(val[0]) >= 1.0 - NEAR_NULL_EIGENVALUE:  # (nearly) disconnected: the canonical split
            keep = np.flatnonzero(real_host[i])
            Mi = to_host(M[i][keep][:, keep]).astype(np.float64)
            u = component_split(Mi, d_host[i][keep])
            if u is None:  # weights at rounding level: the host's near-null rule, on L = I - M
                lap = -Mi
                lap[np.diag_indices_from(lap)] += 1.0
                u = near_null_split(lap, d_host[i][keep])
            if u is not None:
                full = np.zeros(M.shape[1])
                full[keep] = u
                out[i] = xp.asarray(full)
    return out


# ------------------------------------------------------------------------------------------------------------
# Stacked dense eigensolvers (the batched splitter's buckets), selectable, with a convergence check
# ------------------------------------------------------------------------------------------------------------

#: Ways to solve a stack of (n, n) symmetric M (:func:`stacked_eigh`): ``batched`` one ``xp.linalg.eigh`` call on
#: the stack (numpy loops LAPACK ``syevd``; CuPy calls cuSOLVER's batched Jacobi ``syevjBatched``, tuned for
#: n <= 32), ``loop`` one ``xp.linalg.eigh`` per matrix (cuSOLVER ``syevd`` on a device, no host sync with CuPy's
#: default ``linalg='ignore'`` error state), ``torch`` ``torch.linalg.eigh`` on the stack through DLPack (no copy;
#: it synchronises on CUDA), ``auto`` (``batched`` up to ``BATCHED_JACOBI_MAX`` nodes or on the host, ``loop``
#: above on a device; provisional: benchmarks/gpu_check.sh measures the three on the GPU, which no run has done).
STACKED_EIGH_METHODS = ("auto", "batched", "loop", "torch")
#: Largest n for which ``auto`` uses the batched Jacobi solver on a device.
BATCHED_JACOBI_MAX = 32
#: Residual bound ||M u - lambda u|| of the two top eigenpairs (||M|| <= 2 with the padding) below which a
#: stacked solve counts as converged; above it the matrix is solved again with ``loop`` (syevd).
EIGH_RESIDUAL_TOL = 1e-8

_stacked_eigh_method = "auto"


def _check_stacked_method(method: str) -> str:
    if method not in STACKED_EIGH_METHODS:
        raise InputError(f"unknown stacked eigensolver {method!r}; choose one of {', '.join(STACKED_EIGH_METHODS)}")
    return method


def set_stacked_eigh(method: str) -> str:
    """Choose how :func:`stacked_fiedler_vectors` solves its stacks (:data:`STACKED_EIGH_METHODS`), process-wide;
    returns the previous choice. The trees do not depend on it (beyond rounding): the benchmarks compare them."""
    global _stacked_eigh_method
    previous, _stacked_eigh_method = _stacked_eigh_method, _check_stacked_method(method)
    return previous


def get_stacked_eigh() -> str:
    """The current :func:`set_stacked_eigh` choice."""
    return _stacked_eigh_method


def resolve_stacked_method(xp, n: int, method: str | None = None) -> str:
    """The concrete method (``batched``, ``loop`` or ``torch``) ``auto`` stands for, for n x n matrices in ``xp``."""
    method = _check_stacked_method(method or _stacked_eigh_method)
    if method != "auto":
        return method
    return "batched" if xp is np or n <= BATCHED_JACOBI_MAX else "loop"


def _eigh_torch(xp, M):
    import torch

    from .xp import as_array

    vals, vecs = torch.linalg.eigh(torch.from_dlpack(M) if xp is not np else torch.from_numpy(M))
    return as_array(vals), as_array(vecs)


def stacked_eigh(xp, M, method: str | None = None):
    """Eigenvalues (ascending) and eigenvectors of a (b, n, n) stack of symmetric float64 matrices.

    ``method``: one of :data:`STACKED_EIGH_METHODS` (default: :func:`get_stacked_eigh`).
    """
    method = resolve_stacked_method(xp, int(M.shape[-1]), method)
    if method == "batched":
        return xp.linalg.eigh(M)
    if method == "torch":
        return _eigh_torch(xp, M)
    vals = xp.empty(M.shape[:2], dtype=M.dtype)
    vecs = xp.empty(M.shape, dtype=M.dtype)
    for i in range(M.shape[0]):
        vals[i], vecs[i] = xp.linalg.eigh(M[i])
    return vals, vecs


def eigh_residuals(xp, M, vals, vecs, top: int = 2):
    """(b,) largest residual ``||M u - lambda u||`` over the ``top`` largest eigenpairs of each matrix, plus the
    deviation of those vectors from unit norm (a solver that stopped early fails one or the other)."""
    u = vecs[:, :, -top:]
    lam = vals[:, -top:]
    r = xp.matmul(M, u) - u * lam[:, None, :]
    res = xp.sqrt((r * r).sum(axis=1)).max(axis=1)
    norm_err = xp.abs(xp.sqrt((u * u).sum(axis=1)) - 1.0).max(axis=1)
    return xp.maximum(res, norm_err)


def stacked_fiedler_vectors(xp, A, real, degrees=None, *, return_converged: bool = False, method=None,
                            return_degenerate: bool = False):
    """Fiedler vectors of a stack of zero-padded subgraphs, in their array namespace (numpy or CuPy).

    Each (n, n) block ``A[i]`` holds a subgraph on its ``real[i]`` entries and zeros elsewhere. ``M = D^-1/2 A
    D^-1/2`` gets ``PAD_EIGENVALUE`` on the padding diagonal, which keeps its top two eigenpairs those of the
    subgraph (the eigenvalues of M lie in [-1, 1]); the whole stack is solved by one ``xp.linalg.eigh`` call
    (numpy loops LAPACK ``syevd``; CuPy calls cuSOLVER's batched Jacobi solver), or another
    :data:`STACKED_EIGH_METHODS` choice (:func:`set_stacked_eigh`), or, above ``DENSE_MAX_NODES`` rows, by deflated
    Lanczos per subgraph from a seeded start. The sign is fixed as :func:`fiedler_vector` fixes it. Each dense
    solve is checked (:func:`eigh_residuals` <= ``EIGH_RESIDUAL_TOL``) on the device, without a host sync.

    Parameters
    ----------
    A : array
        (b, n, n) float64 padded affinities.
    real : array
        (b, n) bool.
    degrees : array, optional
        (b, n) float64 row sums of ``A`` when already known (zero on the padding).
    method : str, optional
        A :data:`STACKED_EIGH_METHODS` entry for this call (default: :func:`get_stacked_eigh`).

    Returns
    -------
    y : array
        (b, n) Fiedler vectors ``D^-1/2 u2``, zero on the padding.
    d : array
        (b, n) degrees.
    solvable : array
        (b,) bool: False for a subgraph with an isolated node (no meaningful Laplacian; it stays a leaf).
    converged : array
        (b,) bool, only with ``return_converged=True``: False where the stacked solve missed the residual bound
        (to be solved again with ``method="loop"``).
    degenerate : array
        (b,) bool, only with ``return_degenerate=True`` (and ``return_converged=True``): True where the eigenvalue 1
        came more than once (a (nearly) disconnected subgraph; ``converged`` is False there too).
    """
    n = A.shape[1]
    d = A.sum(axis=2) if degrees is None else degrees
    positive = d > 0
    solvable = xp.all(positive | ~real, axis=1)
    dis = xp.where(positive, 1.0 / xp.sqrt(xp.where(positive, d, 1.0)), 0.0)
    M = (dis[:, :, None] * A) * dis[:, None, :]
    diag = xp.arange(n)
    M[:, diag, diag] += xp.where(real, 0.0, PAD_EIGENVALUE)
    if n > DENSE_MAX_NODES:
        u2 = _fiedler_iterative(xp, M, d, real)
        converged = xp.ones(M.shape[0], dtype=bool)
        degenerate = xp.zeros(M.shape[0], dtype=bool)
    else:
        vals, vecs = stacked_eigh(xp, M, method)
        u2 = vecs[:, :, -2]
        # A disconnected subgraph (eigenvalue 1 once per component, to rounding) takes component_split's canonical
        # vector: the projection of its first node's unit vector on that eigenspace, less its u1 part, is
        # D^1/2 (1_C / vol(C) - 1 / vol(V)) sqrt(d_0), a positive multiple of the host's (no host sync)
        ones = vals > 1.0 - NEAR_NULL_EIGENVALUE
        degenerate = ones.sum(axis=1) >= 2
        sqrt_d = xp.where(real, xp.sqrt(xp.where(real, d, 0.0)), 0.0)
        u1 = sqrt_d / xp.sqrt((sqrt_d * sqrt_d).sum(axis=1, keepdims=True))
        projected = (vecs * (vecs[:, :1, :] * ones[:, None, :])).sum(axis=2) - u1 * u1[:, :1]
        u2 = xp.where(degenerate[:, None], projected, u2)
        # No host sync here: the flags travel with the level's one transfer (a NaN value, see batched.py). The
        # projection is the canonical vector only where the near-1 eigenvalues are exactly the components'; weakly
        # linked clusters inside a component come within rounding of 1 as well (3 components gave 5 such
        # eigenvalues), so a degenerate subgraph is also flagged, and solved again by the host's exact rule
        converged = (eigh_residuals(xp, M, vals, vecs) <= EIGH_RESIDUAL_TOL) & ~degenerate
    y = dis * u2  # y = D^-1/2 u2; zero on the padding
    big = sign_reference(y)  # (the padding is 0, never the reference)
    y = xp.where(xp.take_along_axis(y, big[:, None], axis=1) < 0, -y, y)
    if return_converged and return_degenerate:
        return y, d, solvable, converged, degenerate
    if return_converged:
        return y, d, solvable, converged
    return y, d, solvable
