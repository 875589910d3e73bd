// Private interface between the CUDA backend's host side (src/backend/cuda/cuda_ops.cpp)
// and its kernels (kernels/*.cu). Plain C++: no device code here, so the host compiler can
// include it. Every launcher enqueues on `stream` and checks the launch (file:line).
// bf16 buffers are passed as uint16_t (raw bit patterns, round-to-nearest-even on store).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mg {
namespace cuda {

// ---- error checking (defined in cuda_ops.cpp); all throw mg::Error(Device) -------------------
[[noreturn]] void throw_cuda(cudaError_t e, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas(cublasStatus_t s, const char* expr, const char* file, int line);
inline void check_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  if (e != cudaSuccess) throw_cuda(e, expr, file, line);
}
inline void check_cublas(cublasStatus_t s, const char* expr, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_cublas(s, expr, file, line);
}
#define MG_CUDA_CHECK(expr) ::mg::cuda::check_cuda((expr), #expr, __FILE__, __LINE__)
#define MG_CUBLAS_CHECK(expr) ::mg::cuda::check_cublas((expr), #expr, __FILE__, __LINE__)
#define MG_CUDA_LAUNCH_CHECK() MG_CUDA_CHECK(cudaGetLastError())

// Whether a device pointer allows 16-byte vector access.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- our fused attention for Hopper (kernels/flash_sm90.cu) ----------------------------------
// Whether `device` is an sm_90 GPU and the driver encodes TMA tensor maps.
bool flash_sm90_supported(int device);
// Dense non-causal attention, q [nq, h, d], k and v [nk, h, d], o [nq, h, d], bf16, d = 128;
// block_n (128 or 176) key rows per step; persistent: one CTA per SM looping over the tiles
// of 128 query rows, else one CTA per tile. False (nothing launched) where the call does not
// fit the kernel: another d, unaligned pointers, a tensor map the driver refuses.
bool flash_sm90_dense(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, int64_t nq, int64_t nk,
                      int64_t h, int64_t d, float scale, int block_n, bool persistent, cudaStream_t stream);
// Ragged: segments packed back to back, q/o [total_q, h, d], k/v [total_k, h, d]; `tiles` (on
// the device) holds n_tiles groups of four int32, flash_sm90_tiles' table: each 128 query
// rows of a segment with the end of its segment, its first key row and its key count.
std::vector<int32_t> flash_sm90_tiles(const std::vector<int64_t>& lq, const std::vector<int64_t>& lk);
bool flash_sm90_ragged(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, int64_t total_q,
                       int64_t total_k, int64_t h, int64_t d, float scale, const int32_t* tiles, int64_t n_tiles,
                       int block_n, bool persistent, cudaStream_t stream);

// ---- logging from the kernels' host code (defined in cuda_ops.cpp, through spdlog) ------------
void log_warning(const std::string& msg);
void log_debug(const std::string& msg);

// MOGAGEN_TUNE_MS: how candidates are timed (fastest_of). Unset or 0: each runs twice and the
// second run counts (a burst: at the start of a process the GPU runs at its top clock).
// N (1 to 5000): sustained timing, for a GPU that runs at its power cap under load (the
// H200 at 700 W: docs/performance.md, ninth session): the GPU is first kept busy for N ms,
// then each candidate runs back to back for about N ms, twice, interleaved, and its time is
// the mean per call of the two; at the cap that ranks energy per call, not speed at a clock
// the load cannot hold. Read once per process.
int tune_ms_from_env();

// The environment variable `name` as a whole number from lo to hi; unset or empty: dflt; any
// other value: a warning ("NAME='v' is not <what>; using <dflt>") and dflt.
long env_count(const char* name, long lo, long hi, long dflt, const char* what);

// Times work enqueued on `stream` between two events (made here, destroyed with the timer).
class EventTimer {
 public:
  explicit EventTimer(cudaStream_t stream) : stream_(stream) {
    MG_CUDA_CHECK(cudaEventCreate(&a_));
    const cudaError_t e = cudaEventCreate(&b_);
    if (e != cudaSuccess) {
      cudaEventDestroy(a_);
      MG_CUDA_CHECK(e);
    }
  }
  ~EventTimer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  // Up to `reps` back-to-back runs of run() (it says whether it ran; the first false stops
  // them): the milliseconds per run. *ok (optional): whether every run ran.
  template <typename Run>
  float ms(Run&& run, int reps = 1, bool* ok = nullptr) {
    MG_CUDA_CHECK(cudaEventRecord(a_, stream_));
    bool all = true;
    for (int r = 0; r < reps && all; ++r) all = run();
    MG_CUDA_CHECK(cudaEventRecord(b_, stream_));
    MG_CUDA_CHECK(cudaEventSynchronize(b_));
    float t = 0.0f;
    MG_CUDA_CHECK(cudaEventElapsedTime(&t, a_, b_));
    if (ok) *ok = all;
    return t / float(reps);
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

// Which of n candidates (cuDNN engines or algorithms, cuBLASLt algorithms) runs fastest on
// `stream`, on the operands of a real call: run(i) launches candidate i and says whether it
// ran (it must be repeatable). Each is timed with events; a run under 100 ms is timed a
// second time and that run counts, since a first run may be largely the loading of the
// kernels, while a call of seconds is not run twice. With MOGAGEN_TUNE_MS set, each is then
// also timed sustained (above). 0 when none ran; *best_ms (optional) gets the winner's time,
// *times (optional) every candidate's (-1: did not run).
template <typename Run>
size_t fastest_of(size_t n, cudaStream_t stream, Run&& run, float* best_ms = nullptr,
                  std::vector<float>* times = nullptr) {
  EventTimer timer(stream);
  // reps back-to-back runs of candidate i: the time per run, in ms
  auto timed = [&](size_t i, int reps, float& ms) {
    bool ok = true;
    ms = timer.ms([&] { return run(i); }, reps, &ok);
    return ok;
  };
  std::vector<float> t(n, -1.0f);
  for (size_t i = 0; i < n; ++i) {
    float ms = 0.0f;
    bool ok = timed(i, 1, ms);
    if (ok && ms < 100.0f) ok = timed(i, 1, ms);
    if (ok) t[i] = ms;
  }
  const int sustain = tune_ms_from_env();
  if (sustain > 0) {
    auto reps_for = [&](size_t i) {
      return static_cast<int>(std::clamp(std::ceil(float(sustain) / std::max(t[i], 1e-3f)), 1.0f, 100000.0f));
    };
    size_t first = n;
    for (size_t i = 0; i < n && first == n; ++i)
      if (t[i] >= 0.0f) first = i;
    if (first < n) {
      float ms = 0.0f;
      timed(first, reps_for(first), ms);  // the GPU brought to its sustained clock
      std::vector<float> sum(n, 0.0f);
      for (int round = 0; round < 2; ++round)
        for (size_t i = 0; i < n; ++i) {
          if (t[i] < 0.0f) continue;
          if (!timed(i, reps_for(i), ms)) {
            t[i] = -1.0f;
            continue;
          }
          sum[i] += ms;
        }
      for (size_t i = 0; i < n; ++i)
        if (t[i] >= 0.0f) t[i] = sum[i] / 2.0f;
    }
  }
  size_t best = 0;
  float best_t = -1.0f;
  for (size_t i = 0; i < n; ++i)
    if (t[i] >= 0.0f && (best_t < 0.0f || t[i] < best_t)) {
      best_t = t[i];
      best = i;
    }
  if (best_ms) *best_ms = best_t;
  if (times) *times = std::move(t);
  return best;
}

// ---- device scratch memory (the backend's caching allocator) ---------------------------------
// Blocks are handed back to the allocator when the last shared_ptr goes; all work runs on one
// stream, so a block released while kernels that use it are still queued is only reused by
// work queued after them.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual std::shared_ptr<void> scratch(size_t bytes) = 0;
};

// Blocks for a grid-stride loop over `work` items (at least 1, at most 2^20).
inline unsigned grid_for(int64_t work, int threads) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, 1 << 20)));
}

