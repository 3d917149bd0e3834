// Minimal .npy reading (little-endian float32/float64 or uint8, C order) and writing (int32/float32), for the
// example program and the tests. Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  // converted to float32 (uint8 values kept as 0..255)
  bool was_uint8 = false;
};

inline std::string header_value(const std::string& header, const std::string& key) {
  const std::size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw std::runtime_error("npy header has no " + key);
  std::size_t p = header.find(':', k);
  if (p == std::string::npos) throw std::runtime_error("bad npy header");
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  if (header[p] == '(') return header.substr(p + 1, header.find(')', p) - p - 1);
  if (header[p] == '\'') return header.substr(p + 1, header.find('\'', p + 1) - p - 1);
  std::size_t e = header.find_first_of(",}", p);
  return header.substr(p, e - p);
}

inline Array load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + " is not a .npy file");
  std::uint32_t hlen = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<std::uint32_t>(b[3]) << 24);
  }
  std::string header(hlen, '\0');
  f.read(&header[0], hlen);
  const std::string descr = header_value(header, "descr");
  if (header_value(header, "fortran_order") != "False") throw std::runtime_error(path + ": Fortran order");
  Array a;
  std::string shape = header_value(header, "shape");
  std::int64_t count = 1;
  std::size_t p = 0;
  while (p < shape.size()) {
    std::size_t e = shape.find(',', p);
    std::string tok = shape.substr(p, e == std::string::npos ? std::string::npos : e - p);
    if (tok.find_first_not_of(' ') != std::string::npos) {
      a.shape.push_back(std::stoll(tok));
      count *= a.shape.back();
    }
    if (e == std::string::npos) break;
    p = e + 1;
  }
  a.data.resize(static_cast<std::size_t>(count));
  if (descr == "<f4") {
    f.read(reinterpret_cast<char*>(a.data.data()), count * 4);
  } else if (descr == "<f8") {
    std::vector<double> tmp(static_cast<std::size_t>(count));
    f.read(reinterpret_cast<char*>(tmp.data()), count * 8);
    for (std::int64_t i = 0; i < count; ++i) a.data[i] = static_cast<float>(tmp[i]);
  } else if (descr == "|u1") {
    std::vector<unsigned char> tmp(static_cast<std::size_t>(count));
    f.read(reinterpret_cast<char*>(tmp.data()), count);
    for (std::int64_t i = 0; i < count; ++i) a.data[i] = static_cast<float>(tmp[i]);
    a.was_uint8 = true;
  } else {
    throw std::runtime_error(path + ": dtype " + descr + " (need <f4, <f8 or |u1)");
  }
  if (!f) throw std::runtime_error(path + " is truncated");
  return a;
}

template <class T>
inline void save(const std::string& path, const T* data, const std::vector<std::int64_t>& shape,
                 const char* descr) {
  std::string dims;
  std::int64_t count = 1;
  for (std::int64_t s : shape) {
    dims += std::to_string(s) + ",";
    count *= s;
  }
  if (shape.size() > 1) dims.pop_back();
  std::string header = "{'descr': '" + std::string(descr) + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write " + path);
  f.write("\x93NUMPY\x01\x00", 8);
  const std::uint16_t hlen = static_cast<std::uint16_t>(header.size());
  const unsigned char b[2] = {static_cast<unsigned char>(hlen & 0xff), static_cast<unsigned char>(hlen >> 8)};
  f.write(reinterpret_cast<const char*>(b), 2);
  f.write(header.data(), header.size());
  f.write(reinterpret_cast<const char*>(data), count * sizeof(T));
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace npy
