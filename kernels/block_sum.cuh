// The sum of a value over a thread block, for every thread: shuffles within each warp, then
// the warps' sums through `sh` (at least 32 floats of shared memory). Safe to call more than
// once in a kernel with the same `sh`. Used by the row kernels of norms.cu and rope.cu.
#pragma once

namespace mg {
namespace cuda {

__device__ __forceinline__ float block_sum(float v, float* sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();  // sh may still be read from a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace cuda
}  // namespace mg
