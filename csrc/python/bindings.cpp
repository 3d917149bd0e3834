// diffcut_engine._native: pybind11 bindings of the C++ core for diffcut_engine.graph (graph_backend="native").
// The module does not link a BLAS: diffcut_engine.graph.native binds SciPy's own ssyrk and dsyevr (the functions
// the numpy path calls) with bind_lapack() before first use.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core.h"
#include "diffcut/diffcut.h"
#include "lapack.h"
#include "matvec.h"
#include "scratch.h"

namespace py = pybind11;
using namespace diffcut::detail;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

Options make_options(double alpha, double tau_max, const std::string& compat, int num_thresholds,
                     const std::string& solver) {
  Options o;
  o.alpha = alpha;
  o.tau_max = tau_max;
  if (compat == "official") o.compat = Compat::Official;
  else if (compat == "clean") o.compat = Compat::Clean;
  else throw py::value_error("the native graph backend supports compat 'official' and 'clean', not '" + compat + "'");
  if (num_thresholds < 2) throw py::value_error("num_thresholds must be >= 2");
  o.num_thresholds = num_thresholds;
  if (solver == "auto") o.solver = Solver::Auto;
  else if (solver == "dense") o.solver = Solver::Dense;
  else throw py::value_error("the native graph backend has the solvers 'auto' and 'dense', not '" + solver + "'");
  return o;
}

// The tree as flat arrays: indices (concatenated), offsets, depth, value, one, zero (-1 for a leaf), exact.
py::tuple tree_arrays(const Tree& tree) {
  const std::size_t count = tree.nodes.size();
  std::size_t total = 0;
  for (const Node& node : tree.nodes) total += node.indices.size();
  py::array_t<std::int32_t> indices(total), depth(count), one(count), zero(count);
  py::array_t<bool> exact(count);
  py::array_t<std::int64_t> offsets(count + 1);
  py::array_t<double> value(count);
  auto ix = indices.mutable_unchecked<1>();
  auto of = offsets.mutable_unchecked<1>();
  auto de = depth.mutable_unchecked<1>();
  auto va = value.mutable_unchecked<1>();
  auto on = one.mutable_unchecked<1>();
  auto ze = zero.mutable_unchecked<1>();
  auto ex = exact.mutable_unchecked<1>();
  std::size_t p = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const Node& node = tree.nodes[i];
    of(i) = static_cast<std::int64_t>(p);
    for (std::int32_t v : node.indices) ix(p++) = v;
    de(i) = node.depth;
    va(i) = node.value;
    on(i) = node.one;
    ze(i) = node.zero;
    ex(i) = node.exact;
  }
  of(count) = static_cast<std::int64_t>(p);
  return py::make_tuple(indices, offsets, depth, value, one, zero, exact);
}


template <class F>
auto translated(F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Failure& e) {
    if (e.code == Code::OutOfMemory) throw std::bad_alloc();
    if (e.code == Code::Internal || e.code == Code::Lapack) throw std::runtime_error(e.what());
    throw py::value_error(e.what());
  }
}

using IntArray = py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>;

RefineOptions refine_options(int iters, const std::vector<int>& dilations, bool median, int num_threads,
                             std::int64_t budget) {
  RefineOptions o;
  o.iters = iters;
  o.dilations = dilations;
  o.median = median;
  o.num_threads = num_threads;
  o.budget = budget;
  check_pamr_options(o);
  return o;
}

// A (3, H, W) float32 image with finite values.
void check_image(const FloatArray& image) {
  if (image.ndim() != 3 || image.shape(0) != 3 || image.shape(1) < 1 || image.shape(2) < 1)
    throw py::value_error("image must be (3, H, W)");
  translated([&] {
    check_finite(image.data(), image.size(), "image");
    return 0;
  });
}


}  // namespace

