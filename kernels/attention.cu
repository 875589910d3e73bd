// Attention.
//  * Sdpa: cuDNN fused flash attention (bf16 q/k/v/o, fp32 softmax) through the backend
//    graph API, dense and ragged (packed varlen), with a plan cache keyed by shape. The graph
//    is the one documented in shared/cudnn-notes.md §3/§5 (matmul, scale, [padding mask],
//    softmax as primitives with the mandatory LSE branch, matmul).
//  * our own kernel for Hopper (kernels/flash_sm90.cu), head size 128, dense and ragged: where
//    the GPU is an sm_90 one, the first call of each shape class times it against cuDNN's and
//    the faster runs from then on (MOGAGEN_ATTENTION_KERNEL=auto, the default; `cudnn` or
//    `sm90` force one). On the H200 it runs 13% faster than cuDNN 9.14's at the power cap
//    (docs/performance.md, eleventh session).
//  * attention_f32: the exact fallback for what cuDNN rejects (head dim > 256 or not a
//    multiple of 8, e.g. the VAE's 384; an additive bias, e.g. umT5): fp32 GEMM (cuBLAS, TF32
//    off) - softmax kernel - fp32 GEMM, chunked over query rows. Semantics: CpuOps::attention.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
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

// ---- our sm90 kernel beside cuDNN's -------------------------------------------------------------
enum class KernelMode { Auto, Cudnn, Sm90 };

static KernelMode kernel_mode_from_env() {
  const char* e = std::getenv("MOGAGEN_ATTENTION_KERNEL");
  if (!e || !*e || !std::strcmp(e, "auto")) return KernelMode::Auto;
  if (!std::strcmp(e, "cudnn")) return KernelMode::Cudnn;
  if (!std::strcmp(e, "sm90")) return KernelMode::Sm90;
  log_warning(std::string("MOGAGEN_ATTENTION_KERNEL='") + e + "' is not auto, cudnn or sm90; using auto");
  return KernelMode::Auto;
}

// Which kernel runs each shape class: (ragged, heads, head size, bit length of the longest key
// segment), so that a self-attention over 32,760 keys and a cross-attention over 512 of the
// same heads are timed apart. Ours where it ran faster on the class's first call.
struct KernelChoice {
  static constexpr int kBlockN = 176;  // key rows per step (the faster of 128 and 176 on the H200)
  // One CTA per SM looping over the tiles where each tile is short (its next tile's loads then
  // hide its start-up): key segments up to 16,384 rows. Longer ones run one CTA per tile: CTAs
  // that start together stay in step along the keys and share them in L2, where looping CTAs
  // drift apart (dense 187,200 tokens: 578 TFLOP/s looping against 646; docs/performance.md).
  static bool persistent(int64_t longest_keys) { return longest_keys <= 16384; }
  KernelMode mode;
  bool sm90;  // an sm_90 GPU whose driver encodes tensor maps, and not forced to cuDNN
  std::map<std::array<int64_t, 4>, bool> ours;
  int64_t sm90_calls = 0;
  explicit KernelChoice(int device)
      : mode(kernel_mode_from_env()), sm90(mode != KernelMode::Cudnn && flash_sm90_supported(device)) {}

  static int64_t bits(int64_t n) {
    int64_t b = 0;
    while (n > 0) ++b, n >>= 1;
    return b;
  }
  // Runs the call: `mine` (our kernel) or `cudnn` (false where cuDNN cannot), whichever the
  // class chose. The class's first call chooses on its operands: each runs once untimed
  // (cuDNN builds and tunes its plan), then both are timed in the order mine, cuDNN, cuDNN,
  // mine, so that a GPU warming towards its power cap favours neither; the winner then runs
  // once more, so that the output is always the chosen kernel's.
  template <typename Mine, typename Cudnn>
  bool run(const std::array<int64_t, 4>& key, cudaStream_t stream, Mine&& mine, Cudnn&& cudnn) {
    if (!sm90 || key[2] != 128) return cudnn();
    bool use_mine = true;
    if (mode == KernelMode::Auto) {
      auto it = ours.find(key);
      if (it == ours.end()) {
        const bool can_mine = mine(), can_cudnn = cudnn();
        bool pick = can_mine;
        if (can_mine && can_cudnn) {
          float t[2] = {0.0f, 0.0f};
          EventTimer timer(stream);
          for (const int i : {0, 1, 1, 0})  // both ran above
            t[i] += timer.ms([&] { return i == 0 ? mine() : cudnn(); }) / 2.0f;
          pick = t[0] <= t[1];
          log_debug(std::string("attention ") + (key[0] ? "ragged" : "dense") + " h=" + std::to_string(key[1]) +
                    " keys < 2^" + std::to_string(key[3]) + ": sm90 " + std::to_string(t[0]) + " ms, cuDNN " +
                    std::to_string(t[1]) + " ms; " + (pick ? "sm90" : "cuDNN") + " kept");
        }
        it = ours.emplace(key, pick).first;
      }
      use_mine = it->second;
    }
    if (use_mine && mine()) {
      ++sm90_calls;
      return true;
    }
    return cudnn();
  }
};

namespace {

// ---- fallback: softmax over rows of the score block ------------------------------------------

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// s: [h, rb, nk] scores (already scaled); bias: [h, nq, nk] or null, row block starts at r0.
__global__ void softmax_rows_kernel(float* __restrict__ s, const float* __restrict__ bias,
                                    int64_t rb, int64_t nk, int64_t nq, int64_t r0) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x, hh = row / rb, i = row % rb;
  float* p = s + row * nk;
  const float* bp = bias ? bias + (hh * nq + r0 + i) * nk : nullptr;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    float v = p[j];
    if (bp) {
      v += bp[j];
      p[j] = v;
    }
    mx = fmaxf(mx, v);
  }
  mx = warp_max(mx);
  if (lane == 0) sh[warp] = mx;
  __syncthreads();
  mx = lane < nw ? sh[lane] : -INFINITY;
  mx = warp_max(mx);
  __syncthreads();

  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    const float e = expf(p[j] - mx);
    p[j] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  if (lane == 0) sh[warp] = sum;
  __syncthreads();
  sum = lane < nw ? sh[lane] : 0.0f;
  sum = warp_sum(sum);
  const float inv = 1.0f / sum;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) p[j] *= inv;
}

}  // namespace

