// Interleaved (GPT-J) rotary embedding in place. Semantics: CpuOps::rope_.
#include <algorithm>

#include "kernels/kernels.cuh"

namespace mg {
namespace cuda {
namespace {

__global__ void rope_kernel(float* __restrict__ x, const float* __restrict__ cs,
                            const float* __restrict__ sn, int64_t total, int64_t h, int64_t hd,
                            int64_t half) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % half, nh = i / half, n = nh / h;
    float* r = x + nh * hd + 2 * j;
    const float c = cs[n * half + j], s = sn[n * half + j];
    const float a = r[0], b = r[1];
    r[0] = a * c - b * s;
    r[1] = a * s + b * c;
  }
}

}  // namespace

void rope(float* x, const float* cos, const float* sin, int64_t n, int64_t h, int64_t hd,
          cudaStream_t stream) {
  const int64_t half = hd / 2, total = n * h * half;
  if (total <= 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 1 << 20);
  rope_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(x, cos, sin, total, h, hd,
                                                                     half);
  MG_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace mg
