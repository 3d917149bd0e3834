#include "lapack.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <mutex>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define DIFFCUT_HAVE_DLFCN 1
#endif

#include "core.h"

#ifdef DIFFCUT_LINKED_BLAS
#ifndef DIFFCUT_BLAS_PREFIX
#define DIFFCUT_BLAS_PREFIX
#endif
#define DIFFCUT_CAT2(a, b) a##b
#define DIFFCUT_CAT(a, b) DIFFCUT_CAT2(a, b)
#define DIFFCUT_F77(name) DIFFCUT_CAT(DIFFCUT_BLAS_PREFIX, name)

// The Fortran symbols (gfortran ABI: hidden string lengths at the end).
extern "C" {
void DIFFCUT_F77(ssyrk_)(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
                         const float* a, const int* lda, const float* beta, float* c, const int* ldc,
                         std::size_t uplo_len, std::size_t trans_len);
void DIFFCUT_F77(dsyevr_)(const char* jobz, const char* range, const char* uplo, const int* n, double* a,
                          const int* lda, const double* vl, const double* vu, const int* il, const int* iu,
                          const double* abstol, int* m, double* w, double* z, const int* ldz, int* isuppz,
                          double* work, const int* lwork, int* iwork, const int* liwork, int* info,
                          std::size_t jobz_len, std::size_t range_len, std::size_t uplo_len);
void DIFFCUT_F77(dsymv_)(const char* uplo, const int* n, const double* alpha, const double* a, const int* lda,
                         const double* x, const int* incx, const double* beta, double* y, const int* incy,
                         std::size_t uplo_len);
void DIFFCUT_F77(dgemm_)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
                         const double* beta, double* c, const int* ldc, std::size_t transa_len,
                         std::size_t transb_len);
void DIFFCUT_F77(dstemr_)(const char* jobz, const char* range, const int* n, double* d, double* e, const double* vl,
                          const double* vu, const int* il, const int* iu, int* m, double* w, double* z,
                          const int* ldz, const int* nzc, int* isuppz, int* tryrac, double* work, const int* lwork,
                          int* iwork, const int* liwork, int* info, std::size_t jobz_len, std::size_t range_len);
void DIFFCUT_F77(sgemm_)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                         const float* beta, float* c, const int* ldc, std::size_t transa_len, std::size_t transb_len);
}

namespace {
void linked_ssyrk(char* uplo, char* trans, int* n, int* k, float* alpha, float* a, int* lda, float* beta, float* c,
                  int* ldc) {
  DIFFCUT_F77(ssyrk_)(uplo, trans, n, k, alpha, a, lda, beta, c, ldc, 1, 1);
}
void linked_dsyevr(char* jobz, char* range, char* uplo, int* n, double* a, int* lda, double* vl, double* vu, int* il,
                   int* iu, double* abstol, int* m, double* w, double* z, int* ldz, int* isuppz, double* work,
                   int* lwork, int* iwork, int* liwork, int* info) {
  DIFFCUT_F77(dsyevr_)(jobz, range, uplo, n, a, lda, vl, vu, il, iu, abstol, m, w, z, ldz, isuppz, work, lwork,
                       iwork, liwork, info, 1, 1, 1);
}
void linked_dsymv(char* uplo, int* n, double* alpha, double* a, int* lda, double* x, int* incx, double* beta,
                  double* y, int* incy) {
  DIFFCUT_F77(dsymv_)(uplo, n, alpha, a, lda, x, incx, beta, y, incy, 1);
}
void linked_dgemm(char* transa, char* transb, int* m, int* n, int* k, double* alpha, double* a, int* lda,
                  double* b, int* ldb, double* beta, double* c, int* ldc) {
  DIFFCUT_F77(dgemm_)(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, 1, 1);
}
void linked_sgemm(char* transa, char* transb, int* m, int* n, int* k, float* alpha, float* a, int* lda, float* b,
                  int* ldb, float* beta, float* c, int* ldc) {
  DIFFCUT_F77(sgemm_)(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, 1, 1);
}
void linked_dstemr(char* jobz, char* range, int* n, double* d, double* e, double* vl, double* vu, int* il, int* iu,
                   int* m, double* w, double* z, int* ldz, int* nzc, int* isuppz, int* tryrac, double* work,
                   int* lwork, int* iwork, int* liwork, int* info) {
  DIFFCUT_F77(dstemr_)(jobz, range, n, d, e, vl, vu, il, iu, m, w, z, ldz, nzc, isuppz, tryrac, work, lwork, iwork,
                       liwork, info, 1, 1);
}
}  // namespace
#endif

