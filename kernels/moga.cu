// MoGA routing on the device (moga-spec step 2): per-token top-1 group and winning
// probability from the router logits, group sizes, and the stable sort of the tokens by
// group (CUB's LSD radix sort over the few bits a group id needs, which is stable), so the
// token order never leaves the GPU. Semantics: CpuOps::route_groups.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/kernels.cuh"

namespace mg {
namespace cuda {
namespace {

// One thread per token: g = first index of the maximum logit; p_win = 1 / sum_m
// exp(l_m - l_g), summed in double as the CPU reference does; counts[g] += 1.
__global__ void route_kernel(const float* __restrict__ logits, int64_t n, int m,
                             int* __restrict__ gid, float* __restrict__ p_win,
                             unsigned long long* __restrict__ counts) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(gridDim.x) * blockDim.x) {
    const float* row = logits + t * m;
    int g = 0;
    float best = row[0];
    for (int j = 1; j < m; ++j) {
      const float v = row[j];
      if (v > best) {
        best = v;
        g = j;
      }
    }
    double sum = 0.0;
    for (int j = 0; j < m; ++j) sum += exp(double(row[j]) - double(best));
    gid[t] = g;
    p_win[t] = static_cast<float>(1.0 / sum);
    atomicAdd(counts + g, 1ull);
  }
}

__global__ void iota_kernel(int64_t* __restrict__ p, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    p[i] = i;
}

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

// In: float, or __nv_bfloat16 (an attention output in its compact form, read as it is)
template <typename In>
__global__ void scatter_injective_kernel(float* __restrict__ out, const In* __restrict__ x,
                                         const int64_t* __restrict__ idx,
                                         const float* __restrict__ w, int64_t total,
                                         int64_t row, bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / row, j = i % row;
    const float wi = w ? w[r] : 1.0f;
    float* o = out + idx[r] * row + j;
    *o = accumulate ? *o + load(x + i) * wi : load(x + i) * wi;
  }
}

// Eight elements of a row as float: from 16 bytes of bf16, or 32 bytes of float32.
struct Eight {
  float v[8];
};
__device__ __forceinline__ Eight load8(const __nv_bfloat16* p) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
  Eight e;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    e.v[2 * k] = f.x;
    e.v[2 * k + 1] = f.y;
  }
  return e;
}
__device__ __forceinline__ Eight load8(const float* p) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  return {{a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}};
}

// One warp per row (grid-strided), eight elements per lane step: rows whose length is a
// multiple of 8 with 16-byte aligned bases. The same arithmetic per element as above.
template <typename In>
__global__ void scatter_injective_vec_kernel(float* __restrict__ out, const In* __restrict__ x,
                                             const int64_t* __restrict__ idx,
                                             const float* __restrict__ w, int64_t m,
                                             int64_t row, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; r < m; r += warps) {
    const float wi = w ? w[r] : 1.0f;
    float* o = out + idx[r] * row;
    const In* xr = x + r * row;
    for (int64_t j = int64_t(lane) * 8; j < row; j += 32 * 8) {
      const Eight e = load8(xr + j);
      float4* o4 = reinterpret_cast<float4*>(o + j);
      float4 a = accumulate ? o4[0] : make_float4(0.f, 0.f, 0.f, 0.f);
      float4 b = accumulate ? o4[1] : make_float4(0.f, 0.f, 0.f, 0.f);
      if (accumulate) {
        a.x = a.x + e.v[0] * wi, a.y = a.y + e.v[1] * wi, a.z = a.z + e.v[2] * wi, a.w = a.w + e.v[3] * wi;
        b.x = b.x + e.v[4] * wi, b.y = b.y + e.v[5] * wi, b.z = b.z + e.v[6] * wi, b.w = b.w + e.v[7] * wi;
      } else {
        a = make_float4(e.v[0] * wi, e.v[1] * wi, e.v[2] * wi, e.v[3] * wi);
        b = make_float4(e.v[4] * wi, e.v[5] * wi, e.v[6] * wi, e.v[7] * wi);
      }
      o4[0] = a;
      o4[1] = b;
    }
  }
}

