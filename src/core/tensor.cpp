#include "mogagen/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace mg {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::F8E4M3: return 1;
    case DType::I64: return 8;
    case DType::I32: return 4;
    case DType::U8: return 1;
    case DType::BOOL: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F8E4M3: return "F8_E4M3";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

std::string Device::str() const {
  return type == DeviceType::CPU ? std::string("cpu") : "cuda:" + std::to_string(index);
}

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Storage::~Storage() {
  if (free && data) free(data);
}

static std::shared_ptr<Storage> host_alloc(size_t bytes) {
  auto st = std::make_shared<Storage>();
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  st->data = std::aligned_alloc(64, rounded);
  if (!st->data)
    throw Error(ExitCode::Device, "out of host memory allocating " + std::to_string(bytes) +
                                      " bytes");
  st->bytes = bytes;
  st->free = [](void* p) { std::free(p); };
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape)
    if (d < 0) throw internal_error("negative dimension in shape " + shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = host_alloc(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape, DType::F32);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = value;
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& shape) {
  if (static_cast<int64_t>(v.size()) != shape_numel(shape))
    throw internal_error("from_vector: " + std::to_string(v.size()) + " values for shape " +
                         shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * sizeof(float));
  return t;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, Device dev,
                    std::shared_ptr<void> keepalive) {
  Tensor t;
  auto st = std::make_shared<Storage>();
  st->data = data;
  st->bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  st->device = dev;
  st->keepalive = std::move(keepalive);
  t.storage_ = st;
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::with_storage(std::shared_ptr<Storage> st, const Shape& shape, DType dtype,
                            size_t byte_offset) {
  Tensor t;
  t.storage_ = std::move(st);
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.offset_ = byte_offset;
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  if (i < 0 || i >= n)
    throw internal_error("dim(" + std::to_string(i) + ") of a tensor of shape " +
                         shape_str(shape_));
  return shape_[i];
}

Device Tensor::device() const { return storage_ ? storage_->device : Device{}; }

std::string Tensor::str() const { return std::string(dtype_name(dtype_)) + shape_str(shape_); }

void* Tensor::raw() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data) + offset_;
}

float* Tensor::f32() const {
  if (dtype_ != DType::F32 || !device().is_cpu())
    throw internal_error("f32(): expected a CPU F32 tensor, got " + str() + " on " +
                         device().str());
  return static_cast<float*>(raw());
}

Tensor Tensor::reshape(const Shape& s) const {
  Shape ns = s;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < ns.size(); ++i) {
    if (ns[i] == -1) {
      if (infer >= 0) throw internal_error("reshape: two -1 dims in " + shape_str(s));
      infer = static_cast<int>(i);
    } else {
      known *= ns[i];
    }
  }
  if (infer >= 0) ns[infer] = known ? numel() / known : 0;
  if (shape_numel(ns) != numel())
    throw internal_error("reshape: cannot view " + str() + " as " + shape_str(s));
  Tensor t = *this;
  t.shape_ = ns;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  if (ndim() < 1 || begin < 0 || end < begin || end > shape_[0])
    throw internal_error("rows(" + std::to_string(begin) + ", " + std::to_string(end) +
                         ") of " + str());
  int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  if (!device().is_cpu()) throw internal_error("clone() of a device tensor; use Ops::copy");
  Tensor t = empty(shape_, dtype_);
  if (nbytes()) std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

// ---- scalar conversions ------------------------------------------------------------------
float bf16_to_f32(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu))  // NaN: keep quiet NaN
    return static_cast<uint16_t>((u >> 16) | 0x40);
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal
      float f = std::ldexp(static_cast<float>(mant), -24);
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;  // overflow to inf
  if (a < 6.103515625e-05f) {               // subnormal / zero: round to multiple of 2^-24
    uint16_t m = static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
    return sign | m;
  }
  uint32_t exp = ((u >> 23) & 0xff) - 112;
  uint32_t mant = u & 0x7fffff;
  uint32_t h = (exp << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

float f8e4m3_to_f32(uint8_t v) {
  // OCP FP8 E4M3 (fn): bias 7, no infinities, 0x7f/0xff = NaN.
  int sign = (v >> 7) & 1;
  int exp = (v >> 3) & 0xf;
  int mant = v & 0x7;
  float r;
  if (exp == 0xf && mant == 0x7) {
    r = std::nanf("");
  } else if (exp == 0) {
    r = std::ldexp(static_cast<float>(mant), -9);  // mant/8 * 2^-6
  } else {
    r = std::ldexp(1.0f + mant / 8.0f, exp - 7);
  }
  return sign ? -r : r;
}

Tensor Tensor::to(DType t) const {
  if (!device().is_cpu()) throw internal_error("to(): device tensor; use Ops::download");
  if (t == dtype_) return clone();
  const int64_t n = numel();
  if (t == DType::F32) {
    Tensor out = empty(shape_, DType::F32);
    float* o = out.f32();
    switch (dtype_) {
      case DType::BF16: {
        auto* s = data<uint16_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = bf16_to_f32(s[i]);
        break;
      }
      case DType::F16: {
        auto* s = data<uint16_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = f16_to_f32(s[i]);
        break;
      }
      case DType::F8E4M3: {
        auto* s = data<uint8_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = f8e4m3_to_f32(s[i]);
        break;
      }
      case DType::I64: {
        auto* s = data<int64_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(s[i]);
        break;
      }
      case DType::I32: {
        auto* s = data<int32_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(s[i]);
        break;
      }
      case DType::U8:
      case DType::BOOL: {
        auto* s = data<uint8_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = s[i];
        break;
      }
      default: throw internal_error("to(F32) from " + std::string(dtype_name(dtype_)));
    }
    return out;
  }
  if (dtype_ == DType::F32) {
    Tensor out = empty(shape_, t);
    const float* s = f32();
    switch (t) {
      case DType::BF16: {
        auto* o = out.data<uint16_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = f32_to_bf16(s[i]);
        return out;
      }
      case DType::F16: {
        auto* o = out.data<uint16_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = f32_to_f16(s[i]);
        return out;
      }
      case DType::I64: {
        auto* o = out.data<int64_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int64_t>(s[i]);
        return out;
      }
      case DType::I32: {
        auto* o = out.data<int32_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int32_t>(s[i]);
        return out;
      }
      default: break;
    }
  }
  return to(DType::F32).to(t);
}

double rel_error(const Tensor& out, const Tensor& ref) {
  if (out.numel() != ref.numel())
    throw internal_error("rel_error: " + out.str() + " vs " + ref.str());
  const float* a = out.f32();
  const float* b = ref.f32();
  double num = 0, den = 0;
  for (int64_t i = 0; i < out.numel(); ++i) {
    double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (!std::isfinite(num) || !std::isfinite(den)) return INFINITY;  // NaN/inf never pass
  if (den == 0) return num == 0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

}  // namespace mg