// ---- elementwise.cu ---------------------------------------------------------------------------
enum class Unary { GeluTanh, Silu, Scale, Clamp };
enum class Binary { Add, Mul, GeluTanhMul };
void unary(Unary op, const float* x, float* y, int64_t n, float a, float b, cudaStream_t stream);
void binary(Binary op, const float* a, const float* b, float* y, int64_t n, cudaStream_t stream);
// a[i] += b[i] with bf16 b (an attention output in its compact form), in place.
void add_bf16_(float* a, const uint16_t* b, int64_t n, cudaStream_t stream);
// y[i, j] = x[i, j] + row[j]   (x, y: [rows, d]; y may alias x)
void add_row(const float* x, const float* row, float* y, int64_t rows, int64_t d,
             cudaStream_t stream);
// a[i, j] += y[i, j] * gate[j]
void gated_add(float* a, const float* y, const float* gate, int64_t rows, int64_t d,
               cudaStream_t stream);
// y[c, p] += b[c]   (y: [c, p])
void add_channel_bias(float* y, const float* b, int64_t c, int64_t p, cudaStream_t stream);
void f32_to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t stream);
// hi = bf16(x), lo = bf16(x - hi) (Ops::split_weight, linear_split)
void split_bf16(const float* x, uint16_t* hi, uint16_t* lo, int64_t n, cudaStream_t stream);
void bf16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t stream);
// y[c, p] = (float(x[c, p]) + b[c]) + r[c, p] (b and r optional): a bf16 convolution's
// output, widened, with its bias and a residual
void bf16_to_f32_channel_bias(const uint16_t* x, const float* b, const float* r, float* y, int64_t c,
                              int64_t p, cudaStream_t stream);
