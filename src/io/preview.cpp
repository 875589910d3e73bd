#include "io/preview.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "mogagen/error.h"

#ifdef MOGAGEN_HAVE_ZLIB
#include <zlib.h>
#endif

namespace fs = std::filesystem;

namespace mg {

namespace {

// CRC-32 (ISO 3309 / PNG): reflected polynomial 0xEDB88320.
const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

uint32_t crc32_bytes(const uint8_t* p, size_t n) {
  const auto& t = crc_table();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = t[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// Adler-32 (RFC 1950), reducing modulo 65521 every 5552 bytes (the most that cannot overflow).
uint32_t adler32_bytes(const uint8_t* p, size_t n) {
  uint32_t a = 1, b = 0;
  while (n > 0) {
    const size_t m = std::min<size_t>(n, 5552);
    for (size_t i = 0; i < m; ++i) {
      a += p[i];
      b += a;
    }
    a %= 65521;
    b %= 65521;
    p += m;
    n -= m;
  }
  return (b << 16) | a;
}

void put32(std::vector<uint8_t>& v, uint32_t x) {
  v.push_back(uint8_t(x >> 24));
  v.push_back(uint8_t(x >> 16));
  v.push_back(uint8_t(x >> 8));
  v.push_back(uint8_t(x));
}

void put_chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put32(out, uint32_t(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put32(out, crc32_bytes(out.data() + start, out.size() - start));  // over type and data
}

// A zlib stream (RFC 1950) of stored deflate blocks (RFC 1951, BTYPE 00).
std::vector<uint8_t> zlib_stored(const std::vector<uint8_t>& raw) {
  std::vector<uint8_t> z = {0x78, 0x01};  // deflate, 32K window; (0x7801 % 31 == 0)
  z.reserve(raw.size() + raw.size() / 65535 * 5 + 16);
  size_t off = 0;
  do {
    const size_t n = std::min<size_t>(65535, raw.size() - off);
    const bool last = off + n == raw.size();
    z.push_back(last ? 1 : 0);  // BFINAL, BTYPE = 00
    z.push_back(uint8_t(n & 0xFF));
    z.push_back(uint8_t(n >> 8));
    z.push_back(uint8_t(~n & 0xFF));
    z.push_back(uint8_t((~n >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + std::ptrdiff_t(off), raw.begin() + std::ptrdiff_t(off + n));
    off += n;
  } while (off < raw.size());
  put32(z, adler32_bytes(raw.data(), raw.size()));
  return z;
}

uint8_t paeth(int a, int b, int c) {
  const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  return uint8_t(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
}

// Filtered scanlines: each row is a filter-type byte then the filtered bytes. adaptive: per
// row the filter (None, Sub, Up, Average, Paeth) with the smallest sum of |signed bytes|
// (the heuristic the PNG specification recommends); otherwise None everywhere.
std::vector<uint8_t> filter_rows(const std::vector<uint8_t>& rgb, int width, int height,
                                 bool adaptive) {
  const size_t stride = size_t(width) * 3;
  std::vector<uint8_t> out;
  out.reserve((stride + 1) * size_t(height));
  std::vector<uint8_t> zero(stride, 0), cand(stride), best(stride);
  for (int y = 0; y < height; ++y) {
    const uint8_t* cur = rgb.data() + size_t(y) * stride;
    const uint8_t* up = y ? cur - stride : zero.data();
    if (!adaptive) {
      out.push_back(0);
      out.insert(out.end(), cur, cur + stride);
      continue;
    }
    uint64_t best_cost = UINT64_MAX;
    int best_type = 0;
    for (int type = 0; type < 5; ++type) {
      uint64_t cost = 0;
      for (size_t i = 0; i < stride; ++i) {
        const int a = i >= 3 ? cur[i - 3] : 0, b = up[i], c = i >= 3 ? up[i - 3] : 0;
        const int pred = type == 0 ? 0 : type == 1 ? a : type == 2 ? b : type == 3 ? (a + b) / 2
                                                                                  : paeth(a, b, c);
        const uint8_t v = uint8_t(cur[i] - pred);
        cand[i] = v;
        cost += v < 128 ? v : 256 - v;
      }
      if (cost < best_cost) {
        best_cost = cost;
        best_type = type;
        best.swap(cand);
      }
    }
    out.push_back(uint8_t(best_type));
    out.insert(out.end(), best.begin(), best.end());
  }
  return out;
}

}  // namespace

std::vector<uint8_t> encode_png(const std::vector<uint8_t>& rgb, int width, int height,
                                bool compress) {
  if (width <= 0 || height <= 0 || size_t(width) * size_t(height) * 3 != rgb.size())
    throw internal_error("encode_png: " + std::to_string(rgb.size()) + " bytes for a " +
                         std::to_string(width) + "x" + std::to_string(height) + " RGB image");
#ifndef MOGAGEN_HAVE_ZLIB
  compress = false;
#endif
  const std::vector<uint8_t> raw = filter_rows(rgb, width, height, compress);
  std::vector<uint8_t> z;
#ifdef MOGAGEN_HAVE_ZLIB
  if (compress) {
    uLongf n = compressBound(uLong(raw.size()));
    z.resize(n);
    if (compress2(z.data(), &n, raw.data(), uLong(raw.size()), 6) != Z_OK)
      throw internal_error("encode_png: zlib compress2 failed");
    z.resize(n);
  }
#endif
  if (!compress) z = zlib_stored(raw);

  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  png.reserve(z.size() + 64);
  std::vector<uint8_t> ihdr;
  put32(ihdr, uint32_t(width));
  put32(ihdr, uint32_t(height));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8 bits, RGB, deflate, adaptive filters, no interlace
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", z);
  put_chunk(png, "IEND", {});
  return png;
}

void write_png(const std::string& path, const std::vector<uint8_t>& rgb, int width, int height) {
  const std::vector<uint8_t> png = encode_png(rgb, width, height);
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw io_error(path + ": cannot write the image: '" + dir.string() +
                   (fs::exists(dir, ec) ? "' is not a folder" : "' does not exist"));
  const std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw io_error(path + ": cannot open '" + tmp + "' for writing");
    f.write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
    f.close();
    if (!f) {
      fs::remove(tmp, ec);
      throw io_error(path + ": write failed (disk full?)");
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    throw io_error(path + ": cannot rename the image into place: " + why);
  }
}

std::vector<int64_t> pick_evenly_spaced(int64_t n, int k) {
  std::vector<int64_t> idx;
  if (n <= 0 || k <= 0) return idx;
  if (n <= k) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
    return idx;
  }
  if (k == 1) return {0};
  for (int j = 0; j < k; ++j)  // round(j * (n-1) / (k-1)), exactly, in integers
    idx.push_back((2 * int64_t(j) * (n - 1) + (k - 1)) / (2 * int64_t(k - 1)));
  return idx;
}

std::vector<uint8_t> resize_box(const uint8_t* rgb, int width, int height, int out_width,
                                int out_height) {
  if (width <= 0 || height <= 0 || out_width <= 0 || out_height <= 0)
    throw internal_error("resize_box: bad size");
  // Per output coordinate: the source pixels its footprint [i*s, (i+1)*s) overlaps, with the
  // overlap as weight (weights sum to 1).
  struct Tap {
    int src;
    float w;
  };
  auto taps = [](int in, int out) {
    std::vector<std::vector<Tap>> t;
    t.resize(size_t(out));
    const double s = double(in) / out;
    for (int i = 0; i < out; ++i) {
      double lo = i * s, hi = (i + 1) * s;
      if (s < 1) {  // growing: the nearest source pixel
        t[size_t(i)].push_back({std::min(in - 1, int((i + 0.5) * s)), 1.0f});
        continue;
      }
      for (int j = int(std::floor(lo)); j < in && j < hi; ++j) {
        const double w = std::min(hi, j + 1.0) - std::max(lo, double(j));
        if (w > 1e-9) t[size_t(i)].push_back({j, float(w / s)});
      }
    }
    return t;
  };
  const auto tx = taps(width, out_width), ty = taps(height, out_height);
  std::vector<float> rows(size_t(height) * out_width * 3);  // horizontal pass
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < out_width; ++x)
      for (int c = 0; c < 3; ++c) {
        float s = 0;
        for (const Tap& t : tx[size_t(x)]) s += t.w * rgb[(size_t(y) * width + t.src) * 3 + c];
        rows[(size_t(y) * out_width + x) * 3 + c] = s;
      }
  std::vector<uint8_t> out(size_t(out_height) * out_width * 3);
  for (int y = 0; y < out_height; ++y)
    for (size_t i = 0; i < size_t(out_width) * 3; ++i) {
      float s = 0;
      for (const Tap& t : ty[size_t(y)]) s += t.w * rows[size_t(t.src) * out_width * 3 + i];
      out[size_t(y) * out_width * 3 + i] = uint8_t(std::clamp(s + 0.5f, 0.0f, 255.0f));
    }
  return out;
}

RgbImage contact_sheet(const std::vector<std::vector<std::vector<uint8_t>>>& shots, int width,
                       int height, const ContactSheetOptions& opts) {
  if (shots.empty()) throw internal_error("contact_sheet: no shots");
  if (width <= 0 || height <= 0 || opts.frames_per_shot <= 0 || opts.gap < 0)
    throw internal_error("contact_sheet: bad size or options");
  const size_t frame_bytes = size_t(width) * size_t(height) * 3;
  std::vector<std::vector<int64_t>> picks;
  int cols = 1;
  for (const auto& shot : shots) {
    picks.push_back(pick_evenly_spaced(int64_t(shot.size()), opts.frames_per_shot));
    cols = std::max(cols, int(picks.back().size()));
    for (const auto& f : shot)
      if (f.size() != frame_bytes)
        throw internal_error("contact_sheet: a frame has " + std::to_string(f.size()) +
                             " bytes, expected " + std::to_string(frame_bytes));
  }
  const int rows = int(shots.size()), g = opts.gap;
  const int tw = std::clamp((opts.max_width - g * (cols + 1)) / cols, 1, width);
  const int th = std::max(1, int(std::lround(double(height) * tw / width)));
  RgbImage sheet;
  sheet.width = cols * tw + (cols + 1) * g;
  sheet.height = rows * th + (rows + 1) * g;
  sheet.rgb.assign(size_t(sheet.width) * sheet.height * 3, opts.background);
  for (int r = 0; r < rows; ++r)
    for (size_t c = 0; c < picks[size_t(r)].size(); ++c) {
      const auto& frame = shots[size_t(r)][size_t(picks[size_t(r)][c])];
      const std::vector<uint8_t> tile =
          (tw == width && th == height) ? frame : resize_box(frame.data(), width, height, tw, th);
      const int x0 = g + int(c) * (tw + g), y0 = g + r * (th + g);
      for (int y = 0; y < th; ++y)
        std::copy_n(tile.data() + size_t(y) * tw * 3, size_t(tw) * 3,
                    sheet.rgb.data() + (size_t(y0 + y) * sheet.width + x0) * 3);
    }
  return sheet;
}

void write_contact_sheet(const std::string& path, const std::vector<std::vector<uint8_t>>& frames,
                         int width, int height, int rows, int per_row, int max_width) {
  rows = std::max(rows, 1);
  per_row = std::max(per_row, 1);
  std::vector<std::vector<std::vector<uint8_t>>> shots(static_cast<size_t>(rows));
  for (size_t i = 0; i < frames.size() && i < size_t(rows) * size_t(per_row); ++i)
    shots[i / size_t(per_row)].push_back(frames[i]);
  ContactSheetOptions opts;
  opts.frames_per_shot = per_row;
  opts.max_width = max_width;
  const RgbImage sheet = contact_sheet(shots, width, height, opts);
  write_png(path, sheet.rgb, sheet.width, sheet.height);
}

}  // namespace mg