namespace {

// The counted process-wide guards taken by diffcut_engine.graph._blas.single_threaded_blas (share_blas_guard): one
// count with the core's own SingleThreadedBlas instances.
std::mutex blas_guard_mu;
std::vector<std::unique_ptr<diffcut::detail::SingleThreadedBlas>> blas_guards;

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.def("blas_single_thread_enter", [] {
    auto guard = std::make_unique<diffcut::detail::SingleThreadedBlas>();
    std::lock_guard<std::mutex> lock(blas_guard_mu);
    blas_guards.push_back(std::move(guard));
  }, "Take one count of the core's process-wide single-threaded-BLAS guard (released by blas_single_thread_exit).");
  m.def("blas_single_thread_exit", [] {
    std::unique_ptr<diffcut::detail::SingleThreadedBlas> guard;
    {
      std::lock_guard<std::mutex> lock(blas_guard_mu);
      if (blas_guards.empty()) return;
      guard = std::move(blas_guards.back());
      blas_guards.pop_back();
    }
  }, "Release one count taken by blas_single_thread_enter (the thread count is restored by the last one).");
  m.doc() = "The C++ core of diffcut-engine (csrc/): affinity and recursive NCut tree, dense LAPACK, certified Lanczos and block Krylov solvers.";
  m.attr("version") = diffcut_version();

  m.def(
      "scratch_cached_bytes", [] { return scratch_cached_bytes(); },
      "Bytes of free scratch blocks (the graph stage's W and subgraph matrices) the caches of the calling thread and "
      "of the core's helper threads hold.");
  m.def(
      "release_scratch", [] { scratch_trim(); },
      "Free the cached scratch blocks of the calling thread and of the core's helper threads.");

  m.def(
      "bind_lapack",
      [](std::uintptr_t ssyrk, std::uintptr_t dsyevr, std::uintptr_t dsymv) {
        translated([&] {
          bind_lapack(reinterpret_cast<SsyrkFn>(ssyrk), reinterpret_cast<DsyevrFn>(dsyevr),
                      reinterpret_cast<DsymvFn>(dsymv));
          return 0;
        });
      },
      py::arg("ssyrk"), py::arg("dsyevr"), py::arg("dsymv"),
      "Bind ssyrk, dsyevr and dsymv (addresses of Fortran-ABI functions).");

  m.def(
      "bind_dgemm", [](std::uintptr_t dgemm) { bind_dgemm(reinterpret_cast<DgemmFn>(dgemm)); }, py::arg("dgemm"),
      "Bind dgemm (the address of a Fortran-ABI function; 0: none) for the block Krylov products.");

  m.def(
      "bind_sgemm", [](std::uintptr_t sgemm) { bind_sgemm(reinterpret_cast<SgemmFn>(sgemm)); }, py::arg("sgemm"),
      "Bind sgemm (the address of a Fortran-ABI function; 0: none): the Gram matrix in two bands on two threads.");

  m.def(
      "bind_dstemr", [](std::uintptr_t dstemr) { bind_dstemr(reinterpret_cast<DstemrFn>(dstemr)); },
      py::arg("dstemr"),
      "Bind dstemr (the address of a Fortran-ABI function; 0: none): Lanczos's Ritz pairs from the tridiagonal "
      "matrix (else dsyevr on it).");

  m.def(
      "symv_lower_f32",
      [](FloatArray A, py::array_t<double, py::array::c_style | py::array::forcecast> x) {
        if (A.ndim() != 2 || A.shape(0) != A.shape(1) || x.ndim() != 1 || x.shape(0) != A.shape(0))
          throw py::value_error("A must be (m, m) and x (m,)");
        const std::int64_t m = A.shape(0);
        py::array_t<double> y(m);
        symv_lower_f32(A.data(), m, x.data(), y.mutable_data());
        return y;
      },
      py::arg("A"), py::arg("x"),
      "A x in float64 from the lower triangle of a float32 (m, m) A (the Lanczos products; for tests).");

