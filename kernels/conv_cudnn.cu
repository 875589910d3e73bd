// conv3d through cuDNN's (legacy) convolution API, for the VAE decoder: the implicit-GEMM
// kernels read the input where it lies, where im2col first writes kt*kh*kw copies of it
// (shared/cudnn-notes.md §9). See CudnnConv3d in kernels.cuh for the contract.
#include <array>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/kernels.cuh"
#include "mogagen/error.h"

#ifdef MOGAGEN_HAVE_CUDNN
#include <cudnn.h>

#include "kernels/cudnn_handle.h"
#endif

namespace mg {
namespace cuda {

#ifdef MOGAGEN_HAVE_CUDNN

namespace {

// ci, t, h, w, kt, kh, kw, co, pad_h, pad_w, bf16 data (0 or 1), channels last (0 or 1)
using ConvKey = std::array<int64_t, 12>;

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  size_t workspace = 0;
  bool ok = false;
  // Every admissible algorithm, in the heuristics' order, until the first call has timed
  // them on the real operands (then `algo` is the fastest and the list is cleared).
  std::vector<std::pair<cudnnConvolutionFwdAlgo_t, size_t>> candidates;
  ~ConvPlan() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
  }
};

// The algorithms whose arithmetic is a plain dot product per output (float accumulation):
// the im2col GEMM's numerics, so the golden bar holds either way.
bool exact_kind(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM;
}

const size_t kMaxWorkspace = size_t(1) << 30;

std::string shape_str(const ConvKey& k) {
  return std::string(k[10] ? "bf16 " : "") + (k[11] ? "NDHWC " : "") + "x [" + std::to_string(k[0]) + ", " + std::to_string(k[1]) +
         ", " + std::to_string(k[2]) + ", " + std::to_string(k[3]) + "] w [" + std::to_string(k[7]) +
         ", " + std::to_string(k[0]) + ", " + std::to_string(k[4]) + ", " + std::to_string(k[5]) + ", " +
         std::to_string(k[6]) + "]";
}

}  // namespace

struct CudnnConv3d::Impl {
  explicit Impl(cudaStream_t s) : stream(s), cudnn(s, "the VAE's conv3d runs im2col + GEMM") {}
  cudaStream_t stream;
  LazyCudnnHandle cudnn;  // declared first: destroyed after the plans
  cudnnHandle_t handle = nullptr;
  std::map<ConvKey, std::unique_ptr<ConvPlan>> cache;

  bool ready() {
    handle = cudnn.get();
    return handle != nullptr;
  }
  // forward() and forward_bf16(): x, w, y float32 or bf16 as `bf16` says
  bool run(DeviceMemory& mem, const void* x, const void* w, void* y, const Conv3dShape& s, int64_t co,
           bool bf16, bool ndhwc = false);

