// Normalisations, statistics in float32 (two-pass mean/variance, per-row block reductions).
// Semantics: src/backend/cpu/cpu_ops.cpp (layer_norm_impl, rms_norm, channel_l2_norm).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/block_sum.cuh"
#include "kernels/kernels.cuh"

namespace mg {
namespace cuda {
namespace {


__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Out: float, or __nv_bfloat16 for a GEMM input written directly (layer_norm_bf16)
template <typename Out>
__global__ void layer_norm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                  const float* __restrict__ b, const float* __restrict__ shift,
                                  const float* __restrict__ scale, Out* __restrict__ y,
                                  int64_t d, float eps) {
  __shared__ float sh[32];
  const float* r = x + blockIdx.x * d;
  Out* out = y + blockIdx.x * d;
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += r[j];
  const float mean = block_sum(s, sh) / static_cast<float>(d);
  float v = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float t = r[j] - mean;
    v += t * t;
  }
  const float var = block_sum(v, sh) / static_cast<float>(d);
  const float inv = 1.0f / sqrtf(var + eps);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float o = (r[j] - mean) * inv;
    if (w) o *= w[j];
    if (b) o += b[j];
    if (scale) o = o * (1.0f + scale[j]) + shift[j];
    store(out + j, o);
  }
}

__device__ __forceinline__ void store4(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, float a, float b, float c, float d) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
  uint2 u;
  u.x = *reinterpret_cast<uint32_t*>(&lo);
  u.y = *reinterpret_cast<uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}

// The same LayerNorm with the row held in registers: V float4 per thread, blockDim.x =
// d / (4 V) threads (a multiple of 32). One 16-byte load per element group and one read of
// the row from memory; the mean and the variance are the same two passes over the held
// values as layer_norm_kernel's.
template <int V, typename Out>
__global__ void layer_norm_vec_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, const float* __restrict__ shift,
                                      const float* __restrict__ scale, Out* __restrict__ y,
                                      int64_t d, float eps) {
  __shared__ float sh[32];
  const float4* r = reinterpret_cast<const float4*>(x + blockIdx.x * d);
  Out* out = y + blockIdx.x * d;
  float4 v[V];
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    v[k] = r[threadIdx.x + k * blockDim.x];
    s += (v[k].x + v[k].y) + (v[k].z + v[k].w);
  }
  const float mean = block_sum(s, sh) / static_cast<float>(d);
  float q = 0.0f;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float a = v[k].x - mean, bb = v[k].y - mean, c = v[k].z - mean, e = v[k].w - mean;
    q += (a * a + bb * bb) + (c * c + e * e);
  }
  const float inv = 1.0f / sqrtf(block_sum(q, sh) / static_cast<float>(d) + eps);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t j4 = threadIdx.x + k * blockDim.x;
    float o[4] = {(v[k].x - mean) * inv, (v[k].y - mean) * inv, (v[k].z - mean) * inv,
                  (v[k].w - mean) * inv};
    if (w) {
      const float4 t = reinterpret_cast<const float4*>(w)[j4];
      o[0] *= t.x, o[1] *= t.y, o[2] *= t.z, o[3] *= t.w;
    }
    if (b) {
      const float4 t = reinterpret_cast<const float4*>(b)[j4];
      o[0] += t.x, o[1] += t.y, o[2] += t.z, o[3] += t.w;
    }
    if (scale) {
      const float4 sc = reinterpret_cast<const float4*>(scale)[j4];
      const float4 sf = reinterpret_cast<const float4*>(shift)[j4];
      o[0] = o[0] * (1.0f + sc.x) + sf.x, o[1] = o[1] * (1.0f + sc.y) + sf.y;
      o[2] = o[2] * (1.0f + sc.z) + sf.z, o[3] = o[3] * (1.0f + sc.w) + sf.w;
    }
    store4(out + 4 * j4, o[0], o[1], o[2], o[3]);
  }
}

// V for layer_norm_vec_kernel: the fewest float4 per thread that give at most 512 threads,
// a whole number of warps; 0 when d does not split so (or a pointer is not 16-byte aligned),
// and layer_norm_kernel runs.
int layer_norm_vec_width(int64_t d, const void* const* ptrs, int n) {
  for (int i = 0; i < n; ++i)
    if (ptrs[i] && !aligned16(ptrs[i])) return 0;
  if (d % 4) return 0;
  for (int v = 1; v <= 8; ++v) {
    if ((d / 4) % v) continue;
    const int64_t t = d / 4 / v;
    if (t <= 512 && t % 32 == 0) return v;
  }
  return 0;
}

