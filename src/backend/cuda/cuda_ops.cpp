// The CUDA backend (host side). Kernels live in kernels/*.cu behind kernels/kernels.cuh.
//
// Precision (shared/wan-notes.md §1.6): activations are F32 in device memory; weights are
// BF16 on the device unless the model asks to keep them F32. `linear` runs bf16
// tensor-core GEMMs with fp32 accumulation (cuBLASLt) for BF16 weights, and F32 weights as
// plain fp32 GEMMs unless set_f32_matmul(Tf32) (the umT5 encoder). `conv3d` with F32
// weights (the VAE) runs cuDNN's implicit GEMM or im2col + GEMM on TF32 tensor cores.
// Attention runs cuDNN's fused flash attention on bf16 q/k/v (fp32 softmax) and returns its
// bf16 output as it is; an exact fp32 path takes what cuDNN rejects (bias, head dims > 256).
// A few ops keep or write bf16 where the next op reads bf16 anyway (compact, gemm_input,
// rms_norm_rope, layer_norm_modulate_gemm, linear_gelu, hold_frames; ops.h), and every op
// reads either form. Every other op is F32 and matches the CPU backend
// (src/backend/cpu/cpu_ops.cpp), which defines the semantics, to float rounding.
//
// Memory: one caching allocator per backend (size-bucketed free lists), so a denoising loop
// reuses blocks instead of calling cudaMalloc per step. All work is issued on one stream,
// so blocks freed by host code are reused only by work queued after their last use.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <unordered_map>

#include "kernels/kernels.cuh"
#include "mogagen/log.h"
#include "mogagen/ops.h"

namespace mg {
namespace cuda {

// ---- errors and logging -----------------------------------------------------------------------

void throw_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so later calls are not poisoned
  throw device_error(std::string(file) + ":" + std::to_string(line) + ": CUDA error " +
                     cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") in " + expr);
}

void throw_cublas(cublasStatus_t s, const char* expr, const char* file, int line) {
  throw device_error(std::string(file) + ":" + std::to_string(line) + ": cuBLAS error " +
                     cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ") in " + expr);
}

void log_warning(const std::string& msg) { spdlog::warn("{}", msg); }
void log_debug(const std::string& msg) { spdlog::debug("{}", msg); }

long env_count(const char* name, long lo, long hi, long dflt, const char* what) {
  const char* e = std::getenv(name);
  if (!e || !*e) return dflt;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);
  if (*end != '\0' || v < lo || v > hi) {
    log_warning(std::string(name) + "='" + e + "' is not " + what + "; using " + std::to_string(dflt));
    return dflt;
  }
  return v;
}

int tune_ms_from_env() {
  static const int ms =
      static_cast<int>(env_count("MOGAGEN_TUNE_MS", 0, 5000, 0, "a count of milliseconds from 0 to 5000"));
  return ms;
}

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), u ? "%.2f %s" : "%.0f %s", b, units[u]);
  return buf;
}

// ---- caching allocator ------------------------------------------------------------------------

class Allocator : public DeviceMemory, public std::enable_shared_from_this<Allocator> {
 public:
  explicit Allocator(int device) : device_(device) {}
  ~Allocator() override {
    // Runs when the backend and every tensor it made are gone. At process exit the CUDA
    // runtime may already be unloading: errors are ignored.
    if (cudaSetDevice(device_) != cudaSuccess) return;
    for (auto& kv : free_) cudaFree(kv.second);
    cudaGetLastError();
  }

  void* alloc(size_t bytes) {
    const size_t r = round(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(r);
    if (it != free_.end() && it->first <= r + r / 8) {
      void* p = it->second;
      cached_ -= it->first;
      live_ += it->first;
      peak_ = std::max(peak_, live_);
      free_.erase(it);
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, r);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached_locked();
      e = cudaMalloc(&p, r);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t fr = 0, total = 0;
      cudaMemGetInfo(&fr, &total);
      cudaGetLastError();
      if (e == cudaErrorMemoryAllocation)
        throw device_error("CUDA out of memory on cuda:" + std::to_string(device_) +
                           ": requested " + std::to_string(bytes) + " bytes (" +
                           human_bytes(double(bytes)) + "), " + human_bytes(double(fr)) +
                           " free of " + human_bytes(double(total)) + "; this process holds " +
                           human_bytes(double(live_)) +
                           " in live tensors. Use a smaller resolution or fewer frames, a "
                           "smaller model, or free the GPU from other processes.");
      throw device_error("cudaMalloc of " + std::to_string(bytes) + " bytes on cuda:" +
                         std::to_string(device_) + " failed: " + cudaGetErrorName(e) + " (" +
                         cudaGetErrorString(e) + ")");
    }
    sizes_[p] = r;
    live_ += r;
    peak_ = std::max(peak_, live_);
    return p;
  }

  Ops::MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {live_, peak_, live_ + cached_};
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = live_;
  }

  void release(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return;
    live_ -= it->second;
    cached_ += it->second;
    free_.emplace(it->second, p);
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }

  std::shared_ptr<void> scratch(size_t bytes) override {
    void* p = alloc(bytes);
    auto self = shared_from_this();
    return std::shared_ptr<void>(p, [self](void* q) { self->release(q); });
  }

 private:
  static size_t round(size_t bytes) {
    if (bytes < (size_t(1) << 20)) return std::max<size_t>(512, (bytes + 511) / 512 * 512);
    size_t p = 1;
    while (p < bytes) p <<= 1;
    const size_t g = p / 16;  // waste <= 1/16
    return (bytes + g - 1) / g * g;
  }
  void release_cached_locked() {
    cudaDeviceSynchronize();  // cudaFree would synchronise anyway; keep it explicit
    for (auto& kv : free_) {
      sizes_.erase(kv.second);
      cudaFree(kv.second);
    }
    free_.clear();
    cached_ = 0;
    cudaGetLastError();
  }

  int device_;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> sizes_;
  size_t live_ = 0, cached_ = 0, peak_ = 0;
};

// ---- cuBLASLt GEMM (column-major, D F32) ------------------------------------------------------

struct GemmArgs {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  float* c = nullptr;
  int64_t ldc = 0;
  cudaDataType_t ab = CUDA_R_32F;  // CUDA_R_16BF (fp32 accumulate) or CUDA_R_32F (no TF32)
  const void* bias = nullptr;      // [m], added to every column (epilogue)
  cudaDataType_t bias_type = CUDA_R_32F;  // CUDA_R_16BF only with a bf16 D (D's type)
  bool tf32 = false;               // F32 inputs on TF32 tensor cores (fp32 accumulation)
};

int align_of(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && (v % a)) a >>= 1;
  return a;
}

class Gemm {
 public:
  // scratch(bytes): device memory for a moment (timing a residual GEMM's candidates aside)
  using Scratch = std::function<std::shared_ptr<void>(size_t)>;
  Gemm(cublasLtHandle_t lt, cublasHandle_t blas, cudaStream_t stream, void* ws, size_t ws_bytes, Scratch scratch)
      : lt_(lt), blas_(blas), stream_(stream), ws_(ws), ws_bytes_(ws_bytes), scratch_(std::move(scratch)) {}
  ~Gemm() {
    for (auto& kv : cache_) {
      Entry& e = kv.second;
      if (e.a) cublasLtMatrixLayoutDestroy(e.a);
      if (e.b) cublasLtMatrixLayoutDestroy(e.b);
      if (e.c) cublasLtMatrixLayoutDestroy(e.c);
      if (e.op) cublasLtMatmulDescDestroy(e.op);
    }
  }

