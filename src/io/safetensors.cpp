#include "mogagen/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace mg {

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // 100 MB

bool parse_dtype(const std::string& s, DType& d) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16},
      {"F8_E4M3", DType::F8E4M3}, {"I64", DType::I64}, {"I32", DType::I32},
      {"U8", DType::U8}, {"BOOL", DType::BOOL}};
  for (const auto& [n, t] : table)
    if (s == n) {
      d = t;
      return true;
    }
  return false;
}

const char* kAccepted = "F32, BF16, F16, F8_E4M3, I64, I32, U8, BOOL";

// A hint for files that are not safetensors at all (PyTorch pickles, zips, text).
std::string format_hint(const uint8_t* b, size_t n) {
  if (n >= 2 && b[0] == 'P' && b[1] == 'K')
    return " (it looks like a zip archive, e.g. a PyTorch .pth/.pt checkpoint: convert it to "
           "safetensors first)";
  if (n >= 1 && b[0] == 0x80)
    return " (it looks like a Python pickle, e.g. a PyTorch .pth/.bin checkpoint: convert it to "
           "safetensors first)";
  return "";
}

// Element-wise upcast of possibly unaligned stored values.
template <class T, class F>
void upcast(const uint8_t* src, int64_t n, float* out, F f) {
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 18))
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
    out[i] = static_cast<float>(f(v));
  }
}

struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr && size) munmap(addr, size);
  }
};

}  // namespace

SafetensorsFile::~SafetensorsFile() = default;

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto bad = [&](const std::string& m) { return weights_error(path + ": " + m); };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw bad(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw bad("cannot stat");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw bad(std::string("expected a safetensors file, found a ") +
              (S_ISDIR(st.st_mode) ? "directory" : "special file"));
  }
  const size_t fsize = static_cast<size_t>(st.st_size);
  if (fsize < 8) {
    ::close(fd);
    throw bad("not a safetensors file: " + std::to_string(fsize) +
              " bytes, expected at least the 8-byte header length (truncated file?)");
  }
  auto map = std::make_shared<Mapping>();
  map->addr = mmap(nullptr, fsize, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map->addr == MAP_FAILED) {
    map->addr = nullptr;
    throw bad(std::string("mmap failed: ") + std::strerror(errno));
  }
  map->size = fsize;
  const auto* base = static_cast<const uint8_t*>(map->addr);
  uint64_t hlen = 0;
  std::memcpy(&hlen, base, 8);  // little-endian (x86-64, aarch64)
  if (hlen > kMaxHeader)
    throw bad("header length " + std::to_string(hlen) + " bytes exceeds the 100 MB limit "
              "(corrupt or not a safetensors file)" + format_hint(base, fsize));
  if (hlen > fsize - 8)
    throw bad("header length " + std::to_string(hlen) + " bytes runs past the end of the " +
              std::to_string(fsize) + "-byte file (truncated file?)");
  nlohmann::json h;
  std::set<std::string> seen;  // top-level keys: a repeated name would silently shadow
  std::string dup;
  try {
    h = nlohmann::json::parse(
        reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + hlen),
        [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
          if (depth == 1 && ev == nlohmann::json::parse_event_t::key && parsed.is_string() &&
              !seen.insert(parsed.get<std::string>()).second && dup.empty())
            dup = parsed.get<std::string>();
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("header is not valid JSON: ") + e.what() + format_hint(base, fsize));
  }
  if (!h.is_object())
    throw bad("header must be a JSON object, found " + std::string(h.type_name()));
  if (!dup.empty()) throw bad("tensor '" + dup + "' is listed twice in the header");

  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->data_start_ = 8 + hlen;
  const size_t data_size = fsize - f->data_start_;
  std::vector<std::pair<std::pair<size_t, size_t>, std::string>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object())
        throw bad("__metadata__ must be an object of strings, found " +
                  std::string(v.type_name()));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw bad("__metadata__[\"" + m.key() + "\"] must be a string, found " +
                    m.value().type_name());
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto tbad = [&](const std::string& m) { return bad("tensor '" + name + "': " + m); };
    if (!v.is_object())
      throw tbad("expected an object with dtype, shape, data_offsets, found " +
                 std::string(v.type_name()) + " " + v.dump().substr(0, 80));
    auto field = [&](const char* key, bool (nlohmann::json::*is)() const noexcept,
                     const char* want) {
      if (!v.contains(key)) throw tbad(std::string("missing \"") + key + "\" (" + want + ")");
      if (!(v[key].*is)())
        throw tbad(std::string("\"") + key + "\" must be " + want + ", found " +
                   v[key].type_name() + " " + v[key].dump().substr(0, 80));
    };
    field("dtype", &nlohmann::json::is_string, "a string");
    field("shape", &nlohmann::json::is_array, "an array of dims");
    field("data_offsets", &nlohmann::json::is_array, "an array [begin, end]");
    if (v["data_offsets"].size() != 2)
      throw tbad("\"data_offsets\" must be [begin, end], found " + v["data_offsets"].dump());
    TensorInfo ti;
    ti.name = name;
    const std::string ds = v["dtype"].get<std::string>();
    if (!parse_dtype(ds, ti.dtype))
      throw tbad("unknown dtype '" + ds + "' (accepted: " + kAccepted + ")");
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || (!d.is_number_unsigned() && d.get<int64_t>() < 0) ||
          (d.is_number_unsigned() && d.get<uint64_t>() > (uint64_t(1) << 62)))
        throw tbad("shape entries must be non-negative integers, found " + d.dump() +
                   " in shape " + v["shape"].dump());
      ti.shape.push_back(d.get<int64_t>());
    }
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        throw tbad("data_offsets must be non-negative integers, found " + v["data_offsets"].dump());
    ti.begin = v["data_offsets"][0].get<size_t>();
    ti.end = v["data_offsets"][1].get<size_t>();
    if (ti.begin > ti.end)
      throw tbad("data_offsets [" + std::to_string(ti.begin) + ", " + std::to_string(ti.end) +
                 "] has begin after end");
    if (ti.end > data_size)
      throw tbad("data_offsets end " + std::to_string(ti.end) + " is past the data area of " +
                 std::to_string(data_size) + " bytes (truncated file?)");
    // numel * size, saturating instead of overflowing
    const __int128 cap = (__int128)1 << 100;
    __int128 bytes = dtype_size(ti.dtype);
    for (int64_t d : ti.shape) bytes = std::min<__int128>(bytes * d, cap);
    if (bytes != (__int128)(ti.end - ti.begin))
      throw tbad("holds " + std::to_string(ti.end - ti.begin) + " bytes, but shape " +
                 shape_str(ti.shape) + " x " + dtype_name(ti.dtype) + " needs " +
                 (bytes > (__int128)UINT64_MAX ? std::string("an impossibly large size (over 2^64 bytes)")
                               : std::to_string((unsigned long long)bytes)));
    if (ti.end > ti.begin) ranges.push_back({{ti.begin, ti.end}, name});
    f->tensors_[name] = ti;
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first.first < ranges[i - 1].first.second)
      throw bad("tensors '" + ranges[i - 1].second + "' [" +
                std::to_string(ranges[i - 1].first.first) + ", " +
                std::to_string(ranges[i - 1].first.second) + ") and '" + ranges[i].second + "' [" +
                std::to_string(ranges[i].first.first) + ", " +
                std::to_string(ranges[i].first.second) + ") overlap");
  f->map_ = map->addr;
  f->map_size_ = map->size;
  f->self_keepalive_ = map;
  return f;
}

