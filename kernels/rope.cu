// Interleaved (GPT-J) rotary embedding in place. Semantics: CpuOps::rope_. And the DiT's
// q/k path fused: RMSNorm over the row, RoPE per head, bf16 out (Ops::rms_norm_rope).
// And T5's relative position bias (Ops::relative_position_bias).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/block_sum.cuh"
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
  const float inv = 1.0f / sqrtf(block_sum(s, sh) / static_cast<float>(d) + eps);
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

// Eight elements (four pairs) of a row as floats: one 16-byte load of bf16, or two of float.
__device__ __forceinline__ void load8(const __nv_bfloat162* r, int64_t o, float (&f)[8]) {
  const uint4 u = reinterpret_cast<const uint4*>(r)[o];
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void load8(const float2* r, int64_t o, float (&f)[8]) {
  const float4 a = reinterpret_cast<const float4*>(r)[2 * o], b = reinterpret_cast<const float4*>(r)[2 * o + 1];
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

// rms_norm_rope_kernel with the row held in registers: V groups of eight elements per
// thread, blockDim.x = d / (8 V) (a multiple of 32), 16-byte loads and stores. Needs half % 4
// == 0 (the four pairs of a group share a head) when rotating.
template <typename Pair, bool Rotate, int V>
__global__ void rms_norm_rope_vec_kernel(const Pair* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ cs, const float* __restrict__ sn,
                                         __nv_bfloat162* __restrict__ y, int64_t d, int64_t half,
                                         float eps) {
  __shared__ float sh[32];
  const int64_t n = blockIdx.x;
  const int64_t pairs = d / 2;
  const Pair* r = x + n * pairs;
  float f[V][8];
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    load8(r, threadIdx.x + k * blockDim.x, f[k]);
#pragma unroll
    for (int i = 0; i < 8; i += 2) s += f[k][i] * f[k][i] + f[k][i + 1] * f[k][i + 1];
  }
  const float inv = 1.0f / sqrtf(block_sum(s, sh) / static_cast<float>(d) + eps);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t g = threadIdx.x + k * blockDim.x;  // group of pairs 4g .. 4g + 3
    const float4 w0 = reinterpret_cast<const float4*>(w)[2 * g], w1 = reinterpret_cast<const float4*>(w)[2 * g + 1];
    const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
    float cj[4] = {1.0f, 1.0f, 1.0f, 1.0f}, sj[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (Rotate) {
      const int64_t j = (4 * g) % half;
      const float4 c4 = reinterpret_cast<const float4*>(cs + n * half + j)[0];
      const float4 s4 = reinterpret_cast<const float4*>(sn + n * half + j)[0];
      cj[0] = c4.x, cj[1] = c4.y, cj[2] = c4.z, cj[3] = c4.w;
      sj[0] = s4.x, sj[1] = s4.y, sj[2] = s4.z, sj[3] = s4.w;
    }
    uint32_t out[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float a = (f[k][2 * i] * inv) * wv[2 * i], b = (f[k][2 * i + 1] * inv) * wv[2 * i + 1];
      const __nv_bfloat162 o2 = Rotate ? __floats2bfloat162_rn(a * cj[i] - b * sj[i], a * sj[i] + b * cj[i])
                                       : __floats2bfloat162_rn(a, b);
      out[i] = *reinterpret_cast<const uint32_t*>(&o2);
    }
    reinterpret_cast<uint4*>(y + n * pairs)[g] = make_uint4(out[0], out[1], out[2], out[3]);
  }
}

// V for rms_norm_rope_vec_kernel (0: the scalar kernel runs).
int rms_norm_rope_vec_width(int64_t d, int64_t half, bool rotate, const void* const* ptrs, int np) {
  for (int i = 0; i < np; ++i)
    if (ptrs[i] && !aligned16(ptrs[i])) return 0;
  if (d % 8 || (rotate && half % 4)) return 0;
  for (int v = 1; v <= 4; ++v) {
    if ((d / 8) % v) continue;
    const int64_t t = d / 8 / v;
    if (t <= 512 && t % 32 == 0) return v;
  }
  return 0;
}

template <typename Pair, bool Rotate>
void launch_rms_norm_rope(const Pair* x, const float* w, const float* cs, const float* sn,
                          __nv_bfloat162* y, int64_t n, int64_t d, int64_t half, float eps,
                          cudaStream_t stream) {
  const void* ptrs[] = {x, w, cs, sn, y};
  const int v = rms_norm_rope_vec_width(d, half, Rotate, ptrs, 5);
  const unsigned blocks = static_cast<unsigned>(n);
  const int t = v ? static_cast<int>(d / 8 / v) : 0;
  switch (v) {
    case 1: rms_norm_rope_vec_kernel<Pair, Rotate, 1><<<blocks, t, 0, stream>>>(x, w, cs, sn, y, d, half, eps); break;
    case 2: rms_norm_rope_vec_kernel<Pair, Rotate, 2><<<blocks, t, 0, stream>>>(x, w, cs, sn, y, d, half, eps); break;
    case 3: rms_norm_rope_vec_kernel<Pair, Rotate, 3><<<blocks, t, 0, stream>>>(x, w, cs, sn, y, d, half, eps); break;
    case 4: rms_norm_rope_vec_kernel<Pair, Rotate, 4><<<blocks, t, 0, stream>>>(x, w, cs, sn, y, d, half, eps); break;
    default: {
      const int threads = static_cast<int>(std::min<int64_t>(512, ((d / 2 + 31) / 32) * 32));
      rms_norm_rope_kernel<Pair, Rotate><<<blocks, threads, 0, stream>>>(x, w, cs, sn, y, d, half, eps);
    }
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
  const int64_t d = h * hd;
  auto* yp = reinterpret_cast<__nv_bfloat162*>(y);
  const bool rotate = cos != nullptr;  // null tables: the RMSNorm alone
  if (x_bf16 && rotate)
    launch_rms_norm_rope<__nv_bfloat162, true>(static_cast<const __nv_bfloat162*>(x), w, cos, sin, yp, n, d,
                                               hd / 2, eps, stream);
  else if (x_bf16)
    launch_rms_norm_rope<__nv_bfloat162, false>(static_cast<const __nv_bfloat162*>(x), w, cos, sin, yp, n, d,
                                                hd / 2, eps, stream);
  else if (rotate)
    launch_rms_norm_rope<float2, true>(static_cast<const float2*>(x), w, cos, sin, yp, n, d, hd / 2, eps,
                                       stream);
  else
    launch_rms_norm_rope<float2, false>(static_cast<const float2*>(x), w, cos, sin, yp, n, d, hd / 2, eps,
                                        stream);
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
