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
                                         int64_t row) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / row, j = i % row;
    const float wi = w ? w[r] : 1.0f;
    out[idx[r] * row + j] += load(x + i) * wi;
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
                    int64_t row, cudaStream_t stream) {
  const int64_t total = m * row;
  if (total <= 0) return;
  scatter_injective_kernel<In><<<grid_for(total, 256), 256, 0, stream>>>(out, x, idx, w, total, row);
  MG_CUDA_LAUNCH_CHECK();
}
}  // namespace

void scatter_rows_injective(float* out, const float* x, const int64_t* idx, const float* w,
                            int64_t m, int64_t row, cudaStream_t stream) {
  launch_scatter(out, x, idx, w, m, row, stream);
}

void scatter_rows_injective_bf16(float* out, const uint16_t* x, const int64_t* idx, const float* w,
                                 int64_t m, int64_t row, cudaStream_t stream) {
  launch_scatter(out, reinterpret_cast<const __nv_bfloat16*>(x), idx, w, m, row, stream);
}

}  // namespace cuda
}  // namespace mg