// y[r, c] = bf16(gate[r] * w[r, c]) for a bf16 weight [rows, cols] (Ops::linear_residual_'s gate)
void scale_rows_bf16(const uint16_t* w, const float* gate, uint16_t* y, int64_t rows, int64_t cols,
                     cudaStream_t stream);

// ---- norms.cu ---------------------------------------------------------------------------------
// LayerNorm over the last dim d of [rows, d]; w/b optional; when scale is given,
// v = v * (1 + scale[j]) + shift[j] afterwards (layer_norm_modulate).
void layer_norm(const float* x, const float* w, const float* b, const float* shift,
                const float* scale, float* y, int64_t rows, int64_t d, float eps,
                cudaStream_t stream);
// The same, written in bf16 (a GEMM input: Ops::layer_norm_modulate_gemm).
void layer_norm_bf16(const float* x, const float* w, const float* b, const float* shift,
                     const float* scale, uint16_t* y, int64_t rows, int64_t d, float eps,
                     cudaStream_t stream);
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t d, float eps,
              cudaStream_t stream);
// x [c, p]: y = x / max(||x[:, p]||, eps) * sqrt(c) * gamma[c], then y / (1 + exp(-y)) when silu
void channel_l2_norm(const float* x, const float* gamma, float* y, int64_t c, int64_t p,
                     float eps, bool silu, cudaStream_t stream);
// the same, written in bf16 (the input of the VAE's bf16 convolutions)
void channel_l2_norm_bf16(const float* x, const float* gamma, uint16_t* y, int64_t c, int64_t p,
                          float eps, bool silu, cudaStream_t stream);

// ---- rope.cu ----------------------------------------------------------------------------------
// Interleaved rotary embedding in place on x [n, h, hd]; cos/sin [n, hd/2].
// y[n, h, :] = bf16(RoPE(RMSNorm(x[n, :]) * w)) in one pass: row n of x [n, h * hd] is read
// once, the result written once in bf16 (Ops::rms_norm_rope).
// x float32, or bf16 when x_bf16 (a linear_compact product); cos = sin = null: no rotation
void rms_norm_rope_bf16(const void* x, bool x_bf16, const float* w, const float* cos,
                        const float* sin, uint16_t* y, int64_t n, int64_t h, int64_t hd, float eps,
                        cudaStream_t stream);
void rope(float* x, const float* cos, const float* sin, int64_t n, int64_t h, int64_t hd,
          cudaStream_t stream);
// y [H, L, L] = table[bucket[j - i + L - 1] * H + h] (bucket: 2L - 1 entries)
void relative_position_bias(const float* table, const int64_t* bucket, float* y, int64_t L,
                            int64_t H, cudaStream_t stream);

// ---- attention.cu -----------------------------------------------------------------------------
// Exact float32 attention for one packed segment (any head dim, optional additive bias):
// GEMM (cuBLAS, fp32, TF32 off) - softmax kernel - GEMM, chunked over query rows.
// q/k/v/o rows are `ld` floats apart, head h at +h*d. bias: [h, nq, nk] or null.
void attention_f32(cublasHandle_t blas, cudaStream_t stream, DeviceMemory& mem, const float* q,
                   const float* k, const float* v, float* o, int64_t nq, int64_t nk, int64_t h,
                   int64_t d, int64_t ld, float scale, const float* bias);

