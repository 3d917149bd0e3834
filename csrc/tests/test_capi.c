/* The C API from C: a run on planted features, and every error path (null pointers, zero sizes, NaN features,
 * too-small buffers, bad options, tau above tau_max); the refinement (diffcut_refine, diffcut_pamr,
 * diffcut_segment_image and its batch) on an image whose colour edge is the features' split, and its error paths. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffcut/diffcut.h"

static int failures = 0;

#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

/* code == expected, and a non-empty message */
#define EXPECT_ERR(call, expected)                                                                       \
  do {                                                                                                   \
    int rc_ = (call);                                                                                    \
    if (rc_ != (expected) || diffcut_last_error()[0] == '\0') {                                          \
      fprintf(stderr, "%s:%d: %s gave %s (%s), expected %s\n", __FILE__, __LINE__, #call,                \
              diffcut_error_name(rc_), diffcut_last_error(), diffcut_error_name(expected));              \
      ++failures;                                                                                        \
    }                                                                                                    \
  } while (0)

/* (h, w, c) features: left half near one random centre, right half near another. */
static float* halves(int h, int w, int c) {
  float* f = (float*)malloc(sizeof(float) * h * w * c);
  unsigned state = 12345u;
  for (int i = 0; i < h; ++i)
    for (int j = 0; j < w; ++j)
      for (int k = 0; k < c; ++k) {
        state = state * 1664525u + 1013904223u;
        float noise = ((state >> 8) / 16777216.0f - 0.5f) * 0.2f;
        float centre = (j < w / 2) ? ((k % 2) ? 1.0f : -1.0f) : ((k % 3) ? -0.5f : 1.0f);
        f[(i * w + j) * c + k] = centre + noise;
      }
  return f;
}

