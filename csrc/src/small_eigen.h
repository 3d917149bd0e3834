// The top eigenpairs of a small dense symmetric matrix: block Krylov's Rayleigh-Ritz step (T = Q^T M Q, k <= 320
// rows, of which it needs the top p <= 33 pairs). LAPACK's dsyevr computes all k pairs and, at these sizes, spends
// most of its time in MRRR's per-vector work (dlar1v, dqds); the Rayleigh-Ritz steps took about a third of the
// graph stage on nearly disconnected 32x32 grids (measured, benchmarks/RESULTS.md). Here:
//   1. Householder tridiagonalisation T = Q_H D Q_H^T (unblocked, on a full symmetric copy);
//   2. the p wanted eigenvalues by bisection on Sturm counts, all p bisections in lockstep;
//   3. their eigenvectors by inverse iteration (tridiagonal LU with partial pivoting), with two passes of
//      Gram-Schmidt against the vectors already found whose eigenvalue lies within 1e-3 ||T|| (the clusters of a
//      nearly disconnected graph), each vector accepted only when its residual ||D z - lambda z|| is below
//      4 k eps ||T||;
//   4. back-transformation of the p vectors.
// The eigenvalues are those of dsyevr to within a few eps ||T||, the vectors to within eps ||T|| / gap (the same
// accuracy class as LAPACK's); the block solver's certificate is computed on explicit residuals either way. Where a
// vector does not reach its residual bound (not seen; a guard), top_eigenpairs returns false and the caller uses
// dsyevr.
#pragma once

#include <vector>

namespace diffcut {
namespace detail {

// The top p (1 <= p <= k) eigenpairs of the symmetric k x k matrix `a` (row-major, full: both triangles, equal):
// w[0] >= w[1] >= ... >= w[p-1], z row i (k values, unit norm) the eigenvector of w[i]. False: not computed (non-
// finite input, or an eigenvector that did not converge); w and z are then unspecified.
bool top_eigenpairs(const double* a, int k, int p, std::vector<double>& w, std::vector<double>& z);

}  // namespace detail
}  // namespace diffcut
