// Minimal PNG reading (8- and 16-bit grayscale, gray + alpha, RGB, RGBA and palette images, non-interlaced) and
// writing (8- or 16-bit grayscale label maps) for the example program, on zlib. Format: the PNG specification
// (https://www.w3.org/TR/png/). Only compiled where CMake found zlib (DIFFCUT_EXAMPLE_PNG).
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace png {

struct Image {
  std::int64_t height = 0, width = 0;
  std::vector<std::uint8_t> rgb;  // (H, W, 3) row-major, 8 bits per channel (16-bit samples keep the high byte)
};

inline std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

inline void put32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}

inline int paeth(int a, int b, int c) {
  const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  return pa <= pb && pa <= pc ? a : (pb <= pc ? b : c);
}

inline Image load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<std::uint8_t> file((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  static const std::uint8_t signature[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  if (file.size() < 8 || !std::equal(signature, signature + 8, file.begin()))
    throw std::runtime_error(path + " is not a PNG file");
  std::uint32_t width = 0, height = 0;
  int depth = 0, colour = -1;
  std::vector<std::uint8_t> idat, palette;
  std::size_t p = 8;
  bool ended = false;
  while (p + 12 <= file.size() && !ended) {
    const std::uint32_t len = be32(&file[p]);
    if (len > file.size() - p - 12) throw std::runtime_error(path + ": truncated PNG chunk");
    std::string type(reinterpret_cast<const char*>(&file[p + 4]), 4);
    for (char& c : type)
      if (!std::isalpha(static_cast<unsigned char>(c))) c = '?';  // (printable in error messages)
    const std::uint8_t* data = &file[p + 8];
    if (crc32(crc32(0L, Z_NULL, 0), &file[p + 4], len + 4) != be32(&file[p + 8 + len]))
      throw std::runtime_error(path + ": corrupt PNG (bad CRC in a " + type + " chunk)");
    if (type == "IHDR") {
      if (len < 13) throw std::runtime_error(path + ": bad PNG header");
      width = be32(data);
      height = be32(data + 4);
      depth = data[8];
      colour = data[9];
      if (data[12] != 0) throw std::runtime_error(path + ": interlaced PNG is not supported; save it non-interlaced");
    } else if (type == "PLTE") {
      palette.assign(data, data + len);
    } else if (type == "IDAT") {
      idat.insert(idat.end(), data, data + len);
    } else if (type == "IEND") {
      ended = true;
    }
    p += 12 + len;
  }
  if (!ended) throw std::runtime_error(path + ": truncated PNG (no IEND chunk)");
  if (width == 0 && height == 0 && colour == -1) throw std::runtime_error(path + ": corrupt PNG (no IHDR chunk)");
  const int channels = colour == 0 ? 1 : colour == 2 ? 3 : colour == 3 ? 1 : colour == 4 ? 2 : colour == 6 ? 4 : 0;
  if (!width || !height || !channels || !(depth == 8 || depth == 16 || (colour == 3 && depth <= 8)))
    throw std::runtime_error(path + ": unsupported PNG (colour type " + std::to_string(colour) + ", " +
                             std::to_string(depth) + "-bit); use 8- or 16-bit gray/RGB/RGBA or 8-bit palette");
  if (colour == 3 && depth != 8) throw std::runtime_error(path + ": only 8-bit palette PNGs are supported");
  if (static_cast<std::uint64_t>(width) * height > (std::uint64_t{1} << 31))
    throw std::runtime_error(path + ": image too large");
  const std::size_t bpp = static_cast<std::size_t>(channels) * (depth / 8);  // bytes per pixel
  const std::size_t stride = bpp * width;
  // deflate expands at most ~1032-fold: image data that cannot hold the header's size is refused before the buffer
  // for it is allocated (a 69-byte file claiming 40000 x 40000 pixels would otherwise take 1.6 GB first)
  if (static_cast<double>(stride + 1) * height > 1100.0 * static_cast<double>(idat.size()) + 1024.0)
    throw std::runtime_error(path + ": corrupt PNG (" + std::to_string(idat.size()) + " bytes of image data cannot " +
                             "hold " + std::to_string(width) + " x " + std::to_string(height) + " pixels)");
  std::vector<std::uint8_t> raw((stride + 1) * height);
  uLongf size = static_cast<uLongf>(raw.size());
  if (uncompress(raw.data(), &size, idat.data(), static_cast<uLong>(idat.size())) != Z_OK || size != raw.size())
    throw std::runtime_error(path + ": corrupt PNG (its image data does not decompress to the image's size)");
  std::vector<std::uint8_t> pix(stride * height), prev(stride, 0);
  for (std::uint32_t y = 0; y < height; ++y) {  // undo the row filters
    const std::uint8_t filter = raw[y * (stride + 1)];
    const std::uint8_t* in = &raw[y * (stride + 1) + 1];
    std::uint8_t* row = &pix[y * stride];
    for (std::size_t x = 0; x < stride; ++x) {
      const int a = x >= bpp ? row[x - bpp] : 0, b = prev[x], c = x >= bpp ? prev[x - bpp] : 0;
      int v = in[x];
      if (filter == 1) v += a;
      else if (filter == 2) v += b;
      else if (filter == 3) v += (a + b) / 2;
      else if (filter == 4) v += paeth(a, b, c);
      else if (filter != 0) throw std::runtime_error(path + ": corrupt PNG (unknown row filter)");
      row[x] = static_cast<std::uint8_t>(v);
    }
    prev.assign(row, row + stride);
  }
  Image img;
  img.height = height;
  img.width = width;
  img.rgb.resize(static_cast<std::size_t>(height) * width * 3);
  const std::size_t step = depth / 8;  // 16-bit samples: the high (first) byte
  for (std::size_t i = 0; i < static_cast<std::size_t>(height) * width; ++i) {
    const std::uint8_t* px = &pix[i * bpp];
    std::uint8_t* o = &img.rgb[i * 3];
    if (colour == 3) {
      if (3u * px[0] + 2 >= palette.size()) throw std::runtime_error(path + ": corrupt PNG (palette index)");
      for (int c = 0; c < 3; ++c) o[c] = palette[3u * px[0] + c];
    } else if (channels <= 2) {
      o[0] = o[1] = o[2] = px[0];
    } else {
      for (int c = 0; c < 3; ++c) o[c] = px[c * step];
    }
  }
  return img;
}

// Labels (H, W) as a grayscale PNG: 8-bit when every label is below 256, else 16-bit (labels must be in [0, 65535]).
inline void save_labels(const std::string& path, const std::int32_t* labels, std::int64_t height, std::int64_t width) {
  std::int32_t lo = 0, hi = 0;
  for (std::int64_t i = 0; i < height * width; ++i) {
    lo = std::min(lo, labels[i]);
    hi = std::max(hi, labels[i]);
  }
  if (lo < 0 || hi > 65535) throw std::runtime_error("labels outside [0, 65535] cannot be written as a PNG");
  const int bytes = hi < 256 ? 1 : 2;
  const std::size_t stride = static_cast<std::size_t>(width) * bytes;
  std::vector<std::uint8_t> raw((stride + 1) * static_cast<std::size_t>(height));
  for (std::int64_t y = 0; y < height; ++y) {
    std::uint8_t* row = &raw[y * (stride + 1)];
    row[0] = 0;  // no filter
    for (std::int64_t x = 0; x < width; ++x) {
      const std::int32_t v = labels[y * width + x];
      if (bytes == 1) row[1 + x] = static_cast<std::uint8_t>(v);
      else row[1 + 2 * x] = static_cast<std::uint8_t>(v >> 8), row[2 + 2 * x] = static_cast<std::uint8_t>(v);
    }
  }
  uLongf zsize = compressBound(static_cast<uLong>(raw.size()));
  std::vector<std::uint8_t> z(zsize);
  if (compress(z.data(), &zsize, raw.data(), static_cast<uLong>(raw.size())) != Z_OK)
    throw std::runtime_error("compressing " + path + " failed");
  z.resize(zsize);
  std::vector<std::uint8_t> out = {137, 80, 78, 71, 13, 10, 26, 10};
  auto chunk = [&](const char* type, const std::vector<std::uint8_t>& data) {
    put32(out, static_cast<std::uint32_t>(data.size()));
    const std::size_t start = out.size();
    out.insert(out.end(), type, type + 4);
    out.insert(out.end(), data.begin(), data.end());
    put32(out, static_cast<std::uint32_t>(crc32(crc32(0L, Z_NULL, 0), &out[start], static_cast<uInt>(data.size() + 4))));
  };
  std::vector<std::uint8_t> ihdr;
  put32(ihdr, static_cast<std::uint32_t>(width));
  put32(ihdr, static_cast<std::uint32_t>(height));
  ihdr.insert(ihdr.end(), {static_cast<std::uint8_t>(8 * bytes), 0, 0, 0, 0});  // depth, gray, deflate, filters, -
  chunk("IHDR", ihdr);
  chunk("IDAT", z);
  chunk("IEND", {});
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write " + path);
  f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
  f.close();  // (a small file sits in the stream's buffer until here: a full disk shows only now)
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace png