  void run(const GemmArgs& g) {
    if (g.m <= 0 || g.n <= 0) return;
    if (g.k <= 0) {  // empty reduction: D = bias (or 0)
      MG_CUDA_CHECK(cudaMemset2DAsync(g.c, g.ldc * sizeof(float), 0, g.m * sizeof(float), g.n,
                                      stream_));
      if (g.bias) add_bias(g);
      return;
    }
    Entry& e = entry(g, Out::F32);
    const float one = 1.0f, zero = 0.0f;
    if (e.ok) {
      if (g.bias)
        MG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &g.bias, sizeof(g.bias)));
      auto launch = [&](const cublasLtMatmulAlgo_t& algo) {  // D = A B (+ bias): repeatable
        return cublasLtMatmul(lt_, e.op, &one, g.a, e.a, g.b, e.b, &zero, g.c, e.c, g.c, e.c, &algo, ws_,
                              ws_bytes_, stream_);
      };
      if (!e.candidates.empty()) pick(e, g, launch);
      MG_CUBLAS_CHECK(launch(e.algo));
      return;
    }
    // No cuBLASLt algorithm for this layout: the classic API handles everything.
    MG_CUBLAS_CHECK(cublasGemmEx(blas_, g.ta, g.tb, int(g.m), int(g.n), int(g.k), &one, g.a, g.ab,
                                 int(g.lda), g.b, g.ab, int(g.ldb), &zero, g.c, CUDA_R_32F,
                                 int(g.ldc), compute_type(g), CUBLAS_GEMM_DEFAULT));
    if (g.bias) add_bias(g);
  }

  // D = A B + C + bias with C = D = g.c (float32, in place). Returns false, having done
  // nothing, when cuBLASLt has no algorithm for it: the caller then runs the composition.
  bool run_residual(const GemmArgs& g) {
    if (g.m <= 0 || g.n <= 0 || g.k <= 0) return false;
    Entry& e = entry(g, Out::F32);  // run()'s descriptors: beta is not part of them
    if (!e.ok) return false;
    const float one = 1.0f;
    if (g.bias)
      MG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &g.bias, sizeof(g.bias)));
    if (!e.candidates.empty()) {
      // Timed aside: D into scratch, C read from the stream (running it in place would add
      // the product more than once). Too large an output keeps the heuristics' first.
      const size_t bytes = static_cast<size_t>(g.ldc) * static_cast<size_t>(g.n) * sizeof(float);
      if (bytes <= kMaxPickScratch) {
        const std::shared_ptr<void> d = scratch_(bytes);
        pick(e, g, [&](const cublasLtMatmulAlgo_t& algo) {
          return cublasLtMatmul(lt_, e.op, &one, g.a, e.a, g.b, e.b, &one, g.c, e.c, d.get(), e.c, &algo, ws_,
                                ws_bytes_, stream_);
        });
      } else {
        e.candidates.clear();
      }
    }
    MG_CUBLAS_CHECK(cublasLtMatmul(lt_, e.op, &one, g.a, e.a, g.b, e.b, &one, g.c, e.c, g.c, e.c,
                                   &e.algo, ws_, ws_bytes_, stream_));
    return true;
  }

  // A bf16 D (bias in the epilogue, and the tanh-GELU when `gelu`): bf16 A and B only.
  // Returns false, having done nothing, when cuBLASLt has no algorithm for it: the caller
  // then runs the composition.
  bool run_bf16(const GemmArgs& g, uint16_t* d, bool gelu) {
    if (g.m <= 0 || g.n <= 0 || g.k <= 0 || g.ab != CUDA_R_16BF) return false;
    GemmArgs h = g;
    h.c = reinterpret_cast<float*>(d);  // only its address (alignment, pointer) is used
    Entry& e = entry(h, gelu ? Out::GeluBf16 : Out::Bf16);
    if (!e.ok) return false;
    const float one = 1.0f, zero = 0.0f;
    if (g.bias)
      MG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &g.bias, sizeof(g.bias)));
    auto launch = [&](const cublasLtMatmulAlgo_t& algo) {
      return cublasLtMatmul(lt_, e.op, &one, g.a, e.a, g.b, e.b, &zero, d, e.c, d, e.c, &algo, ws_, ws_bytes_,
                            stream_);
    };
    if (!e.candidates.empty()) pick(e, g, launch);
    MG_CUBLAS_CHECK(launch(e.algo));
    return true;
  }

 private:
  using Key = std::array<int64_t, 16>;
  struct Entry {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
    // the heuristics' algorithms, best first, until the first call has timed them
    std::vector<cublasLtMatmulAlgo_t> candidates;
  };
  static constexpr int kMaxAlgos = 6;
  static constexpr size_t kMaxPickScratch = size_t(1) << 30;

  // First call of an entry with several algorithms: the fastest through `launch`
  // (fastest_of; launch must be repeatable) becomes the entry's algorithm. The heuristics'
  // first pick is not always the fastest.
  template <typename Launch>
  void pick(Entry& e, const GemmArgs& g, Launch&& launch) {
    std::vector<float> times;
    const size_t bi = fastest_of(
        e.candidates.size(), stream_, [&](size_t i) { return launch(e.candidates[i]) == CUBLAS_STATUS_SUCCESS; },
        nullptr, &times);
    if (spdlog::should_log(spdlog::level::debug)) {
      std::string t;
      for (float ms : times) t += " " + (ms < 0.0f ? std::string("-") : std::to_string(ms));
      log_debug("cuBLASLt m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) +
                ": algorithm " + std::to_string(bi) + " of " +
                std::to_string(times.size()) + " is the fastest; ms:" + t);
    }
    e.algo = e.candidates[bi];
    e.candidates.clear();
  }

  void add_bias(const GemmArgs& g) {
    // Column-major m x n with ldc: column j is row j of a row-major [n, ldc] view.
    if (g.ldc == g.m) {
      add_row(g.c, static_cast<const float*>(g.bias), g.c, g.n, g.m, stream_);
    } else {
      for (int64_t j = 0; j < g.n; ++j)
        add_row(g.c + j * g.ldc, static_cast<const float*>(g.bias), g.c + j * g.ldc, 1, g.m, stream_);
    }
  }

  static cublasComputeType_t compute_type(const GemmArgs& g) {
    return g.tf32 && g.ab == CUDA_R_32F ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  }

  // What D is: float32 (run, run_residual), bf16, or bf16 after the tanh-GELU (run_bf16).
  enum class Out { F32, Bf16, GeluBf16 };
  Entry& entry(const GemmArgs& g, Out out) {
    const int64_t mode = int64_t(out) + 4 * int64_t(g.bias_type);
    const Key key{int64_t(g.ta),        int64_t(g.tb),         g.m,
                  g.n,                  g.k,                   g.lda,
                  g.ldb,                g.ldc,                 int64_t(g.ab),
                  g.bias != nullptr,    align_of(g.a),         align_of(g.b),
                  align_of(g.c),        g.bias ? align_of(g.bias) : 0, int64_t(g.tf32),
                  mode};
    auto it = cache_.find(key);
    if (it == cache_.end()) it = cache_.emplace(key, make_entry(g, out)).first;
    return it->second;
  }

  Entry make_entry(const GemmArgs& g, Out out) {
    const bool gelu = out == Out::GeluBf16, bf16_d = out != Out::F32;
    Entry e;
    MG_CUBLAS_CHECK(cublasLtMatmulDescCreate(&e.op, compute_type(g), CUDA_R_32F));
    MG_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_TRANSA, &g.ta, sizeof(g.ta)));
    MG_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_TRANSB, &g.tb, sizeof(g.tb)));
    if (g.bias || gelu) {
      const cublasLtEpilogue_t epi =
          gelu ? (g.bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU)
               : CUBLASLT_EPILOGUE_BIAS;
      MG_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      // A float32 bias with a bf16 D needs the bias type set (it defaults to D's type); a
      // cuBLASLt that refuses leaves the entry without an algorithm (the caller falls back:
      // a bf16 copy of the bias, then the composition). A bf16 bias keeps the default.
      if (g.bias && g.bias_type == CUDA_R_32F && bf16_d &&
          cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                         &g.bias_type, sizeof(g.bias_type)) != CUBLAS_STATUS_SUCCESS)
        return e;
    }
    const bool at = g.ta != CUBLAS_OP_N, bt = g.tb != CUBLAS_OP_N;
    MG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.a, g.ab, at ? g.k : g.m, at ? g.m : g.k, g.lda));
    MG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.b, g.ab, bt ? g.n : g.k, bt ? g.k : g.n, g.ldb));
    MG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.c, bf16_d ? CUDA_R_16BF : CUDA_R_32F, g.m,
                                               g.n, g.ldc));

    cublasLtMatmulPreference_t pref = nullptr;
    MG_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t wsb = ws_bytes_;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb,
                                         sizeof(wsb));
    const uint32_t al[4] = {uint32_t(align_of(g.a)), uint32_t(align_of(g.b)),
                            uint32_t(align_of(g.c)), uint32_t(align_of(g.c))};
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0],
                                         sizeof(uint32_t));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1],
                                         sizeof(uint32_t));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2],
                                         sizeof(uint32_t));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3],
                                         sizeof(uint32_t));
    cublasLtMatmulHeuristicResult_t res[kMaxAlgos] = {};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(lt_, e.op, e.a, e.b, e.c, e.c, pref, kMaxAlgos, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st == CUBLAS_STATUS_SUCCESS)
      for (int i = 0; i < std::min(found, kMaxAlgos); ++i)
        if (res[i].state == CUBLAS_STATUS_SUCCESS) e.candidates.push_back(res[i].algo);
    if (!e.candidates.empty()) {
      e.algo = e.candidates.front();
      e.ok = true;
      if (e.candidates.size() == 1) e.candidates.clear();  // nothing to choose
    }
    return e;
  }

  cublasLtHandle_t lt_;
  cublasHandle_t blas_;
  cudaStream_t stream_;
  void* ws_;
  size_t ws_bytes_;
  Scratch scratch_;
  std::map<Key, Entry> cache_;
};

// ---- the backend ------------------------------------------------------------------------------

std::string device_name(int dev) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    cudaGetLastError();
    return "unknown";
  }
  return p.name;
}

