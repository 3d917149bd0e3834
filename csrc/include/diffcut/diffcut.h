/*
 * diffcut.h: the stable C API of libdiffcut, the C++ core of diffcut-engine.
 *
 * Features of one image in, labels out, with the Python engine's semantics (diffcut_engine.graph):
 * the DiffCut affinity W = ((S - min S) / (max S - min S)) ** alpha of the cosine similarities S, the recursive
 * two-way Normalized Cut (Fiedler vector y = D^-1/2 u2 with the sign rule, best of num_thresholds thresholds by
 * exact NCut, pre-order, "1"-side first), the segmentation tree cut at any tau <= tau_max, labels numbered as the
 * official assemble_clusters numbers them.
 *
 * Conventions:
 * - Every function that can fail returns an int: DIFFCUT_OK (0) or a DIFFCUT_ERROR_* code; the message of the last
 *   failure on the calling thread is diffcut_last_error(). No C++ exception crosses this boundary.
 * - Sizes are explicit int64_t; buffers are caller-owned, with their capacity (in elements) passed beside them.
 * - Handles are opaque; each *_new / *_build has a matching *_free (free(NULL) is a no-op).
 * - Features are row-major (h, w, C) float32 arrays, i.e. h*w tokens of C channels; labels are row-major (h, w)
 *   int32. Images are row-major (3, H, W) float32 RGB planes in [0, 1] (channel-first, as torch's).
 *
 * Refinement (diffcut_engine.refine, the engine's "full" preset): grid labels -> labels at the image's size by
 * concept assignment (each pixel takes the cluster whose mean normalised feature best matches its bilinearly
 * upsampled feature), PAMR (pixel-adaptive mask refinement: 10 iterations, dilations 1, 2, 4, 8 by default) and a
 * 3x3 median filter. PAMR and the median repeat the Python CPU path's float32 operations in its order (identical
 * labels); concept assignment agrees with torch's to float32 rounding of its two small matrix products.
 */
#ifndef DIFFCUT_DIFFCUT_H
#define DIFFCUT_DIFFCUT_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(DIFFCUT_SHARED)
#  if defined(DIFFCUT_BUILDING)
#    define DIFFCUT_API __declspec(dllexport)
#  else
#    define DIFFCUT_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define DIFFCUT_API __attribute__((visibility("default")))
#else
#  define DIFFCUT_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define DIFFCUT_VERSION_MAJOR 0
#define DIFFCUT_VERSION_MINOR 1
#define DIFFCUT_VERSION_PATCH 0

/* Error codes (stable values). */
#define DIFFCUT_OK 0
#define DIFFCUT_ERROR_NULL_POINTER 1     /* a required pointer argument is NULL */
#define DIFFCUT_ERROR_INVALID_ARGUMENT 2 /* a size, option or tau out of range */
#define DIFFCUT_ERROR_NON_FINITE 3       /* NaN or infinite values in the features or the affinity */
#define DIFFCUT_ERROR_BUFFER_TOO_SMALL 4 /* an output buffer's capacity is below what the call writes */
#define DIFFCUT_ERROR_OUT_OF_MEMORY 5
#define DIFFCUT_ERROR_LAPACK 6           /* the eigensolver reported a failure */
#define DIFFCUT_ERROR_INTERNAL 7

/* compat modes (diffcut_engine.graph's compat=): */
#define DIFFCUT_COMPAT_OFFICIAL 0 /* the default: the official zero-row rule below the root */
#define DIFFCUT_COMPAT_CLEAN 1    /* plain index sets */

/* solvers of the Fiedler vector (diffcut_engine.graph's solver=): */
#define DIFFCUT_SOLVER_AUTO 0  /* the default: dense up to 192 nodes, above certified Lanczos, then certified block
                                  Krylov where Lanczos cannot certify (clustered spectra; first, once Lanczos failed
                                  in the tree), then dense: the vector is within 1e-6 (angle) of the dense one */
#define DIFFCUT_SOLVER_DENSE 1 /* LAPACK dsyevr on every subgraph */

typedef struct diffcut_options diffcut_options;
typedef struct diffcut_tree diffcut_tree;