void attention_f32(cublasHandle_t blas, cudaStream_t stream, DeviceMemory& mem, const float* q,
                   const float* k, const float* v, float* o, int64_t nq, int64_t nk, int64_t h,
                   int64_t d, int64_t ld, float scale, const float* bias) {
  if (nq <= 0 || h <= 0 || d <= 0) return;
  if (nk <= 0) {
    MG_CUDA_CHECK(cudaMemset2DAsync(o, ld * sizeof(float), 0, h * d * sizeof(float), nq, stream));
    return;
  }
  // Score block [h, rb, nk] bounded to 128 Mi floats (512 MB).
  const int64_t budget = int64_t(1) << 27;
  const int64_t rb = std::max<int64_t>(1, std::min<int64_t>(nq, budget / (h * nk)));
  auto sbuf = mem.scratch(static_cast<size_t>(h * rb * nk) * sizeof(float));
  float* S = static_cast<float*>(sbuf.get());
  const float one = 1.0f, zero = 0.0f;
  for (int64_t r0 = 0; r0 < nq; r0 += rb) {
    const int64_t n = std::min(rb, nq - r0);
    // S_h^T (nk x n, col-major) = K_h^T(op) . Q_h ; batch over heads (stride d).
    MG_CUBLAS_CHECK(cublasSgemmStridedBatched(
        blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nk), static_cast<int>(n),
        static_cast<int>(d), &scale, k, static_cast<int>(ld), d, q + r0 * ld, static_cast<int>(ld),
        d, &zero, S, static_cast<int>(nk), n * nk, static_cast<int>(h)));
    const int threads = nk >= 1024 ? 512 : (nk >= 256 ? 256 : 128);
    softmax_rows_kernel<<<static_cast<unsigned>(h * n), threads, 0, stream>>>(S, bias, n, nk, nq,
                                                                               r0);
    MG_CUDA_LAUNCH_CHECK();
    // O_h^T (d x n) = V_h (d x nk, col-major view) . P^T (nk x n)
    MG_CUBLAS_CHECK(cublasSgemmStridedBatched(
        blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(d), static_cast<int>(n),
        static_cast<int>(nk), &one, v, static_cast<int>(ld), d, S, static_cast<int>(nk), n * nk,
        &zero, o + r0 * ld, static_cast<int>(ld), d, static_cast<int>(h)));
  }
}

// ================================================================================================
// cuDNN SDPA
// ================================================================================================

#ifdef MOGAGEN_HAVE_CUDNN