namespace diffcut {
namespace detail {

namespace {
Lapack& bound() {
#ifdef DIFFCUT_LINKED_BLAS
  static Lapack value{linked_ssyrk, linked_dsyevr, linked_dsymv, linked_dgemm, linked_sgemm, linked_dstemr};
#else
  static Lapack value;
#endif
  return value;
}
}  // namespace

const Lapack& lapack() {
  const Lapack& l = bound();
  if (!l.ssyrk || !l.dsyevr || !l.dsymv)
    throw Failure(Code::Internal, "no BLAS/LAPACK bound: call diffcut_bind_lapack first");
  return l;
}

void bind_lapack(SsyrkFn ssyrk, DsyevrFn dsyevr, DsymvFn dsymv) {
  if (!ssyrk || !dsyevr || !dsymv) throw Failure(Code::NullPointer, "ssyrk, dsyevr and dsymv must not be NULL");
  const DgemmFn dgemm = bound().dgemm;
  const SgemmFn sgemm = bound().sgemm;
  const DstemrFn dstemr = bound().dstemr;
  bound() = Lapack{ssyrk, dsyevr, dsymv, dgemm, sgemm, dstemr};
}

void bind_dgemm(DgemmFn dgemm) { bound().dgemm = dgemm; }

void bind_sgemm(SgemmFn sgemm) { bound().sgemm = sgemm; }

void bind_dstemr(DstemrFn dstemr) { bound().dstemr = dstemr; }

bool tridiagonal_top2(const double* alpha, const double* beta, int k, double& w1, double& w2, std::vector<double>& z1,
                      std::vector<double>& z2) {
  if (k < 2) return false;
  std::vector<double> w, z;  // the two eigenvalues ascending, their eigenvectors column-major (k x 2)
  bool found2 = false;
  const DstemrFn dstemr = lapack().dstemr;
  if (dstemr != nullptr) {
    // workspace as documented for jobz 'V' (18 k and 10 k), so no query call; e[k - 1] is dstemr's workspace
    std::vector<double> d(alpha, alpha + k), e(static_cast<std::size_t>(k), 0.0),
        work(18 * static_cast<std::size_t>(k));
    std::copy(beta, beta + k - 1, e.begin());
    w.assign(static_cast<std::size_t>(k), 0.0);
    z.assign(2 * static_cast<std::size_t>(k), 0.0);
    std::vector<int> isuppz(4), iwork(10 * static_cast<std::size_t>(k));
    char jobz = 'V', range = 'I';
    double vl = 0.0, vu = 0.0;
    int n = k, il = k - 1, iu = k, m = 0, ldz = k, nzc = 2, tryrac = 1, lwork = 18 * k, liwork = 10 * k, info = 0;
    dstemr(&jobz, &range, &n, d.data(), e.data(), &vl, &vu, &il, &iu, &m, w.data(), z.data(), &ldz, &nzc,
           isuppz.data(), &tryrac, work.data(), &lwork, iwork.data(), &liwork, &info);
    found2 = info == 0 && m == 2;
  }
  if (!found2) {  // dsyevr on the full matrix (lower triangle, column-major)
    std::vector<double> T(static_cast<std::size_t>(k) * k, 0.0);
    for (int i = 0; i < k; ++i) {
      T[static_cast<std::size_t>(i) * (k + 1)] = alpha[i];
      if (i + 1 < k) T[static_cast<std::size_t>(i) * k + i + 1] = beta[i];
    }
    int found = 0;
    found2 = syevr('I', k, T.data(), k - 1, k, w, z, found) == 0 && found == 2;
  }
  if (!found2) return false;
  w2 = w[0];
  w1 = w[1];
  z2.assign(z.begin(), z.begin() + k);
  z1.assign(z.begin() + k, z.begin() + 2 * k);
  return true;
}

int syevr(char range, int n, double* a, int il, int iu, std::vector<double>& w, std::vector<double>& z, int& found,
          double vl, double vu) {
  const int cols = range == 'I' ? iu - il + 1 : n;
  char jobz = 'V', uplo = 'L';
  double abstol = 0.0, work_query = 0.0;
  int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  found = 0;
  w.assign(static_cast<std::size_t>(n), 0.0);
  z.assign(static_cast<std::size_t>(n) * cols, 0.0);
  std::vector<int> isuppz(2 * static_cast<std::size_t>(cols));
  const DsyevrFn dsyevr = lapack().dsyevr;
  dsyevr(&jobz, &range, &uplo, &n, a, &n, &vl, &vu, &il, &iu, &abstol, &found, w.data(), z.data(), &n,
         isuppz.data(), &work_query, &lwork, &iwork_query, &liwork, &info);
  if (info != 0) return info;
  lwork = std::max(static_cast<int>(work_query), 26 * n);
  liwork = std::max(iwork_query, 10 * n);
  std::vector<double> work(lwork);
  std::vector<int> iwork(liwork);
  dsyevr(&jobz, &range, &uplo, &n, a, &n, &vl, &vu, &il, &iu, &abstol, &found, w.data(), z.data(), &n,
         isuppz.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  return info;
}

namespace {

using GetThreadsFn = int (*)();
using SetThreadsFn = void (*)(int);

struct BlasThreads {
  GetThreadsFn get = nullptr;
  SetThreadsFn set = nullptr;
};

#ifdef DIFFCUT_HAVE_DLFCN
BlasThreads find_in(void* handle) {
  for (const char* prefix : {"scipy_", ""}) {
    const std::string p(prefix);
    void* get = dlsym(handle, (p + "openblas_get_num_threads").c_str());
    void* set = dlsym(handle, (p + "openblas_set_num_threads").c_str());
    if (get != nullptr && set != nullptr)
      return {reinterpret_cast<GetThreadsFn>(get), reinterpret_cast<SetThreadsFn>(set)};
  }
  return {};
}
#endif

// The thread control of the OpenBLAS behind the bound dsymv (looked up again when another dsymv is bound).
BlasThreads blas_threads() {
#ifdef DIFFCUT_HAVE_DLFCN
  static std::mutex mu;
  static void* looked_for = nullptr;
  static BlasThreads found;
  std::lock_guard<std::mutex> lock(mu);
  void* address = reinterpret_cast<void*>(bound().dsymv);
#ifdef DIFFCUT_LINKED_BLAS
  if (bound().dsymv == linked_dsymv) address = reinterpret_cast<void*>(&DIFFCUT_F77(dsymv_));
#endif
  if (address == nullptr) return {};
  if (address != looked_for) {
    looked_for = address;
    found = {};
    Dl_info info;
    if (dladdr(address, &info) != 0 && info.dli_fname != nullptr) {
      if (void* handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD)) {
        found = find_in(handle);
        dlclose(handle);  // RTLD_NOLOAD took a reference to a library that stays loaded
      }
    }
    if (found.get == nullptr) found = find_in(RTLD_DEFAULT);  // e.g. a static OpenBLAS in the executable
  }
  return found;
#else
  return {};
#endif
}

std::mutex guard_mu;
int guard_depth = 0;
int guard_previous = 0;
SetThreadsFn guard_set = nullptr;

}  // namespace

SingleThreadedBlas::SingleThreadedBlas() {
  const BlasThreads t = blas_threads();
  std::lock_guard<std::mutex> lock(guard_mu);
  if (guard_depth++ == 0 && t.set != nullptr) {
    guard_previous = t.get();
    guard_set = t.set;
    if (guard_previous != 1) guard_set(1);
  }
}

SingleThreadedBlas::~SingleThreadedBlas() {
  std::lock_guard<std::mutex> lock(guard_mu);
  if (--guard_depth == 0 && guard_set != nullptr) {
    if (guard_previous != 1) guard_set(guard_previous);
    guard_set = nullptr;
  }
}

bool SingleThreadedBlas::available() { return blas_threads().set != nullptr; }

int SingleThreadedBlas::threads() {
  const BlasThreads t = blas_threads();
  return t.get != nullptr ? t.get() : -1;
}

}  // namespace detail
}  // namespace diffcut