// Fused flash attention (bf16 in/out, fp32 softmax): cuDNN's, with a plan cache keyed by shape
// (the first call of a shape times up to four of the heuristics' engine configurations and
// keeps the fastest), and on sm_90 GPUs at head size 128 our own (flash_sm90_*), each shape
// class timed against cuDNN's on its first call (attention.cu). Token-major packed layout
// [tokens, h, d]. dense() and ragged() return false, without side effects, when neither
// kernel can run the shape (the caller then falls back).
class Sdpa {
 public:
  Sdpa(int device, cudaStream_t stream);
  ~Sdpa();
  Sdpa(const Sdpa&) = delete;
  Sdpa& operator=(const Sdpa&) = delete;
  static bool built_with_cudnn();
  // Dense: one segment of nq queries and nk keys.
  bool dense(DeviceMemory& mem, const uint16_t* q, const uint16_t* k, const uint16_t* v,
             uint16_t* o, int64_t nq, int64_t nk, int64_t h, int64_t d, float scale);
  // Ragged: segments with lengths lq[i], lk[i] (all > 0), packed back to back in q/o and
  // k/v respectively.
  bool ragged(DeviceMemory& mem, const uint16_t* q, const uint16_t* k, const uint16_t* v,
              uint16_t* o, const std::vector<int64_t>& lq, const std::vector<int64_t>& lk,
              int64_t h, int64_t d, float scale);
  // Plans built so far, and the host seconds spent building them and timing candidates.
  int64_t plans_built() const;
  double plan_seconds() const;
  int64_t timed_choices() const;  // first runs that timed several configurations
  int64_t sm90_calls() const;     // calls that ran our kernel (kernels/flash_sm90.cu)