namespace {

struct CudnnFailure {
  std::string what;
};

std::string cudnn_reason(cudnnStatus_t s, const char* expr) {
  char buf[1024] = {0};
  cudnnGetLastErrorString(buf, sizeof(buf));
  return std::string(expr) + ": " + cudnnGetErrorString(s) + (buf[0] ? std::string(" (") + buf + ")" : "");
}

#define MG_CUDNN_TRY(expr)                                                   \
  do {                                                                       \
    const cudnnStatus_t st_ = (expr);                                        \
    if (st_ != CUDNN_STATUS_SUCCESS) throw CudnnFailure{cudnn_reason(st_, #expr)}; \
  } while (0)

#define MG_CUDNN_CHECK(expr)                                                                 \
  do {                                                                                       \
    const cudnnStatus_t st_ = (expr);                                                        \
    if (st_ != CUDNN_STATUS_SUCCESS)                                                         \
      throw ::mg::device_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                               cudnn_reason(st_, #expr));                                    \
  } while (0)

// Attribute names marked deprecated in the 9.19 headers but still required by 9.14
// (shared/cudnn-notes.md §2, §8); spelled by value to keep the build warning-free.
const auto kGraphHandleAttr = static_cast<cudnnBackendAttributeName_t>(800);  // OPERATIONGRAPH_HANDLE
const auto kPlanHandleAttr = static_cast<cudnnBackendAttributeName_t>(400);   // EXECUTION_PLAN_HANDLE

enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kScale, kSeqQ, kSeqKV, kNegInf, kOffQ, kOffK, kOffV, kOffO,
  kVirtual = 100
};

// An engine configuration by value: the engine's global index and its knob choices, sorted
// by knob. A family's choice is kept this way (heuristics rank per graph, so a position in
// one graph's list can name another configuration in the next), and so are the knob
// search's variants, which no heuristics list holds. engine -1: not known.
struct ConfigSpec {
  int64_t engine = -1;
  std::vector<std::pair<cudnnBackendKnobType_t, int64_t>> knobs;
  bool operator==(const ConfigSpec& o) const { return engine == o.engine && knobs == o.knobs; }
  std::string str() const {
    std::string r = "engine " + std::to_string(engine);
    for (const auto& k : knobs) r += " knob" + std::to_string(int(k.first)) + "=" + std::to_string(k.second);
    return r;
  }
};

// MOGAGEN_SDPA_KNOBS=search: the first graph of each family also times variants of the
// heuristics' first configuration, one knob changed at a time (an experiment: off by
// default). Read when the backend is made.
bool knob_search_from_env() {
  const char* e = std::getenv("MOGAGEN_SDPA_KNOBS");
  if (!e || !*e || std::strcmp(e, "off") == 0) return false;
  if (std::strcmp(e, "search") == 0) return true;
  log_warning(std::string("MOGAGEN_SDPA_KNOBS='") + e + "' is neither search nor off; off");
  return false;
}

struct Plan {
  std::vector<cudnnBackendDescriptor_t> descs;  // everything the plan was built from
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;
  bool ok = false;
  // Other finalized execution plans of the heuristics' list, with their workspace, until
  // the first execution has timed them against `plan` (then the fastest is `plan`).
  std::vector<std::pair<cudnnBackendDescriptor_t, int64_t>> candidates;
  // The configuration of `plan` and of each candidate, in that order (engine -1: unread),
  // and its position in the heuristics' (mode A) list (-1: not from it).
  std::vector<ConfigSpec> specs;
  std::vector<int64_t> positions;
  std::array<int64_t, 3> family{};  // ragged, H, D
  bool sets_family = false;          // the first of its family: records its choice once run
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    for (auto& c : candidates) cudnnBackendDestroyDescriptor(c.first);
    if (plan) cudnnBackendDestroyDescriptor(plan);
    for (auto it = descs.rbegin(); it != descs.rend(); ++it) cudnnBackendDestroyDescriptor(*it);
  }
};

// Engine configurations kept per graph for the first execution to time (the heuristics'
// first is not always the fastest). MOGAGEN_SDPA_CANDIDATES=N (1 to 8) changes the count;
// 1 keeps the heuristics' first without timing anything (the knob search still adds its
// variants). Read when the backend is made.
size_t plan_candidates_from_env() {
  return static_cast<size_t>(env_count("MOGAGEN_SDPA_CANDIDATES", 1, 8, 4, "a count from 1 to 8"));
}

class GraphBuilder {
 public:
  explicit GraphBuilder(Plan& p) : keep_(p.descs) {}

  cudnnBackendDescriptor_t create(cudnnBackendDescriptorType_t t) {
    cudnnBackendDescriptor_t d = nullptr;
    MG_CUDNN_TRY(cudnnBackendCreateDescriptor(t, &d));
    keep_.push_back(d);
    return d;
  }
  static void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t n,
                  cudnnBackendAttributeType_t t, int64_t count, const void* v) {
    MG_CUDNN_TRY(cudnnBackendSetAttribute(d, n, t, count, v));
  }
  static void finalize(cudnnBackendDescriptor_t d) { MG_CUDNN_TRY(cudnnBackendFinalize(d)); }

  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dt, std::array<int64_t, 4> dims,
                                  std::array<int64_t, 4> strides, bool is_virtual,
                                  bool by_value = false,
                                  cudnnBackendDescriptor_t ragged = nullptr) {
    auto d = create(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16;
    set(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    set(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
    set(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
    set(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    if (is_virtual) {
      const bool t = true;
      set(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &t);
    }
    if (by_value) {
      const bool t = true;
      set(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &t);
    }
    if (ragged) set(d, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ragged);
    finalize(d);
    return d;
  }
  // A fresh virtual tensor.
  cudnnBackendDescriptor_t virt(cudnnDataType_t dt, std::array<int64_t, 4> dims,
                                std::array<int64_t, 4> strides) {
    return tensor(kVirtual + next_virtual_++, dt, dims, strides, true);
  }

  cudnnBackendDescriptor_t pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec,
                                     cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                                     cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y,
                                     int64_t axis = -1) {
    auto pw = create(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    finalize(pw);
    auto op = create(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    if (t) set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    const float one = 1.0f;
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one);
    if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one);
    finalize(op);
    return op;
  }

  cudnnBackendDescriptor_t matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                                  cudnnBackendDescriptor_t c, cudnnBackendDescriptor_t m_ovr,
                                  cudnnBackendDescriptor_t n_ovr,
                                  cudnnBackendDescriptor_t k_ovr) {
    auto md = create(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    const cudnnDataType_t f = CUDNN_DATA_FLOAT;
    set(md, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    finalize(md);
    auto op = create(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &md);
    if (m_ovr)
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_ovr);
    if (n_ovr)
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_ovr);
    if (k_ovr)
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_ovr);
    finalize(op);
    return op;
  }

  cudnnBackendDescriptor_t reduction(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                                     cudnnBackendDescriptor_t y) {
    auto rd = create(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    const cudnnDataType_t f = CUDNN_DATA_FLOAT;
    set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    finalize(rd);
    auto op = create(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd);
    finalize(op);
    return op;
  }

 private:
  std::vector<cudnnBackendDescriptor_t>& keep_;
  int64_t next_virtual_ = 0;
};

// Key: ragged, B, Sq, Skv, H, D.
using PlanKey = std::array<int64_t, 6>;
// A family's choice: the configuration by value, and its position in the first graph's
// heuristics list, used only where cuDNN does not say what a configuration is.
struct FamilyChoice {
  ConfigSpec spec;
  int64_t position = -1;
};

// A family of graphs that differ only in B, Sq and Skv: ragged, H, D. Its members rank the
// same engine configurations alike, so the one timed fastest for the first member is the
// only one built for the others (MoGA's groups change length at every block and step, and
// building and timing every candidate took 1 to 2.5 s a shape at 40 heads).
using FamilyKey = std::array<int64_t, 3>;
FamilyKey family_of(const PlanKey& k) { return {k[0], k[4], k[5]}; }

// Reads a finalized engine configuration's engine index, knob choices and the engine's knob
// ranges (type, minimum, maximum, stride). False where cuDNN does not say.
struct KnobRange {
  cudnnBackendKnobType_t type;
  int64_t lo, hi, stride;
};
bool read_config(GraphBuilder& g, cudnnBackendDescriptor_t cfg, ConfigSpec& spec,
                 std::vector<KnobRange>* ranges) {
  spec = ConfigSpec{};
  auto engine = g.create(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  int64_t n = 0;
  if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                               &engine) != CUDNN_STATUS_SUCCESS ||
      cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n,
                               &spec.engine) != CUDNN_STATUS_SUCCESS) {
    spec.engine = -1;
    return false;
  }
  // the descriptors an array attribute fills, as many as it holds (at most one per knob type)
  auto read_array = [&](cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, cudnnBackendDescriptorType_t t,
                        std::vector<cudnnBackendDescriptor_t>& out) {
    int64_t count = 0;
    if (cudnnBackendGetAttribute(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr) != CUDNN_STATUS_SUCCESS)
      count = CUDNN_KNOB_TYPE_COUNTS;
    count = std::clamp<int64_t>(count, 0, CUDNN_KNOB_TYPE_COUNTS);
    out.clear();
    if (count == 0) return true;
    for (int64_t i = 0; i < count; ++i) out.push_back(g.create(t));
    int64_t got = 0;
    if (cudnnBackendGetAttribute(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, out.data()) !=
        CUDNN_STATUS_SUCCESS)
      return false;
    out.resize(static_cast<size_t>(std::clamp<int64_t>(got, 0, count)));
    return true;
  };
  std::vector<cudnnBackendDescriptor_t> choices;
  if (!read_array(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, choices)) {
    spec.engine = -1;
    return false;
  }
  for (cudnnBackendDescriptor_t c : choices) {
    cudnnBackendKnobType_t t;
    int64_t v = 0;
    if (cudnnBackendGetAttribute(c, CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &n, &t) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnBackendGetAttribute(c, CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &n, &v) !=
            CUDNN_STATUS_SUCCESS) {
      spec.engine = -1;
      return false;
    }
    spec.knobs.emplace_back(t, v);
  }
  std::sort(spec.knobs.begin(), spec.knobs.end());
  if (!ranges) return true;
  std::vector<cudnnBackendDescriptor_t> infos;
  if (!read_array(engine, CUDNN_ATTR_ENGINE_KNOB_INFO, CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR, infos)) return false;
  for (cudnnBackendDescriptor_t info : infos) {
    KnobRange r{};
    if (cudnnBackendGetAttribute(info, CUDNN_ATTR_KNOB_INFO_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &n, &r.type) ==
            CUDNN_STATUS_SUCCESS &&
        cudnnBackendGetAttribute(info, CUDNN_ATTR_KNOB_INFO_MINIMUM_VALUE, CUDNN_TYPE_INT64, 1, &n, &r.lo) ==
            CUDNN_STATUS_SUCCESS &&
        cudnnBackendGetAttribute(info, CUDNN_ATTR_KNOB_INFO_MAXIMUM_VALUE, CUDNN_TYPE_INT64, 1, &n, &r.hi) ==
            CUDNN_STATUS_SUCCESS &&
        cudnnBackendGetAttribute(info, CUDNN_ATTR_KNOB_INFO_STRIDE, CUDNN_TYPE_INT64, 1, &n, &r.stride) ==
            CUDNN_STATUS_SUCCESS)
      ranges->push_back(r);
  }
  return true;
}

// A finalized engine configuration for `graph` from a spec; nullptr where cuDNN refuses it.
cudnnBackendDescriptor_t make_config(GraphBuilder& g, cudnnBackendDescriptor_t graph, const ConfigSpec& spec) {
  auto engine = g.create(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  if (cudnnBackendSetAttribute(engine, CUDNN_ATTR_ENGINE_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                               &graph) != CUDNN_STATUS_SUCCESS ||
      cudnnBackendSetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &spec.engine) !=
          CUDNN_STATUS_SUCCESS ||
      cudnnBackendFinalize(engine) != CUDNN_STATUS_SUCCESS)
    return nullptr;
  std::vector<cudnnBackendDescriptor_t> choices;
  for (const auto& [type, value] : spec.knobs) {
    auto c = g.create(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR);
    if (cudnnBackendSetAttribute(c, CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &type) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnBackendSetAttribute(c, CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &value) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnBackendFinalize(c) != CUDNN_STATUS_SUCCESS)
      return nullptr;
    choices.push_back(c);
  }
  auto cfg = g.create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
  if (cudnnBackendSetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &engine) !=
          CUDNN_STATUS_SUCCESS ||
      (!choices.empty() &&
       cudnnBackendSetAttribute(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                static_cast<int64_t>(choices.size()), choices.data()) != CUDNN_STATUS_SUCCESS) ||
      cudnnBackendFinalize(cfg) != CUDNN_STATUS_SUCCESS)
    return nullptr;
  return cfg;
}