// y = bf16((a + b) * s), eight elements per thread step where n and the pointers allow.
template <typename B>
__global__ void add_scale_bf16_kernel(const float* __restrict__ a, const B* __restrict__ b,
                                      float s, __nv_bfloat16* __restrict__ y, int64_t n,
                                      bool vec) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (vec) {
    for (int64_t i = t * 8; i < n; i += stride * 8) {
      const Eight ea = load8(a + i), eb = load8(b + i);
      uint4 u;
      __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        h[k] = __floats2bfloat162_rn((ea.v[2 * k] + eb.v[2 * k]) * s,
                                     (ea.v[2 * k + 1] + eb.v[2 * k + 1]) * s);
      *reinterpret_cast<uint4*>(y + i) = u;
    }
  } else {
    for (int64_t i = t; i < n; i += stride) y[i] = __float2bfloat16_rn((a[i] + load(b + i)) * s);
  }
}

int key_bits(int m) {
  int b = 1;
  while ((1 << b) < m) ++b;
  return b;
}

}  // namespace

void moga_route(const float* logits, int64_t n, int m, int* gid, float* p_win,
                unsigned long long* counts, cudaStream_t stream) {
  MG_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(unsigned long long) * size_t(m), stream));
  if (n <= 0) return;
  route_kernel<<<grid_for(n, 256), 256, 0, stream>>>(logits, n, m, gid, p_win, counts);
  MG_CUDA_LAUNCH_CHECK();
}

size_t sort_by_group_temp_bytes(int64_t n, int m) {
  size_t bytes = 0;
  MG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int*>(nullptr),
                                                static_cast<int*>(nullptr),
                                                static_cast<const int64_t*>(nullptr),
                                                static_cast<int64_t*>(nullptr), n, 0, key_bits(m)));
  return bytes;
}

void sort_by_group(const int* gid, int* gid_sorted, int64_t* iota, int64_t* order, int64_t n,
                   int m, void* temp, size_t temp_bytes, cudaStream_t stream) {
  if (n <= 0) return;
  iota_kernel<<<grid_for(n, 256), 256, 0, stream>>>(iota, n);
  MG_CUDA_LAUNCH_CHECK();
  MG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, gid, gid_sorted, iota, order, n,
                                                0, key_bits(m), stream));
}

namespace {
template <typename In>
void launch_scatter(float* out, const In* x, const int64_t* idx, const float* w, int64_t m,
                    int64_t row, bool accumulate, cudaStream_t stream) {
  const int64_t total = m * row;
  if (total <= 0) return;
  if (row % 8 == 0 && aligned16(out) && aligned16(x))
    scatter_injective_vec_kernel<In><<<grid_for(m * 32, 256), 256, 0, stream>>>(out, x, idx, w, m,
                                                                               row, accumulate);
  else
    scatter_injective_kernel<In><<<grid_for(total, 256), 256, 0, stream>>>(out, x, idx, w, total,
                                                                          row, accumulate);
  MG_CUDA_LAUNCH_CHECK();
}
}  // namespace

void scatter_rows_injective(float* out, const float* x, const int64_t* idx, const float* w,
                            int64_t m, int64_t row, bool accumulate, cudaStream_t stream) {
  launch_scatter(out, x, idx, w, m, row, accumulate, stream);
}

void scatter_rows_injective_bf16(float* out, const uint16_t* x, const int64_t* idx, const float* w,
                                 int64_t m, int64_t row, bool accumulate, cudaStream_t stream) {
  launch_scatter(out, reinterpret_cast<const __nv_bfloat16*>(x), idx, w, m, row, accumulate,
                 stream);
}

void add_scale_to_bf16(const float* a, const void* b, bool b_bf16, float s, uint16_t* y,
                       int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  auto* yb = reinterpret_cast<__nv_bfloat16*>(y);
  const bool vec = n % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(y);
  const unsigned grid = grid_for(vec ? n / 8 : n, 256);
  if (b_bf16)
    add_scale_bf16_kernel<<<grid, 256, 0, stream>>>(a, static_cast<const __nv_bfloat16*>(b), s, yb,
                                                     n, vec);
  else
    add_scale_bf16_kernel<<<grid, 256, 0, stream>>>(a, static_cast<const float*>(b), s, yb, n, vec);
  MG_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace mg
