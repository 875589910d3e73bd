// Elementwise kernels: unary/binary maps (float4-vectorised when aligned), row and channel
// broadcasts, bf16 <-> f32 conversions. Semantics: src/backend/cpu/cpu_ops.cpp.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/kernels.cuh"

namespace mg {
namespace cuda {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, 65536)));
}

__device__ __forceinline__ float gelu_tanh_f(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

template <Unary OP>
__device__ __forceinline__ float apply1(float v, float a, float b) {
  if constexpr (OP == Unary::GeluTanh) return gelu_tanh_f(v);
  if constexpr (OP == Unary::Silu) return silu_f(v);
  if constexpr (OP == Unary::Scale) return v * a;
  if constexpr (OP == Unary::Clamp) return fminf(fmaxf(v, a), b);
  return v;
}
template <Binary OP>
__device__ __forceinline__ float apply2(float x, float y) {
  if constexpr (OP == Binary::Add) return x + y;
  if constexpr (OP == Binary::Mul) return x * y;
  if constexpr (OP == Binary::GeluTanhMul) return gelu_tanh_f(x) * y;
  return x;
}

template <Unary OP>
__global__ void unary_vec4(const float4* __restrict__ x, float4* __restrict__ y, int64_t n4,
                           float a, float b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4;
       i += int64_t(gridDim.x) * blockDim.x) {
    float4 v = x[i];
    v.x = apply1<OP>(v.x, a, b);
    v.y = apply1<OP>(v.y, a, b);
    v.z = apply1<OP>(v.z, a, b);
    v.w = apply1<OP>(v.w, a, b);
    y[i] = v;
  }
}
template <Unary OP>
__global__ void unary_scalar(const float* __restrict__ x, float* __restrict__ y, int64_t n,
                             float a, float b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = apply1<OP>(x[i], a, b);
}

// a/b/y may alias (add_ writes into a), so no __restrict__ here.
template <Binary OP>
__global__ void binary_vec4(const float4* a, const float4* b, float4* y, int64_t n4) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float4 p = a[i], q = b[i];
    float4 r;
    r.x = apply2<OP>(p.x, q.x);
    r.y = apply2<OP>(p.y, q.y);
    r.z = apply2<OP>(p.z, q.z);
    r.w = apply2<OP>(p.w, q.w);
    y[i] = r;
  }
}
template <Binary OP>
__global__ void binary_scalar(const float* a, const float* b, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = apply2<OP>(a[i], b[i]);
}

template <Unary OP>
void launch_unary(const float* x, float* y, int64_t n, float a, float b, cudaStream_t s) {
  if (n % 4 == 0 && aligned16(x) && aligned16(y)) {
    unary_vec4<OP><<<blocks_for(n / 4), kThreads, 0, s>>>(
        reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y), n / 4, a, b);
  } else {
    unary_scalar<OP><<<blocks_for(n), kThreads, 0, s>>>(x, y, n, a, b);
  }
  MG_CUDA_LAUNCH_CHECK();
}
template <Binary OP>
void launch_binary(const float* a, const float* b, float* y, int64_t n, cudaStream_t s) {
  if (n % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(y)) {
    binary_vec4<OP><<<blocks_for(n / 4), kThreads, 0, s>>>(
        reinterpret_cast<const float4*>(a), reinterpret_cast<const float4*>(b),
        reinterpret_cast<float4*>(y), n / 4);
  } else {
    binary_scalar<OP><<<blocks_for(n), kThreads, 0, s>>>(a, b, y, n);
  }
  MG_CUDA_LAUNCH_CHECK();
}

__global__ void add_row_kernel(const float* x, const float* __restrict__ row, float* y,
                               int64_t n, int64_t d) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = x[i] + row[i % d];
}

__global__ void gated_add_kernel(float* a, const float* __restrict__ y,
                                 const float* __restrict__ g, int64_t n, int64_t d) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a[i] = a[i] + y[i] * g[i % d];
}

__global__ void channel_bias_kernel(float* y, const float* __restrict__ b, int64_t n,
                                    int64_t p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i / p];
}

__global__ void f32_to_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ y,
                                   int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}
__global__ void f32_to_bf16_vec4(const float4* __restrict__ x, __nv_bfloat162* __restrict__ y,
                                 int64_t n4) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float4 v = x[i];
    y[2 * i] = __floats2bfloat162_rn(v.x, v.y);
    y[2 * i + 1] = __floats2bfloat162_rn(v.z, v.w);
  }
}
// hi = bf16(x), lo = bf16(x - hi): x to about 16 mantissa bits as two bf16 operands
__global__ void split_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ hi,
                                  __nv_bfloat16* __restrict__ lo, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    hi[i] = h;
    lo[i] = __float2bfloat16_rn(v - __bfloat162float(h));
  }
}
// y[r, c] = bf16(gate[r] * w[r, c]): a bf16 weight with its output rows scaled
__global__ void scale_rows_bf16_kernel(const __nv_bfloat16* __restrict__ w, const float* __restrict__ g,
                                       __nv_bfloat16* __restrict__ y, int64_t n, int64_t cols) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(g[i / cols] * __bfloat162float(w[i]));
}
// y = x + b[channel] (+ r): the widened conv output, its bias, and a residual added after
// them (the order of add(conv + bias, r), so the sum is the composition's bit for bit).
__global__ void bf16_to_f32_channel_bias_kernel(const __nv_bfloat16* __restrict__ x,
                                                const float* __restrict__ b, const float* __restrict__ r,
                                                float* __restrict__ y, int64_t n, int64_t p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = __bfloat162float(x[i]) + (b ? b[i / p] : 0.0f);
    y[i] = r ? v + r[i] : v;
  }
}
__global__ void bf16_to_f32_kernel(const __nv_bfloat16* __restrict__ x, float* __restrict__ y,
                                   int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}

}  // namespace