  // Builds the descriptors and picks an algorithm; a plan without one (ok = false) is
  // cached too, so a rejected shape is asked about once.
  ConvPlan* plan_for(const ConvKey& k) {
    auto it = cache.find(k);
    if (it != cache.end()) return it->second->ok ? it->second.get() : nullptr;
    auto p = std::make_unique<ConvPlan>();
    std::string why;
    auto ok = [&](cudnnStatus_t st, const char* what) {
      if (st == CUDNN_STATUS_SUCCESS) return true;
      why = std::string(what) + ": " + cudnnGetErrorString(st);
      return false;
    };
    const int ci = int(k[0]), t = int(k[1]), h = int(k[2]), w = int(k[3]);
    const int kt = int(k[4]), kh = int(k[5]), kw = int(k[6]), co = int(k[7]);
    const int xd[5] = {1, ci, t, h, w};
    const int xs[5] = {ci * t * h * w, t * h * w, h * w, w, 1};
    const int wd[5] = {co, ci, kt, kh, kw};
    const int pad[3] = {0, int(k[8]), int(k[9])}, one[3] = {1, 1, 1};
    // bf16 data: cuDNN's BFLOAT16 config (float accumulation, tensor cores)
    const cudnnDataType_t dt = k[10] ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    int yd[5] = {0, 0, 0, 0, 0};
    bool good = ok(cudnnCreateTensorDescriptor(&p->x), "create x") &&
                ok(cudnnCreateTensorDescriptor(&p->y), "create y") &&
                ok(cudnnCreateFilterDescriptor(&p->w), "create w") &&
                ok(cudnnCreateConvolutionDescriptor(&p->conv), "create conv") &&
                (k[11] ? ok(cudnnSetTensorNdDescriptorEx(p->x, CUDNN_TENSOR_NHWC, dt, 5, xd), "x")
                       : ok(cudnnSetTensorNdDescriptor(p->x, dt, 5, xd, xs), "x")) &&
                ok(cudnnSetFilterNdDescriptor(p->w, dt, k[11] ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW, 5, wd),
                   "w") &&
                ok(cudnnSetConvolutionNdDescriptor(p->conv, 3, pad, one, one, CUDNN_CROSS_CORRELATION,
                                                   CUDNN_DATA_FLOAT),
                   "conv") &&
                // TF32 tensor cores are allowed for float data on sm_80+, as in the GEMM path;
                // bf16 data runs on tensor cores either way
                ok(cudnnSetConvolutionMathType(p->conv, k[10] ? CUDNN_TENSOR_OP_MATH : CUDNN_DEFAULT_MATH),
                   "math type") &&
                ok(cudnnGetConvolutionNdForwardOutputDim(p->conv, p->x, p->w, 5, yd), "output dims");
    if (good && (yd[0] != 1 || yd[1] != co || yd[2] != t - kt + 1 || yd[3] != h + 2 * pad[1] - kh + 1 ||
                 yd[4] != w + 2 * pad[2] - kw + 1)) {
      good = false;  // not the convolution Ops::conv3d describes: never write a wrong shape
      why = "unexpected output dims";
    }
    if (good) {
      const int ys[5] = {yd[1] * yd[2] * yd[3] * yd[4], yd[2] * yd[3] * yd[4], yd[3] * yd[4], yd[4], 1};
      good = k[11] ? ok(cudnnSetTensorNdDescriptorEx(p->y, CUDNN_TENSOR_NHWC, dt, 5, yd), "y")
                   : ok(cudnnSetTensorNdDescriptor(p->y, dt, 5, yd, ys), "y");
    }
    if (good) {
      cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      int n = 0;
      good = ok(cudnnGetConvolutionForwardAlgorithm_v7(handle, p->x, p->w, p->conv, p->y,
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf),
                "algorithm heuristics");
      if (good) {
        for (int i = 0; i < n; ++i) {  // best first
          if (perf[i].status != CUDNN_STATUS_SUCCESS || !exact_kind(perf[i].algo) ||
              perf[i].memory > kMaxWorkspace)
            continue;
          size_t bytes = 0;
          if (cudnnGetConvolutionForwardWorkspaceSize(handle, p->x, p->w, p->conv, p->y,
                                                      perf[i].algo, &bytes) != CUDNN_STATUS_SUCCESS ||
              bytes > kMaxWorkspace)
            continue;
          p->candidates.emplace_back(perf[i].algo, bytes);
        }
        good = !p->candidates.empty();
        if (good) {
          p->algo = p->candidates.front().first;
          p->workspace = p->candidates.front().second;
          if (p->candidates.size() == 1) p->candidates.clear();  // nothing to choose
        } else {
          why = "no implicit-GEMM algorithm within 1 GiB of workspace";
        }
      }
    }
    p->ok = good;
    if (good) {
      log_debug("cuDNN conv3d plan: " + shape_str(k) + " algo " + std::to_string(int(p->algo)) +
                " workspace " + std::to_string(p->workspace));
    } else {
      log_warning("cuDNN conv3d cannot run " + shape_str(k) + " (" + why + "); using im2col + GEMM");
    }
    ConvPlan* raw = good ? p.get() : nullptr;
    cache.emplace(k, std::move(p));
    return raw;
  }
};