__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                float* __restrict__ y, int64_t d, float eps) {
  __shared__ float sh[32];
  const float* r = x + blockIdx.x * d;
  float* out = y + blockIdx.x * d;
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += r[j] * r[j];
  const float inv = 1.0f / sqrtf(block_sum(s, sh) / static_cast<float>(d) + eps);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[j] = (r[j] * inv) * w[j];
}

// Silu: the activation after the norm (Ops::channel_l2_norm_silu), as the silu kernel
// computes it on the norm's float32 result.
template <bool Silu, typename Out>
__global__ void channel_l2_kernel(const float* __restrict__ x, const float* __restrict__ g,
                                  Out* __restrict__ y, int64_t c, int64_t p, float sc,
                                  float eps) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p;
       i += int64_t(gridDim.x) * blockDim.x) {
    float ss = 0.0f;
    for (int64_t ci = 0; ci < c; ++ci) {
      const float v = x[ci * p + i];
      ss += v * v;
    }
    const float f = sc / fmaxf(sqrtf(ss), eps);
    for (int64_t ci = 0; ci < c; ++ci) {
      const float v = (x[ci * p + i] * f) * g[ci];
      store(y + ci * p + i, Silu ? v / (1.0f + expf(-v)) : v);
    }
  }
}

// The same norm with each position's channels read once: a block of 32 x 8 threads takes 32
// consecutive positions (coalesced), its 8 rows of threads hold every 8th channel each (PER
// registers, PER >= c / 8), the sums of squares meet in shared memory, and the held values
// are scaled and written. channel_l2_kernel reads x twice (the second time mostly from
// memory: a wave of positions' channels is larger than the L2).
template <int PER, bool Silu, typename Out>
__global__ void channel_l2_held_kernel(const float* __restrict__ x, const float* __restrict__ g,
                                       Out* __restrict__ y, int64_t c, int64_t p, float sc, float eps) {
  __shared__ float part[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t base = blockIdx.x * int64_t(32); base < p; base += int64_t(gridDim.x) * 32) {
    const int64_t i = base + tx;
    const bool in = i < p;
    float v[PER];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int64_t ci = ty + 8 * int64_t(k);
      v[k] = (in && ci < c) ? x[ci * p + i] : 0.0f;
      ss += v[k] * v[k];
    }
    part[ty][tx] = ss;
    __syncthreads();
    float tot = 0.0f;
#pragma unroll
    for (int r = 0; r < 8; ++r) tot += part[r][tx];
    __syncthreads();  // part is written again by the next positions
    const float f = sc / fmaxf(sqrtf(tot), eps);
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int64_t ci = ty + 8 * int64_t(k);
      if (in && ci < c) {
        const float o = (v[k] * f) * g[ci];
        store(y + ci * p + i, Silu ? o / (1.0f + expf(-o)) : o);
      }
    }
  }
}

int row_threads(int64_t d) {
  const int64_t t = std::min<int64_t>(512, ((d + 31) / 32) * 32);
  return static_cast<int>(std::max<int64_t>(32, t));
}

}  // namespace

template <typename Out>
void launch_layer_norm(const float* x, const float* w, const float* b, const float* shift,
                       const float* scale, Out* y, int64_t rows, int64_t d, float eps,
                       cudaStream_t stream) {
  if (rows <= 0 || d <= 0) return;
  const void* ptrs[] = {x, w, b, shift, scale, y};
  const int v = layer_norm_vec_width(d, ptrs, 6);
  for (int64_t r0 = 0; r0 < rows; r0 += 0x7fffffff) {
    const int64_t nr = std::min<int64_t>(rows - r0, 0x7fffffff);
    const unsigned g = static_cast<unsigned>(nr);
    const float* xr = x + r0 * d;
    Out* yr = y + r0 * d;
    const int t = v ? static_cast<int>(d / 4 / v) : 0;
    switch (v) {
      case 1: layer_norm_vec_kernel<1, Out><<<g, t, 0, stream>>>(xr, w, b, shift, scale, yr, d, eps); break;
      case 2: layer_norm_vec_kernel<2, Out><<<g, t, 0, stream>>>(xr, w, b, shift, scale, yr, d, eps); break;
      case 3: layer_norm_vec_kernel<3, Out><<<g, t, 0, stream>>>(xr, w, b, shift, scale, yr, d, eps); break;
      case 4: layer_norm_vec_kernel<4, Out><<<g, t, 0, stream>>>(xr, w, b, shift, scale, yr, d, eps); break;
      case 5: layer_norm_vec_kernel<5, Out><<<g, t, 0, stream>>>(xr, w, b, shift, scale, yr, d, eps); break;
      case 6: layer_norm_vec_kernel<6, Out><<<g, t, 0, stream>>>(xr, w, b, shift, scale, yr, d, eps); break;
      case 7: layer_norm_vec_kernel<7, Out><<<g, t, 0, stream>>>(xr, w, b, shift, scale, yr, d, eps); break;
      case 8: layer_norm_vec_kernel<8, Out><<<g, t, 0, stream>>>(xr, w, b, shift, scale, yr, d, eps); break;
      default:
        layer_norm_kernel<Out><<<g, row_threads(d), 0, stream>>>(xr, w, b, shift, scale, yr, d, eps);
    }
    MG_CUDA_LAUNCH_CHECK();
  }
}

