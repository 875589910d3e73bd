// Video-tensor and token-row data movement: nearest 2x upsample, 2-D transpose, row
// gather and deterministic row scatter-add, strided float32 <-> bf16 slabs (time slices of
// the VAE's bf16 causal caches). (cat/slice/interleave in time are strided
// copies issued from the host side with cudaMemcpy2DAsync.) Semantics: CpuOps.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/kernels.cuh"

namespace mg {
namespace cuda {
namespace {

__device__ __forceinline__ void store2(float* p, float v) { *reinterpret_cast<float2*>(p) = make_float2(v, v); }
__device__ __forceinline__ void store2(__nv_bfloat16* p, float v) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __float2bfloat162_rn(v);
}

// Nearest 2x spatial upsample by input rows: row r of x ([ct * h, w]) becomes output rows 2r and 2r + 1
// of y ([ct * 2h, 2w]), each value written twice per row as one pair. No divisions.
template <typename Out>
__global__ void upsample2x_rows_kernel(const float* __restrict__ x, Out* __restrict__ y, int64_t rows,
                                       int64_t w) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < w; c += int64_t(gridDim.x) * blockDim.x) {
      const float v = x[r * w + c];
      Out* o = y + 2 * r * (2 * w) + 2 * c;
      store2(o, v);
      store2(o + 2 * w, v);
    }
}

__device__ __forceinline__ float as_float(float v) { return v; }
__device__ __forceinline__ float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Frames [f0, f0 + gridDim.z) of src [c, src_t, hw] (float or bf16) -> dst [gridDim.z, hw, c]
// bf16 (channels last), one 32 x 32 tile of (channels, positions) per block through shared
// memory: coalesced reads along positions, coalesced writes along channels.
template <typename In>
__global__ void to_channels_last_kernel(const In* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                        int64_t c, int64_t src_t, int64_t f0, int64_t hw) {
  __shared__ float tile[32][33];
  const int64_t f = blockIdx.z, p0 = blockIdx.x * int64_t(32), c0 = blockIdx.y * int64_t(32);
  const In* s = src + (f0 + f) * hw;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t ch = c0 + i, p = p0 + threadIdx.x;
    tile[i][threadIdx.x] = (ch < c && p < hw) ? as_float(s[ch * src_t * hw + p]) : 0.0f;
  }
  __syncthreads();
  __nv_bfloat16* d = dst + f * hw * c;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t p = p0 + i, ch = c0 + threadIdx.x;
    if (p < hw && ch < c) d[p * c + ch] = __float2bfloat16_rn(tile[threadIdx.x][i]);
  }
}

// y16 [P, co] (a channels-last bf16 convolution output) -> y [co, P] float32: (value + b[ch])
// + r[ch, P] (b, r optional; the order of bf16_to_f32_channel_bias), transposed by tiles.
__global__ void from_channels_last_kernel(const __nv_bfloat16* __restrict__ y16, const float* __restrict__ b,
                                          const float* __restrict__ r, float* __restrict__ y, int64_t co,
                                          int64_t P) {
  __shared__ float tile[32][33];
  const int64_t p0 = blockIdx.x * int64_t(32), c0 = blockIdx.y * int64_t(32);
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t p = p0 + i, ch = c0 + threadIdx.x;
    tile[i][threadIdx.x] = (p < P && ch < co) ? __bfloat162float(y16[p * co + ch]) : 0.0f;
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t ch = c0 + i, p = p0 + threadIdx.x;
    if (ch < co && p < P) {
      const float v = tile[threadIdx.x][i] + (b ? b[ch] : 0.0f);
      const int64_t o = ch * P + p;
      y[o] = r ? v + r[o] : v;
    }
  }
}

// w [co, ci, k] float32 -> [co, k, ci] bf16 (a conv weight, channels last; k = kt kh kw)
__global__ void weight_channels_last_kernel(const float* __restrict__ w, __nv_bfloat16* __restrict__ y,
                                            int64_t co, int64_t ci, int64_t k) {
  const int64_t total = co * ci * k;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t cout = o / (k * ci), rem = o % (k * ci), kk = rem / ci, cin = rem % ci;
    y[o] = __float2bfloat16_rn(w[(cout * ci + cin) * k + kk]);
  }
}