  m.def(
      "rows_times_f32",
      [](FloatArray A, py::array_t<double, py::array::c_style | py::array::forcecast> X) {
        if (A.ndim() != 2 || A.shape(0) != A.shape(1) || X.ndim() != 2 || X.shape(1) != A.shape(0) ||
            X.shape(0) < 1 || X.shape(0) > kMaxBlock)
          throw py::value_error("A must be (m, m) and X (b, m) with 1 <= b <= 8");
        const std::int64_t m = A.shape(0);
        const int b = static_cast<int>(X.shape(0));
        py::array_t<double> Y({static_cast<std::int64_t>(b), m});
        rows_times_f32(A.data(), m, X.data(), b, Y.mutable_data());
        return Y;
      },
      py::arg("A"), py::arg("X"),
      "X A in float64 for a symmetric float32 (m, m) A (the block Krylov products; for tests).");

  m.def(
      "affinity",
      [](FloatArray tokens, double alpha) {
        if (tokens.ndim() != 2) throw py::value_error("tokens must be (N, C)");
        const std::int64_t n = tokens.shape(0), c = tokens.shape(1);
        py::array_t<float> W({n, n});
        const float* x = tokens.data();
        float* out = W.mutable_data();
        translated([&] {
          py::gil_scoped_release release;
          affinity_from_tokens(x, n, c, alpha, out);
          return 0;
        });
        return W;
      },
      py::arg("tokens"), py::arg("alpha"), "W of L2-normalised (N, C) float32 tokens, as affinity_from_tokens.");

  m.def(
      "affinity_widened",
      [](FloatArray tokens, double alpha, py::array_t<float, py::array::c_style> scratch,
         py::array_t<double, py::array::c_style> out, py::array_t<std::uint8_t, py::array::c_style> zero_row) {
        if (tokens.ndim() != 2) throw py::value_error("tokens must be (N, C)");
        const std::int64_t n = tokens.shape(0), c = tokens.shape(1);
        if (scratch.size() < n * n) throw py::value_error("scratch must hold N * N float32 values");
        if (out.ndim() != 2 || out.shape(0) != n || out.shape(1) != n) throw py::value_error("out must be (N, N)");
        if (zero_row.ndim() != 1 || zero_row.shape(0) != n) throw py::value_error("zero_row must be (N,)");
        const float* x = tokens.data();
        float* s = scratch.mutable_data();
        double* w = out.mutable_data();
        std::uint8_t* z = zero_row.mutable_data();
        translated([&] {
          py::gil_scoped_release release;
          affinity_widened(x, n, c, alpha, s, w, z);
          return 0;
        });
      },
      py::arg("tokens"), py::arg("alpha"), py::arg("scratch"), py::arg("out"), py::arg("zero_row"),
      "W of L2-normalised (N, C) float32 tokens widened to float64 into out (N, N), and the rows holding an exact "
      "zero into zero_row (N,) uint8; scratch: N * N float32 values for the Gram matrix.");

  m.def(
      "row_norms",
      [](FloatArray tokens) {
        if (tokens.ndim() != 2) throw py::value_error("tokens must be (N, C)");
        const std::int64_t n = tokens.shape(0), c = tokens.shape(1);
        py::array_t<float> out(n);
        float* o = out.mutable_data();
        const float* x = tokens.data();
        for (std::int64_t i = 0; i < n; ++i) o[i] = row_norm(x + i * c, c);
        return out;
      },
      py::arg("tokens"), "||x_i|| of each row as the C API's normalisation computes it (graph.affinity.row_norms "
      "before its 1e-12 floor).");

  m.def(
      "tree_from_tokens",
      [](FloatArray tokens, double alpha, double tau_max, const std::string& compat, int num_thresholds,
         const std::string& solver, bool normalize) {
        if (tokens.ndim() != 2) throw py::value_error("tokens must be (N, C)");
        const Options o = make_options(alpha, tau_max, compat, num_thresholds, solver);
        const std::int64_t n = tokens.shape(0), c = tokens.shape(1);
        const float* x = tokens.data();
        Tree tree = translated([&] {
          py::gil_scoped_release release;
          return build_tree_from_tokens(x, n, c, o, normalize);
        });
        return tree_arrays(tree);
      },
      py::arg("tokens"), py::arg("alpha"), py::arg("tau_max"), py::arg("compat"), py::arg("num_thresholds"),
      py::arg("solver") = "auto", py::arg("normalize") = false,
      "The recursive NCut tree of L2-normalised (N, C) float32 tokens, as flat arrays; normalize: finite raw tokens, "
      "normalised here as graph.affinity.l2_normalize does (the same bits: row_norm).");

