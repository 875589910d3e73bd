// Interleaved (GPT-J) rotary embedding in place. Semantics: CpuOps::rope_. And the DiT's
// q/k path fused: RMSNorm over the row, RoPE per head, bf16 out (Ops::rms_norm_rope).
// And T5's relative position bias (Ops::relative_position_bias).
#include <cuda_bf16.h>

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

// One block per token row [h * hd]: the sum of squares over the row, then each pair (2p,
// 2p+1) normalised, weighted and rotated, as rms_norm_kernel and rope_kernel compute them.
__device__ __forceinline__ float2 pair(const float2* r, int64_t p) { return r[p]; }
__device__ __forceinline__ float2 pair(const __nv_bfloat162* r, int64_t p) {
  return __bfloat1622float2(r[p]);
}

// Pair: float2 (a float32 row) or __nv_bfloat162 (a bf16 row from linear_compact).
// Rotate false: the RMSNorm alone (the cross-attention's q; cs and sn unused).
template <typename Pair, bool Rotate>
__global__ void rms_norm_rope_kernel(const Pair* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ cs, const float* __restrict__ sn,
                                     __nv_bfloat162* __restrict__ y, int64_t d, int64_t half,
                                     float eps) {
  __shared__ float sh[32];
  const int64_t n = blockIdx.x;
  const int64_t pairs = d / 2;
  const Pair* r = x + n * pairs;
  float s = 0.0f;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const float2 v = pair(r, p);
    s += v.x * v.x + v.y * v.y;
  }
  // block sum (every thread gets it)
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  if (lane == 0) sh[warp] = s;
  __syncthreads();
  s = lane < nw ? sh[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const float inv = 1.0f / sqrtf(s / static_cast<float>(d) + eps);
  const float* c = Rotate ? cs + n * half : nullptr;
  const float* sv = Rotate ? sn + n * half : nullptr;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const float2 v = pair(r, p);
    const float a = (v.x * inv) * w[2 * p], b = (v.y * inv) * w[2 * p + 1];
    if (!Rotate) {
      y[n * pairs + p] = __floats2bfloat162_rn(a, b);
      continue;
    }
    const int64_t j = p % half;
    const float cj = c[j], sj = sv[j];
    y[n * pairs + p] = __floats2bfloat162_rn(a * cj - b * sj, a * sj + b * cj);
  }
}

// One block per output row (h, i) of [H, L, L], grid-strided: bias[h, i, j] =
// table[bucket[j - i + L - 1] * H + h]. The bucket list (2L - 1 entries) and the table
// (buckets x H) are small and stay in cache; the result is written once, coalesced.
__global__ void relative_bias_kernel(const float* __restrict__ table,
                                     const int64_t* __restrict__ bucket, float* __restrict__ y,
                                     int64_t rows, int64_t L, int64_t H) {
  for (int64_t hi = blockIdx.x; hi < rows; hi += gridDim.x) {
    const int64_t h = hi / L, i = hi % L;
    const int64_t* b = bucket + (L - 1 - i);  // b[j] = bucket of offset j - i
    float* out = y + hi * L;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) out[j] = table[b[j] * H + h];
  }
}

}  // namespace

void rms_norm_rope_bf16(const void* x, bool x_bf16, const float* w, const float* cos,
                        const float* sin, uint16_t* y, int64_t n, int64_t h, int64_t hd, float eps,
                        cudaStream_t stream) {
  if (n <= 0 || h <= 0 || hd <= 0) return;
  const int64_t d = h * hd, pairs = d / 2;
  const int threads = static_cast<int>(std::min<int64_t>(512, ((pairs + 31) / 32) * 32));
  auto* yp = reinterpret_cast<__nv_bfloat162*>(y);
  const unsigned blocks = static_cast<unsigned>(n);
  const bool rotate = cos != nullptr;  // null tables: the RMSNorm alone
  if (x_bf16 && rotate)
    rms_norm_rope_kernel<__nv_bfloat162, true><<<blocks, threads, 0, stream>>>(
        static_cast<const __nv_bfloat162*>(x), w, cos, sin, yp, d, hd / 2, eps);
  else if (x_bf16)
    rms_norm_rope_kernel<__nv_bfloat162, false><<<blocks, threads, 0, stream>>>(
        static_cast<const __nv_bfloat162*>(x), w, cos, sin, yp, d, hd / 2, eps);
  else if (rotate)
    rms_norm_rope_kernel<float2, true><<<blocks, threads, 0, stream>>>(
        static_cast<const float2*>(x), w, cos, sin, yp, d, hd / 2, eps);
  else
    rms_norm_rope_kernel<float2, false><<<blocks, threads, 0, stream>>>(
        static_cast<const float2*>(x), w, cos, sin, yp, d, hd / 2, eps);
  MG_CUDA_LAUNCH_CHECK();
}

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

void relative_position_bias(const float* table, const int64_t* bucket, float* y, int64_t L,
                            int64_t H, cudaStream_t stream) {
  const int64_t rows = H * L;
  if (rows <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(256, ((L + 31) / 32) * 32));
  relative_bias_kernel<<<grid_for(rows, 1), threads, 0, stream>>>(table, bucket, y, rows, L, H);
  MG_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace mg
