// BLAS/LAPACK entry points (Fortran ABI, 32-bit integers), declared here so that no vendor header is needed.
// DIFFCUT_BLAS_PREFIX is the symbols' prefix: empty for the reference LAPACK / OpenBLAS of a distribution,
// "scipy_" for the scipy-openblas32 wheel (set by CMake).
#pragma once

#include <cstddef>

#ifndef DIFFCUT_BLAS_PREFIX
#define DIFFCUT_BLAS_PREFIX
#endif
#define DIFFCUT_CAT2(a, b) a##b
#define DIFFCUT_CAT(a, b) DIFFCUT_CAT2(a, b)
#define DIFFCUT_F77(name) DIFFCUT_CAT(DIFFCUT_BLAS_PREFIX, name)

extern "C" {
// C = alpha A^T A + beta C (trans = "T"), one triangle of C.
void DIFFCUT_F77(ssyrk_)(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
                         const float* a, const int* lda, const float* beta, float* c, const int* ldc,
                         std::size_t uplo_len, std::size_t trans_len);
// Selected eigenpairs of a symmetric matrix by MRRR.
void DIFFCUT_F77(dsyevr_)(const char* jobz, const char* range, const char* uplo, const int* n, double* a,
                          const int* lda, const double* vl, const double* vu, const int* il, const int* iu,
                          const double* abstol, int* m, double* w, double* z, const int* ldz, int* isuppz,
                          double* work, const int* lwork, int* iwork, const int* liwork, int* info,
                          std::size_t jobz_len, std::size_t range_len, std::size_t uplo_len);
}