CudnnConv3d::CudnnConv3d(int /*device*/, cudaStream_t stream) : impl_(std::make_unique<Impl>(stream)) {}
CudnnConv3d::~CudnnConv3d() = default;
bool CudnnConv3d::built_with_cudnn() { return true; }

bool CudnnConv3d::forward(DeviceMemory& mem, const float* x, const float* w, float* y,
                          const Conv3dShape& s, int64_t co) {
  return impl_->run(mem, x, w, y, s, co, false);
}

bool CudnnConv3d::forward_bf16(DeviceMemory& mem, const uint16_t* x, const uint16_t* w, uint16_t* y,
                               const Conv3dShape& s, int64_t co) {
  return impl_->run(mem, x, w, y, s, co, true);
}

bool CudnnConv3d::forward_bf16_ndhwc(DeviceMemory& mem, const uint16_t* x, const uint16_t* w, uint16_t* y,
                                     const Conv3dShape& s, int64_t co) {
  return impl_->run(mem, x, w, y, s, co, true, true);
}

bool CudnnConv3d::Impl::run(DeviceMemory& mem, const void* x, const void* w, void* y,
                            const Conv3dShape& s, int64_t co, bool bf16, bool ndhwc) {
  if (s.pad_t != 0 || !ready()) return false;
  const int64_t lim = int64_t(1) << 31;
  if (s.ci * s.t * s.h * s.w >= lim || co * s.to * s.ho * s.wo >= lim) return false;  // int dims
  const ConvKey key{s.ci, s.t, s.h, s.w, s.kt, s.kh, s.kw, co, s.pad_h, s.pad_w, int64_t(bf16), int64_t(ndhwc)};
  ConvPlan* p = plan_for(key);
  if (!p) return false;
  const float one = 1.0f, zero = 0.0f;  // float scaling for float and bf16 data alike
  auto run_algo = [&](cudnnConvolutionFwdAlgo_t algo, size_t bytes) {
    std::shared_ptr<void> ws;
    if (bytes) ws = mem.scratch(bytes);
    const cudnnStatus_t st = cudnnConvolutionForward(handle, &one, p->x, x, p->w, w, p->conv, algo,
                                                     ws.get(), bytes, &zero, p->y, y);
    if (st != CUDNN_STATUS_SUCCESS)
      throw device_error("cudnnConvolutionForward (" + shape_str(key) + "): " + cudnnGetErrorString(st));
  };
  if (!p->candidates.empty()) {
    // First call of this shape: every admissible algorithm on these operands (the
    // heuristics' first pick is not always the fastest), the fastest kept and run last so
    // that y is its result.
    float best = -1.0f;
    const size_t i = fastest_of(
        p->candidates.size(), stream,
        [&](size_t k) {
          run_algo(p->candidates[k].first, p->candidates[k].second);
          return true;
        },
        &best);
    p->algo = p->candidates[i].first;
    p->workspace = p->candidates[i].second;
    log_debug("cuDNN conv3d " + shape_str(key) + ": algo " + std::to_string(int(p->algo)) +
              " fastest of " + std::to_string(p->candidates.size()) + " (" + std::to_string(best) + " ms)");
    p->candidates.clear();
  }
  run_algo(p->algo, p->workspace);
  return true;
}

#else  // !MOGAGEN_HAVE_CUDNN

struct CudnnConv3d::Impl {};
CudnnConv3d::CudnnConv3d(int, cudaStream_t) {}
CudnnConv3d::~CudnnConv3d() = default;
bool CudnnConv3d::built_with_cudnn() { return false; }
bool CudnnConv3d::forward(DeviceMemory&, const float*, const float*, float*, const Conv3dShape&,
                          int64_t) {
  return false;
}
bool CudnnConv3d::forward_bf16_ndhwc(DeviceMemory&, const uint16_t*, const uint16_t*, uint16_t*,
                                     const Conv3dShape&, int64_t) {
  return false;
}
bool CudnnConv3d::forward_bf16(DeviceMemory&, const uint16_t*, const uint16_t*, uint16_t*,
                               const Conv3dShape&, int64_t) {
  return false;
}

#endif

}  // namespace cuda
}  // namespace mg
