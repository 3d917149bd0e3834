// Cutting the tree at tau and numbering the leaves as the official assemble_clusters numbers them
// (graph/tree.py labels_from_masks): each node's membership pattern in the accepted "1"-sides (pre-order,
// "1"-side first), read from the last mask to the first, ranked in increasing order.
#include <algorithm>
#include <cstring>

#include "core.h"

namespace diffcut {
namespace detail {

std::int32_t Tree::cut(double tau, std::int32_t* labels) const {
  const std::int64_t n = size();
  std::vector<const Node*> masks;  // the accepted "1"-sides in pre-order
  std::vector<std::int32_t> stack{0};
  while (!stack.empty()) {
    const Node& node = nodes[stack.back()];
    stack.pop_back();
    if (node.is_split() && node.value < tau) {
      masks.push_back(&nodes[node.one]);
      stack.push_back(node.zero);
      stack.push_back(node.one);
    }
  }
  if (masks.empty()) {
    std::fill(labels, labels + n, 0);
    return 1;
  }
  const std::size_t words = (masks.size() + 63) / 64;
  std::vector<std::uint64_t> code(static_cast<std::size_t>(n) * words, 0);
  for (std::size_t k = 0; k < masks.size(); ++k)
    for (std::int32_t i : masks[k]->indices) code[i * words + k / 64] |= std::uint64_t(1) << (k % 64);
  // compare patterns from the most significant word (the last masks) down
  auto less = [&](std::int64_t a, std::int64_t b) {
    for (std::size_t w = words; w-- > 0;) {
      const std::uint64_t x = code[a * words + w], y = code[b * words + w];
      if (x != y) return x < y;
    }
    return false;
  };
  auto equal = [&](std::int64_t a, std::int64_t b) {
    return std::memcmp(&code[a * words], &code[b * words], words * sizeof(std::uint64_t)) == 0;
  };
  std::vector<std::int64_t> order(n);
  for (std::int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), less);
  std::int32_t label = 0;
  for (std::int64_t r = 0; r < n; ++r) {
    if (r > 0 && !equal(order[r], order[r - 1])) ++label;
    labels[order[r]] = label;
  }
  return label + 1;
}

std::vector<double> Tree::split_values() const {
  std::vector<double> out;
  for (const Node& node : nodes)
    if (node.is_split()) out.push_back(node.value);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace detail
}  // namespace diffcut