// The knob search's variants of `base`: each knob moved to other values of its range, one
// knob at a time, the values spread over the range; at most 24 in all, shared out between
// the knobs (at most 8 a knob).
std::vector<ConfigSpec> knob_variants(const ConfigSpec& base, const std::vector<KnobRange>& ranges) {
  std::vector<ConfigSpec> out;
  size_t movable = 0;
  for (const KnobRange& r : ranges) movable += r.hi > r.lo && r.stride > 0;
  if (movable == 0) return out;
  const int64_t per_knob = std::clamp<int64_t>(static_cast<int64_t>(24 / movable), 1, 8);
  for (const KnobRange& r : ranges) {
    if (r.hi <= r.lo || r.stride <= 0) continue;
    int64_t current = r.lo;
    bool set = false;
    for (const auto& k : base.knobs)
      if (k.first == r.type) current = k.second, set = true;
    // values lo, lo + stride, ... <= hi, without overflow for ranges that span int64
    const unsigned long long span = static_cast<unsigned long long>(r.hi) - static_cast<unsigned long long>(r.lo);
    const unsigned long long count = span / static_cast<unsigned long long>(r.stride) + 1;
    const unsigned long long step =
        std::max<unsigned long long>(1, (count + per_knob - 1) / static_cast<unsigned long long>(per_knob));
    for (unsigned long long j = 0; j < count && out.size() < 24; j += step) {
      const int64_t v = static_cast<int64_t>(static_cast<unsigned long long>(r.lo) +
                                             j * static_cast<unsigned long long>(r.stride));
      if (set && v == current) continue;
      ConfigSpec c = base;
      bool found = false;
      for (auto& k : c.knobs)
        if (k.first == r.type) k.second = v, found = true;
      if (!found) c.knobs.emplace_back(r.type, v);
      std::sort(c.knobs.begin(), c.knobs.end());
      out.push_back(std::move(c));
    }
  }
  return out;
}

