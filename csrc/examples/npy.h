// Minimal .npy reading (float16/32/64 in either byte order or uint8, C or Fortran order) and writing
// (int32/float32), for the example program and the tests. Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  // converted to float32 in C order (uint8 values kept as 0..255)
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

// IEEE binary16 -> float (exact: every half value is a float).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf, NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;  // +-0
  } else {  // subnormal half: normalise
    exp = 113;
    while ((man & 0x400u) == 0) {
      man <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// Reads a .npy array of float16/float32/float64 (either byte order) or uint8, in C or Fortran order, as float32
// in C order. Errors: std::runtime_error with a one-line message naming the file.
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
  if (!f || hlen > (1u << 20)) throw std::runtime_error(path + ": bad .npy header");
  std::string header(hlen, '\0');
  f.read(&header[0], hlen);
  if (!f) throw std::runtime_error(path + ": truncated .npy header");
  std::string descr, order, shape;
  try {
    descr = header_value(header, "descr");
    order = header_value(header, "fortran_order");
    shape = header_value(header, "shape");
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  if (order != "False" && order != "True") throw std::runtime_error(path + ": bad fortran_order " + order);
  const bool fortran = order == "True";
  Array a;
  std::int64_t count = 1;
  std::size_t p = 0;
  while (p < shape.size()) {
    std::size_t e = shape.find(',', p);
    std::string tok = shape.substr(p, e == std::string::npos ? std::string::npos : e - p);
    if (tok.find_first_not_of(' ') != std::string::npos) {
      std::size_t used = 0;
      long long v = -1;
      try {
        v = std::stoll(tok, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || v < 0 || tok.find_first_not_of(' ', used) != std::string::npos)
        throw std::runtime_error(path + ": bad shape (" + shape + ") in the .npy header");
      a.shape.push_back(v);
      if (v != 0 && count > (std::int64_t{1} << 40) / v) throw std::runtime_error(path + ": array too large");
      count *= v;
    }
    if (e == std::string::npos) break;
    p = e + 1;
  }
  // dtype: byte order ('<' little, '>' big, '|' or '=' not applicable / native) and kind
  if (descr.size() < 3) throw std::runtime_error(path + ": dtype " + descr + " (need float16/32/64 or uint8)");
  const char byte_order = descr[0];
  const std::string kind = descr.substr(1);
  std::size_t item = 0;
  if (kind == "f2") item = 2;
  else if (kind == "f4") item = 4;
  else if (kind == "f8") item = 8;
  else if (kind == "u1") item = 1;
  else throw std::runtime_error(path + ": dtype " + descr + " (need float16/32/64 or uint8)");
  const std::uint16_t probe = 1;
  const bool host_little = *reinterpret_cast<const unsigned char*>(&probe) == 1;
  const bool swap = item > 1 && ((byte_order == '<' && !host_little) || (byte_order == '>' && host_little));
  {  // the data the header claims must be in the file before a buffer for it is allocated
    const std::streampos here = f.tellg();
    f.seekg(0, std::ios::end);
    const std::streamoff left = static_cast<std::streamoff>(f.tellg() - here);
    f.seekg(here);
    if (!f || left < static_cast<std::streamoff>(count) * static_cast<std::streamoff>(item))
      throw std::runtime_error(path + " is truncated (its header claims " + std::to_string(count * item) +
                               " bytes of data, the file holds " + std::to_string(left < 0 ? 0 : left) + ")");
  }
  std::vector<unsigned char> raw(static_cast<std::size_t>(count) * item);
  f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  if (!f) throw std::runtime_error(path + " is truncated");
  if (swap)
    for (std::size_t i = 0; i < raw.size(); i += item)
      for (std::size_t b = 0; b < item / 2; ++b) std::swap(raw[i + b], raw[i + item - 1 - b]);
  std::vector<float> vals(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    const unsigned char* q = raw.data() + i * item;
    if (item == 1) {
      vals[i] = static_cast<float>(q[0]);
    } else if (item == 2) {
      std::uint16_t h;
      std::memcpy(&h, q, 2);
      vals[i] = half_to_float(h);
    } else if (item == 4) {
      std::memcpy(&vals[i], q, 4);
    } else {
      double d;
      std::memcpy(&d, q, 8);
      vals[i] = static_cast<float>(d);
    }
  }
  a.was_uint8 = item == 1;
  if (!fortran || a.shape.size() < 2) {
    a.data = std::move(vals);
    return a;
  }
  // Fortran order: element (i0, ..., ik) at sum_j i_j * prod_{l < j} shape_l; gather it into C order
  a.data.resize(vals.size());
  const std::size_t nd = a.shape.size();
  std::vector<std::int64_t> idx(nd, 0), fstride(nd, 1);
  for (std::size_t j = 1; j < nd; ++j) fstride[j] = fstride[j - 1] * a.shape[j - 1];
  for (std::int64_t c = 0; c < count; ++c) {
    std::int64_t src = 0;
    for (std::size_t j = 0; j < nd; ++j) src += idx[j] * fstride[j];
    a.data[c] = vals[src];
    for (std::size_t j = nd; j-- > 0;) {  // next C-order index
      if (++idx[j] < a.shape[j]) break;
      idx[j] = 0;
    }
  }
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
  f.close();  // (a small file sits in the stream's buffer until here: a full disk shows only now)
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace npy