// Ops::patchify: one output value per thread (small tensors: the divisions do not matter).
__global__ void patchify_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t C, int64_t T,
                                int64_t h, int64_t w, int64_t H, int64_t W, int pt, int ph, int pw,
                                int64_t total) {
  const int64_t P = int64_t(pt) * ph * pw, D = C * P;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = o / D, col = o % D, c = col / P, r = col % P;
    const int64_t i = r / (ph * pw), a = (r / pw) % ph, b = r % pw;
    const int64_t f = n / (H * W), yy = (n / W) % H, xx = n % W;
    y[o] = x[((c * T + f * pt + i) * h + yy * ph + a) * w + xx * pw + b];
  }
}

// Ops::unpatchify: one output value of v [C, T, h, w] per thread.
__global__ void unpatchify_kernel(const float* __restrict__ y, float* __restrict__ v, int64_t C, int64_t T,
                                  int64_t h, int64_t w, int64_t H, int64_t W, int pt, int ph, int pw,
                                  int64_t total) {
  const int64_t P = int64_t(pt) * ph * pw, D = C * P;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total;
       o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t xx = o % w, yy = (o / w) % h, t = (o / (w * h)) % T, c = o / (w * h * T);
    const int64_t f = t / pt, i = t % pt, Y = yy / ph, a = yy % ph, X = xx / pw, b = xx % pw;
    const int64_t n = (f * H + Y) * W + X;
    v[o] = y[n * D + ((i * ph + a) * pw + b) * C + c];
  }
}

constexpr int kTile = 32;
__global__ void transpose_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t r,
                                 int64_t c) {
  __shared__ float tile[kTile][kTile + 1];
  const int64_t bx = int64_t(blockIdx.x) * kTile;
  for (int64_t by = int64_t(blockIdx.y) * kTile; by < r; by += int64_t(gridDim.y) * kTile) {
    for (int k = threadIdx.y; k < kTile; k += blockDim.y) {
      const int64_t i = by + k, j = bx + threadIdx.x;
      if (i < r && j < c) tile[k][threadIdx.x] = x[i * c + j];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < kTile; k += blockDim.y) {
      const int64_t j = bx + k, i = by + threadIdx.x;  // y[j, i] = x[i, j]
      if (i < r && j < c) y[j * r + i] = tile[threadIdx.x][k];
    }
    __syncthreads();
  }
}

template <class T>
__global__ void gather_rows_kernel(const T* __restrict__ x, const int64_t* __restrict__ idx,
                                   T* __restrict__ y, int64_t total, int64_t row) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / row, j = i % row;
    y[i] = x[idx[r] * row + j];
  }
}

// One warp per row (grid-strided), 16-byte copies: rows whose size is a multiple of 16 bytes
// (the DiT's q, k and v rows: dim x 2 bytes). No per-element index arithmetic; the element
// kernel above does the rest.
__global__ void gather_rows_vec_kernel(const uint4* __restrict__ x, const int64_t* __restrict__ idx,
                                       uint4* __restrict__ y, int64_t m, int64_t vrow) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; r < m; r += warps) {
    const uint4* src = x + idx[r] * vrow;
    uint4* dst = y + r * vrow;
    for (int64_t j = lane; j < vrow; j += 32) dst[j] = src[j];
  }
}

template <class T>
void launch_gather(const T* x, const int64_t* idx, T* y, int64_t m, int64_t row,
                   cudaStream_t stream) {
  const int64_t total = m * row;
  if (total <= 0) return;
  const int64_t bytes = row * int64_t(sizeof(T));
  if (bytes % 16 == 0 && aligned16(x) && aligned16(y)) {
    gather_rows_vec_kernel<<<grid_for(m * 32, 256), 256, 0, stream>>>(
        reinterpret_cast<const uint4*>(x), idx, reinterpret_cast<uint4*>(y), m, bytes / 16);
  } else {
    gather_rows_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(x, idx, y, total, row);
  }
  MG_CUDA_LAUNCH_CHECK();
}

