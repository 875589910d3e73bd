// flash_probe: kernels/flash_sm90.cu alone, without the engine: checks its output against a
// float32 reference on sampled rows and times it, burst (one warm-up, three calls, as the
// peer's part_attn) and sustained (ITERS calls back to back, median). Built with the CUDA
// backend (target flash_probe), and alone by tools/device-lease.sh (`flash` step):
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -Ikernels tools/flash_probe.cu kernels/flash_sm90.cu
// usage: flash_probe TOKENS HEADS ITERS BLOCK_N PERSISTENT [KV_TOKENS [SEGMENT]]
// SEGMENT > 0: the timed calls are ragged, segments of SEGMENT query and key rows (the check
// stays the dense call's).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.cuh"

namespace mg {
namespace cuda {
[[noreturn]] void throw_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(cudaGetErrorString(e)) + " in " + expr + " at " + file + ":" +
                           std::to_string(line));
}
[[noreturn]] void throw_cublas(cublasStatus_t, const char* expr, const char*, int) { throw std::runtime_error(expr); }
void log_warning(const std::string& m) { std::fprintf(stderr, "warning: %s\n", m.c_str()); }
void log_debug(const std::string&) {}
}  // namespace cuda
}  // namespace mg

using namespace mg::cuda;

__device__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}
// N(0, 1) by Box-Muller from two hashes, rounded to bf16.
__global__ void fill_normal(uint16_t* x, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float u1 = (hash32(seed * 0x9E3779B97F4A7C15ull + 2 * i) + 1.f) * 2.3283064e-10f;
    const float u2 = hash32(seed * 0x9E3779B97F4A7C15ull + 2 * i + 1) * 2.3283064e-10f;
    const float z = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
    const uint32_t b = __float_as_uint(z);
    x[i] = static_cast<uint16_t>((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
  }
}
__device__ float bf(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

// Reference: one block per (sampled row, head); scores in shared memory.
__global__ void reference(const uint16_t* q, const uint16_t* k, const uint16_t* v, const int* rows, float* out,
                          int nk, int h, float scale) {
  extern __shared__ float sc[];
  __shared__ float red[128];
  const int r = rows[blockIdx.x], head = blockIdx.y, t = threadIdx.x;
  const int64_t row = int64_t(h) * 128;
  __shared__ float qs[128];
  qs[t] = bf(q[r * row + head * 128 + t]);
  __syncthreads();
  float mx = -INFINITY;
  for (int j = t; j < nk; j += 128) {
    float acc = 0.f;
    for (int d = 0; d < 128; ++d) acc += qs[d] * bf(k[j * row + head * 128 + d]);
    sc[j] = acc * scale;
    mx = fmaxf(mx, sc[j]);
  }
  red[t] = mx;
  __syncthreads();
  for (int s = 64; s > 0; s >>= 1) {
    if (t < s) red[t] = fmaxf(red[t], red[t + s]);
    __syncthreads();
  }
  mx = red[0];
  __syncthreads();
  float sum = 0.f;
  for (int j = t; j < nk; j += 128) {
    sc[j] = expf(sc[j] - mx);
    sum += sc[j];
  }
  red[t] = sum;
  __syncthreads();
  for (int s = 64; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  sum = red[0];
  float acc = 0.f;
  for (int j = 0; j < nk; ++j) acc += sc[j] * bf(v[j * row + head * 128 + t]);
  out[(int64_t(blockIdx.x) * h + head) * 128 + t] = acc / sum;
}

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: flash_probe TOKENS HEADS ITERS BLOCK_N PERSISTENT [KV_TOKENS [SEGMENT]]\n");
    return 2;
  }
  const int64_t nq = std::atoll(argv[1]), h = std::atoll(argv[2]);
  const int iters = std::atoi(argv[3]), bn = std::atoi(argv[4]);
  const bool persist = std::atoi(argv[5]) != 0;
  const int64_t nk = argc > 6 ? std::atoll(argv[6]) : nq;
  const int64_t seg = argc > 7 ? std::atoll(argv[7]) : 0;
  const float scale = 1.f / std::sqrt(128.f);
  try {
    if (!flash_sm90_supported(0)) {
      std::printf("{\"error\": \"not an sm_90 device or no cuTensorMapEncodeTiled\"}\n");
      return 1;
    }
    uint16_t *q, *k, *v, *o;
    MG_CUDA_CHECK(cudaMalloc(&q, nq * h * 256));
    MG_CUDA_CHECK(cudaMalloc(&k, nk * h * 256));
    MG_CUDA_CHECK(cudaMalloc(&v, nk * h * 256));
    MG_CUDA_CHECK(cudaMalloc(&o, nq * h * 256));
    fill_normal<<<1024, 256>>>(q, nq * h * 128, 1);
    fill_normal<<<1024, 256>>>(k, nk * h * 128, 2);
    fill_normal<<<1024, 256>>>(v, nk * h * 128, 3);
    MG_CUDA_CHECK(cudaMemset(o, 0xFF, nq * h * 256));  // NaN where a row is not written
    cudaStream_t st;
    MG_CUDA_CHECK(cudaStreamCreate(&st));
    if (!flash_sm90_dense(q, k, v, o, nq, nk, h, 128, scale, bn, persist, st)) {
      std::printf("{\"error\": \"flash_sm90_dense refused the call\"}\n");
      return 1;
    }
    MG_CUDA_CHECK(cudaStreamSynchronize(st));

    // Correctness on sampled rows: the first and last 64, and 64 spread between (the
    // reference keeps a row's scores in shared memory: up to 50,000 keys).
    if (nk > 50000) {
      std::printf("{\"what\": \"check\", \"skipped\": \"more keys than the reference holds\"}\n");
    } else {
    std::vector<int> rows;
    for (int i = 0; i < 64 && i < nq; ++i) rows.push_back(i);
    for (int i = 0; i < 64; ++i) rows.push_back(static_cast<int>((nq - 1) * (i + 0.5) / 64));
    for (int i = 0; i < 64 && i < nq; ++i) rows.push_back(static_cast<int>(nq - 1 - i));
    int* drows;
    float* ref;
    MG_CUDA_CHECK(cudaMalloc(&drows, rows.size() * 4));
    MG_CUDA_CHECK(cudaMalloc(&ref, rows.size() * h * 128 * 4));
    MG_CUDA_CHECK(cudaMemcpy(drows, rows.data(), rows.size() * 4, cudaMemcpyHostToDevice));
    const size_t sm = nk * 4;
    MG_CUDA_CHECK(cudaFuncSetAttribute(reference, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(sm)));
    reference<<<dim3(static_cast<unsigned>(rows.size()), static_cast<unsigned>(h)), 128, sm>>>(
        q, k, v, drows, ref, static_cast<int>(nk), static_cast<int>(h), scale);
    MG_CUDA_LAUNCH_CHECK();
    MG_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> hr(rows.size() * h * 128);
    std::vector<uint16_t> ho(nq * h * 128);
    MG_CUDA_CHECK(cudaMemcpy(hr.data(), ref, hr.size() * 4, cudaMemcpyDeviceToHost));
    MG_CUDA_CHECK(cudaMemcpy(ho.data(), o, ho.size() * 2, cudaMemcpyDeviceToHost));
    double num = 0, den = 0, maxabs = 0;
    int64_t nan = 0;
    for (size_t i = 0; i < rows.size(); ++i)
      for (int64_t hh = 0; hh < h; ++hh)
        for (int d = 0; d < 128; ++d) {
          const float want = hr[(i * h + hh) * 128 + d];
          const uint32_t bits = static_cast<uint32_t>(ho[(rows[i] * h + hh) * 128 + d]) << 16;
          float got;
          std::memcpy(&got, &bits, 4);
          if (!std::isfinite(got)) {
            ++nan;
            continue;
          }
          num += double(got - want) * (got - want);
          den += double(want) * want;
          maxabs = std::max(maxabs, double(std::fabs(got - want)));
        }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    int64_t nan_all = 0;
    for (uint16_t x : ho) nan_all += ((x & 0x7F80) == 0x7F80);
    std::printf("{\"what\": \"check\", \"nq\": %lld, \"nk\": %lld, \"h\": %lld, \"bn\": %d, \"rel_l2\": %.3e, "
                "\"max_abs\": %.3e, \"nonfinite_sampled\": %lld, \"nonfinite_all\": %lld}\n",
                (long long)nq, (long long)nk, (long long)h, bn, rel, maxabs, (long long)nan, (long long)nan_all);
    std::fflush(stdout);
    }

    double flop = 4.0 * nq * nk * 128.0 * h;
    // the timed call: dense, or ragged over segments of `seg` rows
    int32_t* dtiles = nullptr;
    int64_t n_tiles = 0;
    if (seg > 0) {
      std::vector<int64_t> lq, lk;
      flop = 0;
      for (int64_t r = 0; r < std::min(nq, nk); r += seg) {
        const int64_t n = std::min(seg, std::min(nq, nk) - r);
        lq.push_back(n);
        lk.push_back(n);
        flop += 4.0 * n * n * 128.0 * h;
      }
      const std::vector<int32_t> t = flash_sm90_tiles(lq, lk);
      n_tiles = static_cast<int64_t>(t.size() / 4);
      MG_CUDA_CHECK(cudaMalloc(&dtiles, t.size() * 4));
      MG_CUDA_CHECK(cudaMemcpy(dtiles, t.data(), t.size() * 4, cudaMemcpyHostToDevice));
    }
    auto call = [&] {
      return seg > 0 ? flash_sm90_ragged(q, k, v, o, nq, nk, h, 128, scale, dtiles, n_tiles, bn, persist, st)
                     : flash_sm90_dense(q, k, v, o, nq, nk, h, 128, scale, bn, persist, st);
    };
    EventTimer timer(st);
    // burst: one warm-up, three calls
    call();
    const float ms = timer.ms(call, 3);
    std::printf("{\"what\": \"burst\", \"bn\": %d, \"persistent\": %d, \"seg\": %lld, \"h\": %lld, \"ms\": %.3f, "
                "\"tflops\": %.1f}\n",
                bn, int(persist), (long long)seg, (long long)h, ms, flop / (ms * 1e-3) / 1e12);
    std::fflush(stdout);
    std::vector<float> ts;
    for (int i = 0; i < iters; ++i) ts.push_back(timer.ms(call));
    if (!ts.empty()) {
      std::sort(ts.begin(), ts.end());
      const float med = ts[ts.size() / 2];
      std::printf("{\"what\": \"sustained\", \"bn\": %d, \"persistent\": %d, \"seg\": %lld, \"h\": %lld, "
                  "\"iters\": %d, \"ms\": %.3f, \"tflops\": %.1f}\n",
                  bn, int(persist), (long long)seg, (long long)h, iters, med, flop / (med * 1e-3) / 1e12);
    }
    return 0;
  } catch (const std::exception& e) {
    std::printf("{\"error\": \"%s\"}\n", e.what());
    return 1;
  }
}