// Builds the SDPA graph and up to `max_candidates` execution plans that finalize (the
// heuristics' order; the first execution times them). With `preferred` (the family's
// choice), only that configuration: the heuristics' entry that is it, else built by value;
// the whole list only where neither finalizes. `search`: also knob variants of the
// heuristics' first (MOGAGEN_SDPA_KNOBS=search). Throws CudnnFailure.
void build_plan(cudnnHandle_t handle, Plan& plan, const PlanKey& key, size_t max_candidates,
                const FamilyChoice* preferred, bool search) {
  const bool ragged = key[0] != 0;
  const int64_t B = key[1], Sq = key[2], Skv = key[3], H = key[4], D = key[5];
  GraphBuilder g(plan);
  const cudnnDataType_t bf16 = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
  const cudnnDataType_t i32 = CUDNN_DATA_INT32, i64 = CUDNN_DATA_INT64, boolean = CUDNN_DATA_BOOLEAN;

  cudnnBackendDescriptor_t offq = nullptr, offk = nullptr, offv = nullptr, offo = nullptr;
  cudnnBackendDescriptor_t seqq = nullptr, seqkv = nullptr, neginf = nullptr;
  if (ragged) {
    const std::array<int64_t, 4> od{B + 1, 1, 1, 1}, os{1, 1, 1, 1};
    offq = g.tensor(kOffQ, i64, od, os, false);
    offk = g.tensor(kOffK, i64, od, os, false);
    offv = g.tensor(kOffV, i64, od, os, false);
    offo = g.tensor(kOffO, i64, od, os, false);
    seqq = g.tensor(kSeqQ, i32, {B, 1, 1, 1}, {1, 1, 1, 1}, false);
    seqkv = g.tensor(kSeqKV, i32, {B, 1, 1, 1}, {1, 1, 1, 1}, false);
    neginf = g.tensor(kNegInf, f32, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }
  // Token-major packed layout: element (b, h, s, d) at b*S*H*D + s*H*D + h*D + d.
  auto Q = g.tensor(kQ, bf16, {B, H, Sq, D}, {Sq * H * D, D, H * D, 1}, false, false, offq);
  auto Kt = g.tensor(kK, bf16, {B, H, D, Skv}, {Skv * H * D, D, 1, H * D}, false, false, offk);
  auto V = g.tensor(kV, bf16, {B, H, Skv, D}, {Skv * H * D, D, H * D, 1}, false, false, offv);
  auto O = g.tensor(kO, bf16, {B, H, Sq, D}, {Sq * H * D, D, H * D, 1}, false, false, offo);
  auto scale = g.tensor(kScale, f32, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);

  const std::array<int64_t, 4> sd{B, H, Sq, Skv}, ss{H * Sq * Skv, Sq * Skv, Skv, 1};
  const std::array<int64_t, 4> rd{B, H, Sq, 1}, rs{H * Sq, Sq, 1, 1};
  std::vector<cudnnBackendDescriptor_t> ops;

  auto S = g.virt(f32, sd, ss);
  ops.push_back(g.matmul(Q, Kt, S, seqq, seqkv, nullptr));
  auto S2 = g.virt(f32, sd, ss);
  ops.push_back(g.pointwise(CUDNN_POINTWISE_MUL, f32, S, scale, nullptr, S2));
  auto Sm = S2;
  if (ragged) {
    auto ri = g.virt(i32, sd, ss);
    ops.push_back(g.pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, S2, nullptr, nullptr, ri, 2));
    auto ci = g.virt(i32, sd, ss);
    ops.push_back(g.pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, S2, nullptr, nullptr, ci, 3));
    auto rm = g.virt(boolean, sd, ss);
    ops.push_back(g.pointwise(CUDNN_POINTWISE_CMP_LT, boolean, ri, seqq, nullptr, rm));
    auto cm = g.virt(boolean, sd, ss);
    ops.push_back(g.pointwise(CUDNN_POINTWISE_CMP_LT, boolean, ci, seqkv, nullptr, cm));
    auto m = g.virt(boolean, sd, ss);
    ops.push_back(g.pointwise(CUDNN_POINTWISE_LOGICAL_AND, boolean, rm, cm, nullptr, m));
    Sm = g.virt(f32, sd, ss);
    ops.push_back(g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, f32, S2, neginf, m, Sm));
  }
  auto M = g.virt(f32, rd, rs);
  ops.push_back(g.reduction(CUDNN_REDUCE_TENSOR_MAX, Sm, M));
  auto Dif = g.virt(f32, sd, ss);
  ops.push_back(g.pointwise(CUDNN_POINTWISE_SUB, f32, Sm, M, nullptr, Dif));
  auto E = g.virt(f32, sd, ss);
  ops.push_back(g.pointwise(CUDNN_POINTWISE_EXP, f32, Dif, nullptr, nullptr, E));
  auto Z = g.virt(f32, rd, rs);
  ops.push_back(g.reduction(CUDNN_REDUCE_TENSOR_ADD, E, Z));
  auto LZ = g.virt(f32, rd, rs);
  ops.push_back(g.pointwise(CUDNN_POINTWISE_LOG, f32, Z, nullptr, nullptr, LZ));
  auto stats = g.virt(f32, rd, rs);  // LSE branch: required for the engine to match
  ops.push_back(g.pointwise(CUDNN_POINTWISE_ADD, f32, M, LZ, nullptr, stats));
  auto P = g.virt(bf16, sd, ss);  // probabilities in the I/O type
  ops.push_back(g.pointwise(CUDNN_POINTWISE_DIV, f32, E, Z, nullptr, P));
  ops.push_back(g.matmul(P, V, O, seqq, nullptr, seqkv));

  auto graph = g.create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  g.set(graph, kGraphHandleAttr, CUDNN_TYPE_HANDLE, 1, &handle);
  g.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
        static_cast<int64_t>(ops.size()), ops.data());
  g.finalize(graph);

  // a plan for one finalized engine configuration: appended to `plan` (first: the plan)
  auto add_plan = [&](cudnnBackendDescriptor_t cfg, const ConfigSpec& sp, int64_t position, std::string& why) {
    cudnnBackendDescriptor_t p = nullptr;
    MG_CUDNN_TRY(cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &p));
    cudnnStatus_t st = cudnnBackendSetAttribute(p, kPlanHandleAttr, CUDNN_TYPE_HANDLE, 1, &handle);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendSetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                    &cfg);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(p);
    int64_t ws = 0, n = 0;
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendGetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws);
    if (st != CUDNN_STATUS_SUCCESS) {
      why += "; " + cudnn_reason(st, "plan finalize");
      cudnnBackendDestroyDescriptor(p);
      return false;
    }
    if (!plan.ok) {
      plan.plan = p;
      plan.workspace = ws;
      plan.ok = true;
    } else {
      plan.candidates.emplace_back(p, ws);
    }
    plan.specs.push_back(sp);
    plan.positions.push_back(position);
    return true;
  };

  std::string reasons;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    const bool list_a = mode == CUDNN_HEUR_MODE_A;
    auto heur = g.create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    g.set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    g.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS) continue;
    int64_t count = 0;
    if (cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr) !=
            CUDNN_STATUS_SUCCESS ||
        count <= 0)
      continue;
    std::vector<cudnnBackendDescriptor_t> cfgs(static_cast<size_t>(count));
    for (auto& c : cfgs) c = g.create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    int64_t returned = 0;  // may be fewer than announced (cudnn-notes §8.2)
    if (cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned,
                                 cfgs.data()) != CUDNN_STATUS_SUCCESS)
      continue;
    const size_t n_cfg = static_cast<size_t>(std::clamp<int64_t>(returned, 0, count));
    std::vector<ConfigSpec> specs(n_cfg);
    for (size_t i = 0; i < n_cfg; ++i) read_config(g, cfgs[i], specs[i], nullptr);
    if (list_a && preferred) {  // the family's choice alone: as listed here, else by value
      const ConfigSpec& want = preferred->spec;
      if (want.engine >= 0) {
        for (size_t i = 0; i < n_cfg; ++i)
          if (specs[i] == want && add_plan(cfgs[i], specs[i], int64_t(i), reasons)) return;
        if (cudnnBackendDescriptor_t cfg = make_config(g, graph, want))
          if (add_plan(cfg, want, -1, reasons)) return;
      } else if (preferred->position >= 0 && preferred->position < int64_t(n_cfg)) {
        const size_t i = size_t(preferred->position);  // what the list's position names
        if (add_plan(cfgs[i], specs[i], preferred->position, reasons)) return;
      }
      log_debug("cuDNN SDPA: the family's configuration (" + want.str() +
                ") does not build for this shape; timing the heuristics' list" + reasons);
    }
    size_t first = n_cfg;  // the list entry of the plan
    for (size_t i = 0; i < n_cfg; ++i) {
      if (!add_plan(cfgs[i], specs[i], int64_t(i), reasons)) continue;
      if (first == n_cfg) first = i;
      if (plan.candidates.size() + 1 >= max_candidates) break;
    }
    if (!plan.ok) continue;  // the fallback heuristics only where mode A gave nothing
    if (search && list_a) {
      // a failure here keeps the plans already built
      try {
        ConfigSpec base;
        std::vector<KnobRange> ranges;
        if (first == n_cfg || !read_config(g, cfgs[first], base, &ranges)) {
          log_debug("cuDNN SDPA knob search: the first configuration's knobs could not be read");
        } else {
          int built = 0;
          const auto variants = knob_variants(base, ranges);
          for (const ConfigSpec& v : variants) {
            std::string why;
            cudnnBackendDescriptor_t cfg = make_config(g, graph, v);
            if (cfg && add_plan(cfg, v, -1, why)) ++built;
          }
          log_debug("cuDNN SDPA knob search: " + base.str() + " (" + std::to_string(ranges.size()) +
                    " knobs), " + std::to_string(built) + " of " + std::to_string(variants.size()) +
                    " variants built");
        }
      } catch (const CudnnFailure& f) {
        log_debug(std::string("cuDNN SDPA knob search stopped: ") + f.what);
      }
    }
    return;
  }
  throw CudnnFailure{"no engine configuration finalized" + reasons};
}

}  // namespace