__device__ __forceinline__ float cvt(__nv_bfloat16 v, float*) { return __bfloat162float(v); }
__device__ __forceinline__ __nv_bfloat16 cvt(float v, __nv_bfloat16*) { return __float2bfloat16_rn(v); }

// rows of len elements at strides xs / ys (elements): y[r * ys + i] = To(x[r * xs + i]).
// blockIdx.y walks the rows, x-blocks the elements of a row, both grid-strided.
template <typename From, typename To>
__global__ void convert_2d_kernel(const From* __restrict__ x, int64_t xs, To* __restrict__ y,
                                  int64_t ys, int64_t rows, int64_t len) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const From* xr = x + r * xs;
    To* yr = y + r * ys;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < len;
         i += int64_t(gridDim.x) * blockDim.x)
      yr[i] = cvt(xr[i], static_cast<To*>(nullptr));
  }
}

template <typename From, typename To>
void launch_convert_2d(const From* x, int64_t xs, To* y, int64_t ys, int64_t rows, int64_t len,
                       cudaStream_t stream) {
  if (rows <= 0 || len <= 0) return;
  const unsigned gx = static_cast<unsigned>(std::min<int64_t>((len + 255) / 256, 4096));
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(rows, 65535));
  convert_2d_kernel<From, To><<<dim3(gx, gy), 256, 0, stream>>>(x, xs, y, ys, rows, len);
  MG_CUDA_LAUNCH_CHECK();
}

__global__ void scatter_add_kernel(float* __restrict__ out, const float* __restrict__ x,
                                   const int64_t* __restrict__ dst,
                                   const int64_t* __restrict__ ptr,
                                   const int64_t* __restrict__ src, const float* __restrict__ w,
                                   int64_t total, int64_t row) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t u = i / row, j = i % row;
    float* o = out + dst[u] * row + j;
    float acc = *o;
    for (int64_t s = ptr[u]; s < ptr[u + 1]; ++s) {
      const float wi = w ? w[s] : 1.0f;
      acc += x[src[s] * row + j] * wi;
    }
    *o = acc;
  }
}

}  // namespace