class CudaOps final : public Ops {
 public:
  explicit CudaOps(int device) : dev_(device) {
    MG_CUDA_CHECK(cudaSetDevice(dev_));
    name_ = "cuda:" + std::to_string(dev_) + " (" + device_name(dev_) +
            "; bf16 GEMM/attention, fp32 activations)";
    mem_ = std::make_shared<Allocator>(dev_);
    MG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MG_CUBLAS_CHECK(cublasCreate(&blas_));
    MG_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    MG_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));  // no TF32
    MG_CUBLAS_CHECK(cublasLtCreate(&lt_));
    ws_ = mem_->scratch(kWorkspace);
    MG_CUBLAS_CHECK(cublasSetWorkspace(blas_, ws_.get(), kWorkspace));
    gemm_ = std::make_unique<Gemm>(lt_, blas_, stream_, ws_.get(), kWorkspace,
                                   [this](size_t bytes) { return mem_->scratch(bytes); });
    sdpa_ = std::make_unique<Sdpa>(dev_, stream_);
    conv_ = std::make_unique<CudnnConv3d>(dev_, stream_);
    const char* no = std::getenv("MOGAGEN_NO_CUDNN");
    use_cudnn_ = !(no && *no && std::strcmp(no, "0") != 0);
    // MOGAGEN_CONV: bf16-ndhwc (the default: cuDNN with bf16 data and float accumulation,
    // the precision diffusers' bf16 decode runs at, on channels-last copies, cuDNN's
    // tensor-core layout: 1.605 s against 1.757 s for the decode on the H200), bf16 (the
    // same arithmetic on the NCDHW tensors as they are), cudnn (cuDNN on float32 data,
    // TF32) or im2col (im2col + GEMM, float32, to compare)
    const char* conv = std::getenv("MOGAGEN_CONV");
    if (conv && *conv && std::strcmp(conv, "bf16-ndhwc") != 0) {
      conv_ndhwc_ = false;
      if (std::strcmp(conv, "im2col") == 0)
        cudnn_conv_ = false;
      else if (std::strcmp(conv, "cudnn") == 0)
        conv_bf16_ = false;
      else if (std::strcmp(conv, "bf16") != 0)
        throw usage_error(std::string("MOGAGEN_CONV: expected bf16, bf16-ndhwc, cudnn or im2col, found '") +
                          conv + "'");
    }
  }

  ~CudaOps() override {
    cudaSetDevice(dev_);
    cudaStreamSynchronize(stream_);
    conv_w16_.clear();  // device tensors: released while the stream and memory are alive
    conv_w16_ndhwc_.clear();
    sdpa_.reset();
    conv_.reset();
    gemm_.reset();
    if (lt_) cublasLtDestroy(lt_);
    if (blas_) cublasDestroy(blas_);
    ws_.reset();
    if (stream_) cudaStreamDestroy(stream_);
    cudaGetLastError();
  }

  Device device() const override { return Device::cuda(dev_); }
  std::string name() const override { return name_; }

  // ---- memory ----------------------------------------------------------------------------------

  Tensor weight(const Tensor& host, bool keep_f32) override {
    bind();
    if (!host.defined()) throw internal_error("weight: undefined tensor");
    if (!host.device().is_cpu()) {
      expect_dev(host, "weight", "host");
      if (keep_f32) return host.dtype() == DType::F32 ? host : to_f32(host);
      if (host.dtype() == DType::BF16) return host;
      Tensor f = in_f32(host, "weight", "host");
      Tensor y = alloc(host.shape(), DType::BF16);
      f32_to_bf16(f.data<float>(), y.data<uint16_t>(), f.numel(), stream_);
      return y;
    }
    if (!keep_f32 && host.dtype() == DType::BF16) {
      Tensor y = alloc(host.shape(), DType::BF16);
      h2d(y.raw(), host.raw(), host.nbytes());
      return y;
    }
    const Tensor f = host.dtype() == DType::F32 ? host : host.to(DType::F32);
    if (keep_f32) {
      Tensor y = alloc(f.shape(), DType::F32);
      h2d(y.raw(), f.raw(), f.nbytes());
      return y;
    }
    // F32 -> BF16 on the device (round to nearest even), in slices to bound the staging.
    Tensor y = alloc(f.shape(), DType::BF16);
    const int64_t n = f.numel(), chunk = int64_t(1) << 26;  // 256 MB of F32
    auto stage = mem_->scratch(static_cast<size_t>(std::min(n, chunk)) * sizeof(float));
    for (int64_t i = 0; i < n; i += chunk) {
      const int64_t c = std::min(chunk, n - i);
      h2d(stage.get(), static_cast<const float*>(f.raw()) + i, c * sizeof(float));
      f32_to_bf16(static_cast<float*>(stage.get()), y.data<uint16_t>() + i, c, stream_);
    }
    return y;
  }

  Tensor upload(const Tensor& host) override {
    bind();
    if (!host.defined() || host.dtype() != DType::F32 || !host.device().is_cpu())
      throw internal_error("upload: expected a CPU F32 tensor, got " +
                           (host.defined() ? host.str() + " on " + host.device().str()
                                           : std::string("undefined")));
    Tensor y = alloc(host.shape(), DType::F32);
    h2d(y.raw(), host.raw(), host.nbytes());
    return y;
  }

  Tensor download(const Tensor& t) override {
    bind();
    if (!t.defined()) throw internal_error("download: undefined tensor");
    if (t.device().is_cpu()) {
      if (t.dtype() == DType::F32) return t;
      return t.to(DType::F32);
    }
    const Tensor f = in_f32(t, "download", "t");
    Tensor h = Tensor::empty(f.shape());
    if (f.nbytes())
      MG_CUDA_CHECK(
          cudaMemcpyAsync(h.raw(), f.raw(), f.nbytes(), cudaMemcpyDeviceToHost, stream_));
    MG_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return h;
  }

  Tensor empty(const Shape& s) override {
    bind();
    return alloc(s, DType::F32);
  }
  Tensor zeros(const Shape& s) override {
    bind();
    Tensor y = alloc(s, DType::F32);
    if (y.nbytes()) MG_CUDA_CHECK(cudaMemsetAsync(y.raw(), 0, y.nbytes(), stream_));
    return y;
  }

  // ---- linear algebra ----------------------------------------------------------------------------

  Tensor linear(const Tensor& x, const Tensor& w, const Tensor* b) override {
    bind();
    expect_dev(x, "linear", "x");
    expect_dev(w, "linear", "w");
    if (w.ndim() != 2) throw internal_error("linear: weight must be 2-D, got " + w.str());
    const int64_t n = w.dim(0), k = w.dim(1);
    if (x.ndim() < 1 || x.dim(-1) != k)
      throw internal_error("linear: x " + x.str() + " does not match weight " + w.str());
    const int64_t m = x.numel() / k;
    Shape os = x.shape();
    os.back() = n;
    Tensor y = alloc(os, DType::F32);
    const Tensor bias = linear_bias(b, w, "linear");
    if (m == 0) return y;
    GemmArgs g = linear_gemm(w, m, bias);
    g.c = y.data<float>();
    Tensor xin;
    if (w.dtype() == DType::BF16) {
      xin = to_bf16(x, "linear", "x");
      g.ab = CUDA_R_16BF;
    } else if (w.dtype() == DType::F32) {
      xin = in_f32(x, "linear", "x");
      g.ab = CUDA_R_32F;
      g.tf32 = f32_matmul_ == F32Matmul::Tf32;
    } else {
      throw internal_error("linear: weight dtype " + w.str() + " (expected BF16 or F32)");
    }
    g.a = w.raw();
    g.b = xin.raw();
    gemm_->run(g);
    return y;
  }

  Tensor gemm_input(const Tensor& x) override {
    bind();
    return to_bf16(x, "gemm_input", "x");
  }

  void linear_residual_(Tensor& acc, const Tensor& x, const Tensor& w, const Tensor* b,
                        const Tensor* gate) override {
    bind();
    expect_out(acc, "linear_residual_", "acc");
    expect_dev(x, "linear_residual_", "x");
    expect_dev(w, "linear_residual_", "w");
    if (w.dtype() == DType::BF16 && w.ndim() == 2 && x.ndim() >= 1 && x.dim(-1) == w.dim(1)) {
      const int64_t n = w.dim(0), m = x.numel() / w.dim(1);
      if (acc.numel() != m * n)
        throw internal_error("linear_residual_: acc " + acc.str() + " for x " + x.str() + " w " + w.str());
      if (m == 0) return;
      Tensor bias = linear_bias(b, w, "linear_residual_"), wg = w;
      if (gate) {
        // The gate folded into the weight: gate (.) (x w^T + b) = x (gate (.) w)^T + gate (.) b,
        // with gate (.) w rounded to bf16 once per call (a pass over the weight, against two
        // over [N, n] in float32 for the composition). cuBLASLt's alpha-vector pointer modes
        // would keep w as it is, but it has no algorithm for them with bf16 operands (the
        // H200 run of CudaOps.LinearResidual, docs/performance.md, sixth session).
        const Tensor g = in_f32(*gate, "linear_residual_", "gate");
        if (g.numel() != n)
          throw internal_error("linear_residual_: gate " + gate->str() + " for " + w.str());
        if (bias.defined()) bias = mul(g, bias);
        wg = alloc(w.shape(), DType::BF16);
        cuda::scale_rows_bf16(w.data<uint16_t>(), g.data<float>(), wg.data<uint16_t>(), n, w.dim(1),
                              stream_);
      }
      const Tensor xin = to_bf16(x, "linear_residual_", "x");
      GemmArgs ga = linear_gemm(w, m, bias);
      ga.ab = CUDA_R_16BF;
      ga.a = wg.raw();
      ga.b = xin.raw();
      ga.c = acc.data<float>();
      if (gemm_->run_residual(ga)) return;
    }
    Ops::linear_residual_(acc, x, w, b, gate);  // float32 weights, or no cuBLASLt algorithm
  }

  SplitWeight split_weight(const Tensor& w) override {
    bind();
    const Tensor f = in_f32(w.device().is_cpu() ? weight(w, true) : w, "split_weight", "w");
    Tensor hi = alloc(w.shape(), DType::BF16), lo = alloc(w.shape(), DType::BF16);
    cuda::split_bf16(f.data<float>(), hi.data<uint16_t>(), lo.data<uint16_t>(), f.numel(), stream_);
    return {hi, lo};
  }

  Tensor linear_split(const Tensor& x, const SplitWeight& w, const Tensor* b) override {
    bind();
    if (!w.lo.defined() || w.hi.dtype() != DType::BF16 || w.lo.shape() != w.hi.shape())
      return linear(x, w.hi, b);  // not split here: the weight as it is
    expect_dev(x, "linear_split", "x");
    if (w.hi.ndim() != 2 || x.ndim() < 1 || x.dim(-1) != w.hi.dim(1))
      throw internal_error("linear_split: x " + x.str() + " does not match weight " + w.hi.str());
    const int64_t k = w.hi.dim(1), m = x.numel() / k;
    Shape os = x.shape();
    os.back() = w.hi.dim(0);
    Tensor y = alloc(os, DType::F32);
    const Tensor bias = linear_bias(b, w.hi, "linear_split");
    if (m == 0) return y;
    const Tensor xf = in_f32(x, "linear_split", "x");
    Tensor xh = alloc(x.shape(), DType::BF16), xl = alloc(x.shape(), DType::BF16);
    cuda::split_bf16(xf.data<float>(), xh.data<uint16_t>(), xl.data<uint16_t>(), xf.numel(), stream_);
    GemmArgs g = linear_gemm(w.hi, m, bias);  // y = hi.hi + bias
    g.ab = CUDA_R_16BF;
    g.a = w.hi.raw();
    g.b = xh.raw();
    g.c = y.data<float>();
    gemm_->run(g);
    GemmArgs r = linear_gemm(w.hi, m, Tensor());  // then += hi.lo and += lo.hi
    r.ab = CUDA_R_16BF;
    r.c = y.data<float>();
    r.a = w.hi.raw();
    r.b = xl.raw();
    gemm_accumulate(r, y);
    r.a = w.lo.raw();
    r.b = xh.raw();
    gemm_accumulate(r, y);
    return y;
  }

  Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor* b) override {
    const Tensor y = linear_to_bf16(x, w, b, true, "linear_gelu");
    return y.defined() ? y : gelu_tanh(linear(x, w, b));  // float32 weights, or no algorithm
  }

  Tensor linear_compact(const Tensor& x, const Tensor& w, const Tensor* b) override {
    const Tensor y = linear_to_bf16(x, w, b, false, "linear_compact");
    return y.defined() ? y : linear(x, w, b);  // float32 weights, or no algorithm
  }

  // ---- elementwise -------------------------------------------------------------------------------

  Tensor add(const Tensor& a, const Tensor& b) override { return map2(a, b, Binary::Add, "add"); }
  void add_(Tensor& a, const Tensor& b) override {
    bind();
    expect_out(a, "add_", "a");
    const Tensor q = in_f32_or_bf16(b, "add_", "b");  // bf16: no float32 copy of b
    expect_numel(a, q, "add_");
    if (q.dtype() == DType::BF16)
      add_bf16_(a.data<float>(), q.data<uint16_t>(), a.numel(), stream_);
    else
      binary(Binary::Add, a.data<float>(), q.data<float>(), a.data<float>(), a.numel(), stream_);
  }
  Tensor mul(const Tensor& a, const Tensor& b) override { return map2(a, b, Binary::Mul, "mul"); }
  Tensor gelu_tanh(const Tensor& x) override { return map1(x, Unary::GeluTanh, 0, 0, "gelu_tanh"); }
  Tensor silu(const Tensor& x) override { return map1(x, Unary::Silu, 0, 0, "silu"); }
  Tensor gelu_tanh_mul(const Tensor& a, const Tensor& b) override {
    return map2(a, b, Binary::GeluTanhMul, "gelu_tanh_mul");
  }
  Tensor scale(const Tensor& x, float s) override { return map1(x, Unary::Scale, s, 0, "scale"); }
  Tensor clamp(const Tensor& x, float lo, float hi) override {
    return map1(x, Unary::Clamp, lo, hi, "clamp");
  }

  void gated_add_(Tensor& a, const Tensor& y, const Tensor& gate) override {
    bind();
    expect_out(a, "gated_add_", "a");
    const Tensor yy = in_f32(y, "gated_add_", "y");
    const Tensor g = in_f32(gate, "gated_add_", "gate");
    expect_numel(a, yy, "gated_add_");
    const int64_t d = g.numel(), n = d ? a.numel() / d : 0;
    if (d == 0 || n * d != a.numel())
      throw internal_error("gated_add_: gate " + gate.str() + " vs " + a.str());
    cuda::gated_add(a.data<float>(), yy.data<float>(), g.data<float>(), n, d, stream_);
  }

  Tensor add_row(const Tensor& x, const Tensor& row) override {
    bind();
    const Tensor xx = in_f32(x, "add_row", "x");
    const Tensor r = in_f32(row, "add_row", "row");
    const int64_t d = r.numel(), n = d ? xx.numel() / d : 0;
    if (d == 0 || n * d != xx.numel())
      throw internal_error("add_row: row " + row.str() + " vs " + x.str());
    Tensor y = alloc(x.shape(), DType::F32);
    cuda::add_row(xx.data<float>(), r.data<float>(), y.data<float>(), n, d, stream_);
    return y;
  }

  // ---- norms -------------------------------------------------------------------------------------

  Tensor layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps) override {
    return affine_norm(x, w, b, eps, DType::F32, "layer_norm");
  }
  Tensor layer_norm_gemm(const Tensor& x, const Tensor* w, const Tensor* b, float eps) override {
    return affine_norm(x, w, b, eps, DType::BF16, "layer_norm_gemm");  // the GEMM input, once
  }

  Tensor rms_norm_compact(const Tensor& x, const Tensor& w, float eps, int64_t heads) override {
    bind();
    const int64_t hd = heads > 0 && x.ndim() == 2 ? x.dim(1) / heads : 0;
    if (hd <= 0 || x.dim(1) != heads * hd || hd % 2 || !cudnn_ok(hd))
      return Ops::rms_norm_compact(x, w, eps, heads);
    const Tensor xx = in_f32_or_bf16(x, "rms_norm_compact", "x");  // bf16: read as it is
    const Tensor ww = in_f32(w, "rms_norm_compact", "w");
    if (ww.numel() != x.dim(1))
      throw internal_error("rms_norm_compact: weight " + w.str() + " for " + x.str());
    const int64_t n = x.dim(0);
    Tensor y = alloc({n, heads, hd}, DType::BF16);
    cuda::rms_norm_rope_bf16(xx.raw(), xx.dtype() == DType::BF16, ww.data<float>(), nullptr, nullptr,
                             y.data<uint16_t>(), n, heads, hd, eps, stream_);
    return y;
  }

  Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                             float eps) override {
    return modulated_norm(x, shift, scale, eps, DType::F32);
  }
  Tensor layer_norm_modulate_gemm(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                  float eps) override {
    return modulated_norm(x, shift, scale, eps, DType::BF16);
  }

  Tensor rms_norm(const Tensor& x, const Tensor& w, float eps) override {
    bind();
    const Tensor xx = in_f32(x, "rms_norm", "x");
    const Tensor ww = in_f32(w, "rms_norm", "w");
    const int64_t d = x.ndim() ? x.dim(-1) : 0;
    if (ww.numel() != d) throw internal_error("rms_norm: weight " + w.str() + " for " + x.str());
    Tensor y = alloc(x.shape(), DType::F32);
    const int64_t n = d ? x.numel() / d : 0;
    cuda::rms_norm(xx.data<float>(), ww.data<float>(), y.data<float>(), n, d, eps, stream_);
    return y;
  }

  Tensor channel_l2_norm(const Tensor& x, const Tensor& gamma, float eps) override {
    return channel_norm(x, gamma, eps, false, "channel_l2_norm");
  }
  Tensor channel_l2_norm_silu(const Tensor& x, const Tensor& gamma, float eps) override {
    // one pass; with bf16 convolutions (its only consumers) written in bf16, their input form
    return channel_norm(x, gamma, eps, true, "channel_l2_norm_silu", conv_bf16_ && use_cudnn_ && cudnn_conv_);
  }
  Tensor channel_norm(const Tensor& x, const Tensor& gamma, float eps, bool silu, const char* op,
                      bool bf16_out = false) {
    bind();
    const Tensor xx = in_f32(x, op, "x");
    const Tensor g = in_f32(gamma, op, "gamma");
    const int64_t c = x.ndim() ? x.dim(0) : 0, p = c ? x.numel() / c : 0;
    if (g.numel() != c)
      throw internal_error(std::string(op) + ": gamma " + gamma.str() + " for " + x.str());
    Tensor y = alloc(x.shape(), bf16_out ? DType::BF16 : DType::F32);
    if (bf16_out)
      cuda::channel_l2_norm_bf16(xx.data<float>(), g.data<float>(), y.data<uint16_t>(), c, p, eps, silu,
                                 stream_);
    else
      cuda::channel_l2_norm(xx.data<float>(), g.data<float>(), y.data<float>(), c, p, eps, silu, stream_);
    return y;
  }

  // ---- positional --------------------------------------------------------------------------------

  void rope_(Tensor& x, const Tensor& cos, const Tensor& sin) override {
    bind();
    expect_out(x, "rope_", "x");
    if (x.ndim() != 3) throw internal_error("rope_: expected x [N, H, hd], got " + x.str());
    const Tensor c = in_f32(cos, "rope_", "cos");
    const Tensor s = in_f32(sin, "rope_", "sin");
    const int64_t n = x.dim(0), h = x.dim(1), hd = x.dim(2), half = hd / 2;
    if (c.numel() != n * half || s.numel() != n * half)
      throw internal_error("rope_: tables " + cos.str() + " for " + x.str());
    cuda::rope(x.data<float>(), c.data<float>(), s.data<float>(), n, h, hd, stream_);
  }

  Tensor rms_norm_rope(const Tensor& x, const Tensor& w, float eps, int64_t heads, const Tensor& cos,
                       const Tensor& sin) override {
    bind();
    const int64_t hd = heads > 0 && x.ndim() == 2 ? x.dim(1) / heads : 0;
    // the fused pass writes what compact() keeps: bf16 where cuDNN takes the head size
    if (hd <= 0 || x.dim(1) != heads * hd || hd % 2 || !cudnn_ok(hd))
      return Ops::rms_norm_rope(x, w, eps, heads, cos, sin);
    const Tensor xx = in_f32_or_bf16(x, "rms_norm_rope", "x");  // bf16: read as it is
    const Tensor ww = in_f32(w, "rms_norm_rope", "w");
    const Tensor c = in_f32(cos, "rms_norm_rope", "cos"), s = in_f32(sin, "rms_norm_rope", "sin");
    const int64_t n = x.dim(0);
    if (ww.numel() != x.dim(1) || c.numel() != n * (hd / 2) || s.numel() != n * (hd / 2))
      throw internal_error("rms_norm_rope: weight " + w.str() + ", tables " + cos.str() + " for " +
                           x.str());
    Tensor y = alloc({n, heads, hd}, DType::BF16);
    cuda::rms_norm_rope_bf16(xx.raw(), xx.dtype() == DType::BF16, ww.data<float>(), c.data<float>(), s.data<float>(),
                             y.data<uint16_t>(), n, heads, hd, eps, stream_);
    return y;
  }

  Tensor relative_position_bias(const Tensor& table, const Tensor& bucket, int64_t L) override {
    bind();
    const Tensor t = in_f32(table, "relative_position_bias", "table");
    expect_index(bucket, "relative_position_bias");
    if (table.ndim() != 2 || L < 0 || bucket.numel() != std::max<int64_t>(0, 2 * L - 1))
      throw internal_error("relative_position_bias: table " + table.str() + ", buckets " +
                           bucket.str() + " for length " + std::to_string(L));
    const int64_t H = table.dim(1);
    Tensor y = alloc({H, L, L}, DType::F32);
    // the buckets come from t5_relative_bucket, below the table's row count (the CPU
    // backend checks it; here it would cost a download)
    cuda::relative_position_bias(t.data<float>(), bucket.data<int64_t>(), y.data<float>(), L, H,
                                 stream_);
    return y;
  }

  // ---- attention ---------------------------------------------------------------------------------

  Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                   const Tensor* bias) override {
    bind();
    check_qkv(q, k, v, "attention");
    const int64_t nq = q.dim(0), nk = k.dim(0), h = q.dim(1), d = q.dim(2);
    Tensor bf;
    if (bias) {
      bf = in_f32(*bias, "attention", "bias");
      if (bf.numel() != h * nq * nk)
        throw internal_error("attention: bias " + bias->str() + " for q " + q.str() + " k " +
                             k.str());
    }
    if (nq > 0 && nk > 0 && h > 0 && d > 0 && !bias && cudnn_ok(d)) {
      const Tensor qb = to_bf16(q, "attention", "q"), kb = to_bf16(k, "attention", "k"),
                   vb = to_bf16(v, "attention", "v");
      // cuDNN writes bf16: returned as it is (the next GEMM reads bf16; other ops convert)
      Tensor ob = alloc(q.shape(), DType::BF16);
      if (sdpa_->dense(*mem_, qb.data<uint16_t>(), kb.data<uint16_t>(), vb.data<uint16_t>(),
                       ob.data<uint16_t>(), nq, nk, h, d, scale)) {
        ++att_stats_.fused_calls;
        return ob;
      }
    }
    Tensor o = alloc(q.shape(), DType::F32);
    if (nq == 0) return o;
    ++att_stats_.f32_calls;
    if (nk == 0 || h == 0 || d == 0) {
      if (o.nbytes()) MG_CUDA_CHECK(cudaMemsetAsync(o.raw(), 0, o.nbytes(), stream_));
      return o;
    }
    const Tensor qf = in_f32(q, "attention", "q"), kf = in_f32(k, "attention", "k"),
                 vf = in_f32(v, "attention", "v");
    attention_f32(blas_, stream_, *mem_, qf.data<float>(), kf.data<float>(), vf.data<float>(),
                  o.data<float>(), nq, nk, h, d, h * d, scale, bias ? bf.data<float>() : nullptr);
    return o;
  }

  Tensor attention_varlen(const Tensor& q, const Tensor& k, const Tensor& v,
                          const CuSeqlens& cu_q, const CuSeqlens& cu_kv, float scale) override {
    bind();
    check_qkv(q, k, v, "attention_varlen");
    if (cu_q.size() != cu_kv.size() || cu_q.empty() || cu_q.front() != 0 || cu_kv.front() != 0 ||
        cu_q.back() != q.dim(0) || cu_kv.back() != k.dim(0))
      throw internal_error("attention_varlen: bad segment offsets for q " + q.str() + " k " +
                           k.str());
    const int64_t h = q.dim(1), d = q.dim(2);
    std::vector<int64_t> lq, lk;
    bool one_sided = false;  // a segment with queries but no keys, or keys but no queries
    for (size_t s = 0; s + 1 < cu_q.size(); ++s) {
      const int64_t nq = cu_q[s + 1] - cu_q[s], nk = cu_kv[s + 1] - cu_kv[s];
      if (nq < 0 || nk < 0) throw internal_error("attention_varlen: decreasing offsets");
      if (nq > 0 && nk > 0) {
        lq.push_back(nq);
        lk.push_back(nk);
      } else if (nq > 0 || nk > 0) {
        one_sided = true;
      }
    }
    if (q.numel() > 0 && !lq.empty() && h > 0 && d > 0 && !one_sided && cudnn_ok(d)) {
      // Empty segments removed, the rest are packed back to back: exactly what cuDNN's
      // ragged layout describes. Its bf16 output is returned as it is, as in attention().
      const Tensor qb = to_bf16(q, "attention_varlen", "q"), kb = to_bf16(k, "attention_varlen", "k"),
                   vb = to_bf16(v, "attention_varlen", "v");
      Tensor ob = alloc(q.shape(), DType::BF16);
      uint16_t* op = ob.data<uint16_t>();
      const uint16_t *qp = qb.data<uint16_t>(), *kp = kb.data<uint16_t>(), *vp = vb.data<uint16_t>();
      const bool done = lq.size() == 1 ? sdpa_->dense(*mem_, qp, kp, vp, op, lq[0], lk[0], h, d, scale)
                                       : sdpa_->ragged(*mem_, qp, kp, vp, op, lq, lk, h, d, scale);
      if (done) {
        ++att_stats_.fused_calls;
        return ob;
      }
      // No ragged plan for this shape: each segment as a fused call of its own (the packed
      // rows of segment s start at its offset), before the float32 composition. A one-segment
      // ragged call, not a dense one: its plan is keyed by the bucketed length, so segments
      // of many lengths (MoGA's groups) share a few plans instead of building one each.
      if (lq.size() > 1) {
        const int64_t row = h * d;
        bool all = true;
        int64_t oq = 0, ok = 0;
        for (size_t s = 0; s < lq.size() && all; ++s) {
          all = sdpa_->ragged(*mem_, qp + oq * row, kp + ok * row, vp + ok * row, op + oq * row, {lq[s]},
                              {lk[s]}, h, d, scale);
          oq += lq[s];
          ok += lk[s];
        }
        if (all) {
          ++att_stats_.per_segment_calls;
          return ob;
        }
      }
    }
    Tensor o = alloc(q.shape(), DType::F32);
    if (o.numel() == 0) return o;
    ++att_stats_.f32_calls;
    if (lq.empty() || h == 0 || d == 0) {
      MG_CUDA_CHECK(cudaMemsetAsync(o.raw(), 0, o.nbytes(), stream_));
      return o;
    }
    const Tensor qf = in_f32(q, "attention_varlen", "q"), kf = in_f32(k, "attention_varlen", "k"),
                 vf = in_f32(v, "attention_varlen", "v");
    if (one_sided) MG_CUDA_CHECK(cudaMemsetAsync(o.raw(), 0, o.nbytes(), stream_));
    const int64_t row = h * d;
    for (size_t s = 0; s + 1 < cu_q.size(); ++s) {
      const int64_t q0 = cu_q[s], nq = cu_q[s + 1] - q0, k0 = cu_kv[s], nk = cu_kv[s + 1] - k0;
      if (nq == 0 || nk == 0) continue;
      attention_f32(blas_, stream_, *mem_, qf.data<float>() + q0 * row,
                    kf.data<float>() + k0 * row, vf.data<float>() + k0 * row,
                    o.data<float>() + q0 * row, nq, nk, h, d, row, scale, nullptr);
    }
    return o;
  }

  // ---- gather / scatter --------------------------------------------------------------------------

  Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& idx) override {
    bind();
    const Tensor xx = in_f32(x, "gather_rows", "x");
    if (x.ndim() < 1) throw internal_error("gather_rows: scalar " + x.str());
    const int64_t n = x.dim(0), row = n ? x.numel() / n : 0;
    for (int64_t r : idx)
      if (r < 0 || r >= n) throw internal_error("gather_rows: index out of range");
    Shape s = x.shape();
    s[0] = static_cast<int64_t>(idx.size());
    Tensor y = alloc(s, DType::F32);
    if (idx.empty() || row == 0) return y;
    auto di = mem_->scratch(idx.size() * sizeof(int64_t));
    h2d(di.get(), idx.data(), idx.size() * sizeof(int64_t));
    cuda::gather_rows(xx.data<float>(), static_cast<int64_t*>(di.get()), y.data<float>(),
                      static_cast<int64_t>(idx.size()), row, stream_);
    return y;
  }

  void scatter_add_rows_(Tensor& out, const Tensor& x, const std::vector<int64_t>& idx,
                         const std::vector<float>* w) override {
    bind();
    expect_out(out, "scatter_add_rows_", "out");
    const Tensor xx = in_f32(x, "scatter_add_rows_", "x");
    if (out.ndim() < 1) throw internal_error("scatter_add_rows_: scalar " + out.str());
    const int64_t n = out.dim(0), row = n ? out.numel() / n : 0;
    const int64_t m = static_cast<int64_t>(idx.size());
    if ((x.ndim() < 1 ? 1 : x.dim(0)) != m || x.numel() != m * row ||
        (w && static_cast<int64_t>(w->size()) != m))
      throw internal_error("scatter_add_rows_: x " + x.str() + " into " + out.str());
    for (int64_t r : idx)
      if (r < 0 || r >= n) throw internal_error("scatter_add_rows_: index out of range");
    if (m == 0 || row == 0) return;
    // CSR by destination, sources in increasing i: deterministic and the CPU's summation order.
    std::vector<int64_t> count(static_cast<size_t>(n) + 1, 0);
    for (int64_t r : idx) ++count[r + 1];
    std::vector<int64_t> dst, ptr{0};
    for (int64_t r = 0; r < n; ++r)
      if (count[r + 1]) {
        dst.push_back(r);
        ptr.push_back(ptr.back() + count[r + 1]);
      }
    std::vector<int64_t> start(static_cast<size_t>(n), -1);
    for (size_t u = 0; u < dst.size(); ++u) start[dst[u]] = ptr[u];
    std::vector<int64_t> src(static_cast<size_t>(m));
    std::vector<float> ws(w ? static_cast<size_t>(m) : 0);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t pos = start[idx[i]]++;
      src[pos] = i;
      if (w) ws[pos] = (*w)[i];
    }
    const int64_t nd = static_cast<int64_t>(dst.size());
    const size_t b64 = static_cast<size_t>(nd + (nd + 1) + m) * sizeof(int64_t);
    auto buf = mem_->scratch(b64 + ws.size() * sizeof(float));
    int64_t* p = static_cast<int64_t*>(buf.get());
    h2d(p, dst.data(), nd * sizeof(int64_t));
    h2d(p + nd, ptr.data(), (nd + 1) * sizeof(int64_t));
    h2d(p + 2 * nd + 1, src.data(), m * sizeof(int64_t));
    float* wp = nullptr;
    if (w) {
      wp = reinterpret_cast<float*>(reinterpret_cast<char*>(buf.get()) + b64);
      h2d(wp, ws.data(), ws.size() * sizeof(float));
    }
    cuda::scatter_add_rows(out.data<float>(), xx.data<float>(), p, p + nd, p + 2 * nd + 1, wp, nd,
                           row, stream_);
  }

  Tensor index(const std::vector<int64_t>& idx) override {
    bind();
    Tensor t = alloc({static_cast<int64_t>(idx.size())}, DType::I64);
    if (!idx.empty()) h2d(t.raw(), idx.data(), idx.size() * sizeof(int64_t));
    return t;
  }

  Tensor gather_rows(const Tensor& x, const Tensor& idx) override {
    bind();
    expect_index(idx, "gather_rows");
    const Tensor xx = in_f32_or_bf16(x, "gather_rows", "x");  // a compact() operand stays bf16
    const bool bf = xx.dtype() == DType::BF16;
    if (x.ndim() < 1) throw internal_error("gather_rows: scalar " + x.str());
    const int64_t n = x.dim(0), row = n ? x.numel() / n : 0;
    Shape s = x.shape();
    s[0] = idx.numel();
    Tensor y = alloc(s, bf ? DType::BF16 : DType::F32);
    if (idx.numel() && row) {
      if (bf)
        cuda::gather_rows_u16(xx.data<uint16_t>(), idx.data<int64_t>(), y.data<uint16_t>(),
                              idx.numel(), row, stream_);
      else
        cuda::gather_rows(xx.data<float>(), idx.data<int64_t>(), y.data<float>(), idx.numel(), row,
                          stream_);
    }
    return y;
  }

  Tensor compact(const Tensor& x) override {
    bind();
    if (x.ndim() == 3 && cudnn_ok(x.dim(2))) return to_bf16(x, "compact", "x");
    return in_f32(x, "compact", "x");  // the float32 fallback attention reads float32
  }

  MemoryStats memory_stats() override { return mem_->stats(); }
  void reset_peak_memory() override { mem_->reset_peak(); }
  AttentionStats attention_stats() override {
    AttentionStats a = att_stats_;
    a.plans = sdpa_->plans_built();
    a.plan_seconds = sdpa_->plan_seconds();
    a.timed_choices = sdpa_->timed_choices();
    a.sm90_calls = sdpa_->sm90_calls();
    return a;
  }

  void scatter_add_rows_(Tensor& out, const Tensor& x, const Tensor& idx, const Tensor* w) override {
    bind();
    expect_out(out, "scatter_add_rows_", "out");
    const Tensor xx = in_f32_or_bf16(x, "scatter_add_rows_", "x");  // bf16: no float32 copy
    expect_index(idx, "scatter_add_rows_");
    if (out.ndim() < 1) throw internal_error("scatter_add_rows_: scalar " + out.str());
    const int64_t n = out.dim(0), row = n ? out.numel() / n : 0, m = idx.numel();
    if (x.numel() != m * row) throw internal_error("scatter_add_rows_: x " + x.str() + " into " + out.str());
    if (w) {
      expect_out(*w, "scatter_add_rows_", "w");
      if (w->numel() != m) throw internal_error("scatter_add_rows_: w " + w->str() + " for " + idx.str());
    }
    scatter_injective(out, xx, idx, w, m, row, /*accumulate=*/true);
  }

  Tensor unpermute_rows(const Tensor& x, const Tensor& perm, const Tensor* w) override {
    bind();
    const Tensor xx = in_f32_or_bf16(x, "unpermute_rows", "x");  // bf16: no float32 copy
    expect_index(perm, "unpermute_rows");
    if (x.ndim() < 1) throw internal_error("unpermute_rows: scalar " + x.str());
    const int64_t m = x.dim(0), row = m ? x.numel() / m : 0;
    if (perm.numel() != m) throw internal_error("unpermute_rows: perm " + perm.str() + " for " + x.str());
    if (w) {
      expect_out(*w, "unpermute_rows", "w");
      if (w->numel() != m) throw internal_error("unpermute_rows: w " + w->str() + " for " + perm.str());
    }
    Tensor out = alloc(x.shape(), DType::F32);
    scatter_injective(out, xx, perm, w, m, row, /*accumulate=*/false);  // every row written once
    return out;
  }

  Tensor add_scale_gemm_input(const Tensor& a, const Tensor& b, float s) override {
    bind();
    const Tensor aa = in_f32(a, "add_scale_gemm_input", "a");
    const Tensor bb = in_f32_or_bf16(b, "add_scale_gemm_input", "b");
    if (a.numel() != b.numel())
      throw internal_error("add_scale_gemm_input: a " + a.str() + " b " + b.str());
    Tensor y = alloc(a.shape(), DType::BF16);
    cuda::add_scale_to_bf16(aa.data<float>(), bb.raw(), bb.dtype() == DType::BF16, s,
                            y.data<uint16_t>(), a.numel(), stream_);
    return y;
  }

  GroupRouting route_groups(const Tensor& logits, bool host_copy) override {
    bind();
    const Tensor l = in_f32(logits, "route_groups", "logits");
    if (l.ndim() != 2 || l.dim(1) < 1 || l.dim(1) > (1 << 20))
      throw internal_error("route_groups: logits must be [N, M], got " + logits.str());
    const int64_t N = l.dim(0);
    const int M = static_cast<int>(l.dim(1));
    GroupRouting r;
    r.order = alloc({N}, DType::I64);
    r.weight = alloc({N}, DType::F32);
    const size_t temp = cuda::sort_by_group_temp_bytes(N, M);
    // scratch: gid, gid sorted (int), iota (int64), p_win (float), counts, the sort's temp
    const size_t n4 = (static_cast<size_t>(N) * 4 + 255) / 256 * 256;
    const size_t n8 = (static_cast<size_t>(N) * 8 + 255) / 256 * 256;
    const size_t cnt = (sizeof(unsigned long long) * static_cast<size_t>(M) + 255) / 256 * 256;
    auto buf = mem_->scratch(3 * n4 + n8 + cnt + temp + 256);
    char* b = static_cast<char*>(buf.get());
    int* gid = reinterpret_cast<int*>(b);
    int* gid_sorted = reinterpret_cast<int*>(b + n4);
    float* pwin = reinterpret_cast<float*>(b + 2 * n4);
    int64_t* iota = reinterpret_cast<int64_t*>(b + 3 * n4);
    auto* counts = reinterpret_cast<unsigned long long*>(b + 3 * n4 + n8);
    void* tmp = b + 3 * n4 + n8 + cnt;
    cuda::moga_route(l.data<float>(), N, M, gid, pwin, counts, stream_);
    cuda::sort_by_group(gid, gid_sorted, iota, r.order.data<int64_t>(), N, M, tmp, temp, stream_);
    cuda::gather_rows(pwin, r.order.data<int64_t>(), r.weight.data<float>(), N, 1, stream_);
    std::vector<unsigned long long> c(static_cast<size_t>(M));
    MG_CUDA_CHECK(cudaMemcpyAsync(c.data(), counts, c.size() * sizeof(c[0]), cudaMemcpyDeviceToHost,
                                  stream_));
    if (host_copy) {
      r.gid.resize(static_cast<size_t>(N));
      r.p_win.resize(static_cast<size_t>(N));
      if (N) {
        MG_CUDA_CHECK(cudaMemcpyAsync(r.gid.data(), gid, size_t(N) * sizeof(int),
                                      cudaMemcpyDeviceToHost, stream_));
        MG_CUDA_CHECK(cudaMemcpyAsync(r.p_win.data(), pwin, size_t(N) * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream_));
      }
    }
    MG_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the sizes shape the varlen call
    r.sizes.assign(c.begin(), c.end());
    return r;
  }

  // ---- video / conv ------------------------------------------------------------------------------

  Tensor conv3d(const Tensor& x, const Tensor& w, const Tensor* b, int pad_t_front, int pad_h,
                int pad_w) override {
    bind();
    expect_dev(w, "conv3d", "w");
    if (x.ndim() != 4 || w.ndim() != 5 || w.dim(1) != x.dim(0))
      throw internal_error("conv3d: x " + x.str() + " w " + w.str());
    if (w.dtype() != DType::BF16 && w.dtype() != DType::F32)
      throw internal_error("conv3d: weight dtype " + w.str() + " (expected BF16 or F32)");
    const Conv3dShape s = conv_shape(x, x.dim(1), w, pad_t_front, pad_h, pad_w);
    if (s.to <= 0 || s.ho <= 0 || s.wo <= 0)
      throw internal_error("conv3d: empty output for x " + x.str() + " w " + w.str());
    const int64_t co = w.dim(0), kk = s.ci * s.kt * s.kh * s.kw;
    const int64_t P = s.to * s.ho * s.wo;
    Tensor bias;
    if (b) {
      bias = in_f32(*b, "conv3d", "b");
      if (bias.numel() != co) throw internal_error("conv3d: bias " + b->str() + " for " + w.str());
    }
    Tensor y = alloc({co, s.to, s.ho, s.wo}, DType::F32);
    const bool bf = w.dtype() == DType::BF16;
    if (!bf && use_cudnn_ && cudnn_conv_ && conv_bf16_ && conv3d_bf16(Tensor(), x, w, b ? &bias : nullptr, s, co, y))
      return y;  // (x read as it is: float32 or bf16)
    const Tensor xx = in_f32(x, "conv3d", "x");
    if (!bf && use_cudnn_ && cudnn_conv_) {
      // cuDNN's implicit GEMM reads x in place (im2col writes kt*kh*kw copies of it). Its
      // padding is symmetric, so the causal front frames are zeros put in front of x.
      Tensor xin = xx;
      Conv3dShape cs = s;
      if (s.pad_t > 0) {
        xin = cat_time(zeros({s.ci, s.pad_t, s.h, s.w}), xx);
        cs.t += s.pad_t;
        cs.pad_t = 0;
      }
      if (conv_->forward(*mem_, xin.data<float>(), w.data<float>(), y.data<float>(), cs, co)) {
        if (b) add_channel_bias(y.data<float>(), bias.data<float>(), co, P, stream_);
        return y;
      }
    }
    const int64_t elem = bf ? 2 : 4;
    // Column tile: flattened output positions, bounded to ~256 MB, multiple of 64.
    int64_t np = (int64_t(256) << 20) / std::max<int64_t>(1, kk * elem);
    np = std::max<int64_t>(64, np / 64 * 64);
    np = std::min(np, P);
    auto col = mem_->scratch(static_cast<size_t>(kk * np * elem));
    for (int64_t p0 = 0; p0 < P; p0 += np) {
      const int64_t cnt = std::min(np, P - p0);
      if (bf)
        im2col3d_bf16(xx.data<float>(), static_cast<uint16_t*>(col.get()), s, p0, cnt, stream_);
      else
        im2col3d_f32(xx.data<float>(), static_cast<float*>(col.get()), s, p0, cnt, stream_);
      // Y^T[p, co] (col-major, ld P) = col^T[p, kk] . W^T[kk, co]
      GemmArgs g;
      g.ta = CUBLAS_OP_N;
      g.tb = CUBLAS_OP_N;
      g.m = cnt;
      g.n = co;
      g.k = kk;
      g.a = col.get();
      g.lda = cnt;
      g.b = w.raw();
      g.ldb = kk;
      g.c = y.data<float>() + p0;
      g.ldc = P;
      g.ab = bf ? CUDA_R_16BF : CUDA_R_32F;
      // F32 conv weights (the VAE) run on TF32 tensor cores: 10-bit mantissa products with
      // fp32 accumulation, ~1e-3 relative error against the float32 CPU reference.
      g.tf32 = !bf;
      gemm_->run(g);
    }
    if (b) add_channel_bias(y.data<float>(), bias.data<float>(), co, P, stream_);
    return y;
  }

  Tensor conv3d_after(const Tensor& front, const Tensor& x, const Tensor& w, const Tensor* b,
                      int pad_t_front, int pad_h, int pad_w) override {
    Tensor y = conv3d_after_bf16(front, x, w, b, pad_t_front, pad_h, pad_w, nullptr);
    return y.defined() ? y : Ops::conv3d_after(front, x, w, b, pad_t_front, pad_h, pad_w);
  }

  Tensor conv3d_after_add(const Tensor& front, const Tensor& x, const Tensor& w, const Tensor* b,
                          int pad_t_front, int pad_h, int pad_w, const Tensor& residual) override {
    Tensor y = conv3d_after_bf16(front, x, w, b, pad_t_front, pad_h, pad_w, &residual);
    return y.defined() ? y : Ops::conv3d_after_add(front, x, w, b, pad_t_front, pad_h, pad_w, residual);
  }

  // conv3d_after (+ residual: a float32 device tensor of the output's shape) through the
  // bf16 convolutions, [front, x] assembled once; undefined, having done nothing, where that
  // path does not apply (float32 convolutions, no front, shapes it does not take, no cuDNN
  // algorithm): the caller then runs the composition.
  Tensor conv3d_after_bf16(const Tensor& front, const Tensor& x, const Tensor& w, const Tensor* b,
                           int pad_t_front, int pad_h, int pad_w, const Tensor* residual) {
    bind();
    if (!(conv_bf16_ && use_cudnn_ && cudnn_conv_) || !front.defined() || w.dtype() != DType::F32 ||
        front.ndim() != 4 || x.ndim() != 4 || w.ndim() != 5 || front.dim(0) != x.dim(0) ||
        front.dim(2) != x.dim(2) || front.dim(3) != x.dim(3) || w.dim(1) != x.dim(0) ||
        (residual && (residual->dtype() != DType::F32 || residual->device().is_cpu())))
      return Tensor();
    expect_dev(w, "conv3d_after", "w");
    const Conv3dShape s = conv_shape(x, front.dim(1) + x.dim(1), w, pad_t_front, pad_h, pad_w);
    const int64_t co = w.dim(0);
    if (s.to <= 0 || s.ho <= 0 || s.wo <= 0 || (residual && residual->shape() != Shape{co, s.to, s.ho, s.wo}))
      return Tensor();
    Tensor bias;
    if (b) {
      bias = in_f32(*b, "conv3d_after", "b");
      if (bias.numel() != co) throw internal_error("conv3d_after: bias " + b->str() + " for " + w.str());
    }
    Tensor y = alloc({co, s.to, s.ho, s.wo}, DType::F32);
    return conv3d_bf16(front, x, w, b ? &bias : nullptr, s, co, y, residual) ? y : Tensor();
  }

  // The convolution of an input of x's channels and frame size and t frames with w.
  static Conv3dShape conv_shape(const Tensor& x, int64_t t, const Tensor& w, int pad_t_front, int pad_h,
                                int pad_w) {
    Conv3dShape s{};
    s.ci = x.dim(0);
    s.t = t;
    s.h = x.dim(2);
    s.w = x.dim(3);
    s.kt = w.dim(2);
    s.kh = w.dim(3);
    s.kw = w.dim(4);
    s.pad_t = pad_t_front;
    s.pad_h = pad_h;
    s.pad_w = pad_w;
    s.to = s.t + pad_t_front - s.kt + 1;
    s.ho = s.h + 2 * pad_h - s.kh + 1;
    s.wo = s.w + 2 * pad_w - s.kw + 1;
    return s;
  }

  // conv3d through cuDNN with bf16 data, channels first (MOGAGEN_CONV=bf16; under the
  // channels-last default, the channel counts that are not multiples of 8): [front, x]
  // (each float32 or held bf16; front may be undefined) is written once as the bf16 input
  // with the causal front frames zeroed, the weight's bf16 copy is made on its first use and
  // kept, and the bf16 output is widened to y with the bias in one pass. s describes the
  // whole input (s.t = front's frames + x's). False, having written nothing to y, where
  // cuDNN has no algorithm.
  bool conv3d_bf16(const Tensor& front, const Tensor& x, const Tensor& w, const Tensor* bias,
                   const Conv3dShape& s, int64_t co, Tensor& y, const Tensor* residual = nullptr) {
    if (conv_ndhwc_ && s.ci % 8 == 0 && co % 8 == 0 && conv3d_bf16_ndhwc(front, x, w, bias, s, co, y, residual))
      return true;
    const int64_t f = s.h * s.w, t = s.t + s.pad_t;
    Tensor xin = alloc({s.ci, t, s.h, s.w}, DType::BF16);
    uint16_t* xp = xin.data<uint16_t>();
    if (s.pad_t > 0)  // the zero frames in front of every channel
      MG_CUDA_CHECK(cudaMemset2DAsync(xp, size_t(t * f) * 2, 0, size_t(s.pad_t * f) * 2, size_t(s.ci),
                                      stream_));
    int64_t at = s.pad_t;
    if (front.defined()) {
      const Tensor ff = in_f32_or_bf16(front, "conv3d", "front");
      time_slab_bf16(xp + at * f, t, ff, 0, front.dim(1), s.ci, f);
      at += front.dim(1);
    }
    const Tensor xx = in_f32_or_bf16(x, "conv3d", "x");
    time_slab_bf16(xp + at * f, t, xx, 0, x.dim(1), s.ci, f);
    Conv3dShape cs = s;
    cs.t = t;
    cs.pad_t = 0;
    Tensor y16 = alloc(y.shape(), DType::BF16);
    if (!conv_->forward_bf16(*mem_, xp, conv_weight_bf16(w).data<uint16_t>(), y16.data<uint16_t>(), cs, co))
      return false;
    cuda::bf16_to_f32_channel_bias(y16.data<uint16_t>(), bias ? bias->data<float>() : nullptr,
                                   residual ? residual->data<float>() : nullptr, y.data<float>(), co,
                                   s.to * s.ho * s.wo, stream_);
    return true;
  }
  // conv3d_bf16 on channels-last copies (the default, MOGAGEN_CONV=bf16-ndhwc): [front, x]
  // written once as the bf16 input [t, h, w, ci] (causal front frames zeroed), the weight's
  // channels-last bf16 copy made once and kept, and the output [to, ho, wo, co] widened back
  // to [co, to, ho, wo] with the bias (and residual) in one transposing pass. False, having
  // written nothing to y, where cuDNN has no algorithm (conv3d_bf16 then runs channels first).
  bool conv3d_bf16_ndhwc(const Tensor& front, const Tensor& x, const Tensor& w, const Tensor* bias,
                         const Conv3dShape& s, int64_t co, Tensor& y, const Tensor* residual) {
    const int64_t f = s.h * s.w, t = s.t + s.pad_t;
    Tensor xin = alloc({t, s.h, s.w, s.ci}, DType::BF16);
    uint16_t* xp = xin.data<uint16_t>();
    if (s.pad_t > 0) MG_CUDA_CHECK(cudaMemsetAsync(xp, 0, size_t(s.pad_t * f * s.ci) * 2, stream_));
    int64_t at = s.pad_t;
    for (const Tensor* part : {&front, &x}) {
      if (!part->defined()) continue;
      const Tensor src = in_f32_or_bf16(*part, "conv3d", part == &front ? "front" : "x");
      cuda::to_channels_last_bf16(src.raw(), src.dtype() == DType::BF16, s.ci, src.dim(1), 0, src.dim(1), f,
                                  xp + at * f * s.ci, stream_);
      at += src.dim(1);
    }
    Conv3dShape cs = s;
    cs.t = t;
    cs.pad_t = 0;
    Tensor y16 = alloc({s.to, s.ho, s.wo, co}, DType::BF16);
    if (!conv_->forward_bf16_ndhwc(*mem_, xp, conv_weight_bf16_ndhwc(w).data<uint16_t>(), y16.data<uint16_t>(), cs,
                                   co))
      return false;
    cuda::from_channels_last_f32(y16.data<uint16_t>(), bias ? bias->data<float>() : nullptr,
                                 residual ? residual->data<float>() : nullptr, y.data<float>(), co,
                                 s.to * s.ho * s.wo, stream_);
    return true;
  }
  // The channels-last bf16 copy [co, kt, kh, kw, ci] of a float32 conv weight, made once.
  const Tensor& conv_weight_bf16_ndhwc(const Tensor& w) {
    auto it = conv_w16_ndhwc_.find(w.raw());
    if (it == conv_w16_ndhwc_.end() || it->second.first.shape() != w.shape()) {
      Tensor cl = alloc(w.shape(), DType::BF16);
      cuda::weight_channels_last_bf16(w.data<float>(), cl.data<uint16_t>(), w.dim(0), w.dim(1),
                                      w.dim(2) * w.dim(3) * w.dim(4), stream_);
      it = conv_w16_ndhwc_.insert_or_assign(w.raw(), std::make_pair(w, cl)).first;
    }
    return it->second.second;
  }
  // The bf16 copy of a float32 conv weight, made once: keyed by the weight's storage, which
  // the entry keeps alive so that the address cannot be reused while it is cached.
  const Tensor& conv_weight_bf16(const Tensor& w) {
    auto it = conv_w16_.find(w.raw());
    if (it == conv_w16_.end() || it->second.first.shape() != w.shape())
      it = conv_w16_.insert_or_assign(w.raw(), std::make_pair(w, to_bf16(w, "conv3d", "w"))).first;
    return it->second.second;
  }

  Tensor patchify(const Tensor& x, int pt, int ph, int pw) override {
    bind();
    const Tensor xx = in_f32(x, "patchify", "x");
    if (x.ndim() != 4 || pt <= 0 || ph <= 0 || pw <= 0 || x.dim(1) % pt || x.dim(2) % ph || x.dim(3) % pw)
      throw internal_error("patchify: x " + x.str() + " is not whole patches");
    const int64_t C = x.dim(0), T = x.dim(1), h = x.dim(2), w = x.dim(3);
    Tensor y = alloc({(T / pt) * (h / ph) * (w / pw), C * pt * ph * pw}, DType::F32);
    cuda::patchify(xx.data<float>(), y.data<float>(), C, T, h, w, pt, ph, pw, stream_);
    return y;
  }

  Tensor unpatchify(const Tensor& y, int64_t c, int64_t f, int64_t h, int64_t w, int pt, int ph, int pw) override {
    bind();
    const Tensor yy = in_f32(y, "unpatchify", "y");
    if (y.ndim() != 2 || y.dim(0) != f * h * w || y.dim(1) != c * pt * ph * pw)
      throw internal_error("unpatchify: y " + y.str() + " is not [" + std::to_string(f * h * w) + ", " +
                           std::to_string(c * pt * ph * pw) + "]");
    Tensor v = alloc({c, f * pt, h * ph, w * pw}, DType::F32);
    cuda::unpatchify(yy.data<float>(), v.data<float>(), c, f * pt, h * ph, w * pw, pt, ph, pw, stream_);
    return v;
  }

  Tensor upsample2x(const Tensor& x) override { return upsample(x, false, "upsample2x"); }
  // bf16 where the convolution that reads it runs on bf16 data
  Tensor upsample2x_for_conv(const Tensor& x) override {
    return upsample(x, conv_bf16_ && use_cudnn_ && cudnn_conv_, "upsample2x_for_conv");
  }
  Tensor upsample(const Tensor& x, bool bf16, const char* op) {
    bind();
    const Tensor xx = in_f32(x, op, "x");
    if (x.ndim() != 4) throw internal_error(std::string(op) + ": expected [C, T, H, W], got " + x.str());
    const int64_t c = x.dim(0), t = x.dim(1), h = x.dim(2), w = x.dim(3);
    Tensor y = alloc({c, t, 2 * h, 2 * w}, bf16 ? DType::BF16 : DType::F32);
    if (bf16)
      cuda::upsample2x_rows_bf16(xx.data<float>(), y.data<uint16_t>(), c * t, h, w, stream_);
    else
      cuda::upsample2x_rows(xx.data<float>(), y.data<float>(), c * t, h, w, stream_);
    return y;
  }

  Tensor cat_time(const Tensor& a, const Tensor& b) override {
    bind();
    // a held (bf16) cache is read as it is, frame slab by frame slab: no float32 copy first
    const Tensor aa = in_f32_or_bf16(a, "cat_time", "a"), bb = in_f32_or_bf16(b, "cat_time", "b");
    if (a.ndim() != 4 || b.ndim() != 4 || a.dim(0) != b.dim(0) || a.dim(2) != b.dim(2) ||
        a.dim(3) != b.dim(3))
      throw internal_error("cat_time: " + a.str() + " and " + b.str());
    const int64_t c = a.dim(0), ta = a.dim(1), tb = b.dim(1), f = a.dim(2) * a.dim(3);
    Tensor y = alloc({c, ta + tb, a.dim(2), a.dim(3)}, DType::F32);
    time_slab_f32(y.data<float>(), ta + tb, aa, 0, ta, c, f);
    time_slab_f32(y.data<float>() + ta * f, ta + tb, bb, 0, tb, c, f);
    return y;
  }

  Tensor hold_frames(const Tensor& x) override {
    bind();
    return to_bf16(x, "hold_frames", "x");
  }

  Tensor cache_tail(const Tensor& old, const Tensor& x, int64_t frames) override {
    bind();
    const Tensor xx = in_f32_or_bf16(x, "cache_tail", "x");
    Tensor oo;
    if (old.defined()) oo = in_f32_or_bf16(old, "cache_tail", "old");
    if (x.ndim() != 4 || frames < 1 ||
        (old.defined() && (old.ndim() != 4 || old.dim(0) != x.dim(0) || old.dim(2) != x.dim(2) ||
                           old.dim(3) != x.dim(3))))
      throw internal_error("cache_tail: old " + (old.defined() ? old.str() : std::string("none")) +
                           ", x " + x.str());
    const int64_t c = x.dim(0), t = x.dim(1), f = x.dim(2) * x.dim(3);
    const int64_t from_x = std::min(frames, t);
    const int64_t from_old = old.defined() ? std::min(frames - from_x, old.dim(1)) : 0;
    const int64_t k = from_old + from_x;
    Tensor y = alloc({c, k, x.dim(2), x.dim(3)}, DType::BF16);  // the held form
    uint16_t* yp = y.data<uint16_t>();
    if (from_old > 0) time_slab_bf16(yp, k, oo, old.dim(1) - from_old, from_old, c, f);
    time_slab_bf16(yp + from_old * f, k, xx, t - from_x, from_x, c, f);
    return y;
  }

  Tensor slice_time(const Tensor& x, int64_t t0, int64_t t1) override {
    bind();
    const Tensor xx = in_f32_or_bf16(x, "slice_time", "x");  // bf16: only the slice is read
    if (x.ndim() != 4) throw internal_error("slice_time: expected [C, T, H, W], got " + x.str());
    const int64_t c = x.dim(0), t = x.dim(1), f = x.dim(2) * x.dim(3);
    if (t0 < 0 || t1 < t0 || t1 > t)
      throw internal_error("slice_time: [" + std::to_string(t0) + ", " + std::to_string(t1) +
                           ") of " + x.str());
    Tensor y = alloc({c, t1 - t0, x.dim(2), x.dim(3)}, DType::F32);
    time_slab_f32(y.data<float>(), t1 - t0, xx, t0, t1 - t0, c, f);
    return y;
  }

  Tensor interleave_time(const Tensor& x) override {
    bind();
    const Tensor xx = in_f32(x, "interleave_time", "x");
    if (x.ndim() != 4) throw internal_error("interleave_time: expected [2C, T, H, W], got " + x.str());
    const int64_t c2 = x.dim(0), t = x.dim(1), f = x.dim(2) * x.dim(3);
    if (c2 % 2) throw internal_error("interleave_time: odd channel count in " + x.str());
    const int64_t c = c2 / 2;
    Tensor y = alloc({c, 2 * t, x.dim(2), x.dim(3)}, DType::F32);
    // Half s, frame r = i*t + j of its block goes to output frame 2r + s.
    const size_t fs = static_cast<size_t>(f) * sizeof(float);
    for (int64_t s = 0; s < 2; ++s)
      copy2d(y.data<float>() + s * f, 2 * fs, xx.data<float>() + s * c * t * f, fs, fs, c * t);
    return y;
  }

  Tensor transpose(const Tensor& x) override {
    bind();
    const Tensor xx = in_f32(x, "transpose", "x");
    if (x.ndim() != 2) throw internal_error("transpose: expected 2-D, got " + x.str());
    const int64_t r = x.dim(0), c = x.dim(1);
    Tensor y = alloc({c, r}, DType::F32);
    transpose2d(xx.data<float>(), y.data<float>(), r, c, stream_);
    return y;
  }

  // ---- copies ------------------------------------------------------------------------------------

  Tensor copy(const Tensor& x) override {
    bind();
    const Tensor xx = in_f32(x, "copy", "x");
    if (xx.storage() != x.storage()) return xx;  // already a fresh F32 copy of a BF16 input
    Tensor y = alloc(x.shape(), DType::F32);
    if (y.nbytes())
      MG_CUDA_CHECK(cudaMemcpyAsync(y.raw(), xx.raw(), y.nbytes(), cudaMemcpyDeviceToDevice, stream_));
    return y;
  }

  void copy_(Tensor& dst, const Tensor& src) override {
    bind();
    expect_out(dst, "copy_", "dst");
    const Tensor s = in_f32(src, "copy_", "src");
    expect_numel(dst, s, "copy_");
    if (dst.nbytes() && dst.raw() != s.raw())
      MG_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), s.raw(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream_));
  }

  void synchronize() override {
    bind();
    MG_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

 private:
  static constexpr size_t kWorkspace = size_t(32) << 20;

  void bind() const {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != dev_) MG_CUDA_CHECK(cudaSetDevice(dev_));
  }

  bool cudnn_ok(int64_t d) const { return use_cudnn_ && d % 8 == 0 && d <= 256; }

  Tensor alloc(const Shape& s, DType dt) {
    const size_t bytes = static_cast<size_t>(shape_numel(s)) * dtype_size(dt);
    void* p = mem_->alloc(bytes);
    auto st = std::make_shared<Storage>();
    st->data = p;
    st->bytes = bytes;
    st->device = Device::cuda(dev_);
    std::shared_ptr<Allocator> m = mem_;
    st->free = [m](void* q) { m->release(q); };
    return Tensor::with_storage(st, s, dt);
  }

  void h2d(void* dst, const void* src, size_t bytes) {
    if (bytes) MG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  // Frames [t0, t0 + n) of src [c, T, f] (float32 or bf16) into dst, a float32 [c, dst_t, f]
  // buffer at its first frame (dst points at the target frame of channel 0).
  void time_slab_f32(float* dst, int64_t dst_t, const Tensor& src, int64_t t0, int64_t n, int64_t c,
                     int64_t f) {
    if (n <= 0 || c <= 0 || f <= 0) return;
    const int64_t st = src.dim(1);
    if (src.dtype() == DType::BF16) {
      cuda::bf16_to_f32_2d(src.data<uint16_t>() + t0 * f, st * f, dst, dst_t * f, c, n * f, stream_);
    } else {
      const size_t fs = static_cast<size_t>(f) * sizeof(float);
      copy2d(dst, dst_t * fs, src.data<float>() + t0 * f, st * fs, n * fs, c);
    }
  }
  // The same into a bf16 buffer (the held form): bf16 frames are copied, float32 rounded.
  void time_slab_bf16(uint16_t* dst, int64_t dst_t, const Tensor& src, int64_t t0, int64_t n,
                      int64_t c, int64_t f) {
    if (n <= 0 || c <= 0 || f <= 0) return;
    const int64_t st = src.dim(1);
    if (src.dtype() == DType::BF16) {
      const size_t fs = static_cast<size_t>(f) * sizeof(uint16_t);
      copy2d(dst, dst_t * fs, src.data<uint16_t>() + t0 * f, st * fs, n * fs, c);
    } else {
      cuda::f32_to_bf16_2d(src.data<float>() + t0 * f, st * f, dst, dst_t * f, c, n * f, stream_);
    }
  }

  void copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
              int64_t height) {
    if (width == 0 || height == 0) return;
    MG_CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, static_cast<size_t>(height),
                                    cudaMemcpyDeviceToDevice, stream_));
  }

  void expect_dev(const Tensor& t, const char* op, const char* arg) const {
    if (!t.defined())
      throw internal_error(std::string(op) + ": argument " + arg + " is undefined");
    const Device d = t.device();
    if (d.type != DeviceType::CUDA || d.index != dev_)
      throw internal_error(std::string(op) + ": argument " + arg + " must be a tensor on cuda:" +
                           std::to_string(dev_) + " (use Ops::upload / Ops::weight), got " +
                           t.str() + " on " + d.str());
  }
  // nn.Linear's bias [n] as a float32 device tensor (undefined without one).
  Tensor linear_bias(const Tensor* b, const Tensor& w, const char* op) {
    if (!b) return Tensor();
    Tensor bias = in_f32(*b, op, "b");
    if (bias.numel() != w.dim(0))
      throw internal_error(std::string(op) + ": bias " + b->str() + " for " + w.str());
    return bias;
  }
  // y[m, n] = x[m, k] w[n, k]^T (+ bias) as a column-major GEMM: D[n, m] = W^T-op X.
  static GemmArgs linear_gemm(const Tensor& w, int64_t m, const Tensor& bias) {
    const int64_t n = w.dim(0), k = w.dim(1);
    GemmArgs g;
    g.ta = CUBLAS_OP_T;
    g.tb = CUBLAS_OP_N;
    g.m = n;
    g.n = m;
    g.k = k;
    g.lda = k;
    g.ldb = k;
    g.ldc = n;
    g.bias = bias.defined() ? static_cast<const void*>(bias.data<float>()) : nullptr;
    return g;
  }
  // LayerNorm with optional affine parameters, written in float32 or bf16 (`out`).
  Tensor affine_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, DType out,
                     const char* op) {
    bind();
    const Tensor xx = in_f32(x, op, "x");
    const int64_t d = x.ndim() ? x.dim(-1) : 0;
    Tensor ww, bb;
    if (w) ww = in_f32(*w, op, "w");
    if (b) bb = in_f32(*b, op, "b");
    if ((w && ww.numel() != d) || (b && bb.numel() != d))
      throw internal_error(std::string(op) + ": affine parameters for " + x.str());
    Tensor y = alloc(x.shape(), out);
    const int64_t n = d ? x.numel() / d : 0;
    const float* wp = w ? ww.data<float>() : nullptr;
    const float* bp = b ? bb.data<float>() : nullptr;
    if (out == DType::BF16)
      cuda::layer_norm_bf16(xx.data<float>(), wp, bp, nullptr, nullptr, y.data<uint16_t>(), n, d, eps,
                            stream_);
    else
      cuda::layer_norm(xx.data<float>(), wp, bp, nullptr, nullptr, y.data<float>(), n, d, eps, stream_);
    return y;
  }

  // y += A B for a float32 y that g.c points at: C = D = y in one cuBLASLt call, or, where
  // cuBLASLt has no algorithm for that, the product into a temporary, then added.
  void gemm_accumulate(GemmArgs g, Tensor& y) {
    if (gemm_->run_residual(g)) return;
    Tensor t = alloc(y.shape(), DType::F32);
    g.c = t.data<float>();
    gemm_->run(g);
    add_(y, t);
  }

  // The bf16 product of x and bf16 weights w (+ bias, then the tanh-GELU when `gelu`),
  // written by cuBLASLt's epilogue; an undefined tensor where w is float32 or cuBLASLt has
  // no algorithm (the caller composes).
  Tensor linear_to_bf16(const Tensor& x, const Tensor& w, const Tensor* b, bool gelu, const char* op) {
    bind();
    expect_dev(x, op, "x");
    expect_dev(w, op, "w");
    if (w.dtype() != DType::BF16 || w.ndim() != 2 || x.ndim() < 1 || x.dim(-1) != w.dim(1))
      return Tensor();
    const int64_t m = x.numel() / w.dim(1);
    const Tensor bias = linear_bias(b, w, op);
    Shape os = x.shape();
    os.back() = w.dim(0);
    Tensor y = alloc(os, DType::BF16);
    if (m == 0) return y;
    const Tensor xin = to_bf16(x, op, "x");
    GemmArgs g = linear_gemm(w, m, bias);
    g.ab = CUDA_R_16BF;
    g.a = w.raw();
    g.b = xin.raw();
    return linear_bf16_out(g, bias, y, gelu, op) ? y : Tensor();
  }
  // A bf16 GEMM result written by cuBLASLt (Gemm::run_bf16) into y: with the float32 bias
  // first, then, where cuBLASLt takes the bias only in D's type, a bf16 copy of it. False:
  // no algorithm either way (the caller composes).
  bool linear_bf16_out(GemmArgs& g, const Tensor& bias, Tensor& y, bool gelu, const char* op) {
    if (gemm_->run_bf16(g, y.data<uint16_t>(), gelu)) return true;
    if (!bias.defined()) return false;
    const Tensor b16 = to_bf16(bias, op, "bias");
    g.bias = b16.raw();
    g.bias_type = CUDA_R_16BF;
    return gemm_->run_bf16(g, y.data<uint16_t>(), gelu);
  }
  // out[idx[i]] (+)= x[i] * w[i] over rows of `row` elements, x float32 or bf16
  void scatter_injective(Tensor& out, const Tensor& x, const Tensor& idx, const Tensor* w,
                         int64_t m, int64_t row, bool accumulate) {
    const float* wp = w ? w->data<float>() : nullptr;
    if (x.dtype() == DType::BF16)
      cuda::scatter_rows_injective_bf16(out.data<float>(), x.data<uint16_t>(), idx.data<int64_t>(),
                                        wp, m, row, accumulate, stream_);
    else
      cuda::scatter_rows_injective(out.data<float>(), x.data<float>(), idx.data<int64_t>(), wp, m,
                                   row, accumulate, stream_);
  }

  void expect_index(const Tensor& t, const char* op) const {
    expect_dev(t, op, "idx");
    if (t.dtype() != DType::I64 || t.ndim() != 1)
      throw internal_error(std::string(op) + ": idx must be an I64 [m] tensor (Ops::index), got " +
                           t.str());
  }
  void expect_out(const Tensor& t, const char* op, const char* arg) const {
    expect_dev(t, op, arg);
    if (t.dtype() != DType::F32)
      throw internal_error(std::string(op) + ": argument " + arg +
                           " must be an F32 activation, got " + t.str());
  }
  static void expect_numel(const Tensor& a, const Tensor& b, const char* op) {
    if (a.numel() != b.numel())
      throw internal_error(std::string(op) + ": size mismatch " + a.str() + " vs " + b.str());
  }

  Tensor to_f32(const Tensor& t) {
    Tensor y = alloc(t.shape(), DType::F32);
    bf16_to_f32(t.data<uint16_t>(), y.data<float>(), t.numel(), stream_);
    return y;
  }
  // F32 device view of an input: F32 as is, BF16 (weights) converted into a fresh tensor.
  // LayerNorm (no affine) then v * (1 + scale) + shift, written in `out` (F32 or BF16).
  Tensor modulated_norm(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                        DType out) {
    bind();
    const Tensor xx = in_f32(x, "layer_norm_modulate", "x");
    const Tensor sh = in_f32(shift, "layer_norm_modulate", "shift");
    const Tensor sc = in_f32(scale, "layer_norm_modulate", "scale");
    const int64_t d = x.ndim() ? x.dim(-1) : 0;
    if (sh.numel() != d || sc.numel() != d)
      throw internal_error("layer_norm_modulate: shift/scale " + shift.str() + " for " + x.str());
    Tensor y = alloc(x.shape(), out);
    const int64_t n = d ? x.numel() / d : 0;
    if (out == DType::BF16)
      cuda::layer_norm_bf16(xx.data<float>(), nullptr, nullptr, sh.data<float>(), sc.data<float>(),
                            y.data<uint16_t>(), n, d, eps, stream_);
    else
      cuda::layer_norm(xx.data<float>(), nullptr, nullptr, sh.data<float>(), sc.data<float>(),
                       y.data<float>(), n, d, eps, stream_);
    return y;
  }

  // An input an op reads in either form: bf16 as it is (a compact() operand, an attention
  // output), anything else as float32.
  Tensor in_f32_or_bf16(const Tensor& t, const char* op, const char* arg) {
    if (t.defined() && t.dtype() == DType::BF16) {
      expect_dev(t, op, arg);
      return t;
    }
    return in_f32(t, op, arg);
  }

  Tensor in_f32(const Tensor& t, const char* op, const char* arg) {
    expect_dev(t, op, arg);
    if (t.dtype() == DType::F32) return t;
    if (t.dtype() == DType::BF16) return to_f32(t);
    throw internal_error(std::string(op) + ": argument " + arg + " has dtype " + t.str() +
                         " (expected F32 or BF16)");
  }
  // BF16 device copy of an input (GEMM / attention operand).
  Tensor to_bf16(const Tensor& t, const char* op, const char* arg) {
    expect_dev(t, op, arg);
    if (t.dtype() == DType::BF16) return t;
    const Tensor f = in_f32(t, op, arg);
    Tensor y = alloc(t.shape(), DType::BF16);
    f32_to_bf16(f.data<float>(), y.data<uint16_t>(), f.numel(), stream_);
    return y;
  }

  Tensor map1(const Tensor& x, Unary op, float a, float b, const char* name) {
    bind();
    const Tensor xx = in_f32(x, name, "x");
    Tensor y = alloc(x.shape(), DType::F32);
    unary(op, xx.data<float>(), y.data<float>(), y.numel(), a, b, stream_);
    return y;
  }
  Tensor map2(const Tensor& a, const Tensor& b, Binary op, const char* name) {
    bind();
    const Tensor aa = in_f32(a, name, "a"), bb = in_f32(b, name, "b");
    expect_numel(aa, bb, name);
    Tensor y = alloc(a.shape(), DType::F32);
    binary(op, aa.data<float>(), bb.data<float>(), y.data<float>(), y.numel(), stream_);
    return y;
  }

  void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) const {
    expect_dev(q, op, "q");
    expect_dev(k, op, "k");
    expect_dev(v, op, "v");
    check_qkv_shapes(q, k, v, op);
  }

  int dev_;
  std::string name_;
  std::shared_ptr<Allocator> mem_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  std::shared_ptr<void> ws_;
  std::unique_ptr<Gemm> gemm_;
  std::unique_ptr<Sdpa> sdpa_;
  std::unique_ptr<CudnnConv3d> conv_;
  bool use_cudnn_ = true;
  AttentionStats att_stats_;  // plans and plan_seconds come from sdpa_
  bool cudnn_conv_ = true;  // conv3d with float32 weights through cuDNN (MOGAGEN_CONV)
  bool conv_bf16_ = true;   // ... with bf16 data (the default; MOGAGEN_CONV=cudnn: float32)
  bool conv_ndhwc_ = true;  // ... on channels-last copies (the default; MOGAGEN_CONV=bf16: NCDHW)
  // conv_weight_bf16's copies: weight storage -> (the weight, held alive; its bf16 copy)
  std::map<const void*, std::pair<Tensor, Tensor>> conv_w16_;
  std::map<const void*, std::pair<Tensor, Tensor>> conv_w16_ndhwc_;  // the same, channels last
};