void unary(Unary op, const float* x, float* y, int64_t n, float a, float b, cudaStream_t s) {
  if (n <= 0) return;
  switch (op) {
    case Unary::GeluTanh: return launch_unary<Unary::GeluTanh>(x, y, n, a, b, s);
    case Unary::Silu: return launch_unary<Unary::Silu>(x, y, n, a, b, s);
    case Unary::Scale: return launch_unary<Unary::Scale>(x, y, n, a, b, s);
    case Unary::Clamp: return launch_unary<Unary::Clamp>(x, y, n, a, b, s);
  }
}

void binary(Binary op, const float* a, const float* b, float* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  switch (op) {
    case Binary::Add: return launch_binary<Binary::Add>(a, b, y, n, s);
    case Binary::Mul: return launch_binary<Binary::Mul>(a, b, y, n, s);
    case Binary::GeluTanhMul: return launch_binary<Binary::GeluTanhMul>(a, b, y, n, s);
  }
}

namespace {
__global__ void add_bf16_kernel(float* __restrict__ a, const __nv_bfloat16* __restrict__ b,
                                int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a[i] += __bfloat162float(b[i]);
}
}  // namespace

void add_bf16_(float* a, const uint16_t* b, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  add_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(a, reinterpret_cast<const __nv_bfloat16*>(b), n);
  MG_CUDA_LAUNCH_CHECK();
}

void add_row(const float* x, const float* row, float* y, int64_t rows, int64_t d,
             cudaStream_t s) {
  const int64_t n = rows * d;
  if (n <= 0) return;
  add_row_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, row, y, n, d);
  MG_CUDA_LAUNCH_CHECK();
}

void gated_add(float* a, const float* y, const float* gate, int64_t rows, int64_t d,
               cudaStream_t s) {
  const int64_t n = rows * d;
  if (n <= 0) return;
  gated_add_kernel<<<blocks_for(n), kThreads, 0, s>>>(a, y, gate, n, d);
  MG_CUDA_LAUNCH_CHECK();
}

void add_channel_bias(float* y, const float* b, int64_t c, int64_t p, cudaStream_t s) {
  const int64_t n = c * p;
  if (n <= 0) return;
  channel_bias_kernel<<<blocks_for(n), kThreads, 0, s>>>(y, b, n, p);
  MG_CUDA_LAUNCH_CHECK();
}

void split_bf16(const float* x, uint16_t* hi, uint16_t* lo, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  split_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, reinterpret_cast<__nv_bfloat16*>(hi),
                                                      reinterpret_cast<__nv_bfloat16*>(lo), n);
  MG_CUDA_LAUNCH_CHECK();
}

void scale_rows_bf16(const uint16_t* w, const float* gate, uint16_t* y, int64_t rows, int64_t cols,
                     cudaStream_t s) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  scale_rows_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(
      reinterpret_cast<const __nv_bfloat16*>(w), gate, reinterpret_cast<__nv_bfloat16*>(y), n, cols);
  MG_CUDA_LAUNCH_CHECK();
}

void f32_to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  if (n % 4 == 0 && aligned16(x) && (reinterpret_cast<uintptr_t>(y) & 7) == 0) {
    f32_to_bf16_vec4<<<blocks_for(n / 4), kThreads, 0, s>>>(
        reinterpret_cast<const float4*>(x), reinterpret_cast<__nv_bfloat162*>(y), n / 4);
  } else {
    f32_to_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(
        x, reinterpret_cast<__nv_bfloat16*>(y), n);
  }
  MG_CUDA_LAUNCH_CHECK();
}

void bf16_to_f32_channel_bias(const uint16_t* x, const float* b, const float* r, float* y, int64_t c,
                              int64_t p, cudaStream_t s) {
  const int64_t n = c * p;
  if (n <= 0) return;
  bf16_to_f32_channel_bias_kernel<<<blocks_for(n), kThreads, 0, s>>>(
      reinterpret_cast<const __nv_bfloat16*>(x), b, r, y, n, p);
  MG_CUDA_LAUNCH_CHECK();
}

void bf16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bf16_to_f32_kernel<<<blocks_for(n), kThreads, 0, s>>>(
      reinterpret_cast<const __nv_bfloat16*>(x), y, n);
  MG_CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace mg
