#include "io/preview.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "mogagen/error.h"

namespace mg {

namespace {

uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {
  static uint32_t table[256];
  static bool init = false;
  if (!init) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    init = true;
  }
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void put32(std::vector<uint8_t>& v, uint32_t x) {
  v.push_back(uint8_t(x >> 24));
  v.push_back(uint8_t(x >> 16));
  v.push_back(uint8_t(x >> 8));
  v.push_back(uint8_t(x));
}

void chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put32(out, uint32_t(data.size()));
  std::vector<uint8_t> td(type, type + 4);
  td.insert(td.end(), data.begin(), data.end());
  out.insert(out.end(), td.begin(), td.end());
  put32(out, crc32(td.data(), td.size()));
}

}  // namespace

void write_png(const std::string& path, const std::vector<uint8_t>& rgb, int width, int height) {
  if (width <= 0 || height <= 0 || rgb.size() != size_t(width) * height * 3)
    throw internal_error("write_png: size mismatch");
  // Raw scanlines with filter byte 0.
  std::vector<uint8_t> raw;
  raw.reserve(size_t(height) * (width * 3 + 1));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb.begin() + size_t(y) * width * 3, rgb.begin() + size_t(y + 1) * width * 3);
  }
  // zlib stream of stored blocks.
  std::vector<uint8_t> z = {0x78, 0x01};
  for (size_t off = 0; off < raw.size() || off == 0;) {
    const size_t n = std::min<size_t>(65535, raw.size() - off);
    const bool last = off + n >= raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(uint8_t(n & 0xFF));
    z.push_back(uint8_t(n >> 8));
    z.push_back(uint8_t(~n & 0xFF));
    z.push_back(uint8_t((~n >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + off, raw.begin() + off + n);
    off += n;
    if (last) break;
  }
  uint32_t a = 1, b = 0;
  for (uint8_t c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  put32(z, (b << 16) | a);
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  std::vector<uint8_t> ihdr;
  put32(ihdr, uint32_t(width));
  put32(ihdr, uint32_t(height));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB, deflate, no filter, no interlace
  chunk(png, "IHDR", ihdr);
  chunk(png, "IDAT", z);
  chunk(png, "IEND", {});
  const std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw io_error(path + ": cannot open for writing");
    f.write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
    if (!f) throw io_error(path + ": write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw io_error(path + ": " + ec.message());
}

void write_contact_sheet(const std::string& path, const std::vector<std::vector<uint8_t>>& frames,
                         int width, int height, int rows, int per_row, int max_width) {
  rows = std::max(rows, 1);
  const int gap = 4;
  int f = 1;  // integer downscale factor
  while ((per_row * width / f + (per_row + 1) * gap) > max_width && f < width) ++f;
  const int tw = width / f, th = height / f;
  const int W = per_row * tw + (per_row + 1) * gap, H = rows * th + (rows + 1) * gap;
  std::vector<uint8_t> sheet(size_t(W) * H * 3, 32);
  for (size_t i = 0; i < frames.size() && int(i) < rows * per_row; ++i) {
    const int r = int(i) / per_row, c = int(i) % per_row;
    const int x0 = gap + c * (tw + gap), y0 = gap + r * (th + gap);
    const auto& img = frames[i];
    for (int y = 0; y < th; ++y)
      for (int x = 0; x < tw; ++x)
        for (int ch = 0; ch < 3; ++ch) {
          int s = 0;
          for (int dy = 0; dy < f; ++dy)
            for (int dx = 0; dx < f; ++dx) s += img[(size_t(y * f + dy) * width + x * f + dx) * 3 + ch];
          sheet[(size_t(y0 + y) * W + x0 + x) * 3 + ch] = uint8_t(s / (f * f));
        }
  }
  write_png(path, sheet, W, H);
}

}  // namespace mg