  m.def(
      "trees_from_tokens",
      [](const std::vector<FloatArray>& tokens, double alpha, double tau_max, const std::string& compat,
         int num_thresholds, const std::string& solver, int num_threads, bool normalize) {
        const Options o = make_options(alpha, tau_max, compat, num_thresholds, solver);
        const std::size_t count = tokens.size();
        for (const FloatArray& t : tokens)
          if (t.ndim() != 2) throw py::value_error("tokens must be (N, C)");
        std::vector<Tree> trees(count);
        std::vector<std::exception_ptr> errors(count);
        {
          py::gil_scoped_release release;
          // each tree on one thread: its own core, or the one thread asked for (no helpers: run_shared)
          run_each(static_cast<std::int64_t>(count), std::max(1, num_threads), [&](std::int64_t i) {
            try {
              const std::int64_t n = tokens[i].shape(0), c = tokens[i].shape(1);
              trees[i] = build_tree_from_tokens(tokens[i].data(), n, c, o, normalize);
            } catch (...) {
              errors[i] = std::current_exception();
            }
          });
        }
        py::list out;
        for (std::size_t i = 0; i < count; ++i) {
          if (errors[i]) translated([&]() -> int { std::rethrow_exception(errors[i]); });
          out.append(tree_arrays(trees[i]));
        }
        return out;
      },
      py::arg("tokens"), py::arg("alpha"), py::arg("tau_max"), py::arg("compat"), py::arg("num_thresholds"),
      py::arg("solver") = "auto", py::arg("num_threads") = 1, py::arg("normalize") = false,
      "The trees of several L2-normalised (N_i, C) float32 token matrices on num_threads threads (normalize: raw "
      "finite tokens, normalised on the image's thread).");

  m.def(
      "tree_from_affinity",
      [](FloatArray W, double tau_max, const std::string& compat, int num_thresholds, const std::string& solver) {
        if (W.ndim() != 2 || W.shape(0) != W.shape(1)) throw py::value_error("affinity must be (N, N)");
        const Options o = make_options(10.0, tau_max, compat, num_thresholds, solver);
        const std::int64_t n = W.shape(0);
        const float* w = W.data();
        Tree tree = translated([&] {
          py::gil_scoped_release release;
          return build_tree(w, n, o);
        });
        return tree_arrays(tree);
      },
      py::arg("affinity"), py::arg("tau_max"), py::arg("compat"), py::arg("num_thresholds"),
      py::arg("solver") = "auto", "The recursive NCut tree of an (N, N) float32 affinity, as flat arrays.");

  m.def(
      "concept_assign",
      [](FloatArray features, IntArray grid, std::int32_t k, std::int64_t out_h, std::int64_t out_w,
         int num_threads) {
        if (features.ndim() != 3 || grid.ndim() != 2 || grid.shape(0) != features.shape(0) ||
            grid.shape(1) != features.shape(1) || features.size() == 0)
          throw py::value_error("features must be (h, w, C) and grid labels (h, w)");
        if (k < 1 || out_h < 1 || out_w < 1 || num_threads < 0)
          throw py::value_error("num_segments, out_h and out_w must be positive, num_threads >= 0");
        const std::int64_t h = features.shape(0), w = features.shape(1), c = features.shape(2);
        py::array_t<std::int32_t> out({out_h, out_w});
        const float* f = features.data();
        const std::int32_t* g = grid.data();
        std::int32_t* o = out.mutable_data();
        translated([&] {
          check_finite(f, h * w * c, "features");
          check_labels(g, h * w, k, "grid labels");
          py::gil_scoped_release release;
          concept_assign(f, h, w, c, g, k, out_h, out_w, o, num_threads);
          return 0;
        });
        return out;
      },
      py::arg("features"), py::arg("grid"), py::arg("num_segments"), py::arg("out_h"), py::arg("out_w"),
      py::arg("num_threads") = 0,
      "refine.concept_assign of (h, w, C) float32 features (used as given) and (h, w) int32 grid labels.");