 private:
  bool ragged_cudnn(DeviceMemory& mem, const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o,
                    const std::vector<int64_t>& lq, const std::vector<int64_t>& lk, int64_t h, int64_t d,
                    float scale);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- conv.cu ----------------------------------------------------------------------------------
// im2col for conv3d over the flattened output positions [p0, p0 + np) of [to, ho, wo]:
// col[kidx, j], kidx = ((c * kt + dt) * kh + dy) * kw + dx. Zero padding as in Ops::conv3d.
struct Conv3dShape {
  int64_t ci, t, h, w;      // input
  int64_t kt, kh, kw;       // kernel
  int64_t to, ho, wo;       // output
  int64_t pad_t, pad_h, pad_w;
};
void im2col3d_f32(const float* x, float* col, const Conv3dShape& s, int64_t p0, int64_t np,
                  cudaStream_t stream);
void im2col3d_bf16(const float* x, uint16_t* col, const Conv3dShape& s, int64_t p0, int64_t np,
                   cudaStream_t stream);

// ---- conv_cudnn.cu ----------------------------------------------------------------------------
// conv3d through cuDNN's convolution API: float32 NCDHW tensors (batch 1), float32 compute
// with TF32 tensor cores allowed (the im2col path's numerics), or bf16 NCDHW tensors with
// float accumulation (forward_bf16, MOGAGEN_CONV=bf16), implicit-GEMM algorithms only
// (no FFT or Winograd: their error is not the reference's), stride and dilation 1, zero
// padding (0, pad_h, pad_w): any front temporal padding must already be in x (s.pad_t == 0).
// No bias. forward() returns false, having done nothing, when cuDNN is absent or offers no
// such algorithm for the shape; the caller then runs im2col + GEMM. Plans are cached by shape;
// the first call of a shape times each admissible algorithm on its operands and keeps the
// fastest (its result is the kept algorithm's).
class CudnnConv3d {
 public:
  CudnnConv3d(int device, cudaStream_t stream);
  ~CudnnConv3d();
  CudnnConv3d(const CudnnConv3d&) = delete;
  CudnnConv3d& operator=(const CudnnConv3d&) = delete;
  static bool built_with_cudnn();
  bool forward(DeviceMemory& mem, const float* x, const float* w, float* y, const Conv3dShape& s,
               int64_t co);
  // The same with bf16 x, w and y (float accumulation; MOGAGEN_CONV=bf16).
  bool forward_bf16(DeviceMemory& mem, const uint16_t* x, const uint16_t* w, uint16_t* y,
                    const Conv3dShape& s, int64_t co);
  // bf16 and channels last (NDHWC; MOGAGEN_CONV=bf16-ndhwc): x [t, h, w, ci], w [co, kt, kh,
  // kw, ci], y [to, ho, wo, co].
  bool forward_bf16_ndhwc(DeviceMemory& mem, const uint16_t* x, const uint16_t* w, uint16_t* y,
                          const Conv3dShape& s, int64_t co);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- video.cu ---------------------------------------------------------------------------------
// Ops::patchify / unpatchify of a latent [c, t, h, w] (t, h, w multiples of pt, ph, pw).
void patchify(const float* x, float* y, int64_t c, int64_t t, int64_t h, int64_t w, int pt, int ph, int pw,
              cudaStream_t stream);
void unpatchify(const float* y, float* v, int64_t c, int64_t t, int64_t h, int64_t w, int pt, int ph, int pw,
                cudaStream_t stream);
// Channels last, for cuDNN's NDHWC convolutions: frames [f0, f0 + nf) of src [c, src_t, hw]
// (float32 or bf16) -> dst [nf, hw, c] bf16; a channels-last bf16 output y16 [p, co] -> y
// [co, p] float32 plus b[co] and r[co, p] (both optional; (value + b) + r); a conv weight
// [co, ci, k] float32 -> [co, k, ci] bf16.
void to_channels_last_bf16(const void* src, bool src_bf16, int64_t c, int64_t src_t, int64_t f0, int64_t nf,
                           int64_t hw, uint16_t* dst, cudaStream_t stream);
void from_channels_last_f32(const uint16_t* y16, const float* b, const float* r, float* y, int64_t co,
                            int64_t p, cudaStream_t stream);
void weight_channels_last_bf16(const float* w, uint16_t* y, int64_t co, int64_t ci, int64_t k,
                               cudaStream_t stream);
// Nearest 2x spatial upsample of [ct, h, w] by input rows (no divisions), float32 or bf16
// out (a bf16 convolution's input).
void upsample2x_rows(const float* x, float* y, int64_t ct, int64_t h, int64_t w, cudaStream_t stream);
void upsample2x_rows_bf16(const float* x, uint16_t* y, int64_t ct, int64_t h, int64_t w, cudaStream_t stream);
// [r, c] -> [c, r]
void transpose2d(const float* x, float* y, int64_t r, int64_t c, cudaStream_t stream);
// y[i, :] = x[idx[i], :]  (idx on the device)
void gather_rows(const float* x, const int64_t* idx, float* y, int64_t m, int64_t row,
                 cudaStream_t stream);
// The same for 16-bit rows (bf16 bit patterns).
void gather_rows_u16(const uint16_t* x, const int64_t* idx, uint16_t* y, int64_t m, int64_t row,
                     cudaStream_t stream);
// Strided conversions of `rows` rows of `len` elements (strides in elements): y[r * ys + i] =
// x[r * xs + i] as float32 / as bf16 (round to nearest even). The VAE's time slabs.
void bf16_to_f32_2d(const uint16_t* x, int64_t xs, float* y, int64_t ys, int64_t rows, int64_t len,
                    cudaStream_t stream);
void f32_to_bf16_2d(const float* x, int64_t xs, uint16_t* y, int64_t ys, int64_t rows, int64_t len,
                    cudaStream_t stream);
// For each destination u: out[dst[u], :] += sum_{s in [ptr[u], ptr[u+1])} x[src[s], :] * w[s]
// in increasing s (deterministic; same order as the CPU backend). w may be null (1).
void scatter_add_rows(float* out, const float* x, const int64_t* dst, const int64_t* ptr,
                      const int64_t* src, const float* w, int64_t ndst, int64_t row,
                      cudaStream_t stream);

// ---- moga.cu ----------------------------------------------------------------------------------
// Router logits [n, m] -> gid[n] (argmax, lowest index on ties), p_win[n] (softmax at gid, the
// exponentials summed in double) and counts[m] (tokens per group; zeroed here).
void moga_route(const float* logits, int64_t n, int m, int* gid, float* p_win,
                unsigned long long* counts, cudaStream_t stream);
// Stable sort of the tokens 0..n-1 by gid: order[i] = the i-th token in (group, token) order.
// gid_sorted [n] int and iota [n] int64 are scratch; temp holds sort_by_group_temp_bytes(n, m).
size_t sort_by_group_temp_bytes(int64_t n, int m);
void sort_by_group(const int* gid, int* gid_sorted, int64_t* iota, int64_t* order, int64_t n,
                   int m, void* temp, size_t temp_bytes, cudaStream_t stream);
// out[idx[i], :] += x[i, :] * w[i] (w may be null: 1) for idx without repeats (one writer per
// row: no atomics, deterministic). accumulate = false writes x[i, :] * w[i] instead (out's
// rows need not be initialised).
void scatter_rows_injective(float* out, const float* x, const int64_t* idx, const float* w,
                            int64_t m, int64_t row, bool accumulate, cudaStream_t stream);
// The same from bf16 rows (an attention output in its compact form).
void scatter_rows_injective_bf16(float* out, const uint16_t* x, const int64_t* idx, const float* w,
                                 int64_t m, int64_t row, bool accumulate, cudaStream_t stream);
// y = bf16((a + b) * s) elementwise, a float32, b float32 or bf16 (b_bf16): MoGA's mean of its
// branches written as the output projection's GEMM input.
void add_scale_to_bf16(const float* a, const void* b, bool b_bf16, float s, uint16_t* y,
                       int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace mg
