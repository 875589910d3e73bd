// A small tensor: contiguous row-major storage, a shape, a dtype and a device.
//
// Tensors are cheap handles (shared storage). All views are contiguous: reshape()
// and rows() share storage; everything else copies. Models written against
// mg::Ops only ever see float32 (CPU) or the backend's compute types.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mogagen/error.h"

namespace mg {

enum class DType : uint8_t { F32, BF16, F16, F8E4M3, I64, I32, U8, BOOL };
size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "F32", "BF16", ... (safetensors spelling)

enum class DeviceType : uint8_t { CPU, CUDA };
struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  std::string str() const;
  static Device cpu() { return Device{}; }
  static Device cuda(int i = 0) { return Device{DeviceType::CUDA, i}; }
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[16, 3, 8, 6]"
int64_t shape_numel(const Shape& s);

// Raw memory block. `free` is called on destruction (may be empty for borrowed memory,
// e.g. a view into an mmap kept alive by `keepalive`).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::function<void(void*)> free;
  std::shared_ptr<void> keepalive;
  ~Storage();
};

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised CPU tensor (64-byte aligned).
  static Tensor empty(const Shape& shape, DType dtype = DType::F32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  static Tensor full(const Shape& shape, float value);
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape);
  // Wrap existing memory without copying; keepalive holds the owner alive.
  static Tensor wrap(void* data, const Shape& shape, DType dtype, Device dev,
                     std::shared_ptr<void> keepalive);
  // Tensor owning a storage created by a backend allocator.
  static Tensor with_storage(std::shared_ptr<Storage> st, const Shape& shape, DType dtype,
                             size_t byte_offset = 0);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  std::string str() const;  // "F32[16, 3, 8, 6]"

  void* raw() const;
  template <class T>
  T* data() const {
    return static_cast<T*>(raw());
  }
  // Typed float pointer for F32 CPU tensors (checks dtype and device).
  float* f32() const;

  // Views (share storage).
  Tensor reshape(const Shape& s) const;  // one dim may be -1
  Tensor rows(int64_t begin, int64_t end) const;  // slice of dim 0

  // Copies (CPU only).
  Tensor clone() const;
  Tensor to(DType t) const;  // F32 <-> BF16/F16/F8E4M3/I64/I32 conversions on the CPU

  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t byte_offset() const { return offset_; }

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
};

// Scalar conversions (round-to-nearest-even for narrowing).
float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);
float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float v);
float f8e4m3_to_f32(uint8_t v);

// Relative error ||a-b|| / ||b|| over F32 CPU tensors of equal numel (computed in double).
double rel_error(const Tensor& out, const Tensor& ref);

}  // namespace mg