  m.def(
      "pamr_affinity",
      [](FloatArray image, const std::vector<int>& dilations, int num_threads) {
        check_image(image);
        const RefineOptions o = translated([&] { return refine_options(1, dilations, false, num_threads, 1); });
        const std::int64_t h = image.shape(1), w = image.shape(2);
        py::array_t<float> out({static_cast<std::int64_t>(8 * dilations.size()), h, w});
        const float* im = image.data();
        float* a = out.mutable_data();
        {
          py::gil_scoped_release release;
          pamr_affinity(im, h, w, o.dilations, a, o.num_threads);
        }
        return out;
      },
      py::arg("image"), py::arg("dilations"), py::arg("num_threads") = 0,
      "PAMR's affinities (8 * len(dilations), H, W) of a (3, H, W) float32 image (pamr_cpu.affinity).");

  m.def(
      "pamr",
      [](FloatArray image, IntArray labels, std::int32_t k, int iters, const std::vector<int>& dilations,
         bool median, int num_threads, std::int64_t budget) {
        check_image(image);
        if (labels.ndim() != 2 || labels.shape(0) < 1 || labels.shape(1) < 1)
          throw py::value_error("labels must be (h, w)");
        if (k < 1) throw py::value_error("num_segments must be positive");
        const RefineOptions o =
            translated([&] { return refine_options(iters, dilations, median, num_threads, budget); });
        const std::int64_t h = image.shape(1), w = image.shape(2), lh = labels.shape(0), lw = labels.shape(1);
        py::array_t<std::int32_t> out({h, w});
        const float* im = image.data();
        const std::int32_t* lb = labels.data();
        std::int32_t* ot = out.mutable_data();
        translated([&] {
          check_labels(lb, lh * lw, k, "labels");
          py::gil_scoped_release release;
          pamr_labels(im, h, w, lb, lh, lw, k, o, ot);
          return 0;
        });
        return out;
      },
      py::arg("image"), py::arg("labels"), py::arg("num_segments"), py::arg("iters") = 10,
      py::arg("dilations") = std::vector<int>{1, 2, 4, 8}, py::arg("median") = true, py::arg("num_threads") = 0,
      py::arg("budget") = std::int64_t{1} << 25,
      "PAMR argmax (+ 3x3 median) of (h, w) int32 labels on a (3, H, W) float32 image: (H, W) int32; the masks "
      "are resized as the official PAMR resizes them when (h, w) != (H, W).");