struct Sdpa::Impl {
  Impl(int device, cudaStream_t s)
      : stream(s), choice(device), cudnn(s, "attention runs on the fp32 fallback path") {}
  cudaStream_t stream;
  KernelChoice choice;
  const size_t max_candidates = plan_candidates_from_env();
  const bool search_knobs = knob_search_from_env();
  LazyCudnnHandle cudnn;  // declared first: destroyed after the plans that use it
  std::map<PlanKey, std::unique_ptr<Plan>> cache;
  // The configuration timed fastest for the first graph of each family (FamilyKey), by
  // value: the family's later graphs build only it.
  std::map<FamilyKey, FamilyChoice> family_choice;

  bool ready() {
    handle = cudnn.get();
    return handle != nullptr;
  }
  cudnnHandle_t handle = nullptr;

  int64_t plans_built = 0;
  double plan_seconds = 0;  // building plans and timing their candidates (host clock)
  int64_t timed_choices = 0;  // pick_fastest runs

  // Pinned staging for the ragged calls' offsets and lengths: a cudaMemcpyAsync from
  // pageable memory synchronizes the stream before it copies (CUDA runtime API, "API
  // synchronization behavior"), which stalled the host at every ragged call, three per MoGA
  // block. Slots are reused round-robin; a slot's event marks its last copy as consumed.
  struct Staging {
    static constexpr size_t kSlots = 16, kSlotBytes = size_t{32} << 10;
    char* host = nullptr;
    cudaEvent_t done[kSlots] = {};
    size_t next = 0;
    bool tried = false;
    Staging() = default;
    Staging(const Staging&) = delete;
    Staging& operator=(const Staging&) = delete;
    ~Staging() {
      for (cudaEvent_t e : done)
        if (e) {
          cudaEventSynchronize(e);  // its copy has read the slot
          cudaEventDestroy(e);
        }
      if (host) cudaFreeHost(host);
    }
  } staging;

  void upload(void* dst, const void* src, size_t bytes) {
    if (!staging.tried) {  // the events first, the buffer last: all of it or none
      staging.tried = true;
      bool ok = true;
      for (cudaEvent_t& e : staging.done)
        ok = ok && cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess;
      void* h = nullptr;
      if (ok && cudaMallocHost(&h, Staging::kSlots * Staging::kSlotBytes) == cudaSuccess) {
        staging.host = static_cast<char*>(h);
      } else {  // no pinned memory: the pageable copies below still work
        cudaGetLastError();
        for (cudaEvent_t& e : staging.done)
          if (e) cudaEventDestroy(e), e = nullptr;
      }
    }
    if (!staging.host || bytes > Staging::kSlotBytes) {
      MG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
      return;
    }
    const size_t i = staging.next;
    staging.next = (i + 1) % Staging::kSlots;
    MG_CUDA_CHECK(cudaEventSynchronize(staging.done[i]));  // at once if never recorded
    char* h = staging.host + i * Staging::kSlotBytes;
    std::memcpy(h, src, bytes);
    MG_CUDA_CHECK(cudaMemcpyAsync(dst, h, bytes, cudaMemcpyHostToDevice, stream));
    MG_CUDA_CHECK(cudaEventRecord(staging.done[i], stream));
  }
  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

  Plan* plan_for(const PlanKey& key) {
    auto it = cache.find(key);
    if (it != cache.end()) return it->second->ok ? it->second.get() : nullptr;
    auto p = std::make_unique<Plan>();
    const double t0 = now();
    struct Count {  // counts the build, failed or not
      Impl& i;
      double t0;
      ~Count() {
        ++i.plans_built;
        i.plan_seconds += now() - t0;
      }
    } count{*this, t0};
    try {
      const FamilyKey fam = family_of(key);
      const auto fc = family_choice.find(fam);
      p->family = fam;
      p->sets_family = fc == family_choice.end();
      build_plan(handle, *p, key, max_candidates, fc == family_choice.end() ? nullptr : &fc->second,
                 p->sets_family && search_knobs);
      log_debug("cuDNN SDPA plan built: " + std::string(key[0] ? "ragged" : "dense") +
                " B=" + std::to_string(key[1]) + " Sq=" + std::to_string(key[2]) +
                " Skv=" + std::to_string(key[3]) + " H=" + std::to_string(key[4]) +
                " D=" + std::to_string(key[5]) + " workspace=" + std::to_string(p->workspace) +
                " configurations=" + std::to_string(1 + p->candidates.size()));
    } catch (const CudnnFailure& f) {
      log_warning("cuDNN SDPA cannot run " + std::string(key[0] ? "ragged" : "dense") +
                  " B=" + std::to_string(key[1]) + " Sq=" + std::to_string(key[2]) +
                  " Skv=" + std::to_string(key[3]) + " H=" + std::to_string(key[4]) +
                  " D=" + std::to_string(key[5]) + "; using the fp32 fallback: " + f.what);
      auto fresh = std::make_unique<Plan>();  // drop partial descriptors
      cache.emplace(key, std::move(fresh));
      return nullptr;
    }
    Plan* raw = p.get();
    cache.emplace(key, std::move(p));
    return raw;
  }

