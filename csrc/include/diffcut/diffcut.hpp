// diffcut.hpp: a thin C++17 layer over the C API (include/diffcut/diffcut.h): RAII handles, std::vector buffers,
// and diffcut::Error (carrying the C error code) instead of return codes.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "diffcut/diffcut.h"

namespace diffcut {

class Error : public std::runtime_error {
 public:
  Error(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const noexcept { return code_; }

 private:
  int code_;
};

inline void check(int code) {
  if (code != DIFFCUT_OK) throw Error(code, std::string(diffcut_error_name(code)) + ": " + diffcut_last_error());
}

enum class Compat { Official = DIFFCUT_COMPAT_OFFICIAL, Clean = DIFFCUT_COMPAT_CLEAN };
enum class Solver { Auto = DIFFCUT_SOLVER_AUTO, Dense = DIFFCUT_SOLVER_DENSE };

struct Options {
  double alpha = 10.0;
  double tau_max = 1.0;
  Compat compat = Compat::Official;
  int num_thresholds = 100;
  Solver solver = Solver::Auto;
  // refinement
  int pamr_iters = 10;
  std::vector<std::int32_t> pamr_dilations{1, 2, 4, 8};
  bool median = true;
  int num_threads = 0;  // threads for one image's refinement (0: the hardware's count)
  std::int64_t work_height = 0, work_width = 0;  // refinement's working size (0 x 0: the image's size)
};

namespace handles {
struct OptionsHandle {
  diffcut_options* ptr = nullptr;
  explicit OptionsHandle(const Options& o) {
    check(diffcut_options_new(&ptr));
    try {
      check(diffcut_options_set_alpha(ptr, o.alpha));
      check(diffcut_options_set_tau_max(ptr, o.tau_max));
      check(diffcut_options_set_compat(ptr, static_cast<int>(o.compat)));
      check(diffcut_options_set_num_thresholds(ptr, o.num_thresholds));
      check(diffcut_options_set_solver(ptr, static_cast<int>(o.solver)));
      check(diffcut_options_set_pamr_iters(ptr, o.pamr_iters));
      check(diffcut_options_set_pamr_dilations(ptr, o.pamr_dilations.data(),
                                               static_cast<std::int64_t>(o.pamr_dilations.size())));
      check(diffcut_options_set_median(ptr, o.median ? 1 : 0));
      check(diffcut_options_set_num_threads(ptr, o.num_threads));
      check(diffcut_options_set_refine_work_size(ptr, o.work_height, o.work_width));
    } catch (...) {
      diffcut_options_free(ptr);
      throw;
    }
  }
  ~OptionsHandle() { diffcut_options_free(ptr); }
  OptionsHandle(const OptionsHandle&) = delete;
  OptionsHandle& operator=(const OptionsHandle&) = delete;
};
}  // namespace handles

// The segmentation tree of one feature grid: cut it at any tau <= options.tau_max.
class Tree {
 public:
  // features: row-major (height, width, channels) float32.
  Tree(const float* features, std::int64_t height, std::int64_t width, std::int64_t channels,
       const Options& options = Options()) {
    handles::OptionsHandle opts(options);
    check(diffcut_tree_build(features, height, width, channels, opts.ptr, &tree_));
  }
  // A given (n x n, row-major float32) affinity.
  static Tree from_affinity(const float* affinity, std::int64_t n, const Options& options = Options()) {
    handles::OptionsHandle opts(options);
    diffcut_tree* t = nullptr;
    check(diffcut_tree_build_affinity(affinity, n, opts.ptr, &t));
    return Tree(t);
  }
  Tree(Tree&& other) noexcept : tree_(std::exchange(other.tree_, nullptr)) {}
  Tree& operator=(Tree&& other) noexcept {
    std::swap(tree_, other.tree_);
    return *this;
  }
  Tree(const Tree&) = delete;
  Tree& operator=(const Tree&) = delete;
  ~Tree() { diffcut_tree_free(tree_); }

  std::pair<std::int64_t, std::int64_t> shape() const {
    std::int64_t h = 0, w = 0;
    check(diffcut_tree_shape(tree_, &h, &w));
    return {h, w};
  }
  // Row-major (height, width) labels 0..K-1 at tau.
  std::vector<std::int32_t> cut(double tau, std::int32_t* num_segments = nullptr) const {
    auto [h, w] = shape();
    std::vector<std::int32_t> labels(static_cast<std::size_t>(h * w));
    check(diffcut_tree_cut(tree_, tau, labels.data(), static_cast<std::int64_t>(labels.size()), num_segments));
    return labels;
  }
  std::vector<double> split_values() const {
    std::int64_t count = 0;
    check(diffcut_tree_split_values(tree_, nullptr, 0, &count));
    std::vector<double> values(static_cast<std::size_t>(count));
    check(diffcut_tree_split_values(tree_, values.data(), count, &count));
    return values;
  }
  const diffcut_tree* handle() const noexcept { return tree_; }