  m.def(
      "resize_bilinear",
      [](FloatArray image, std::int64_t out_h, std::int64_t out_w, int num_threads) {
        if (image.ndim() != 3 || image.shape(0) < 1 || image.shape(1) < 1 || image.shape(2) < 1)
          throw py::value_error("image must be (C, H, W)");
        if (out_h < 1 || out_w < 1) throw py::value_error("the output size must be positive");
        const std::int64_t c = image.shape(0), h = image.shape(1), w = image.shape(2);
        py::array_t<float> out({c, out_h, out_w});
        const float* src = image.data();
        float* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          resize_bilinear(src, c, h, w, out_h, out_w, dst, num_threads);
        }
        return out;
      },
      py::arg("image"), py::arg("out_h"), py::arg("out_w"), py::arg("num_threads") = 0,
      "images.resize of a (C, H, W) float32 image (bilinear, align_corners=False, no antialiasing).");

  m.def(
      "joint_upsample",
      [](IntArray labels, FloatArray small_img, FloatArray big_img, float sigma, int num_threads) {
        if (labels.ndim() != 2 || labels.shape(0) < 1 || labels.shape(1) < 1)
          throw py::value_error("labels must be (h, w)");
        const std::int64_t hs = labels.shape(0), ws = labels.shape(1);
        if (small_img.ndim() != 3 || small_img.shape(0) != 3 || small_img.shape(1) != hs || small_img.shape(2) != ws)
          throw py::value_error("small_img must be (3, h, w), the labels' size");
        if (big_img.ndim() != 3 || big_img.shape(0) != 3 || big_img.shape(1) < 1 || big_img.shape(2) < 1)
          throw py::value_error("big_img must be (3, H, W)");
        if (!(sigma > 0.0f) || !std::isfinite(sigma)) throw py::value_error("sigma must be a positive number");
        const std::int64_t hb = big_img.shape(1), wb = big_img.shape(2);
        py::array_t<std::int32_t> out({hb, wb});
        const std::int32_t* lb = labels.data();
        const float* sm = small_img.data();
        const float* bg = big_img.data();
        std::int32_t* ot = out.mutable_data();
        {
          py::gil_scoped_release release;
          joint_upsample(lb, hs, ws, sm, bg, hb, wb, sigma, ot, num_threads);
        }
        return out;
      },
      py::arg("labels"), py::arg("small_img"), py::arg("big_img"), py::arg("sigma") = 0.1f,
      py::arg("num_threads") = 0,
      "pamr_cpu.joint_upsample: (h, w) int32 labels of a (3, h, w) image -> (H, W) int32 labels of (3, H, W).");

  m.def(
      "median3x3",
      [](IntArray labels, int num_threads) {
        if (labels.ndim() != 2 || labels.shape(0) < 1 || labels.shape(1) < 1)
          throw py::value_error("labels must be (H, W)");
        const std::int64_t h = labels.shape(0), w = labels.shape(1);
        py::array_t<std::int32_t> out({h, w});
        const std::int32_t* lb = labels.data();
        std::int32_t* ot = out.mutable_data();
        {
          py::gil_scoped_release release;
          median3x3(lb, h, w, ot, num_threads);
        }
        return out;
      },
      py::arg("labels"), py::arg("num_threads") = 0, "refine.median3x3 of (H, W) int32 labels.");

  m.def(
      "refine",
      [](FloatArray features, IntArray grid, std::int32_t k, FloatArray image, int iters,
         const std::vector<int>& dilations, bool median, int num_threads, std::int64_t work_height,
         std::int64_t work_width) {
        if (features.ndim() != 3 || grid.ndim() != 2 || grid.shape(0) != features.shape(0) ||
            grid.shape(1) != features.shape(1) || features.size() == 0)
          throw py::value_error("features must be (h, w, C) and grid labels (h, w)");
        check_image(image);
        if (k < 1) throw py::value_error("num_segments must be positive");
        const RefineOptions o = translated([&] {
          RefineOptions r = refine_options(iters, dilations, median, num_threads, std::int64_t{1} << 25);
          r.work_height = work_height;
          r.work_width = work_width;
          check_pamr_options(r);
          return r;
        });
        const std::int64_t h = features.shape(0), w = features.shape(1), c = features.shape(2);
        const std::int64_t H = image.shape(1), W = image.shape(2);
        py::array_t<std::int32_t> out({H, W});
        const float* f = features.data();
        const std::int32_t* g = grid.data();
        const float* im = image.data();
        std::int32_t* ot = out.mutable_data();
        translated([&] {
          check_finite(f, h * w * c, "features");
          check_labels(g, h * w, k, "grid labels");
          py::gil_scoped_release release;
          refine_labels(f, h, w, c, g, k, im, H, W, o, ot);
          return 0;
        });
        return out;
      },
      py::arg("features"), py::arg("grid"), py::arg("num_segments"), py::arg("image"), py::arg("iters") = 10,
      py::arg("dilations") = std::vector<int>{1, 2, 4, 8}, py::arg("median") = true, py::arg("num_threads") = 0,
      py::arg("work_height") = 0, py::arg("work_width") = 0,
      "The engine's refinement: concept assignment of (h, w, C) float32 L2-normalised features and (h, w) int32 "
      "grid labels at the (3, H, W) image's size, then PAMR and the median there (work size 0 x 0, preset full) "
      "or at the working size with the edge-aware return (presets demo, eval).");
}