int main(void) {
  const int h = 6, w = 8, c = 5, n = h * w;
  float* f = halves(h, w, c);
  int32_t labels[48];
  int32_t k = 0;
  diffcut_options* opts = NULL;
  diffcut_tree* tree = NULL;

  EXPECT(strcmp(diffcut_version(), "0.1.0") == 0);
  EXPECT(diffcut_version_number() == DIFFCUT_VERSION_MAJOR * 10000 + DIFFCUT_VERSION_MINOR * 100 +
                                         DIFFCUT_VERSION_PATCH);
  EXPECT(strcmp(diffcut_error_name(DIFFCUT_ERROR_NON_FINITE), "DIFFCUT_ERROR_NON_FINITE") == 0);

  EXPECT_ERR(diffcut_bind_lapack(NULL, NULL, NULL), DIFFCUT_ERROR_NULL_POINTER);

  /* a run: two halves */
  diffcut_release_scratch();
  EXPECT(diffcut_scratch_cached_bytes() == 0);
  EXPECT(diffcut_segment(f, h, w, c, NULL, 0.5, labels, n, &k) == DIFFCUT_OK);
  EXPECT(diffcut_scratch_cached_bytes() >= (size_t)(n * n) * sizeof(float)); /* W's block, kept for the next image */
  diffcut_release_scratch();
  EXPECT(diffcut_scratch_cached_bytes() == 0);
  EXPECT(k == 2);
  for (int i = 0; i < h; ++i)
    for (int j = 0; j < w; ++j) EXPECT(labels[i * w + j] == labels[(j < w / 2) ? 0 : w - 1]);
  EXPECT(labels[0] != labels[w - 1]);

  /* options */
  EXPECT_ERR(diffcut_options_new(NULL), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT(diffcut_options_new(&opts) == DIFFCUT_OK && opts != NULL);
  EXPECT_ERR(diffcut_options_set_alpha(NULL, 10.0), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT_ERR(diffcut_options_set_alpha(opts, 0.0), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_options_set_alpha(opts, NAN), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_options_set_tau_max(opts, -1.0), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_options_set_tau_max(opts, INFINITY), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_options_set_compat(opts, 7), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_options_set_num_thresholds(opts, 1), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_options_set_num_thresholds(opts, INT_MAX), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_options_set_solver(opts, 5), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_options_set_solver(NULL, DIFFCUT_SOLVER_DENSE), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT(diffcut_options_set_tau_max(opts, 0.6) == DIFFCUT_OK);
  EXPECT(diffcut_options_set_compat(opts, DIFFCUT_COMPAT_CLEAN) == DIFFCUT_OK);

  /* tree: null pointers, zero sizes, NaN */
  EXPECT_ERR(diffcut_tree_build(f, h, w, c, opts, NULL), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT_ERR(diffcut_tree_build(NULL, h, w, c, opts, &tree), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT(tree == NULL);
  EXPECT_ERR(diffcut_tree_build(f, 0, w, c, opts, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_tree_build(f, h, 0, c, opts, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_tree_build(f, h, w, 0, opts, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_tree_build(f, -3, w, c, opts, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_tree_build(f, INT64_MAX / 2, 4, c, opts, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
  /* a grid too large for a dense affinity is refused before its features are read (f holds far fewer values:
   * reading them first ran past the buffer) */
  EXPECT_ERR(diffcut_tree_build(f, 50000, 50000, 1, opts, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT(strstr(diffcut_last_error(), "46340") != NULL);
  EXPECT_ERR(diffcut_tree_build(f, 46341, 1, 1, opts, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
  f[7] = NAN;
  EXPECT_ERR(diffcut_tree_build(f, h, w, c, opts, &tree), DIFFCUT_ERROR_NON_FINITE);
  EXPECT(strstr(diffcut_last_error(), "NaN") != NULL);
  f[7] = INFINITY;
  EXPECT_ERR(diffcut_segment(f, h, w, c, opts, 0.5, labels, n, &k), DIFFCUT_ERROR_NON_FINITE);
  f[7] = 0.5f;

  EXPECT(diffcut_tree_build(f, h, w, c, opts, &tree) == DIFFCUT_OK && tree != NULL);
  {
    int64_t th = 0, tw = 0, count = -1;
    double values[64];
    EXPECT(diffcut_tree_shape(tree, &th, &tw) == DIFFCUT_OK && th == h && tw == w);
    EXPECT_ERR(diffcut_tree_shape(NULL, &th, &tw), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_tree_shape(tree, NULL, &tw), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT(diffcut_tree_split_values(tree, NULL, 0, &count) == DIFFCUT_OK && count >= 1);
    EXPECT_ERR(diffcut_tree_split_values(tree, values, 0, &count), DIFFCUT_ERROR_BUFFER_TOO_SMALL);
    EXPECT_ERR(diffcut_tree_split_values(tree, values, 64, NULL), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT(diffcut_tree_split_values(tree, values, 64, &count) == DIFFCUT_OK);
    for (int64_t i = 1; i < count; ++i) EXPECT(values[i - 1] <= values[i]);
    EXPECT(values[0] < 0.6);
  }
  /* cut: too-small buffer, tau above tau_max, bad tau, nulls */
  EXPECT_ERR(diffcut_tree_cut(tree, 0.5, labels, n - 1, &k), DIFFCUT_ERROR_BUFFER_TOO_SMALL);
  EXPECT_ERR(diffcut_tree_cut(tree, 0.7, labels, n, &k), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT(strstr(diffcut_last_error(), "tau_max") != NULL);
  EXPECT_ERR(diffcut_tree_cut(tree, 0.0, labels, n, &k), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_tree_cut(tree, NAN, labels, n, &k), DIFFCUT_ERROR_INVALID_ARGUMENT);
  EXPECT_ERR(diffcut_tree_cut(NULL, 0.5, labels, n, &k), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT_ERR(diffcut_tree_cut(tree, 0.5, NULL, n, &k), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT(diffcut_tree_cut(tree, 0.5, labels, n, NULL) == DIFFCUT_OK);
  EXPECT(diffcut_tree_cut(tree, 0.5, labels, n, &k) == DIFFCUT_OK && k == 2);
  diffcut_tree_free(tree);
  diffcut_tree_free(NULL);
  /* constant features (W = 1: every split of the uniform complete graph has NCut exactly 1): one leaf at tau 1 */
  {
    float ones[8 * 8 * 4];
    int32_t one_labels[64];
    int32_t kk = -1;
    int64_t count = -1;
    for (int i = 0; i < 8 * 8 * 4; ++i) ones[i] = 1.0f;
    diffcut_options* o1 = NULL;
    EXPECT(diffcut_options_new(&o1) == DIFFCUT_OK && diffcut_options_set_tau_max(o1, 1.0) == DIFFCUT_OK);
    EXPECT(diffcut_tree_build(ones, 8, 8, 4, o1, &tree) == DIFFCUT_OK);
    EXPECT(diffcut_tree_split_values(tree, NULL, 0, &count) == DIFFCUT_OK && count == 0);
    EXPECT(diffcut_tree_cut(tree, 1.0, one_labels, 64, &kk) == DIFFCUT_OK && kk == 1);
    diffcut_tree_free(tree);
    diffcut_options_free(o1);
  }
  /* a one-token tree has no split: its split values are none, with or without room for some */
  EXPECT(diffcut_tree_build(f, 1, 1, c, opts, &tree) == DIFFCUT_OK);
  {
    int64_t count = -1;
    double values[4];
    EXPECT(diffcut_tree_split_values(tree, values, 4, &count) == DIFFCUT_OK && count == 0);
    EXPECT(diffcut_tree_split_values(tree, NULL, 0, &count) == DIFFCUT_OK && count == 0);
  }
  diffcut_tree_free(tree);

  /* batch on a thread pool: the same trees as one by one; errors name the image */
  {
    float* g = halves(w, h, c); /* a (w, h) grid: another shape */
    const float* feats[3] = {f, g, f};
    int64_t hs[3] = {h, w, h}, ws[3] = {w, h, w};
    diffcut_tree* trees[3] = {NULL, NULL, NULL};
    int32_t a[48], b[48];
    EXPECT(diffcut_tree_build_batch(feats, hs, ws, c, 3, opts, 2, trees) == DIFFCUT_OK);
    EXPECT(trees[0] && trees[1] && trees[2]);
    EXPECT(diffcut_tree_build(g, w, h, c, opts, &tree) == DIFFCUT_OK);
    EXPECT(diffcut_tree_cut(tree, 0.5, a, n, NULL) == DIFFCUT_OK && diffcut_tree_cut(trees[1], 0.5, b, n, NULL) == 0);
    EXPECT(memcmp(a, b, sizeof(a)) == 0);
    diffcut_tree_free(tree);
    EXPECT(diffcut_tree_cut(trees[0], 0.5, a, n, NULL) == DIFFCUT_OK && diffcut_tree_cut(trees[2], 0.5, b, n, NULL) == 0);
    EXPECT(memcmp(a, b, sizeof(a)) == 0);
    for (int i = 0; i < 3; ++i) diffcut_tree_free(trees[i]);
    EXPECT_ERR(diffcut_tree_build_batch(feats, hs, ws, c, 3, opts, 2, NULL), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_tree_build_batch(NULL, hs, ws, c, 3, opts, 2, trees), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_tree_build_batch(feats, hs, ws, c, 0, opts, 2, trees), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_tree_build_batch(feats, hs, ws, c, 3, opts, -1, trees), DIFFCUT_ERROR_INVALID_ARGUMENT);
    g[5] = NAN;
    EXPECT_ERR(diffcut_tree_build_batch(feats, hs, ws, c, 3, opts, 0, trees), DIFFCUT_ERROR_NON_FINITE);
    EXPECT(strstr(diffcut_last_error(), "image 1") != NULL);
    EXPECT(trees[0] == NULL && trees[1] == NULL && trees[2] == NULL);
    free(g);
  }

  /* segment: too-small buffer, nulls */
  EXPECT_ERR(diffcut_segment(f, h, w, c, NULL, 0.5, labels, n - 1, &k), DIFFCUT_ERROR_BUFFER_TOO_SMALL);
  EXPECT_ERR(diffcut_segment(f, h, w, c, NULL, 0.5, NULL, n, &k), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT_ERR(diffcut_segment(NULL, h, w, c, NULL, 0.5, labels, n, &k), DIFFCUT_ERROR_NULL_POINTER);
  EXPECT_ERR(diffcut_segment(f, h, w, c, NULL, -0.5, labels, n, &k), DIFFCUT_ERROR_INVALID_ARGUMENT);

  /* affinity: sizes, buffer, values */
  {
    float* W = (float*)malloc(sizeof(float) * n * n);
    EXPECT_ERR(diffcut_affinity(f, n, c, 10.0, W, n * n - 1), DIFFCUT_ERROR_BUFFER_TOO_SMALL);
    EXPECT_ERR(diffcut_affinity(NULL, n, c, 10.0, W, n * n), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_affinity(f, n, c, 10.0, NULL, n * n), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_affinity(f, 0, c, 10.0, W, n * n), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_affinity(f, n, c, -2.0, W, n * n), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT(diffcut_affinity(f, n, c, 10.0, W, n * n) == DIFFCUT_OK);
    float lo = 1, hi = 0;
    for (int i = 0; i < n * n; ++i) {
      lo = W[i] < lo ? W[i] : lo;
      hi = W[i] > hi ? W[i] : hi;
    }
    EXPECT(lo == 0.0f && hi <= 1.0f);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) EXPECT(W[i * n + j] == W[j * n + i]);
    /* the affinity path: same labels as the features path */
    EXPECT_ERR(diffcut_tree_build_affinity(NULL, n, NULL, &tree), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_tree_build_affinity(W, 0, NULL, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
    W[3] = NAN;
    EXPECT_ERR(diffcut_tree_build_affinity(W, n, NULL, &tree), DIFFCUT_ERROR_NON_FINITE);
    W[3] = -1.0f;
    EXPECT_ERR(diffcut_tree_build_affinity(W, n, NULL, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT(diffcut_affinity(f, n, c, 10.0, W, n * n) == DIFFCUT_OK);
    W[1 * n + 5] += 0.25f; /* W[1][5] != W[5][1]: not symmetric */
    EXPECT_ERR(diffcut_tree_build_affinity(W, n, NULL, &tree), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT(strstr(diffcut_last_error(), "symmetric") != NULL);
    EXPECT(diffcut_affinity(f, n, c, 10.0, W, n * n) == DIFFCUT_OK);
    EXPECT(diffcut_tree_build_affinity(W, n, NULL, &tree) == DIFFCUT_OK);
    {
      int32_t again[48];
      EXPECT(diffcut_tree_cut(tree, 0.5, again, n, &k) == DIFFCUT_OK && k == 2);
      EXPECT(diffcut_segment(f, h, w, c, NULL, 0.5, labels, n, NULL) == DIFFCUT_OK);
      EXPECT(memcmp(again, labels, sizeof(again)) == 0);
    }
    diffcut_tree_free(tree);
    free(W);
  }

  /* refinement: a (3, 24, 32) image, dark left of column 16, bright right of it (the grid's split, x 4) */
  {
    enum { H = 24, W = 32 };
    const int64_t N = H * W;
    float* img = (float*)malloc(sizeof(float) * 3 * N);
    int32_t out[H * W], out2[H * W], grid[48], small[48], k2 = 0;
    unsigned state = 7u;
    for (int ch = 0; ch < 3; ++ch)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          state = state * 1664525u + 1013904223u;
          img[(ch * H + y) * W + x] = (x < 16 ? 0.2f : 0.8f) + 0.05f * ((state >> 8) / 16777216.0f);
        }
    EXPECT(diffcut_segment_image(f, h, w, c, img, H, W, NULL, 0.5, out, N, &k) == DIFFCUT_OK);
    EXPECT(k == 2 && out[0] != out[W - 1]);
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) EXPECT(out[y * W + x] == out[x < 16 ? 0 : W - 1]);
    /* the same through the grid labels */
    EXPECT(diffcut_segment(f, h, w, c, NULL, 0.5, grid, n, &k) == DIFFCUT_OK);
    EXPECT(diffcut_refine(f, h, w, c, grid, k, img, H, W, NULL, out2, N) == DIFFCUT_OK);
    EXPECT(memcmp(out, out2, sizeof(out)) == 0);
    /* PAMR of the grid labels resized to the image (bilinear masks) */
    EXPECT(diffcut_pamr(img, H, W, grid, h, w, k, NULL, out2, N) == DIFFCUT_OK);
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) EXPECT(out2[y * W + x] == grid[x < 16 ? 0 : w - 1]);
    /* no iteration and no median: the identity on labels of the image's size */
    {
      diffcut_options* ro = NULL;
      const int32_t dil[2] = {1, 3};
      EXPECT(diffcut_options_new(&ro) == DIFFCUT_OK);
      EXPECT(diffcut_options_set_pamr_iters(ro, 0) == DIFFCUT_OK);
      EXPECT(diffcut_options_set_median(ro, 0) == DIFFCUT_OK);
      EXPECT(diffcut_options_set_pamr_dilations(ro, dil, 2) == DIFFCUT_OK);
      EXPECT(diffcut_options_set_num_threads(ro, 2) == DIFFCUT_OK);
      for (int i = 0; i < N; ++i) out[i] = (i * 7 / 5) % 3;
      EXPECT(diffcut_pamr(img, H, W, out, H, W, 3, ro, out2, N) == DIFFCUT_OK);
      EXPECT(memcmp(out, out2, sizeof(out)) == 0);
      /* option errors */
      EXPECT_ERR(diffcut_options_set_pamr_iters(ro, -1), DIFFCUT_ERROR_INVALID_ARGUMENT);
      EXPECT_ERR(diffcut_options_set_pamr_iters(NULL, 3), DIFFCUT_ERROR_NULL_POINTER);
      EXPECT_ERR(diffcut_options_set_pamr_dilations(ro, NULL, 2), DIFFCUT_ERROR_NULL_POINTER);
      EXPECT_ERR(diffcut_options_set_pamr_dilations(ro, dil, 0), DIFFCUT_ERROR_INVALID_ARGUMENT);
      {
        const int32_t bad_dil[2] = {1, 0};
        EXPECT_ERR(diffcut_options_set_pamr_dilations(ro, bad_dil, 2), DIFFCUT_ERROR_INVALID_ARGUMENT);
        const int32_t huge_dil[2] = {1, 32769};
        EXPECT_ERR(diffcut_options_set_pamr_dilations(ro, huge_dil, 2), DIFFCUT_ERROR_INVALID_ARGUMENT);
      }
      EXPECT_ERR(diffcut_options_set_pamr_iters(ro, 10001), DIFFCUT_ERROR_INVALID_ARGUMENT);
      /* a refused setting leaves the options as they were: the same labels as before */
      EXPECT(diffcut_pamr(img, H, W, out, H, W, 3, ro, out2, N) == DIFFCUT_OK);
      EXPECT(memcmp(out, out2, sizeof(out)) == 0);
      EXPECT_ERR(diffcut_options_set_median(ro, 2), DIFFCUT_ERROR_INVALID_ARGUMENT);
      EXPECT_ERR(diffcut_options_set_num_threads(ro, -1), DIFFCUT_ERROR_INVALID_ARGUMENT);
      EXPECT_ERR(diffcut_options_set_num_threads(NULL, 1), DIFFCUT_ERROR_NULL_POINTER);
      EXPECT_ERR(diffcut_options_set_refine_work_size(NULL, 8, 8), DIFFCUT_ERROR_NULL_POINTER);
      EXPECT_ERR(diffcut_options_set_refine_work_size(ro, 0, 8), DIFFCUT_ERROR_INVALID_ARGUMENT);
      EXPECT_ERR(diffcut_options_set_refine_work_size(ro, 8, -1), DIFFCUT_ERROR_INVALID_ARGUMENT);
      EXPECT_ERR(diffcut_options_set_refine_work_size(ro, 40000, 8), DIFFCUT_ERROR_INVALID_ARGUMENT);
      diffcut_options_free(ro);
    }
    /* a working size (the engine's demo/eval presets): the two halves of the image still come back apart, at
     * the image's size; the working size equal to the image's is the plain refinement */
    {
      diffcut_options* wo = NULL;
      EXPECT(diffcut_segment_image(f, h, w, c, img, H, W, NULL, 0.5, out, N, &k) == DIFFCUT_OK);
      EXPECT(diffcut_options_new(&wo) == DIFFCUT_OK);
      EXPECT(diffcut_options_set_refine_work_size(wo, H / 2, W / 2) == DIFFCUT_OK);
      EXPECT(diffcut_segment_image(f, h, w, c, img, H, W, wo, 0.5, out2, N, &k) == DIFFCUT_OK);
      EXPECT(k == 2);
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x)
          if (x < 14 || x > 17) EXPECT(out2[y * W + x] == out[x < 16 ? 0 : W - 1]);
      EXPECT(diffcut_options_set_refine_work_size(wo, H, W) == DIFFCUT_OK);
      EXPECT(diffcut_refine(f, h, w, c, grid, k, img, H, W, wo, out2, N) == DIFFCUT_OK);
      EXPECT(memcmp(out, out2, sizeof(out)) == 0);
      EXPECT(diffcut_options_set_refine_work_size(wo, 0, 0) == DIFFCUT_OK);
      diffcut_options_free(wo);
    }
    /* batch: two images on two threads, the one-by-one labels */
    {
      const float* feats[2] = {f, f};
      const float* imgs[2] = {img, img};
      const int64_t gh[2] = {h, h}, gw[2] = {w, w}, hs[2] = {H, H}, ws[2] = {W, W}, caps[2] = {N, N};
      int32_t* outs[2] = {out, out2};
      int32_t ks[2] = {0, 0};
      int32_t one[H * W];
      EXPECT(diffcut_segment_image(f, h, w, c, img, H, W, NULL, 0.5, one, N, NULL) == DIFFCUT_OK);
      EXPECT(diffcut_segment_image_batch(feats, gh, gw, c, imgs, hs, ws, 2, NULL, 0.5, 2, outs, caps, ks) ==
             DIFFCUT_OK);
      EXPECT(ks[0] == 2 && ks[1] == 2);
      EXPECT(memcmp(out, one, sizeof(one)) == 0 && memcmp(out2, one, sizeof(one)) == 0);
      const int64_t small_caps[2] = {N, N - 1};
      EXPECT_ERR(diffcut_segment_image_batch(feats, gh, gw, c, imgs, hs, ws, 2, NULL, 0.5, 2, outs, small_caps, ks),
                 DIFFCUT_ERROR_BUFFER_TOO_SMALL);
      EXPECT(strstr(diffcut_last_error(), "image 1") != NULL);
      EXPECT_ERR(diffcut_segment_image_batch(feats, gh, gw, c, imgs, hs, ws, 0, NULL, 0.5, 2, outs, caps, ks),
                 DIFFCUT_ERROR_INVALID_ARGUMENT);
      EXPECT_ERR(diffcut_segment_image_batch(feats, gh, gw, c, NULL, hs, ws, 2, NULL, 0.5, 2, outs, caps, ks),
                 DIFFCUT_ERROR_NULL_POINTER);
      EXPECT_ERR(diffcut_segment_image_batch(feats, gh, gw, c, imgs, hs, ws, 2, NULL, 0.5, -1, outs, caps, ks),
                 DIFFCUT_ERROR_INVALID_ARGUMENT);
    }
    /* errors: null pointers, zero sizes, too-small buffers, labels out of range, NaN features and image */
    EXPECT_ERR(diffcut_refine(NULL, h, w, c, grid, 2, img, H, W, NULL, out, N), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_refine(f, h, w, c, NULL, 2, img, H, W, NULL, out, N), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_refine(f, h, w, c, grid, 2, NULL, H, W, NULL, out, N), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_refine(f, h, w, c, grid, 2, img, H, W, NULL, NULL, N), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_refine(f, 0, w, c, grid, 2, img, H, W, NULL, out, N), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_refine(f, h, w, c, grid, 2, img, 0, W, NULL, out, N), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_refine(f, h, w, c, grid, 0, img, H, W, NULL, out, N), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_refine(f, h, w, c, grid, 1, img, H, W, NULL, out, N), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_refine(f, h, w, c, grid, 2, img, H, W, NULL, out, N - 1), DIFFCUT_ERROR_BUFFER_TOO_SMALL);
    EXPECT_ERR(diffcut_pamr(img, H, W, grid, h, w, 2, NULL, out, N - 1), DIFFCUT_ERROR_BUFFER_TOO_SMALL);
    EXPECT_ERR(diffcut_pamr(img, H, W, NULL, h, w, 2, NULL, out, N), DIFFCUT_ERROR_NULL_POINTER);
    EXPECT_ERR(diffcut_pamr(img, H, W, grid, 0, w, 2, NULL, out, N), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_pamr(img, H, -W, grid, h, w, 2, NULL, out, N), DIFFCUT_ERROR_INVALID_ARGUMENT);
    memcpy(small, grid, sizeof(small));
    small[5] = -1;
    EXPECT_ERR(diffcut_pamr(img, H, W, small, h, w, 2, NULL, out, N), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_segment_image(f, h, w, c, img, H, W, NULL, 0.5, out, N - 1, &k2),
               DIFFCUT_ERROR_BUFFER_TOO_SMALL);
    EXPECT_ERR(diffcut_segment_image(f, h, w, c, img, H, W, NULL, 0.0, out, N, &k2), DIFFCUT_ERROR_INVALID_ARGUMENT);
    EXPECT_ERR(diffcut_segment_image(f, h, w, 0, img, H, W, NULL, 0.5, out, N, &k2), DIFFCUT_ERROR_INVALID_ARGUMENT);
    {
      float saved = f[7];
      f[7] = NAN;
      EXPECT_ERR(diffcut_refine(f, h, w, c, grid, 2, img, H, W, NULL, out, N), DIFFCUT_ERROR_NON_FINITE);
      EXPECT_ERR(diffcut_segment_image(f, h, w, c, img, H, W, NULL, 0.5, out, N, &k2), DIFFCUT_ERROR_NON_FINITE);
      f[7] = saved;
      img[40] = INFINITY;
      EXPECT_ERR(diffcut_pamr(img, H, W, grid, h, w, 2, NULL, out, N), DIFFCUT_ERROR_NON_FINITE);
      EXPECT_ERR(diffcut_segment_image(f, h, w, c, img, H, W, NULL, 0.5, out, N, &k2), DIFFCUT_ERROR_NON_FINITE);
    }
    free(img);
  }
  diffcut_options_free(opts);
  diffcut_options_free(NULL);
  free(f);
  if (failures) {
    fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  printf("test_capi: ok\n");
  return 0;
}