/* "MAJOR.MINOR.PATCH" of the library actually linked (a static string). */
DIFFCUT_API const char* diffcut_version(void);
/* MAJOR * 10000 + MINOR * 100 + PATCH of the library actually linked. */
DIFFCUT_API int diffcut_version_number(void);
/* Message of the last failed call on this thread ("" if none); valid until the next failing call. */
DIFFCUT_API const char* diffcut_last_error(void);
/* Name of an error code ("DIFFCUT_ERROR_NULL_POINTER", ...), "unknown" for other values. */
DIFFCUT_API const char* diffcut_error_name(int code);

/* Scratch memory: the trees' large temporaries (a grid's affinity, its subgraphs' matrices: 192 MB at 64 x 64) are
 * kept per thread after a call for that thread's next image, so that it does not fault in fresh pages again, up
 * to DIFFCUT_GRAPH_CACHE_MB megabytes per thread (environment variable, read once; default 1024, 0: no cache). The
 * batch functions run their images on the calling thread and the library's helper threads, which keep their
 * caches between calls too. This frees the calling thread's cached blocks and the helper threads'; another
 * thread's cache is freed when that thread ends. */
DIFFCUT_API void diffcut_release_scratch(void);
/* Bytes of scratch memory cached (free) for the calling thread and the library's helper threads. */
DIFFCUT_API size_t diffcut_scratch_cached_bytes(void);

/* BLAS/LAPACK: the library calls ssyrk, dsyevr and dsymv through pointers with the Fortran argument lists (32-bit
 * integers, no hidden string lengths). A CMake build binds the BLAS/LAPACK it was linked with; this rebinds them
 * process-wide (e.g. to the library your application already uses). Not thread-safe against running calls. */
typedef void (*diffcut_ssyrk_fn)(char* uplo, char* trans, int* n, int* k, float* alpha, float* a, int* lda,
                                 float* beta, float* c, int* ldc);
typedef void (*diffcut_dsyevr_fn)(char* jobz, char* range, char* uplo, int* n, double* a, int* lda, double* vl,
                                  double* vu, int* il, int* iu, double* abstol, int* m, double* w, double* z,
                                  int* ldz, int* isuppz, double* work, int* lwork, int* iwork, int* liwork,
                                  int* info);
typedef void (*diffcut_dsymv_fn)(char* uplo, int* n, double* alpha, double* a, int* lda, double* x, int* incx,
                                 double* beta, double* y, int* incy);
DIFFCUT_API int diffcut_bind_lapack(diffcut_ssyrk_fn ssyrk, diffcut_dsyevr_fn dsyevr, diffcut_dsymv_fn dsymv);
/* Optional functions, rebound the same way (each may be NULL; a CMake build binds the linked library's own):
 * sgemm computes the Gram matrix's second band from 256 tokens (NULL: one ssyrk call, so W is no longer the Python
 * engine's bit for bit), dgemm the block Krylov solver's small products (NULL: the core's own loops), dstemr
 * Lanczos's two Ritz pairs (NULL: dsyevr on the tridiagonal matrix). Bind all of them, with ssyrk, dsyevr and
 * dsymv, to the library a Python run uses (SciPy's) where bit-equality with it matters. */
typedef void (*diffcut_sgemm_fn)(char* transa, char* transb, int* m, int* n, int* k, float* alpha, float* a,
                                 int* lda, float* b, int* ldb, float* beta, float* c, int* ldc);
typedef void (*diffcut_dgemm_fn)(char* transa, char* transb, int* m, int* n, int* k, double* alpha, double* a,
                                 int* lda, double* b, int* ldb, double* beta, double* c, int* ldc);
typedef void (*diffcut_dstemr_fn)(char* jobz, char* range, int* n, double* d, double* e, double* vl, double* vu,
                                  int* il, int* iu, int* m, double* w, double* z, int* ldz, int* nzc, int* isuppz,
                                  int* tryrac, double* work, int* lwork, int* iwork, int* liwork, int* info);
DIFFCUT_API int diffcut_bind_sgemm(diffcut_sgemm_fn sgemm);
DIFFCUT_API int diffcut_bind_dgemm(diffcut_dgemm_fn dgemm);
DIFFCUT_API int diffcut_bind_dstemr(diffcut_dstemr_fn dstemr);