// Device 0..n-1 usable by this build (sm_90a code: compute capability 9.0 exactly).
std::string probe(int index, bool* ok) {
  *ok = false;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no usable CUDA device: ") + cudaGetErrorName(e) + " (" +
           cudaGetErrorString(e) +
           "); is an NVIDIA GPU present and its driver installed? Use --device cpu otherwise";
  }
  if (count <= 0) return "no CUDA device is visible; use --device cpu";
  if (index < 0 || index >= count)
    return "CUDA device " + std::to_string(index) + " does not exist (" + std::to_string(count) +
           " visible: cuda:0.." + "cuda:" + std::to_string(count - 1) + ")";
  cudaDeviceProp p{};
  const cudaError_t e2 = cudaGetDeviceProperties(&p, index);
  if (e2 != cudaSuccess) {
    cudaGetLastError();
    return std::string("cannot query CUDA device ") + std::to_string(index) + ": " +
           cudaGetErrorString(e2);
  }
  if (p.major != 9 || p.minor != 0)
    return "CUDA device " + std::to_string(index) + " (" + p.name + ", compute capability " +
           std::to_string(p.major) + "." + std::to_string(p.minor) +
           ") is not supported: this build targets sm_90a (Hopper: H100/H200); use --device cpu";
  *ok = true;
  return {};
}

}  // namespace
}  // namespace cuda

bool cuda_available() {
  try {
    bool ok = false;
    cuda::probe(0, &ok);
    return ok;
  } catch (...) {
    return false;
  }
}

int cuda_compute_capability(int device_index) {
  cudaDeviceProp p{};
  if (!cuda_available() || cudaGetDeviceProperties(&p, device_index) != cudaSuccess) return 0;
  return 10 * p.major + p.minor;
}

std::unique_ptr<Ops> make_cuda_ops(int device_index) {
  bool ok = false;
  const std::string why = cuda::probe(device_index, &ok);
  if (!ok) throw device_error(why);
  return std::make_unique<cuda::CudaOps>(device_index);
}

}  // namespace mg