Tensor SafetensorsFile::view(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw weights_error(path_ + ": no tensor named '" + name + "'");
  const TensorInfo& ti = it->second;
  void* p = static_cast<uint8_t*>(map_) + data_start_ + ti.begin;
  return Tensor::wrap(p, ti.shape, ti.dtype, Device::cpu(), self_keepalive_);
}

// ---- TensorSource -------------------------------------------------------------------------

TensorSource TensorSource::open(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string suffix = ".index.json";
  if (path.size() > suffix.size() &&
      path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0) {
    std::ifstream in(path);
    if (!in)
      throw weights_error(path + ": cannot open the shard index: " + std::strerror(errno));
    nlohmann::json j;
    try {
      in >> j;
    } catch (const nlohmann::json::exception& e) {
      throw weights_error(path + ": shard index is not valid JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw weights_error(path + ": expected a shard index {\"metadata\": ..., \"weight_map\": "
                          "{tensor: shard file}}, found no \"weight_map\" object");
    if (j["weight_map"].empty())
      throw weights_error(path + ": the shard index's weight_map lists no tensors");
    const fs::path dir = fs::path(path).parent_path();
    std::vector<std::string> shards;
    std::map<std::string, std::string> want;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw weights_error(path + ": weight_map[\"" + it.key() +
                            "\"] must be a shard file name, found " + it.value().dump());
      const std::string rel = it.value().get<std::string>();
      const std::string shard = (dir / rel).string();
      if (std::find(shards.begin(), shards.end(), shard) == shards.end()) {
        std::error_code ec;
        if (!fs::is_regular_file(shard, ec))
          throw weights_error(path + ": shard '" + rel + "' listed for tensor '" + it.key() +
                              "' does not exist (looked for " + shard +
                              "; download every shard the index lists)");
        shards.push_back(shard);
      }
      want[it.key()] = shard;
    }
    TensorSource src = open_files(shards);
    std::vector<std::string> bad;
    for (const auto& [name, shard] : want) {
      auto it = src.index_.find(name);
      if (it == src.index_.end() || src.paths_[it->second.first] != shard)
        bad.push_back("tensor '" + name + "' is listed in shard '" + shard + "' but is not in it" +
                      (it == src.index_.end() ? std::string(" (nor in any other shard)")
                                              : " (found in '" + src.paths_[it->second.first] + "')"));
    }
    if (!bad.empty()) {
      std::string m = path + ": the index and its shards disagree (" +
                      std::to_string(bad.size()) + " tensors):";
      for (size_t i = 0; i < bad.size() && i < 20; ++i) m += "\n  " + bad[i];
      if (bad.size() > 20) m += "\n  ... and " + std::to_string(bad.size() - 20) + " more";
      throw weights_error(m);
    }
    return src;
  }
  return open_files({path});
}

TensorSource TensorSource::open_files(const std::vector<std::string>& paths) {
  TensorSource s;
  for (const auto& p : paths) {
    auto f = SafetensorsFile::open(p);
    const int idx = static_cast<int>(s.files_.size());
    for (const auto& [name, ti] : f->tensors()) {
      auto it = s.index_.find(name);
      if (it != s.index_.end())
        throw weights_error("tensor '" + name + "' appears in both '" +
                            s.paths_[it->second.first] + "' and '" + p + "'");
      TensorInfo t = ti;
      t.file = idx;
      s.index_[name] = {idx, t};
    }
    s.files_.push_back(f);
    s.paths_.push_back(p);
  }
  return s;
}

TensorSource TensorSource::from_tensors(std::map<std::string, Tensor> tensors,
                                       const std::string& label) {
  TensorSource s;
  s.label_ = label;
  for (auto& [name, t] : tensors) {
    if (!t.device().is_cpu()) throw internal_error("from_tensors: device tensor " + name);
    TensorInfo ti;
    ti.name = name;
    ti.dtype = t.dtype();
    ti.shape = t.shape();
    ti.end = t.nbytes();
    ti.file = -1;
    s.index_[name] = {-1, ti};
  }
  s.mem_ = std::move(tensors);
  return s;
}

bool TensorSource::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorInfo& TensorSource::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw weights_error(describe() + ": no tensor named '" + name + "'");
  return it->second.second;
}