template <typename Out>
static void launch_upsample2x_rows(const float* x, Out* y, int64_t ct, int64_t h, int64_t w, cudaStream_t stream) {
  const int64_t rows = ct * h;
  if (rows <= 0 || w <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(256, (w + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((w + threads - 1) / threads, 65535)),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  upsample2x_rows_kernel<Out><<<grid, threads, 0, stream>>>(x, y, rows, w);
  MG_CUDA_LAUNCH_CHECK();
}

void upsample2x_rows(const float* x, float* y, int64_t ct, int64_t h, int64_t w, cudaStream_t stream) {
  launch_upsample2x_rows(x, y, ct, h, w, stream);
}

void upsample2x_rows_bf16(const float* x, uint16_t* y, int64_t ct, int64_t h, int64_t w, cudaStream_t stream) {
  launch_upsample2x_rows(x, reinterpret_cast<__nv_bfloat16*>(y), ct, h, w, stream);
}

void patchify(const float* x, float* y, int64_t c, int64_t t, int64_t h, int64_t w, int pt, int ph, int pw,
              cudaStream_t stream) {
  const int64_t total = c * t * h * w;  // the output has as many values
  if (total <= 0) return;
  patchify_kernel<<<grid_for(total, 256), 256, 0, stream>>>(x, y, c, t, h, w, h / ph, w / pw, pt, ph, pw, total);
  MG_CUDA_LAUNCH_CHECK();
}

void unpatchify(const float* y, float* v, int64_t c, int64_t t, int64_t h, int64_t w, int pt, int ph, int pw,
                cudaStream_t stream) {
  const int64_t total = c * t * h * w;
  if (total <= 0) return;
  unpatchify_kernel<<<grid_for(total, 256), 256, 0, stream>>>(y, v, c, t, h, w, h / ph, w / pw, pt, ph, pw, total);
  MG_CUDA_LAUNCH_CHECK();
}

void to_channels_last_bf16(const void* src, bool src_bf16, int64_t c, int64_t src_t, int64_t f0, int64_t nf,
                           int64_t hw, uint16_t* dst, cudaStream_t stream) {
  if (c <= 0 || nf <= 0 || hw <= 0) return;
  auto* d = reinterpret_cast<__nv_bfloat16*>(dst);
  for (int64_t g0 = 0; g0 < nf; g0 += 65535) {  // gridDim.z <= 65535 frames a launch
    const int64_t n = std::min<int64_t>(65535, nf - g0);
    const dim3 grid(static_cast<unsigned>((hw + 31) / 32), static_cast<unsigned>((c + 31) / 32),
                    static_cast<unsigned>(n));
    if (src_bf16)
      to_channels_last_kernel<<<grid, dim3(32, 8), 0, stream>>>(static_cast<const __nv_bfloat16*>(src),
                                                               d + g0 * hw * c, c, src_t, f0 + g0, hw);
    else
      to_channels_last_kernel<<<grid, dim3(32, 8), 0, stream>>>(static_cast<const float*>(src), d + g0 * hw * c,
                                                               c, src_t, f0 + g0, hw);
    MG_CUDA_LAUNCH_CHECK();
  }
}

void from_channels_last_f32(const uint16_t* y16, const float* b, const float* r, float* y, int64_t co,
                            int64_t p, cudaStream_t stream) {
  if (co <= 0 || p <= 0) return;
  const dim3 grid(static_cast<unsigned>((p + 31) / 32), static_cast<unsigned>((co + 31) / 32));
  from_channels_last_kernel<<<grid, dim3(32, 8), 0, stream>>>(reinterpret_cast<const __nv_bfloat16*>(y16), b, r,
                                                             y, co, p);
  MG_CUDA_LAUNCH_CHECK();
}

void weight_channels_last_bf16(const float* w, uint16_t* y, int64_t co, int64_t ci, int64_t k,
                               cudaStream_t stream) {
  const int64_t total = co * ci * k;
  if (total <= 0) return;
  weight_channels_last_kernel<<<grid_for(total, 256), 256, 0, stream>>>(w, reinterpret_cast<__nv_bfloat16*>(y),
                                                                        co, ci, k);
  MG_CUDA_LAUNCH_CHECK();
}

void transpose2d(const float* x, float* y, int64_t r, int64_t c, cudaStream_t stream) {
  if (r <= 0 || c <= 0) return;
  const int64_t gx = (c + kTile - 1) / kTile, gy = std::min<int64_t>((r + kTile - 1) / kTile, 65535);
  transpose_kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(kTile, 8), 0,
                     stream>>>(x, y, r, c);
  MG_CUDA_LAUNCH_CHECK();
}

void gather_rows(const float* x, const int64_t* idx, float* y, int64_t m, int64_t row,
                 cudaStream_t stream) {
  launch_gather(x, idx, y, m, row, stream);
}

void gather_rows_u16(const uint16_t* x, const int64_t* idx, uint16_t* y, int64_t m, int64_t row,
                     cudaStream_t stream) {
  launch_gather(x, idx, y, m, row, stream);
}

void bf16_to_f32_2d(const uint16_t* x, int64_t xs, float* y, int64_t ys, int64_t rows, int64_t len,
                    cudaStream_t stream) {
  launch_convert_2d(reinterpret_cast<const __nv_bfloat16*>(x), xs, y, ys, rows, len, stream);
}

void f32_to_bf16_2d(const float* x, int64_t xs, uint16_t* y, int64_t ys, int64_t rows, int64_t len,
                    cudaStream_t stream) {
  launch_convert_2d(x, xs, reinterpret_cast<__nv_bfloat16*>(y), ys, rows, len, stream);
}

void scatter_add_rows(float* out, const float* x, const int64_t* dst, const int64_t* ptr,
                      const int64_t* src, const float* w, int64_t ndst, int64_t row,
                      cudaStream_t stream) {
  const int64_t total = ndst * row;
  if (total <= 0) return;
  scatter_add_kernel<<<grid_for(total, 256), 256, 0, stream>>>(out, x, dst, ptr, src, w, total,
                                                               row);
  MG_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace mg