/* Options: alpha = 10, tau_max = 1.0, compat = DIFFCUT_COMPAT_OFFICIAL, num_thresholds = 100,
 * solver = DIFFCUT_SOLVER_AUTO; refinement: pamr_iters = 10, pamr_dilations = {1, 2, 4, 8}, median = 1,
 * num_threads = 0 (threads for one image's refinement; 0: the hardware's count), refine work size 0 x 0 (the
 * image's size). */
DIFFCUT_API int diffcut_options_new(diffcut_options** out);
DIFFCUT_API void diffcut_options_free(diffcut_options* options);
/* alpha: finite, > 0. An integer alpha in [1, 64] is raised by binary powering, the Python engine's float32
 * products bit for bit; any other alpha uses std::pow, which may differ from numpy's np.power in the last bit (the
 * Python native backend then takes numpy's affinity, so its labels stay the numpy path's). */
DIFFCUT_API int diffcut_options_set_alpha(diffcut_options* options, double alpha);
DIFFCUT_API int diffcut_options_set_tau_max(diffcut_options* options, double tau_max); /* finite, > 0 */
DIFFCUT_API int diffcut_options_set_compat(diffcut_options* options, int compat);
DIFFCUT_API int diffcut_options_set_num_thresholds(diffcut_options* options, int num_thresholds); /* >= 2 */
DIFFCUT_API int diffcut_options_set_solver(diffcut_options* options, int solver);
DIFFCUT_API int diffcut_options_set_pamr_iters(diffcut_options* options, int iters);   /* 0 .. 10000 */
/* count (1 .. 1024) dilations, each 1 .. 32768, copied */
DIFFCUT_API int diffcut_options_set_pamr_dilations(diffcut_options* options, const int32_t* dilations,
                                                   int64_t count);
DIFFCUT_API int diffcut_options_set_median(diffcut_options* options, int median);               /* 0 or 1 */
DIFFCUT_API int diffcut_options_set_num_threads(diffcut_options* options, int num_threads);      /* >= 0 */
/* Working size of the refinement (diffcut_refine, diffcut_segment_image and its batch): 0 x 0 (the default) refines
 * at the image's size (the engine's "full" preset); height x width (both in [1, 32768]) resizes the image there
 * (bilinear, as the engine), runs PAMR and the median there and brings the labels back to the image's size with the
 * engine's edge-aware joint bilateral vote: the engine's "demo" preset is 1024 x 1024 with pamr_iters 30 and
 * dilations {1, 2, 4, 8, 12, 24, 32, 64}, "eval" 128 x 128 with the defaults. */
DIFFCUT_API int diffcut_options_set_refine_work_size(diffcut_options* options, int64_t height, int64_t width);

/* W (n x n, row-major float32, n = num_tokens) of L2-normalised tokens; capacity >= n * n. */
DIFFCUT_API int diffcut_affinity(const float* tokens, int64_t num_tokens, int64_t channels, double alpha,
                                 float* affinity_out, int64_t capacity);

/* The segmentation tree of an (h, w, C) feature grid, to be cut at any tau <= the options' tau_max.
 * options may be NULL (the defaults). *out receives a handle to free with diffcut_tree_free. */
DIFFCUT_API int diffcut_tree_build(const float* features, int64_t height, int64_t width, int64_t channels,
                                   const diffcut_options* options, diffcut_tree** out);
/* The tree of a given (n x n, row-major float32, symmetric, non-negative) affinity; its shape is (n, 1).
 * DIFFCUT_ERROR_INVALID_ARGUMENT where max |W - W^T| > 1e-5 max W (the check of graph.build_tree). */
DIFFCUT_API int diffcut_tree_build_affinity(const float* affinity, int64_t n, const diffcut_options* options,
                                            diffcut_tree** out);
DIFFCUT_API void diffcut_tree_free(diffcut_tree* tree);
DIFFCUT_API int diffcut_tree_shape(const diffcut_tree* tree, int64_t* height, int64_t* width);
/* Labels 0..K-1 at tau (0 < tau <= tau_max) into labels[0 .. h*w); capacity >= h*w. num_segments may be NULL. */
DIFFCUT_API int diffcut_tree_cut(const diffcut_tree* tree, double tau, int32_t* labels, int64_t capacity,
                                 int32_t* num_segments);
