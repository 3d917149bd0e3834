// diffcut_segment: features (.npy, (h, w, C) float32/float64) in, labels (.npy, int32) out, through the C++ API.
//
//   diffcut_segment FEATURES.npy LABELS.npy [--tau 0.5[,0.3,...]] [--alpha 10] [--compat official|clean]
//                   [--solver auto|dense] [--affinity]
//
// With several taus, one tree is built (tau_max = the largest) and cut at each: LABELS.npy is (T, h, w).
// --affinity: the input is an (N, N) affinity instead of features; the labels are (N,) (or (T, N)).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "diffcut/diffcut.hpp"
#include "npy.h"

static int usage() {
  std::fprintf(stderr,
               "usage: diffcut_segment FEATURES.npy LABELS.npy [--tau T[,T...]] [--alpha A] "
               "[--compat official|clean] [--solver auto|dense] [--affinity]\n");
  return 2;
}

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  std::string in = argv[1], out = argv[2];
  std::vector<double> taus;
  diffcut::Options options;
  bool affinity = false;
  try {
    for (int i = 3; i < argc; ++i) {
      std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
        return argv[++i];
      };
      if (a == "--tau") {
        std::string v = next();
        std::size_t p = 0;
        while (p <= v.size()) {
          std::size_t e = v.find(',', p);
          taus.push_back(std::stod(v.substr(p, e == std::string::npos ? std::string::npos : e - p)));
          if (e == std::string::npos) break;
          p = e + 1;
        }
      } else if (a == "--alpha") {
        options.alpha = std::stod(next());
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
      } else {
        return usage();
      }
    }
    if (taus.empty()) taus.push_back(0.5);
    options.tau_max = *std::max_element(taus.begin(), taus.end());
    npy::Array x = npy::load(in);
    std::vector<std::int64_t> shape;
    diffcut::Tree tree = [&] {
      if (affinity) {
        if (x.shape.size() != 2 || x.shape[0] != x.shape[1])
          throw std::runtime_error(in + " must hold an (N, N) affinity");
        shape = {x.shape[0]};
        return diffcut::Tree::from_affinity(x.data.data(), x.shape[0], options);
      }
      if (x.shape.size() != 3) throw std::runtime_error(in + " must hold (h, w, C) features");
      shape = {x.shape[0], x.shape[1]};
      return diffcut::Tree(x.data.data(), x.shape[0], x.shape[1], x.shape[2], options);
    }();
    std::vector<std::int32_t> labels;
    for (double tau : taus) {
      std::vector<std::int32_t> cut = tree.cut(tau);
      labels.insert(labels.end(), cut.begin(), cut.end());
    }
    if (taus.size() > 1) shape.insert(shape.begin(), static_cast<std::int64_t>(taus.size()));
    npy::save(out, labels.data(), shape, "<i4");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
