// diffcut_segment: features (.npy, (h, w, C) float16/32/64, either byte order, C or Fortran order) in, labels (.npy
// int32, or a PNG) out, through the C++ API.
//
//   diffcut_segment FEATURES.npy LABELS.npy|LABELS.png [--tau 0.5[,0.3,...]] [--alpha 10]
//                   [--compat official|clean] [--solver auto|dense] [--affinity]
//                   [--image IMAGE.png|IMAGE.npy [--pamr-iters 10] [--pamr-dilations 1,2,4,8] [--no-median]
//                    [--work-size HxW] [--threads 0]]
//
// With several taus, one tree is built (tau_max = the largest) and cut at each: LABELS.npy is (T, h, w).
// --affinity: the input is an (N, N) affinity instead of features; the labels are (N,) (or (T, N)).
// --image: the labels are refined to the image's size (concept assignment, PAMR, 3x3 median: the engine's "full"
// refinement; --work-size HxW: PAMR at that size and back edge-aware, the engine's "demo" preset is
// --work-size 1024x1024 --pamr-iters 30 --pamr-dilations 1,2,4,8,12,24,32,64, "eval" --work-size 128x128), (H, W)
// (or (T, H, W)); IMAGE.npy holds RGB floats in [0, 1] as (3, H, W) or (H, W, 3), or uint8 (H, W, 3) (e.g.
// np.save("img.npy", np.asarray(PIL.Image.open(path).convert("RGB")))), or gray (H, W) of either; or IMAGE is a PNG
// (8/16-bit gray, RGB, RGBA or palette; where CMake found zlib). LABELS.png (one tau): the label ids as an 8-bit grayscale
// PNG, 16-bit when there are more than 256 labels.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "diffcut/diffcut.hpp"
#include "npy.h"
#ifdef DIFFCUT_EXAMPLE_PNG
#include "png.h"
#endif

// Whether path ends with ext (".png", ".npy"), in any case.
static bool has_extension(const std::string& path, const std::string& ext) {
  if (path.size() < ext.size()) return false;
  std::string tail = path.substr(path.size() - ext.size());
  for (char& c : tail) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return tail == ext;
}

#ifndef DIFFCUT_EXAMPLE_PNG
static void no_png(const std::string& path) {
  throw std::runtime_error(path + ": this build of diffcut_segment reads and writes PNG only with zlib, which CMake "
                           "did not find (install zlib's development files, e.g. apt install zlib1g-dev); use .npy");
}
#endif