 private:
  friend std::vector<Tree> build_trees(const std::vector<const float*>&, const std::vector<std::int64_t>&,
                                       const std::vector<std::int64_t>&, std::int64_t, const Options&, int);
  explicit Tree(diffcut_tree* t) : tree_(t) {}
  diffcut_tree* tree_ = nullptr;
};

// The trees of several (heights[i], widths[i], channels) grids, on num_threads threads (0: all cores).
inline std::vector<Tree> build_trees(const std::vector<const float*>& features, const std::vector<std::int64_t>& heights,
                                     const std::vector<std::int64_t>& widths, std::int64_t channels,
                                     const Options& options = Options(), int num_threads = 0) {
  if (heights.size() != features.size() || widths.size() != features.size())
    throw Error(DIFFCUT_ERROR_INVALID_ARGUMENT, "features, heights and widths must have one entry per image");
  handles::OptionsHandle opts(options);
  std::vector<diffcut_tree*> raw(features.size(), nullptr);
  check(diffcut_tree_build_batch(features.data(), heights.data(), widths.data(), channels,
                                 static_cast<std::int64_t>(features.size()), opts.ptr, num_threads, raw.data()));
  std::vector<Tree> out;
  out.reserve(raw.size());
  for (diffcut_tree* t : raw) out.push_back(Tree(t));
  return out;
}

// Labels of one feature grid at tau (the whole recursion in one call).
inline std::vector<std::int32_t> segment(const float* features, std::int64_t height, std::int64_t width,
                                         std::int64_t channels, double tau = 0.5, Options options = Options()) {
  options.tau_max = tau;
  return Tree(features, height, width, channels, options).cut(tau);
}

// The engine's refinement: grid labels (grid_height, grid_width) of the features -> labels (height, width) of the
// (3, height, width) float32 image in [0, 1] (concept assignment, PAMR, median).
inline std::vector<std::int32_t> refine(const float* features, std::int64_t grid_height, std::int64_t grid_width,
                                        std::int64_t channels, const std::int32_t* grid_labels,
                                        std::int32_t num_segments, const float* image, std::int64_t height,
                                        std::int64_t width, const Options& options = Options()) {
  handles::OptionsHandle opts(options);
  std::vector<std::int32_t> labels(static_cast<std::size_t>(height > 0 && width > 0 ? height * width : 0));
  check(diffcut_refine(features, grid_height, grid_width, channels, grid_labels, num_segments, image, height, width,
                       opts.ptr, labels.data(), static_cast<std::int64_t>(labels.size())));
  return labels;
}

// PAMR (+ median) of labels (label_height, label_width) on the (3, height, width) image: labels (height, width).
inline std::vector<std::int32_t> pamr(const float* image, std::int64_t height, std::int64_t width,
                                      const std::int32_t* labels, std::int64_t label_height, std::int64_t label_width,
                                      std::int32_t num_segments, const Options& options = Options()) {
  handles::OptionsHandle opts(options);
  std::vector<std::int32_t> out(static_cast<std::size_t>(height > 0 && width > 0 ? height * width : 0));
  check(diffcut_pamr(image, height, width, labels, label_height, label_width, num_segments, opts.ptr, out.data(),
                     static_cast<std::int64_t>(out.size())));
  return out;
}

// Features and image in, labels at the image's size out: the tree cut at tau, then the refinement.
inline std::vector<std::int32_t> segment_image(const float* features, std::int64_t grid_height,
                                               std::int64_t grid_width, std::int64_t channels, const float* image,
                                               std::int64_t height, std::int64_t width, double tau = 0.5,
                                               const Options& options = Options(),
                                               std::int32_t* num_segments = nullptr) {
  handles::OptionsHandle opts(options);
  std::vector<std::int32_t> labels(static_cast<std::size_t>(height > 0 && width > 0 ? height * width : 0));
  check(diffcut_segment_image(features, grid_height, grid_width, channels, image, height, width, opts.ptr, tau,
                              labels.data(), static_cast<std::int64_t>(labels.size()), num_segments));
  return labels;
}

inline std::string version() { return diffcut_version(); }

}  // namespace diffcut
