// 3D convolution support: im2col over a range of flattened output positions. The GEMM
// (cuBLASLt; bf16 tensor cores with fp32 accumulation for bf16 weights, plain fp32 for fp32
// weights) and the bias are issued by the host side. Semantics: CpuOps::conv3d.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/kernels.cuh"

namespace mg {
namespace cuda {
namespace {

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Thread per (output position j, input channel c): decompose the position once, then walk
// the kt*kh*kw taps without divisions. Writes col[kidx, j] coalesced across j; reads x
// along W (near-coalesced). The column tile is bounded (~256 MB), so its indices fit int32.
template <class T>
__global__ void im2col3d_kernel(const float* __restrict__ x, T* __restrict__ col, Conv3dShape s,
                                int64_t p0, int np) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= np) return;
  const int64_t hw = s.ho * s.wo, p = p0 + j;
  const int ot = static_cast<int>(p / hw);
  const int rem = static_cast<int>(p - int64_t(ot) * hw);
  const int oy = rem / static_cast<int>(s.wo), ox = rem - oy * static_cast<int>(s.wo);
  const int kt = static_cast<int>(s.kt), kh = static_cast<int>(s.kh), kw = static_cast<int>(s.kw);
  const int taps = kt * kh * kw;
  const int t = static_cast<int>(s.t), h = static_cast<int>(s.h), w = static_cast<int>(s.w);
  for (int64_t c = blockIdx.y; c < s.ci; c += gridDim.y) {
    const float* xc = x + c * s.t * s.h * s.w;
    T* dst = col + (c * taps) * int64_t(np) + j;
    for (int dt = 0; dt < kt; ++dt) {
      const int it = ot + dt - static_cast<int>(s.pad_t);
      const bool tin = it >= 0 && it < t;
      for (int dy = 0; dy < kh; ++dy) {
        const int iy = oy + dy - static_cast<int>(s.pad_h);
        const bool yin = tin && iy >= 0 && iy < h;
        const float* row = xc + (int64_t(it) * h + iy) * w;
        for (int dx = 0; dx < kw; ++dx) {
          const int ix = ox + dx - static_cast<int>(s.pad_w);
          const float v = (yin && ix >= 0 && ix < w) ? row[ix] : 0.0f;
          *dst = from_float<T>(v);
          dst += np;
        }
      }
    }
  }
}

template <class T>
void launch(const float* x, T* col, const Conv3dShape& s, int64_t p0, int64_t np,
            cudaStream_t stream) {
  if (np <= 0 || s.ci <= 0) return;
  const int threads = 256;
  const dim3 grid(static_cast<unsigned>((np + threads - 1) / threads),
                  static_cast<unsigned>(std::min<int64_t>(s.ci, 65535)));
  im2col3d_kernel<T><<<grid, threads, 0, stream>>>(x, col, s, p0, static_cast<int>(np));
  MG_CUDA_LAUNCH_CHECK();
}

}  // namespace

void im2col3d_f32(const float* x, float* col, const Conv3dShape& s, int64_t p0, int64_t np,
                  cudaStream_t stream) {
  launch<float>(x, col, s, p0, np, stream);
}

void im2col3d_bf16(const float* x, uint16_t* col, const Conv3dShape& s, int64_t p0, int64_t np,
                   cudaStream_t stream) {
  launch<__nv_bfloat16>(x, reinterpret_cast<__nv_bfloat16*>(col), s, p0, np, stream);
}

}  // namespace cuda
}  // namespace mg