void layer_norm(const float* x, const float* w, const float* b, const float* shift,
                const float* scale, float* y, int64_t rows, int64_t d, float eps,
                cudaStream_t stream) {
  launch_layer_norm(x, w, b, shift, scale, y, rows, d, eps, stream);
}

void layer_norm_bf16(const float* x, const float* w, const float* b, const float* shift,
                     const float* scale, uint16_t* y, int64_t rows, int64_t d, float eps,
                     cudaStream_t stream) {
  launch_layer_norm(x, w, b, shift, scale, reinterpret_cast<__nv_bfloat16*>(y), rows, d, eps,
                    stream);
}

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t d, float eps,
              cudaStream_t stream) {
  if (rows <= 0 || d <= 0) return;
  for (int64_t r0 = 0; r0 < rows; r0 += 0x7fffffff) {
    const int64_t nr = std::min<int64_t>(rows - r0, 0x7fffffff);
    rms_norm_kernel<<<static_cast<unsigned>(nr), row_threads(d), 0, stream>>>(
        x + r0 * d, w, y + r0 * d, d, eps);
    MG_CUDA_LAUNCH_CHECK();
  }
}

template <typename Out>
void launch_channel_l2(const float* x, const float* gamma, Out* y, int64_t c, int64_t p, float eps,
                       bool silu, cudaStream_t stream) {
  if (c <= 0 || p <= 0) return;
  const float sc = static_cast<float>(std::sqrt(static_cast<double>(c)));
  if (c <= 8 * 48) {  // held in registers: PER = the smallest of 2, 4, 8, 12, 16, 24, 32, 48 >= c / 8
    const dim3 threads(32, 8);
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((p + 31) / 32, 1 << 20));
    const int64_t need = (c + 7) / 8;
#define MG_CHANNEL_L2_HELD(PER)                                                                     \
  if (need <= PER) {                                                                                \
    if (silu)                                                                                       \
      channel_l2_held_kernel<PER, true, Out><<<blocks, threads, 0, stream>>>(x, gamma, y, c, p, sc, eps);  \
    else                                                                                            \
      channel_l2_held_kernel<PER, false, Out><<<blocks, threads, 0, stream>>>(x, gamma, y, c, p, sc, eps); \
    MG_CUDA_LAUNCH_CHECK();                                                                         \
    return;                                                                                         \
  }
    MG_CHANNEL_L2_HELD(2)
    MG_CHANNEL_L2_HELD(4)
    MG_CHANNEL_L2_HELD(8)
    MG_CHANNEL_L2_HELD(12)
    MG_CHANNEL_L2_HELD(16)
    MG_CHANNEL_L2_HELD(24)
    MG_CHANNEL_L2_HELD(32)
    MG_CHANNEL_L2_HELD(48)
#undef MG_CHANNEL_L2_HELD
  }
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((p + threads - 1) / threads, 1 << 20));
  if (silu)
    channel_l2_kernel<true, Out><<<blocks, threads, 0, stream>>>(x, gamma, y, c, p, sc, eps);
  else
    channel_l2_kernel<false, Out><<<blocks, threads, 0, stream>>>(x, gamma, y, c, p, sc, eps);
  MG_CUDA_LAUNCH_CHECK();
}

void channel_l2_norm(const float* x, const float* gamma, float* y, int64_t c, int64_t p,
                     float eps, bool silu, cudaStream_t stream) {
  launch_channel_l2(x, gamma, y, c, p, eps, silu, stream);
}

void channel_l2_norm_bf16(const float* x, const float* gamma, uint16_t* y, int64_t c, int64_t p,
                          float eps, bool silu, cudaStream_t stream) {
  launch_channel_l2(x, gamma, reinterpret_cast<__nv_bfloat16*>(y), c, p, eps, silu, stream);
}

}  // namespace cuda
}  // namespace mg
