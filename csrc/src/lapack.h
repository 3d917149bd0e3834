// BLAS/LAPACK entry points used by the core: ssyrk (the Gram matrix), dsyevr (the dense Fiedler solve, the Ritz
// pairs) and dsymv (bound for its library: the OpenBLAS thread control is found from it; the Lanczos products are
// the core's own, matvec.h); optionally dgemm (block Krylov's small products, loops where none is bound), sgemm
// (the Gram matrix in two bands; one ssyrk call where none is bound) and dstemr (Lanczos's Ritz pairs from the
// tridiagonal matrix, as the numpy path's eigen._top_ritz_pairs; dsyevr on it where none is bound).
//
// They are called through function pointers with the Fortran argument lists (32-bit integers, no hidden string
// lengths), so that one library can be bound at run time: the Python extension binds SciPy's own OpenBLAS (the
// very functions the numpy path calls, from scipy.linalg.cython_blas / cython_lapack). The CMake library binds the
// linked BLAS/LAPACK by default (DIFFCUT_LINKED_BLAS; DIFFCUT_BLAS_PREFIX is the symbols' prefix: empty for a
// distribution's LAPACK, "scipy_" for the scipy-openblas32 wheel).
#pragma once

#include <vector>

namespace diffcut {
namespace detail {

using SsyrkFn = void (*)(char* uplo, char* trans, int* n, int* k, float* alpha, float* a, int* lda, float* beta,
                         float* c, int* ldc);
using DsyevrFn = void (*)(char* jobz, char* range, char* uplo, int* n, double* a, int* lda, double* vl, double* vu,
                          int* il, int* iu, double* abstol, int* m, double* w, double* z, int* ldz, int* isuppz,
                          double* work, int* lwork, int* iwork, int* liwork, int* info);

using DsymvFn = void (*)(char* uplo, int* n, double* alpha, double* a, int* lda, double* x, int* incx, double* beta,
                         double* y, int* incy);

using DgemmFn = void (*)(char* transa, char* transb, int* m, int* n, int* k, double* alpha, double* a, int* lda,
                         double* b, int* ldb, double* beta, double* c, int* ldc);

using SgemmFn = void (*)(char* transa, char* transb, int* m, int* n, int* k, float* alpha, float* a, int* lda,
                         float* b, int* ldb, float* beta, float* c, int* ldc);

using DstemrFn = void (*)(char* jobz, char* range, int* n, double* d, double* e, double* vl, double* vu, int* il,
                          int* iu, int* m, double* w, double* z, int* ldz, int* nzc, int* isuppz, int* tryrac,
                          double* work, int* lwork, int* iwork, int* liwork, int* info);

struct Lapack {
  SsyrkFn ssyrk = nullptr;
  DsyevrFn dsyevr = nullptr;
  DsymvFn dsymv = nullptr;
  DgemmFn dgemm = nullptr;  // optional
  SgemmFn sgemm = nullptr;  // optional (the Gram matrix in two bands on two threads)
  DstemrFn dstemr = nullptr;  // optional (Lanczos's Ritz pairs)
};

// The bound functions; throws Failure(Internal) if none are bound.
const Lapack& lapack();
// Bind other functions (all non-null).
void bind_lapack(SsyrkFn ssyrk, DsyevrFn dsyevr, DsymvFn dsymv);
// Bind dgemm (may be null: block Krylov then multiplies with its own loops). The linked build binds its own.
void bind_dgemm(DgemmFn dgemm);
// Bind sgemm (may be null: the Gram matrix is then one ssyrk call, no longer the numpy path's decomposition). The
// linked build binds its own.
void bind_sgemm(SgemmFn sgemm);
// Bind dstemr (may be null: the Ritz pairs then come from dsyevr on the tridiagonal matrix). The linked build binds
// its own.
void bind_dstemr(DstemrFn dstemr);

// The two largest eigenpairs of the symmetric tridiagonal k x k matrix (diagonal alpha[0 .. k), off-diagonal
// beta[0 .. k-1)), k >= 2: by the bound dstemr (eigenpairs k-1..k, as the numpy path), else dsyevr on the full
// matrix. w2 <= w1; z2, z1 their eigenvectors (k values each). False: LAPACK failed.
bool tridiagonal_top2(const double* alpha, const double* beta, int k, double& w1, double& w2, std::vector<double>& z1,
                      std::vector<double>& z2);

// The bound dsyevr with its workspace query, eigenvectors on: the eigenpairs il..iu (1-based, ascending; range
// 'I'), those with eigenvalues in (vl, vu] (range 'V') or all of them (range 'A') of the symmetric n x n matrix
// whose lower triangle, column-major, is `a` (overwritten). w: the eigenvalues ascending; z: the eigenvectors,
// column-major n x found. Returns LAPACK's info (that of the workspace query if it failed; 0 on success); `found`
// is the number of eigenpairs.
int syevr(char range, int n, double* a, int il, int iu, std::vector<double>& w, std::vector<double>& z, int& found,
          double vl = 0.0, double vu = 1.0);

// While an instance lives, the bound BLAS runs single-threaded if it is an OpenBLAS whose thread control is found
// (openblas_get/set_num_threads, or scipy_openblas_... of the scipy-openblas32 wheel, in the library holding the
// bound dsymv; else anywhere in the process); its thread count is restored when the last instance ends (counted,
// so overlapping batches restore it once). For the batch functions, whose images run on their own threads: each
// image's BLAS calls would otherwise start OpenBLAS's threads on the same cores (several times slower on 2 cores).
// A no-op elsewhere (another BLAS, Windows). The setting is process-wide while it lasts.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;
  // Whether the thread control was found (the guard acts).
  static bool available();
  // The OpenBLAS thread count now, or -1 where the control is not found.
  static int threads();
};

}  // namespace detail
}  // namespace diffcut