/* The NCut values of the tree's splits, ascending (the taus where the segmentation changes). *count receives
 * their number; values may be NULL with capacity 0 to ask for the count only. */
DIFFCUT_API int diffcut_tree_split_values(const diffcut_tree* tree, double* values, int64_t capacity,
                                          int64_t* count);

/* Several feature grids in one call, on num_threads threads (0: the hardware's count; each image is built by
 * one thread; num_threads 1: exactly one thread, without the helper threads a lone call may use). With more than one thread an OpenBLAS behind the library runs single-threaded during the call (its
 * thread count restored after; process-wide meanwhile), else each image's BLAS calls would start its threads on the
 * same cores; set OPENBLAS_NUM_THREADS=1 or the equivalent for another multi-threaded BLAS. features[i] is an
 * (heights[i], widths[i], channels) grid; out[i] receives its tree (all NULL if any fails: the first failure's code
 * and message are returned). */
DIFFCUT_API int diffcut_tree_build_batch(const float* const* features, const int64_t* heights,
                                         const int64_t* widths, int64_t channels, int64_t count,
                                         const diffcut_options* options, int num_threads, diffcut_tree** out);

/* One call: the tree at tau_max = tau, cut at tau (options' tau_max is ignored). */
DIFFCUT_API int diffcut_segment(const float* features, int64_t height, int64_t width, int64_t channels,
                                const diffcut_options* options, double tau, int32_t* labels, int64_t capacity,
                                int32_t* num_segments);

/* ---- Refinement: labels at an image's size (options may be NULL: the defaults) ---- */

/* The engine's refinement of grid labels (grid_height, grid_width) in [0, num_segments) of the (grid_height,
 * grid_width, channels) features (L2-normalised here, as diffcut_tree_build does) on the (3, height, width) image:
 * concept assignment at (height, width), then, if num_segments > 1, PAMR and the median (options' pamr_iters,
 * pamr_dilations, median, num_threads). labels: capacity >= height * width. */
DIFFCUT_API int diffcut_refine(const float* features, int64_t grid_height, int64_t grid_width, int64_t channels,
                               const int32_t* grid_labels, int32_t num_segments, const float* image, int64_t height,
                               int64_t width, const diffcut_options* options, int32_t* labels, int64_t capacity);

/* PAMR (+ the median, options' median) of labels (label_height, label_width) in [0, num_segments) on the (3,
 * height, width) image: out (capacity >= height * width) at the image's size. Labels of another size are resized
 * as the official PAMR resizes its masks (bilinear one-hot, align_corners=True). */
DIFFCUT_API int diffcut_pamr(const float* image, int64_t height, int64_t width, const int32_t* labels,
                             int64_t label_height, int64_t label_width, int32_t num_segments,
                             const diffcut_options* options, int32_t* out, int64_t capacity);

/* One call, features and image in, labels at the image's size out: the tree at tau_max = tau, its cut at tau
 * (num_segments may be NULL), the refinement. */
DIFFCUT_API int diffcut_segment_image(const float* features, int64_t grid_height, int64_t grid_width,
                                      int64_t channels, const float* image, int64_t height, int64_t width,
                                      const diffcut_options* options, double tau, int32_t* labels, int64_t capacity,
                                      int32_t* num_segments);

/* diffcut_segment_image of count images on num_threads threads (0: the hardware's count; 1: exactly one), each
 * image on one thread (OpenBLAS single-threaded meanwhile, as for diffcut_tree_build_batch). Image i: features[i] (grid_heights[i], grid_widths[i],
 * channels), images[i] (3, heights[i], widths[i]), labels[i] with capacities[i]; num_segments (count values) may be
 * NULL. On a failure the first failing image's code and message are returned. */
DIFFCUT_API int diffcut_segment_image_batch(const float* const* features, const int64_t* grid_heights,
                                            const int64_t* grid_widths, int64_t channels, const float* const* images,
                                            const int64_t* heights, const int64_t* widths, int64_t count,
                                            const diffcut_options* options, double tau, int num_threads,
                                            int32_t* const* labels, const int64_t* capacities,
                                            int32_t* num_segments);

#ifdef __cplusplus
}
#endif

#endif /* DIFFCUT_DIFFCUT_H */
