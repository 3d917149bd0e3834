// The C API (include/diffcut/diffcut.h): argument checks, error codes, no exception crosses the boundary.
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "core.h"
#include "diffcut/diffcut.h"
#include "lapack.h"
#include "matvec.h"
#include "scratch.h"

using diffcut::detail::Code;
using diffcut::detail::Compat;
using diffcut::detail::Failure;

struct diffcut_options {
  diffcut::detail::Options value;
  diffcut::detail::RefineOptions refine;
};

struct diffcut_tree {
  diffcut::detail::Tree value;
};

namespace {

thread_local std::string last_error;

int fail(int code, const std::string& message) {
  last_error = message;
  return code;
}

template <class F>
int guarded(F&& body) {
  try {
    body();
    return DIFFCUT_OK;
  } catch (const Failure& e) {
    return fail(static_cast<int>(e.code), e.what());
  } catch (const std::bad_alloc&) {
    return fail(DIFFCUT_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(DIFFCUT_ERROR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return fail(DIFFCUT_ERROR_INTERNAL, "internal error");
  }
}

void require(const void* p, const char* name) {
  if (p == nullptr) throw Failure(Code::NullPointer, std::string(name) + " must not be NULL");
}

void positive_finite(double v, const char* name) {
  if (!(std::isfinite(v) && v > 0))
    throw Failure(Code::InvalidArgument, std::string(name) + " must be a finite positive number, got " +
                                             std::to_string(v));
}

void positive_size(std::int64_t v, const char* name) {
  if (v <= 0) throw Failure(Code::InvalidArgument, std::string(name) + " must be positive, got " + std::to_string(v));
}

// Checked product of positive sizes.
std::int64_t product(std::int64_t a, std::int64_t b, const char* what) {
  if (a > INT64_MAX / b) throw Failure(Code::InvalidArgument, std::string(what) + " is too large");
  return a * b;
}

diffcut::detail::Options options_of(const diffcut_options* options) {
  return options ? options->value : diffcut::detail::Options();
}

// The largest grid a dense affinity holds (n * n values indexed by 32-bit BLAS integers).
constexpr std::int64_t kMaxDenseTokens = 46340;

// (h, w, C) features checked and L2-normalised (a copy), as the tree and the concept assignment take them. For a
// tree (dense = true) the grid's size is checked against kMaxDenseTokens before the features are read (the caller
// need not hold more than that).
std::vector<float> normalized_tokens(const float* features, std::int64_t h, std::int64_t w, std::int64_t c,
                                     bool dense) {
  positive_size(h, "height");  // (the sizes first: empty features have no data pointer to speak of)
  positive_size(w, "width");
  positive_size(c, "channels");
  require(features, "features");
  const std::int64_t n = product(h, w, "height * width");
  if (dense && n > kMaxDenseTokens)
    throw Failure(Code::InvalidArgument, "a dense affinity of more than 46340 tokens does not fit");
  const std::int64_t count = product(n, c, "height * width * channels");
  diffcut::detail::check_finite(features, count, "features");
  std::vector<float> tokens(features, features + count);
  diffcut::detail::l2_normalize(tokens.data(), n, c);
  return tokens;
}

diffcut::detail::Tree tree_of_tokens(const std::vector<float>& tokens, std::int64_t h, std::int64_t w,
                                     std::int64_t c, const diffcut::detail::Options& opts) {
  const std::int64_t n = h * w;
  if (n > 46340) throw Failure(Code::InvalidArgument, "a dense affinity of more than 46340 tokens does not fit");
  diffcut::detail::Tree tree = diffcut::detail::build_tree_from_tokens(tokens.data(), n, c, opts);
  tree.height = h;
  tree.width = w;
  return tree;
}

diffcut::detail::Tree tree_of_features(const float* features, std::int64_t h, std::int64_t w, std::int64_t c,
                                       const diffcut::detail::Options& opts) {
  return tree_of_tokens(normalized_tokens(features, h, w, c, true), h, w, c, opts);
}

diffcut::detail::RefineOptions refine_options_of(const diffcut_options* options) {
  return options ? options->refine : diffcut::detail::RefineOptions();
}

// A (3, height, width) float32 image with finite values; returns height * width.
std::int64_t check_image(const float* image, std::int64_t height, std::int64_t width) {
  require(image, "image");
  positive_size(height, "image height");
  positive_size(width, "image width");
  const std::int64_t n = product(height, width, "image height * width");
  diffcut::detail::check_finite(image, product(n, 3, "3 * image height * width"), "image");
  return n;
}

void check_capacity(std::int64_t capacity, std::int64_t needed, const char* name) {
  if (capacity < needed)
    throw Failure(Code::BufferTooSmall, std::string(name) + " holds " + std::to_string(capacity) + " values, " +
                                            std::to_string(needed) + " needed");
}

// features + image -> labels at the image's size: the tree at tau, its cut, the refinement; returns K.
std::int32_t segment_image(const float* features, std::int64_t gh, std::int64_t gw, std::int64_t c,
                           const float* image, std::int64_t height, std::int64_t width,
                           const diffcut_options* options, double tau, std::int32_t* labels, std::int64_t capacity,
                           int num_threads) {
  require(labels, "labels");
  positive_finite(tau, "tau");
  const std::int64_t n = check_image(image, height, width);
  check_capacity(capacity, n, "labels");
  const std::vector<float> tokens = normalized_tokens(features, gh, gw, c, true);
  diffcut::detail::Options opts = options_of(options);
  opts.tau_max = tau;
  const diffcut::detail::Tree tree = tree_of_tokens(tokens, gh, gw, c, opts);
  std::vector<std::int32_t> grid(static_cast<std::size_t>(gh * gw));
  const std::int32_t k = tree.cut(tau, grid.data());
  diffcut::detail::RefineOptions ro = refine_options_of(options);
  ro.num_threads = num_threads;
  diffcut::detail::refine_labels(tokens.data(), gh, gw, c, grid.data(), k, image, height, width, ro, labels);
  return k;
}

// body(i) for i in [0, count) on num_threads threads (0: the hardware's count), each image on one thread. Every
// image runs; then the first failing image's error (by index) is thrown, named "image i: ...".
template <class F>
void for_each_image(std::int64_t count, int num_threads, F&& body) {
  if (num_threads < 0) throw Failure(Code::InvalidArgument, "num_threads must be >= 0");
  std::int64_t threads = num_threads ? num_threads : std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, count);
  std::vector<int> codes(count, DIFFCUT_OK);
  std::vector<std::string> messages(count);
  auto one = [&](std::int64_t i) {
    try {
      body(i);
    } catch (const Failure& e) {
      codes[i] = static_cast<int>(e.code);
      messages[i] = "image " + std::to_string(i) + ": " + e.what();
    } catch (const std::bad_alloc&) {
      codes[i] = DIFFCUT_ERROR_OUT_OF_MEMORY;
      messages[i] = "image " + std::to_string(i) + ": out of memory";
    } catch (const std::exception& e) {
      codes[i] = DIFFCUT_ERROR_INTERNAL;
      messages[i] = "image " + std::to_string(i) + ": internal error: " + e.what();
    } catch (...) {
      codes[i] = DIFFCUT_ERROR_INTERNAL;
      messages[i] = "image " + std::to_string(i) + ": internal error";
    }
  };
  // several images at once: OpenBLAS single-threaded meanwhile (lapack.h), else each image's BLAS calls would
  // start its threads on the same cores
  std::unique_ptr<diffcut::detail::SingleThreadedBlas> one_blas_thread;
  if (threads > 1) one_blas_thread = std::make_unique<diffcut::detail::SingleThreadedBlas>();
  if (threads <= 1 && num_threads == 0) {
    // num_threads 0 (the hardware's) and one image (or one core): that image's work may use the helpers
    for (std::int64_t i = 0; i < count; ++i) one(i);
  } else {
    // each image on one thread: its own core, or the one thread asked for (num_threads 1: no helpers)
    diffcut::detail::run_each(count, static_cast<int>(threads), one);
  }
  for (std::int64_t i = 0; i < count; ++i)
    if (codes[i] != DIFFCUT_OK) throw Failure(static_cast<Code>(codes[i]), messages[i]);
}

}  // namespace

extern "C" {

const char* diffcut_version(void) {
#define DIFFCUT_STR2(x) #x
#define DIFFCUT_STR(x) DIFFCUT_STR2(x)
  return DIFFCUT_STR(DIFFCUT_VERSION_MAJOR) "." DIFFCUT_STR(DIFFCUT_VERSION_MINOR) "." DIFFCUT_STR(
      DIFFCUT_VERSION_PATCH);
}

int diffcut_version_number(void) {
  return DIFFCUT_VERSION_MAJOR * 10000 + DIFFCUT_VERSION_MINOR * 100 + DIFFCUT_VERSION_PATCH;
}

const char* diffcut_last_error(void) { return last_error.c_str(); }

void diffcut_release_scratch(void) { diffcut::detail::scratch_trim(); }

size_t diffcut_scratch_cached_bytes(void) { return diffcut::detail::scratch_cached_bytes(); }

const char* diffcut_error_name(int code) {
  switch (code) {
    case DIFFCUT_OK: return "DIFFCUT_OK";
    case DIFFCUT_ERROR_NULL_POINTER: return "DIFFCUT_ERROR_NULL_POINTER";
    case DIFFCUT_ERROR_INVALID_ARGUMENT: return "DIFFCUT_ERROR_INVALID_ARGUMENT";
    case DIFFCUT_ERROR_NON_FINITE: return "DIFFCUT_ERROR_NON_FINITE";
    case DIFFCUT_ERROR_BUFFER_TOO_SMALL: return "DIFFCUT_ERROR_BUFFER_TOO_SMALL";
    case DIFFCUT_ERROR_OUT_OF_MEMORY: return "DIFFCUT_ERROR_OUT_OF_MEMORY";
    case DIFFCUT_ERROR_LAPACK: return "DIFFCUT_ERROR_LAPACK";
    case DIFFCUT_ERROR_INTERNAL: return "DIFFCUT_ERROR_INTERNAL";
    default: return "unknown";
  }
}

int diffcut_bind_lapack(diffcut_ssyrk_fn ssyrk, diffcut_dsyevr_fn dsyevr, diffcut_dsymv_fn dsymv) {
  return guarded([&] { diffcut::detail::bind_lapack(ssyrk, dsyevr, dsymv); });
}

int diffcut_bind_sgemm(diffcut_sgemm_fn sgemm) {
  return guarded([&] { diffcut::detail::bind_sgemm(sgemm); });
}

int diffcut_bind_dgemm(diffcut_dgemm_fn dgemm) {
  return guarded([&] { diffcut::detail::bind_dgemm(dgemm); });
}

int diffcut_bind_dstemr(diffcut_dstemr_fn dstemr) {
  return guarded([&] { diffcut::detail::bind_dstemr(dstemr); });
}

int diffcut_options_new(diffcut_options** out) {
  return guarded([&] {
    require(out, "out");
    *out = nullptr;
    *out = new diffcut_options();
  });
}

void diffcut_options_free(diffcut_options* options) { delete options; }

int diffcut_options_set_alpha(diffcut_options* options, double alpha) {
  return guarded([&] {
    require(options, "options");
    positive_finite(alpha, "alpha");
    options->value.alpha = alpha;
  });
}

int diffcut_options_set_tau_max(diffcut_options* options, double tau_max) {
  return guarded([&] {
    require(options, "options");
    positive_finite(tau_max, "tau_max");
    options->value.tau_max = tau_max;
  });
}

int diffcut_options_set_compat(diffcut_options* options, int compat) {
  return guarded([&] {
    require(options, "options");
    if (compat != DIFFCUT_COMPAT_OFFICIAL && compat != DIFFCUT_COMPAT_CLEAN)
      throw Failure(Code::InvalidArgument, "unknown compat " + std::to_string(compat) +
                                               "; choose DIFFCUT_COMPAT_OFFICIAL (0) or DIFFCUT_COMPAT_CLEAN (1)");
    options->value.compat = static_cast<Compat>(compat);
  });
}

int diffcut_options_set_num_thresholds(diffcut_options* options, int num_thresholds) {
  return guarded([&] {
    require(options, "options");
    // (the bound of diffcut_engine.graph.validation.MAX_THRESHOLDS: the scoring keeps num_thresholds + 1 bins in
    // an int)
    if (num_thresholds < 2 || num_thresholds > 2147483646)
      throw Failure(Code::InvalidArgument, "num_thresholds must be an integer in [2, 2147483646], got " +
                                               std::to_string(num_thresholds));
    options->value.num_thresholds = num_thresholds;
  });
}

int diffcut_options_set_solver(diffcut_options* options, int solver) {
  return guarded([&] {
    require(options, "options");
    if (solver != DIFFCUT_SOLVER_AUTO && solver != DIFFCUT_SOLVER_DENSE)
      throw Failure(Code::InvalidArgument, "unknown solver " + std::to_string(solver) +
                                               "; choose DIFFCUT_SOLVER_AUTO (0) or DIFFCUT_SOLVER_DENSE (1)");
    options->value.solver = static_cast<diffcut::detail::Solver>(solver);
  });
}

int diffcut_affinity(const float* tokens, int64_t num_tokens, int64_t channels, double alpha, float* affinity_out,
                     int64_t capacity) {
  return guarded([&] {
    require(tokens, "tokens");
    require(affinity_out, "affinity_out");
    positive_size(num_tokens, "num_tokens");
    positive_size(channels, "channels");
    positive_finite(alpha, "alpha");
    if (num_tokens > 46340) throw Failure(Code::InvalidArgument, "a dense affinity of more than 46340 tokens does not fit");
    const std::int64_t count = product(num_tokens, channels, "num_tokens * channels");
    if (capacity < num_tokens * num_tokens)
      throw Failure(Code::BufferTooSmall, "affinity_out holds " + std::to_string(capacity) + " values, " +
                                              std::to_string(num_tokens * num_tokens) + " needed");
    diffcut::detail::check_finite(tokens, count, "tokens");
    std::vector<float> x(tokens, tokens + count);
    diffcut::detail::l2_normalize(x.data(), num_tokens, channels);
    diffcut::detail::affinity_from_tokens(x.data(), num_tokens, channels, alpha, affinity_out);
  });
}

int diffcut_tree_build(const float* features, int64_t height, int64_t width, int64_t channels,
                       const diffcut_options* options, diffcut_tree** out) {
  return guarded([&] {
    require(out, "out");
    *out = nullptr;
    auto* tree = new diffcut_tree{tree_of_features(features, height, width, channels, options_of(options))};
    *out = tree;
  });
}

int diffcut_tree_build_affinity(const float* affinity, int64_t n, const diffcut_options* options,
                                diffcut_tree** out) {
  return guarded([&] {
    require(out, "out");
    *out = nullptr;
    require(affinity, "affinity");
    positive_size(n, "n");
    if (n > 46340) throw Failure(Code::InvalidArgument, "a dense affinity of more than 46340 tokens does not fit");
    diffcut::detail::check_finite(affinity, n * n, "affinity");
    for (std::int64_t i = 0; i < n * n; ++i)
      if (affinity[i] < 0) throw Failure(Code::InvalidArgument, "affinity must be non-negative");
    // symmetric as graph.build_tree requires it (the solvers read one triangle): max |W - W^T| <= 1e-5 max |W|
    float largest = 0.0f, asym = 0.0f;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        largest = std::max(largest, affinity[i * n + j]);
        if (j < i) asym = std::max(asym, std::fabs(affinity[i * n + j] - affinity[j * n + i]));
      }
    if (static_cast<double>(asym) > 1e-5 * static_cast<double>(largest))
      throw Failure(Code::InvalidArgument, "affinity must be symmetric (max |W - W^T| = " + std::to_string(asym) +
                                               ")");
    *out = new diffcut_tree{diffcut::detail::build_tree(affinity, n, options_of(options))};
  });
}

int diffcut_tree_build_batch(const float* const* features, const int64_t* heights, const int64_t* widths,
                             int64_t channels, int64_t count, const diffcut_options* options, int num_threads,
                             diffcut_tree** out) {
  return guarded([&] {
    require(out, "out");
    positive_size(count, "count");
    for (std::int64_t i = 0; i < count; ++i) out[i] = nullptr;
    require(features, "features");
    require(heights, "heights");
    require(widths, "widths");
    const diffcut::detail::Options opts = options_of(options);
    std::vector<diffcut::detail::Tree> trees(count);
    for_each_image(count, num_threads, [&](std::int64_t i) {
      trees[i] = tree_of_features(features[i], heights[i], widths[i], channels, opts);
    });
    for (std::int64_t i = 0; i < count; ++i) out[i] = new diffcut_tree{std::move(trees[i])};
  });
}

void diffcut_tree_free(diffcut_tree* tree) { delete tree; }

int diffcut_tree_shape(const diffcut_tree* tree, int64_t* height, int64_t* width) {
  return guarded([&] {
    require(tree, "tree");
    require(height, "height");
    require(width, "width");
    *height = tree->value.height;
    *width = tree->value.width;
  });
}

int diffcut_tree_cut(const diffcut_tree* tree, double tau, int32_t* labels, int64_t capacity,
                     int32_t* num_segments) {
  return guarded([&] {
    require(tree, "tree");
    require(labels, "labels");
    positive_finite(tau, "tau");
    if (tau > tree->value.tau_max)
      throw Failure(Code::InvalidArgument, "tau=" + std::to_string(tau) + " is above this tree's tau_max=" +
                                               std::to_string(tree->value.tau_max) +
                                               ": build the tree with a larger tau_max");
    if (capacity < tree->value.size())
      throw Failure(Code::BufferTooSmall, "labels holds " + std::to_string(capacity) + " values, " +
                                              std::to_string(tree->value.size()) + " needed");
    const std::int32_t k = tree->value.cut(tau, labels);
    if (num_segments) *num_segments = k;
  });
}

int diffcut_tree_split_values(const diffcut_tree* tree, double* values, int64_t capacity, int64_t* count) {
  return guarded([&] {
    require(tree, "tree");
    require(count, "count");
    const std::vector<double> v = tree->value.split_values();
    *count = static_cast<std::int64_t>(v.size());
    if (capacity > 0 || !v.empty()) {
      if (capacity < static_cast<std::int64_t>(v.size())) {
        if (values == nullptr && capacity == 0) return;  // a count query
        throw Failure(Code::BufferTooSmall, "values holds " + std::to_string(capacity) + " values, " +
                                                std::to_string(v.size()) + " needed");
      }
      require(values, "values");
      if (!v.empty()) std::memcpy(values, v.data(), v.size() * sizeof(double));
    }
  });
}

int diffcut_segment(const float* features, int64_t height, int64_t width, int64_t channels,
                    const diffcut_options* options, double tau, int32_t* labels, int64_t capacity,
                    int32_t* num_segments) {
  return guarded([&] {
    require(labels, "labels");
    positive_finite(tau, "tau");
    positive_size(height, "height");
    positive_size(width, "width");
    const std::int64_t n = product(height, width, "height * width");
    if (capacity < n)
      throw Failure(Code::BufferTooSmall, "labels holds " + std::to_string(capacity) + " values, " +
                                              std::to_string(n) + " needed");
    diffcut::detail::Options opts = options_of(options);
    opts.tau_max = tau;
    const diffcut::detail::Tree tree = tree_of_features(features, height, width, channels, opts);
    const std::int32_t k = tree.cut(tau, labels);
    if (num_segments) *num_segments = k;
  });
}

int diffcut_options_set_pamr_iters(diffcut_options* options, int iters) {
  return guarded([&] {
    require(options, "options");
    diffcut::detail::RefineOptions r = options->refine;
    r.iters = iters;
    diffcut::detail::check_pamr_options(r);  // [0, 10000]
    options->refine = r;
  });
}

int diffcut_options_set_pamr_dilations(diffcut_options* options, const int32_t* dilations, int64_t count) {
  return guarded([&] {
    require(options, "options");
    require(dilations, "dilations");
    positive_size(count, "count");
    if (count > 1024) throw Failure(Code::InvalidArgument, "at most 1024 dilations");
    diffcut::detail::RefineOptions r = options->refine;
    r.dilations.assign(dilations, dilations + count);
    diffcut::detail::check_pamr_options(r);  // each in [1, 32768]
    options->refine = r;
  });
}

int diffcut_options_set_median(diffcut_options* options, int median) {
  return guarded([&] {
    require(options, "options");
    if (median != 0 && median != 1) throw Failure(Code::InvalidArgument, "median must be 0 or 1");
    options->refine.median = median == 1;
  });
}

int diffcut_options_set_num_threads(diffcut_options* options, int num_threads) {
  return guarded([&] {
    require(options, "options");
    if (num_threads < 0) throw Failure(Code::InvalidArgument, "num_threads must be >= 0");
    options->refine.num_threads = num_threads;
  });
}

int diffcut_options_set_refine_work_size(diffcut_options* options, int64_t height, int64_t width) {
  return guarded([&] {
    require(options, "options");
    diffcut::detail::RefineOptions r = options->refine;
    r.work_height = height;
    r.work_width = width;
    diffcut::detail::check_pamr_options(r);
    options->refine = r;
  });
}

int diffcut_pamr(const float* image, int64_t height, int64_t width, const int32_t* labels, int64_t label_height,
                 int64_t label_width, int32_t num_segments, const diffcut_options* options, int32_t* out,
                 int64_t capacity) {
  return guarded([&] {
    require(out, "out");
    require(labels, "labels");
    const std::int64_t n = check_image(image, height, width);
    positive_size(label_height, "label_height");
    positive_size(label_width, "label_width");
    positive_size(num_segments, "num_segments");
    check_capacity(capacity, n, "out");
    const std::int64_t m = product(label_height, label_width, "label_height * label_width");
    diffcut::detail::check_labels(labels, m, num_segments, "labels");
    diffcut::detail::pamr_labels(image, height, width, labels, label_height, label_width, num_segments,
                                 refine_options_of(options), out);
  });
}

int diffcut_refine(const float* features, int64_t grid_height, int64_t grid_width, int64_t channels,
                   const int32_t* grid_labels, int32_t num_segments, const float* image, int64_t height,
                   int64_t width, const diffcut_options* options, int32_t* labels, int64_t capacity) {
  return guarded([&] {
    require(labels, "labels");
    require(grid_labels, "grid_labels");
    const std::int64_t n = check_image(image, height, width);
    positive_size(num_segments, "num_segments");
    check_capacity(capacity, n, "labels");
    const std::vector<float> tokens = normalized_tokens(features, grid_height, grid_width, channels, false);
    diffcut::detail::check_labels(grid_labels, grid_height * grid_width, num_segments, "grid_labels");
    diffcut::detail::refine_labels(tokens.data(), grid_height, grid_width, channels, grid_labels, num_segments,
                                   image, height, width, refine_options_of(options), labels);
  });
}

int diffcut_segment_image(const float* features, int64_t grid_height, int64_t grid_width, int64_t channels,
                          const float* image, int64_t height, int64_t width, const diffcut_options* options,
                          double tau, int32_t* labels, int64_t capacity, int32_t* num_segments) {
  return guarded([&] {
    const std::int32_t k = segment_image(features, grid_height, grid_width, channels, image, height, width, options,
                                         tau, labels, capacity, refine_options_of(options).num_threads);
    if (num_segments) *num_segments = k;
  });
}

int diffcut_segment_image_batch(const float* const* features, const int64_t* grid_heights,
                                const int64_t* grid_widths, int64_t channels, const float* const* images,
                                const int64_t* heights, const int64_t* widths, int64_t count,
                                const diffcut_options* options, double tau, int num_threads,
                                int32_t* const* labels, const int64_t* capacities, int32_t* num_segments) {
  return guarded([&] {
    positive_size(count, "count");
    require(features, "features");
    require(grid_heights, "grid_heights");
    require(grid_widths, "grid_widths");
    require(images, "images");
    require(heights, "heights");
    require(widths, "widths");
    require(labels, "labels");
    require(capacities, "capacities");
    std::vector<std::int32_t> ks(count, 0);
    for_each_image(count, num_threads, [&](std::int64_t i) {  // each image on one thread
      ks[i] = segment_image(features[i], grid_heights[i], grid_widths[i], channels, images[i], heights[i], widths[i],
                            options, tau, labels[i], capacities[i], 1);
    });
    if (num_segments)
      for (std::int64_t i = 0; i < count; ++i) num_segments[i] = ks[i];
  });
}

}  // extern "C"