  void execute(DeviceMemory& mem, Plan& plan, const std::vector<int64_t>& uids,
               const std::vector<void*>& ptrs) {
    int64_t need = plan.workspace;
    for (const auto& c : plan.candidates) need = std::max(need, c.second);
    std::shared_ptr<void> ws;
    if (need > 0) ws = mem.scratch(static_cast<size_t>(need));
    void* wsp = ws.get();
    cudnnBackendDescriptor_t vp = nullptr;
    MG_CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp));
    struct Guard {
      cudnnBackendDescriptor_t d;
      ~Guard() { cudnnBackendDestroyDescriptor(d); }
    } guard{vp};
    MG_CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
                                            CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
                                            uids.data()));
    MG_CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                            CUDNN_TYPE_VOID_PTR,
                                            static_cast<int64_t>(ptrs.size()), ptrs.data()));
    MG_CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                                            CUDNN_TYPE_VOID_PTR, 1, &wsp));
    MG_CUDNN_CHECK(cudnnBackendFinalize(vp));
    bool timed = true;  // the plan ran (and won) on these operands, or was the only one
    if (!plan.candidates.empty()) timed = pick_fastest(plan, vp);
    if (plan.sets_family) {  // the first of its family: its configuration is the family's
      // (emplace: a family recorded meanwhile by another of its graphs keeps its choice)
      if (timed && !plan.specs.empty() && (plan.specs.front().engine >= 0 || plan.positions.front() >= 0))
        family_choice.emplace(plan.family, FamilyChoice{plan.specs.front(), plan.positions.front()});
      plan.sets_family = false;
    }
    MG_CUDNN_CHECK(cudnnBackendExecute(handle, plan.plan, vp));
  }

  // First execution of a graph with several finalized plans: the fastest on the real
  // operands (fastest_of) becomes the plan, and the others are destroyed; the output is
  // overwritten by the kept plan's run after this. (The seventh session timed first runs
  // only, and varlen at 4k segments measured 555 TFLOP/s against 602 the session before; a
  // choice made on load time is the likely cause.)
  // Returns whether any candidate ran (else the first is kept, untimed). If the timing
  // throws, the candidates stay in the plan (its destructor releases them).
  bool pick_fastest(Plan& plan, cudnnBackendDescriptor_t vp) {
    const double t0 = now();
    ++timed_choices;
    std::vector<std::pair<cudnnBackendDescriptor_t, int64_t>> all{{plan.plan, plan.workspace}};
    all.insert(all.end(), plan.candidates.begin(), plan.candidates.end());
    float best_ms = -1.0f;
    std::vector<float> times;
    const size_t best = fastest_of(
        all.size(), stream,
        [&](size_t i) { return cudnnBackendExecute(handle, all[i].first, vp) == CUDNN_STATUS_SUCCESS; }, &best_ms,
        &times);
    for (size_t i = 0; i < times.size(); ++i)
      log_debug("cuDNN SDPA: configuration " + std::to_string(i) + ": " +
                (times[i] < 0.0f ? std::string("did not run") : std::to_string(times[i]) + " ms") + " (" +
                (i < plan.specs.size() ? plan.specs[i].str() : std::string("?")) + ")");
    plan.candidates.clear();
    for (size_t i = 0; i < all.size(); ++i)
      if (i != best) cudnnBackendDestroyDescriptor(all[i].first);
    plan.plan = all[best].first;
    plan.workspace = all[best].second;
    if (best < plan.specs.size()) {
      const ConfigSpec keep = plan.specs[best];
      const int64_t pos = plan.positions[best];
      plan.specs = {keep};
      plan.positions = {pos};
    }
    plan_seconds += now() - t0;
    log_debug("cuDNN SDPA: configuration " + std::to_string(best) + " of " + std::to_string(all.size()) +
              " is the fastest (" + std::to_string(best_ms) + " ms): " +
              (plan.specs.empty() ? std::string("?") : plan.specs.front().str()));
    return best_ms >= 0.0f;
  }
};

Sdpa::Sdpa(int device, cudaStream_t stream) : impl_(std::make_unique<Impl>(device, stream)) {}
Sdpa::~Sdpa() = default;
bool Sdpa::built_with_cudnn() { return true; }
int64_t Sdpa::sm90_calls() const { return impl_->choice.sm90_calls; }
int64_t Sdpa::plans_built() const { return impl_->plans_built; }
double Sdpa::plan_seconds() const { return impl_->plan_seconds; }
int64_t Sdpa::timed_choices() const { return impl_->timed_choices; }

static bool cudnn_head_dim_ok(int64_t d) { return d > 0 && d % 8 == 0 && d <= 256; }

bool Sdpa::dense(DeviceMemory& mem, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                 uint16_t* o, int64_t nq, int64_t nk, int64_t h, int64_t d, float scale) {
  if (nq <= 0 || nk <= 0) return false;
  auto cudnn = [&]() -> bool {
    if (!cudnn_head_dim_ok(d) || !impl_->ready()) return false;
    Plan* plan = impl_->plan_for({0, 1, nq, nk, h, d});
    if (!plan) return false;
    float sc = scale;
    impl_->execute(mem, *plan, {kQ, kK, kV, kO, kScale},
                   {const_cast<uint16_t*>(q), const_cast<uint16_t*>(k), const_cast<uint16_t*>(v), o, &sc});
    return true;
  };
  auto mine = [&] {
    return flash_sm90_dense(q, k, v, o, nq, nk, h, d, scale, KernelChoice::kBlockN, KernelChoice::persistent(nk),
                            impl_->stream);
  };
  return impl_->choice.run({0, h, d, KernelChoice::bits(nk)}, impl_->stream, mine, cudnn);
}

