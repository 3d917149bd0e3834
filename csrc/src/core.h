// Internal C++ core of libdiffcut (not installed): affinity, the recursion, the tree.
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffcut {
namespace detail {

// Error categories, mapped to the C API's codes.
enum class Code { NullPointer = 1, InvalidArgument = 2, NonFinite = 3, BufferTooSmall = 4, OutOfMemory = 5,
                  Lapack = 6, Internal = 7 };

class Failure : public std::runtime_error {
 public:
  Failure(Code code, const std::string& what) : std::runtime_error(what), code(code) {}
  Code code;
};

enum class Compat { Official = 0, Clean = 1 };
// auto: dense up to kAutoDenseMax nodes, above certified Lanczos, then certified block Krylov where Lanczos cannot
// certify (first, once Lanczos failed in the tree), then dense; dense: always.
enum class Solver { Auto = 0, Dense = 1 };
constexpr std::int64_t kAutoDenseMax = 192;

struct Options {
  double alpha = 10.0;
  double tau_max = 1.0;
  Compat compat = Compat::Official;
  int num_thresholds = 100;
  Solver solver = Solver::Auto;
};

// epsilon of torch.nn.functional.normalize: a zero token stays zero.
constexpr float kNormEps = 1e-12f;
// Entries of |y| within this relative distance of the largest count as tied for the sign rule (eigen.SIGN_TIE_RTOL).
constexpr double kSignTieRtol = 1e-5;
// A dense solve whose second-smallest normalised-Laplacian eigenvalue is at most this checks whether the subgraph
// is disconnected, and then takes the canonical split of its first node's component (eigen.DISCONNECTED_EIGENVALUE,
// eigen.component_split).
constexpr double kDisconnectedEigenvalue = 1e-10;
// A connected subgraph whose second normalised-Laplacian eigenvalue is at most this (rounding level) takes
// near_null_split's canonical vector (eigen.NEAR_NULL_EIGENVALUE); near_null_split: the lower end of its eigenvalue
// interval, and the projection size it gives up below (eigen.NEAR_NULL_LOWER, eigen.NEAR_NULL_FLOOR).
constexpr double kNearNullEigenvalue = 1e-13;
constexpr double kNearNullLower = -1.0;
constexpr double kNearNullFloor = 1e-8;
// The iterative solvers run only where every degree is at least this fraction of the largest
// (eigen.ITERATIVE_DEGREE_SPREAD): y = D^-1/2 u magnifies their certified error at nearly isolated nodes.
constexpr double kIterativeDegreeSpread = 1e-6;
// Integer alphas up to this use binary powering (as the Python path does).
constexpr int kMaxSquaringExponent = 64;

// Rows of tokens (n x c, row-major) scaled to unit L2 norm in float32, in place.
// ||row||, as graph/affinity.py's row_norms defines it: float32(sqrt(float64(the exact sum of the squares))), the
// same bits in both (a bounded float64 sum, and the exactly rounded one where the bound leaves the float32 open).
float row_norm(const float* row, std::int64_t c);
void l2_normalize(float* tokens, std::int64_t n, std::int64_t c);
// W (n x n, row-major float32) of L2-normalised tokens, as diffcut_engine.graph.affinity_from_tokens computes it;
// zero_row (n bytes, may be null) receives 1 for the rows of W holding an exact zero, else 0.
void affinity_from_tokens(const float* tokens, std::int64_t n, std::int64_t c, double alpha, float* W,
                          std::uint8_t* zero_row = nullptr);
// The same W widened to float64 (exactly the float32 values), from one fused pass over the Gram matrix's lower
// triangle: S (n x n float32) is scratch for the Gram matrix; zero_row (n bytes, may be null) receives 1 for the
// rows of W holding an exact zero (the official zero-row rule), else 0.
void affinity_widened(const float* tokens, std::int64_t n, std::int64_t c, double alpha, float* S, double* W,
                      std::uint8_t* zero_row);
// Throws Failure(NonFinite) if any of the count values is NaN or infinite.
void check_finite(const float* values, std::int64_t count, const char* what);

struct Node {
  std::vector<std::int32_t> indices;  // node ids on this side of the parent's split, increasing
  int depth = 0;
  double value = std::numeric_limits<double>::infinity();  // NCut of the best split (inf: fewer than 2 nodes)
  std::int32_t one = -1, zero = -1;  // children (indices into Tree::nodes) when the split was accepted
  bool exact = true;  // false: a leaf whose value is only a lower bound (>= tau_max) on its best split's NCut
  bool is_split() const { return one >= 0; }
};

struct Tree {
  std::vector<Node> nodes;  // nodes[0] is the root
  std::int64_t height = 0, width = 0;
  double tau_max = 1.0;
  Compat compat = Compat::Official;

  std::int64_t size() const { return height * width; }
  // Labels 0..K-1 at tau (numbered as the official assemble_clusters); returns K.
  std::int32_t cut(double tau, std::int32_t* labels) const;
  std::vector<double> split_values() const;
};

// The recursive NCut tree of an affinity W (n x n, row-major float32), depth first. zero_row: W's rows holding
// an exact zero as affinity_from_tokens flags them, for compat "official" (null: W is scanned for them).
Tree build_tree(const float* W, std::int64_t n, const Options& options, const std::uint8_t* zero_row = nullptr);
// The tree of (n, c) float32 tokens: L2-normalised ones, or (normalize) raw finite ones, normalised first as
// l2_normalize does (into the thread's scratch cache); W and its zero rows by affinity_from_tokens.
Tree build_tree_from_tokens(const float* tokens, std::int64_t n, std::int64_t c, const Options& options,
                            bool normalize = false);

// The solvers' A: a subgraph's affinity matrix (m x m, row-major, full storage), W's float32 values; their
// arithmetic is float64 (the float32 values widen exactly), as the numpy path's on its float64 copy.
// u2 of A with degrees d by dsyevr (eigenpairs 1..2 of the normalised Laplacian).
void dense_u2(const float* A, const std::vector<double>& d, std::int64_t m, std::vector<double>& u2);
// The canonical split of a disconnected A (eigen.component_split): u2 = D^1/2 (1_C - vol(C) / vol(V)), C the
// component of node 0 of A's non-zero entries, and true; false (u2 untouched) where A is connected. Every solver
// takes it where its eigenvalue says the graph may be disconnected (lambda_2 <= kDisconnectedEigenvalue).
bool component_split(const float* A, const std::vector<double>& d, std::int64_t m, std::vector<double>& u2);
// Whether m degrees allow the iterative solvers (min >= kIterativeDegreeSpread * max; m >= 1).
bool iterative_degrees(const double* d, std::int64_t m);
// The canonical split of an A connected only through weights at rounding level (eigen.near_null_split): the
// projection of node 0's unit vector on the eigenvectors of the normalised Laplacian with eigenvalues in
// (kNearNullLower, kNearNullEigenvalue], less its component along sqrt(d), in the numpy path's order of
// operations, and true; false (u2 untouched) where dsyevr finds fewer than two or the projection vanishes.
bool near_null_split(const float* A, const std::vector<double>& d, std::int64_t m, std::vector<double>& u2);

// u2 (unit, orthogonal to sqrt(d)) of M = D^-1/2 A D^-1/2 by Lanczos with the Davis-Kahan certificate of
// diffcut_engine.graph.eigen._lanczos (sin angle(u, u2) < 1e-6), or false where it cannot certify. A is
// symmetric; warm (may be empty) approximates y = D^-1/2 u2.
bool lanczos_fiedler(const float* A, const std::vector<double>& d, std::int64_t m,
                     const std::vector<double>& warm, std::vector<double>& u);

// u2 of M by block Krylov with the invariant-subspace certificate of diffcut_engine.graph.eigen._block_krylov
// (sin angle(u, u2) < 1e-6 for clustered spectra: nearly disconnected graphs), or false where it cannot certify.
bool block_krylov_fiedler(const float* A, const std::vector<double>& d, std::int64_t m,
                          const std::vector<double>& warm, std::vector<double>& u);
// eigen.subspace_certificate: the bound on sin angle(x1, u2) from the p top Ritz values theta (descending) and
// their residual norms r, the smallest over clusters m = 1 .. p - 1 (infinity if none); *cluster gets that m.
double subspace_certificate(const double* theta, const double* r, int p, int* cluster);

// numpy's pairwise summation of a contiguous float64 array (the order numpy's sum along a row uses).
double pairwise_sum(const double* a, std::int64_t n);
// The same of a float32 row widened to float64 (the sum of the widened copy, bit for bit).
double pairwise_sum_widened(const float* a, std::int64_t n);


// ---- Refinement (refine.cpp): concept assignment, PAMR, 3x3 median, as diffcut_engine.refine on the CPU ----

// A PAMR tap: the neighbour at (dy, dx).
struct Tap {
  std::int64_t dy, dx;
};

struct RefineOptions {
  int iters = 10;                        // PAMR steps
  std::vector<int> dilations{1, 2, 4, 8};
  bool median = true;                    // the 3x3 median after PAMR
  int num_threads = 0;                   // threads for one image (0: the hardware's count)
  std::int64_t budget = std::int64_t{1} << 25;  // floats of masks propagated at once (chunks of labels)
  // working size of PAMR (0, 0: the image's size, the "full" preset); else the image is resized to it (bilinear),
  // PAMR and the median run there and the labels come back edge-aware (refine.refine_at's work_size: the
  // "demo" preset at the network size, "eval" at 128 x 128)
  std::int64_t work_height = 0, work_width = 0;
};

// Throws Failure(InvalidArgument) unless every one of the count labels is in [0, k).
void check_labels(const std::int32_t* labels, std::int64_t count, std::int32_t k, const char* what);
// Throws Failure(InvalidArgument) unless iters >= 0 and the dilations are a non-empty list of positive ints.
void check_pamr_options(const RefineOptions& options);
// The taps of the dilations: dilation-major, then row-major over the 3x3 ring (pamr_cpu.offsets).
std::vector<Tap> pamr_offsets(const std::vector<int>& dilations);
// refine.concept_assign of (h, w, C) features (used as given: L2-normalise them first) and (h, w) grid labels
// in [0, k): labels (out_h, out_w).
void concept_assign(const float* features, std::int64_t h, std::int64_t w, std::int64_t c, const std::int32_t* grid,
                    std::int32_t k, std::int64_t out_h, std::int64_t out_w, std::int32_t* out, int threads);
// PAMR's affinities (8 * dilations, h, w) of a (3, h, w) image (pamr_cpu.affinity, refine.pamr_affinity).
void pamr_affinity(const float* image, std::int64_t h, std::int64_t w, const std::vector<int>& dilations,
                   float* out, int threads);
// PAMR argmax labels (h, w) of the one-hot masks of labels (lh, lw) resized to (h, w) as the official PAMR does
// (bilinear, align_corners=True), each mask propagated on its support box (pamr_cpu.box_argmax).
void pamr_box_argmax(const std::int32_t* labels, std::int64_t lh, std::int64_t lw, std::int64_t h, std::int64_t w,
                     std::int32_t k, const float* aff, const std::vector<int>& dilations, int iters,
                     std::int32_t* out, int threads, std::int64_t budget);
// refine.median3x3 (clamped borders, the 5th smallest of the 9 window values).
void median3x3(const std::int32_t* labels, std::int64_t h, std::int64_t w, std::int32_t* out, int threads);
// PAMR (+ median) of labels (lh, lw) in [0, k) on a (3, h, w) image: labels (h, w); out may alias labels.
void pamr_labels(const float* image, std::int64_t h, std::int64_t w, const std::int32_t* labels, std::int64_t lh,
                 std::int64_t lw, std::int32_t k, const RefineOptions& options, std::int32_t* out);
// images.resize of a (channels, h, w) float32 image to (out_h, out_w): torch's bilinear, align_corners=False,
// no antialiasing (its CPU kernel's arithmetic).
void resize_bilinear(const float* src, std::int64_t channels, std::int64_t h, std::int64_t w, std::int64_t out_h,
                     std::int64_t out_w, float* dst, int threads);
// pamr_cpu.joint_upsample: labels (hs, ws) of small_img (3, hs, ws) -> labels (hb, wb) of big_img (3, hb, wb), a
// joint bilateral vote over the 4 x 4 low-resolution neighbours (the edge-aware return of a working resolution).
void joint_upsample(const std::int32_t* labels, std::int64_t hs, std::int64_t ws, const float* small_img,
                    const float* big_img, std::int64_t hb, std::int64_t wb, float sigma, std::int32_t* out,
                    int threads);
// The engine's refinement (refine.concept_assign + refine.refine_at): concept assignment at the image's size
// (out_h, out_w), then, for k > 1, PAMR and the median on the (3, out_h, out_w) image, or at options' working size
// (the image resized bilinearly, then joint_upsample back to the image's size).
void refine_labels(const float* features, std::int64_t h, std::int64_t w, std::int64_t c, const std::int32_t* grid,
                   std::int32_t k, const float* image, std::int64_t out_h, std::int64_t out_w,
                   const RefineOptions& options, std::int32_t* out);

}  // namespace detail
}  // namespace diffcut