// The whole of text converted by convert (std::stod, std::stoll, ...), or a one-line error naming the option.
template <class T, class Convert>
static T parse_whole(const std::string& option, const std::string& text, Convert convert, const char* kind) {
  std::size_t used = 0;
  T v{};
  try {
    v = convert(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw std::runtime_error(option + ": '" + text + "' is not " + kind);
  return v;
}

static double parse_number(const std::string& option, const std::string& text) {
  return parse_whole<double>(option, text, [](const std::string& t, std::size_t* used) { return std::stod(t, used); },
                             "a number");
}

static long long parse_integer(const std::string& option, const std::string& text) {
  return parse_whole<long long>(
      option, text, [](const std::string& t, std::size_t* used) { return std::stoll(t, used); }, "an integer");
}

static int parse_int(const std::string& option, const std::string& text) {
  const long long v = parse_integer(option, text);
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    throw std::runtime_error(option + ": " + text + " is out of range");
  return static_cast<int>(v);
}

// The comma-separated items of text (an empty item is an error).
static std::vector<std::string> split_list(const std::string& option, const std::string& text) {
  std::vector<std::string> items;
  std::size_t p = 0;
  while (true) {
    const std::size_t e = text.find(',', p);
    items.push_back(text.substr(p, e == std::string::npos ? std::string::npos : e - p));
    if (items.back().empty()) throw std::runtime_error(option + ": empty item in '" + text + "'");
    if (e == std::string::npos) break;
    p = e + 1;
  }
  return items;
}

static int usage() {
  std::fprintf(stderr,
               "usage: diffcut_segment FEATURES.npy LABELS.npy|LABELS.png [--tau T[,T...]] [--alpha A] "
               "[--compat official|clean] [--solver auto|dense] [--affinity] [--image IMAGE.png|IMAGE.npy "
               "[--pamr-iters N] [--pamr-dilations D[,D...]] [--no-median] [--work-size HxW] [--threads N]]\n");
  return 2;
}

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  std::string in = argv[1], out = argv[2];
  std::vector<double> taus;
  diffcut::Options options;
  bool affinity = false;
  std::string image_path;
  try {
    for (int i = 3; i < argc; ++i) {
      std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
        return argv[++i];
      };
      if (a == "--tau") {
        for (const std::string& t : split_list(a, next())) taus.push_back(parse_number(a, t));
      } else if (a == "--alpha") {
        options.alpha = parse_number(a, next());
      } else if (a == "--compat") {
        std::string v = next();
        if (v == "official") options.compat = diffcut::Compat::Official;
        else if (v == "clean") options.compat = diffcut::Compat::Clean;
        else throw std::runtime_error("unknown compat " + v + "; choose official or clean");
      } else if (a == "--solver") {
        std::string v = next();
        if (v == "auto") options.solver = diffcut::Solver::Auto;
        else if (v == "dense") options.solver = diffcut::Solver::Dense;
        else throw std::runtime_error("unknown solver " + v + "; choose auto or dense");
      } else if (a == "--affinity") {
        affinity = true;
      } else if (a == "--image") {
        image_path = next();
      } else if (a == "--pamr-iters") {
        options.pamr_iters = parse_int(a, next());
      } else if (a == "--pamr-dilations") {
        options.pamr_dilations.clear();
        for (const std::string& d : split_list(a, next())) options.pamr_dilations.push_back(parse_int(a, d));
      } else if (a == "--work-size") {
        const std::string v = next();
        const std::size_t x = v.find('x');
        if (x == std::string::npos) throw std::runtime_error("--work-size takes HxW, e.g. 1024x1024, not " + v);
        options.work_height = parse_integer(a, v.substr(0, x));
        options.work_width = parse_integer(a, v.substr(x + 1));
      } else if (a == "--no-median") {
        options.median = false;
      } else if (a == "--threads") {
        options.num_threads = parse_int(a, next());
      } else {
        std::fprintf(stderr, "error: unknown option %s\n", a.c_str());
        return usage();
      }
    }
    if (!has_extension(out, ".npy") && !has_extension(out, ".png"))
      throw std::runtime_error(out + ": the labels are written as .npy or .png; name the output file so");
    if (taus.empty()) taus.push_back(0.5);
    options.tau_max = *std::max_element(taus.begin(), taus.end());
    try {  // the options' own errors, named as such before any file is read
      const diffcut::handles::OptionsHandle validated(options);
    } catch (const diffcut::Error& e) {
      throw std::runtime_error(std::string("invalid option: ") + e.what());
    }
    npy::Array x = npy::load(in);
    std::vector<std::int64_t> shape;
    diffcut::Tree tree = [&]() -> diffcut::Tree {
      try {
        if (affinity) {
          if (x.shape.size() != 2 || x.shape[0] != x.shape[1])
            throw std::runtime_error(in + " must hold an (N, N) affinity");
          shape = {x.shape[0]};
          return diffcut::Tree::from_affinity(x.data.data(), x.shape[0], options);
        }
        if (x.shape.size() != 3) throw std::runtime_error(in + " must hold (h, w, C) features");
        shape = {x.shape[0], x.shape[1]};
        return diffcut::Tree(x.data.data(), x.shape[0], x.shape[1], x.shape[2], options);
      } catch (const diffcut::Error& e) {  // (the library's message, e.g. NaN values, with the file named)
        throw std::runtime_error(in + ": " + e.what());
      }
    }();
    std::vector<std::int32_t> labels;
    if (!image_path.empty()) {
      if (affinity) throw std::runtime_error("--image needs features, not an affinity");
      npy::Array img;
      if (has_extension(image_path, ".png")) {
#ifdef DIFFCUT_EXAMPLE_PNG
        png::Image decoded = png::load(image_path);
        img.shape = {decoded.height, decoded.width, 3};
        img.data.assign(decoded.rgb.begin(), decoded.rgb.end());
        img.was_uint8 = true;
#else
        no_png(image_path);
#endif
      } else if (has_extension(image_path, ".npy")) {
        img = npy::load(image_path);
      } else {
        throw std::runtime_error(image_path + ": the example reads the image as .png or .npy");
      }
      // -> (3, H, W) float32 in [0, 1]: uint8 (H, W, 3) or (H, W) gray scaled by 1 / 255; floats (3, H, W),
      // (H, W, 3) (the last axis taken as colour when the first is not 3) or (H, W) gray, as given
      std::vector<float> chw;
      std::int64_t H = 0, W = 0;
      const std::vector<std::int64_t>& is = img.shape;
      const float scale = img.was_uint8 ? 1.0f / 255.0f : 1.0f;
      const bool planar = !img.was_uint8 && is.size() == 3 && is[0] == 3;
      const bool interleaved = is.size() == 3 && is[2] == 3 && !planar;
      if (planar) {
        H = is[1];
        W = is[2];
        chw = img.data;
      } else if (interleaved || is.size() == 2) {
        H = is[0];
        W = is[1];
        chw.resize(static_cast<std::size_t>(3 * H * W));
        for (std::int64_t i = 0; i < H * W; ++i)
          for (int c = 0; c < 3; ++c) chw[c * H * W + i] = (interleaved ? img.data[i * 3 + c] : img.data[i]) * scale;
      } else {
        throw std::runtime_error(image_path + " must hold an RGB image: (H, W, 3) or (H, W) uint8, or (3, H, W), "
                                 "(H, W, 3) or (H, W) floats in [0, 1]");
      }
      for (double tau : taus) {
        std::int32_t k = 0;
        std::vector<std::int32_t> grid = tree.cut(tau, &k);
        std::vector<std::int32_t> refined;
        try {
          refined = diffcut::refine(x.data.data(), shape[0], shape[1], x.shape[2], grid.data(), k, chw.data(), H, W,
                                    options);
        } catch (const diffcut::Error& e) {  // (e.g. NaN pixels: the image named)
          throw std::runtime_error(image_path + ": " + e.what());
        }
        labels.insert(labels.end(), refined.begin(), refined.end());
      }
      shape = {H, W};
    } else {
      for (double tau : taus) {
        std::vector<std::int32_t> cut = tree.cut(tau);
        labels.insert(labels.end(), cut.begin(), cut.end());
      }
    }
    if (has_extension(out, ".png")) {
#ifdef DIFFCUT_EXAMPLE_PNG
      if (taus.size() > 1 || shape.size() != 2)
        throw std::runtime_error(out + ": a PNG holds one (h, w) label map; use .npy for several taus or --affinity");
      png::save_labels(out, labels.data(), shape[0], shape[1]);
#else
      no_png(out);
#endif
      return 0;
    }
    if (taus.size() > 1) shape.insert(shape.begin(), static_cast<std::int64_t>(taus.size()));
    npy::save(out, labels.data(), shape, "<i4");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