std::vector<std::string> TensorSource::names() const {
  std::vector<std::string> r;
  r.reserve(index_.size());
  for (const auto& kv : index_) r.push_back(kv.first);
  return r;
}

Tensor TensorSource::view(const std::string& name) const {
  const TensorInfo& ti = info(name);
  if (ti.file < 0) return mem_.at(name);
  return files_[ti.file]->view(name);
}

Tensor TensorSource::load_f32(const std::string& name) const {
  const Tensor v = view(name);
  const int64_t n = v.numel();
  Tensor out = Tensor::empty(v.shape(), DType::F32);
  if (n == 0) return out;
  const auto* s = static_cast<const uint8_t*>(v.raw());
  float* o = out.f32();
  switch (v.dtype()) {
    case DType::F32: std::memcpy(o, s, v.nbytes()); break;
    case DType::BF16: upcast<uint16_t>(s, n, o, bf16_to_f32); break;
    case DType::F16: upcast<uint16_t>(s, n, o, f16_to_f32); break;
    case DType::F8E4M3: upcast<uint8_t>(s, n, o, f8e4m3_to_f32); break;
    case DType::I64: upcast<int64_t>(s, n, o, [](int64_t x) { return x; }); break;
    case DType::I32: upcast<int32_t>(s, n, o, [](int32_t x) { return x; }); break;
    case DType::U8:
    case DType::BOOL: upcast<uint8_t>(s, n, o, [](uint8_t x) { return x; }); break;
  }
  return out;
}

void TensorSource::add(const TensorSource& other, bool replace) {
  const int off = static_cast<int>(files_.size());
  for (const auto& [name, entry] : other.index_) {
    auto it = index_.find(name);
    if (it != index_.end()) {
      if (!replace) {
        const std::string a = it->second.first < 0 ? describe() : paths_[it->second.first];
        const std::string b =
            entry.first < 0 ? other.describe() : other.paths_[entry.first];
        throw weights_error("tensor '" + name + "' appears in both '" + a + "' and '" + b + "'");
      }
      if (it->second.first < 0) mem_.erase(name);
    }
  }
  for (const auto& [name, entry] : other.index_) {
    TensorInfo ti = entry.second;
    int idx = entry.first;
    if (idx >= 0) {
      idx += off;
      ti.file = idx;
    } else {
      mem_[name] = other.mem_.at(name);
    }
    index_[name] = {idx, ti};
  }
  files_.insert(files_.end(), other.files_.begin(), other.files_.end());
  paths_.insert(paths_.end(), other.paths_.begin(), other.paths_.end());
  if (label_.empty() && paths_.empty()) label_ = other.label_;
}

std::string TensorSource::describe() const {
  if (!label_.empty()) return label_;
  if (paths_.empty()) return "(no files)";
  if (paths_.size() == 1) return paths_[0];
  return paths_[0] + " (+" + std::to_string(paths_.size() - 1) + " more shards)";
}

// ---- writer --------------------------------------------------------------------------------

void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  size_t off = 0;
  for (const auto& [name, t] : tensors) {
    if (!t.device().is_cpu()) throw internal_error("write_safetensors: device tensor " + name);
    const size_t n = t.nbytes();
    h[name] = {{"dtype", dtype_name(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw io_error(path + ": cannot open for writing");
  const uint64_t hl = hs.size();
  out.write(reinterpret_cast<const char*>(&hl), 8);
  out.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  for (const auto& [name, t] : tensors)
    out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
  out.flush();
  if (!out) throw io_error(path + ": write failed (disk full?)");
}

}  // namespace mg