// Round a maximum segment length up so that plans are shared between calls whose segments
// differ slightly (MoGA groups change every block and step): granularity 1/8 of the next
// power of two, at least 64. The plan's length only bounds the grid (each segment's own
// length comes with the call), so a rounded-up length adds query tiles that find no rows
// and end at once: at most a quarter more above 512 tokens, up to 63 rows below.
static int64_t bucket_len(int64_t s) {
  int64_t p = 1;
  while (p < s) p <<= 1;
  const int64_t g = std::max<int64_t>(64, p / 8);
  return (s + g - 1) / g * g;
}

bool Sdpa::ragged(DeviceMemory& mem, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                  uint16_t* o, const std::vector<int64_t>& lq, const std::vector<int64_t>& lk,
                  int64_t h, int64_t d, float scale) {
  const int64_t B = static_cast<int64_t>(lq.size());
  if (B <= 0 || lk.size() != lq.size()) return false;
  int64_t tq = 0, tk = 0, mk = 0;
  for (int64_t i = 0; i < B; ++i) {
    if (lq[i] <= 0 || lk[i] <= 0) return false;
    tq += lq[i];
    tk += lk[i];
    mk = std::max(mk, lk[i]);
  }
  auto mine = [&] {
    const std::vector<int32_t> tiles = flash_sm90_tiles(lq, lk);
    const size_t bytes = tiles.size() * sizeof(int32_t);
    auto table = mem.scratch(bytes);
    impl_->upload(table.get(), tiles.data(), bytes);
    return flash_sm90_ragged(q, k, v, o, tq, tk, h, d, scale, static_cast<const int32_t*>(table.get()),
                             static_cast<int64_t>(tiles.size() / 4), KernelChoice::kBlockN,
                             KernelChoice::persistent(mk), impl_->stream);
  };
  auto cudnn = [&]() -> bool {
    if (!cudnn_head_dim_ok(d) || !impl_->ready()) return false;
    return ragged_cudnn(mem, q, k, v, o, lq, lk, h, d, scale);
  };
  return impl_->choice.run({1, h, d, KernelChoice::bits(mk)}, impl_->stream, mine, cudnn);
}

bool Sdpa::ragged_cudnn(DeviceMemory& mem, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                        uint16_t* o, const std::vector<int64_t>& lq, const std::vector<int64_t>& lk,
                        int64_t h, int64_t d, float scale) {
  const int64_t B = static_cast<int64_t>(lq.size());
  int64_t mq = 0, mk = 0;
  for (int64_t i = 0; i < B; ++i) {
    if (lq[i] <= 0 || lk[i] <= 0) return false;
    mq = std::max(mq, lq[i]);
    mk = std::max(mk, lk[i]);
  }
  Plan* plan = impl_->plan_for({1, B, bucket_len(mq), bucket_len(mk), h, d});
  if (!plan) return false;
  // Device side: off_q[B+1], off_k[B+1] (int64 element offsets), seq_q[B], seq_kv[B] (int32).
  const size_t n64 = static_cast<size_t>(2 * (B + 1)), n32 = static_cast<size_t>(2 * B);
  const size_t bytes = n64 * sizeof(int64_t) + n32 * sizeof(int32_t);
  std::vector<int64_t> host((bytes + sizeof(int64_t) - 1) / sizeof(int64_t));
  int64_t* host64 = host.data();
  int32_t* host32 = reinterpret_cast<int32_t*>(host64 + n64);
  int64_t oq = 0, ok = 0;
  for (int64_t i = 0; i <= B; ++i) {
    host64[i] = oq * h * d;
    host64[B + 1 + i] = ok * h * d;
    if (i < B) {
      oq += lq[i];
      ok += lk[i];
      host32[i] = static_cast<int32_t>(lq[i]);
      host32[B + i] = static_cast<int32_t>(lk[i]);
    }
  }
  auto meta = mem.scratch(bytes);
  char* mp = static_cast<char*>(meta.get());
  impl_->upload(mp, host.data(), bytes);
  int64_t* offq = reinterpret_cast<int64_t*>(mp);
  int64_t* offk = offq + (B + 1);
  int32_t* seqq = reinterpret_cast<int32_t*>(mp + n64 * sizeof(int64_t));
  int32_t* seqk = seqq + B;
  float sc = scale, ninf = -INFINITY;
  impl_->execute(mem, *plan,
                 {kQ, kK, kV, kO, kScale, kSeqQ, kSeqKV, kNegInf, kOffQ, kOffK, kOffV, kOffO},
                 {const_cast<uint16_t*>(q), const_cast<uint16_t*>(k), const_cast<uint16_t*>(v), o,
                  &sc, seqq, seqk, &ninf, offq, offk, offk, offq});
  return true;
}

#else  // !MOGAGEN_HAVE_CUDNN

// Without cuDNN: our kernel alone (dense; the backend's ragged calls then go segment by
// segment through it).
struct Sdpa::Impl {
  Impl(int device, cudaStream_t s) : stream(s), choice(device) {}
  cudaStream_t stream;
  KernelChoice choice;
};
Sdpa::Sdpa(int device, cudaStream_t stream) : impl_(std::make_unique<Impl>(device, stream)) {}
Sdpa::~Sdpa() = default;
bool Sdpa::built_with_cudnn() { return false; }
int64_t Sdpa::sm90_calls() const { return impl_->choice.sm90_calls; }
int64_t Sdpa::plans_built() const { return 0; }
double Sdpa::plan_seconds() const { return 0; }
int64_t Sdpa::timed_choices() const { return 0; }
bool Sdpa::dense(DeviceMemory&, const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, int64_t nq,
                 int64_t nk, int64_t h, int64_t d, float scale) {
  if (nq <= 0 || nk <= 0) return false;
  auto mine = [&] {
    return flash_sm90_dense(q, k, v, o, nq, nk, h, d, scale, KernelChoice::kBlockN, KernelChoice::persistent(nk),
                            impl_->stream);
  };
  return impl_->choice.run({0, h, d, KernelChoice::bits(nk)}, impl_->stream, mine, [] { return false; });
}
bool Sdpa::ragged(DeviceMemory& mem, const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o,
                  const std::vector<int64_t>& lq, const std::vector<int64_t>& lk, int64_t h, int64_t d, float scale) {
  // one segment (the backend's per-segment path) as a dense call; no tile upload here
  return lq.size() == 1 && lk.size() == 1 && dense(mem, q, k, v, o, lq[0], lk[0], h, d, scale);
}

#endif

}  // namespace cuda
}  // namespace mg
