// The op interface every network is written against. One interface, two backends:
// the CPU backend (src/backend/cpu) is the exact float32 reference; the CUDA backend
// (src/backend/cuda, kernels/) is the product's speed. A model never branches on the
// backend. Fused ops are defined by their CPU composition.
//
// Layout conventions (all row-major, contiguous):
//   token tensors      [N, D]            (N tokens, D features)
//   attention q/k/v/o  [N, H, hd]        (token-major, heads inside)
//   video tensors      [C, T, H, W]      (VAE, latents)
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mogagen/tensor.h"

namespace mg {

// Packed variable-length segments: segment i covers rows [cu[i], cu[i+1]) of a packed
// tensor. cu.size() = number of segments + 1, cu.front() = 0.
using CuSeqlens = std::vector<int64_t>;

class Ops {
 public:
  virtual ~Ops() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;

  // ---- memory --------------------------------------------------------------------------
  // Move a host tensor (any dtype) to the backend's compute type for weights
  // (CPU: F32 host tensor; CUDA: BF16 device tensor, F32 when keep_f32).
  virtual Tensor weight(const Tensor& host, bool keep_f32 = false) = 0;
  // Host F32 -> backend F32 activation; backend -> host F32.
  virtual Tensor upload(const Tensor& host_f32) = 0;
  virtual Tensor download(const Tensor& t) = 0;
  virtual Tensor empty(const Shape& s) = 0;  // F32 activation
  virtual Tensor zeros(const Shape& s) = 0;
  // An attention operand [N, H, hd] (q, k or v after RoPE) in the form the backend keeps it
  // while it waits for attention: the CPU keeps float32 (the exact reference); CUDA keeps
  // bf16 where its fused attention takes the head size, which it would convert to anyway,
  // so long sequences hold half the bytes. attention, attention_varlen and the index-tensor
  // gather_rows accept either form.
  virtual Tensor compact(const Tensor& x) { return x; }
  // Device memory of the backend's allocator, in bytes (zeros where it does not track it).
  struct MemoryStats {
    size_t live = 0;       // held by tensors now
    size_t peak_live = 0;  // the most held at once since the last reset_peak_memory()
    size_t reserved = 0;   // live plus cached for reuse
  };
  virtual MemoryStats memory_stats() { return {}; }
  virtual void reset_peak_memory() {}
  // How the fused attention has fared since the backend was made (CUDA; zeros elsewhere):
  // plans built and the seconds spent building them and timing their candidates, calls run
  // as one fused call, ragged calls run segment by segment as one-segment fused calls (no
  // ragged plan for the shape), and calls that fell back to the float32 composition.
  struct AttentionStats {
    int64_t plans = 0;
    double plan_seconds = 0;
    int64_t fused_calls = 0;
    int64_t per_segment_calls = 0;
    int64_t f32_calls = 0;
    // plans whose first run timed several configurations (a family's first shape; its later
    // shapes build the family's choice alone)
    int64_t timed_choices = 0;
    // fused calls that ran our own kernel (CUDA on sm_90: kernels/flash_sm90.cu), not cuDNN's
    int64_t sm90_calls = 0;
  };
  virtual AttentionStats attention_stats() { return {}; }

  // ---- linear algebra ------------------------------------------------------------------
  // y[M,N] = x[M,K] . w[N,K]^T (+ b[N])   (nn.Linear)
  virtual Tensor linear(const Tensor& x, const Tensor& w, const Tensor* b) = 0;
  // x in the form linear() with bf16 weights() reads it, for one input shared by several
  // such GEMMs (the DiT's q, k and v): CUDA converts it to bf16 once instead of once per
  // GEMM, the same values; the CPU keeps float32. Not for float32 weights, which would read
  // the rounded values.
  virtual Tensor gemm_input(const Tensor& x) { return x; }
  // gelu_tanh(linear(x, w, b)) for a hidden layer that only feeds another linear (the FFN):
  // CUDA runs the bias and the tanh-GELU in cuBLASLt's epilogue and returns bf16 (what the
  // next GEMM reads), never writing the float32 hidden; the CPU returns the composition.
  virtual Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor* b) {
    return gelu_tanh(linear(x, w, b));
  }
  // acc += gate * linear(x, w, b) (gate [N_out], broadcast over the rows; null: 1), acc
  // float32 with linear's output shape: the residual stream's update after an attention's
  // output projection and after the FFN. The composition (linear, then gated_add_ or add_)
  // is the definition and the CPU's path. CUDA folds the update into the GEMM with bf16
  // weights (cuBLASLt: D = x (gate (.) w)^T + 1 * C + gate (.) b, with C = D = acc and the
  // gated weight rows rounded to bf16 once per call), so the float32 product is never
  // written and read back; where cuBLASLt offers no algorithm for that, the composition
  // runs.
  virtual void linear_residual_(Tensor& acc, const Tensor& x, const Tensor& w, const Tensor* b,
                                const Tensor* gate) {
    const Tensor y = linear(x, w, b);
    if (gate)
      gated_add_(acc, y, *gate);
    else
      add_(acc, y);
  }
  // linear() for a product that only feeds ops taking the compact() form (the DiT's v, and
  // q and k on their way to rms_norm_rope): CUDA writes it in bf16 from the GEMM's epilogue
  // (bias included), never in float32; the CPU returns linear().
  virtual Tensor linear_compact(const Tensor& x, const Tensor& w, const Tensor* b) {
    return linear(x, w, b);
  }
  // A float32 weight prepared for linear_split(). CUDA holds it as a bf16 high part and the
  // bf16 rounding of the remainder (hi + lo carries about 16 of float32's 24 mantissa
  // bits); the CPU keeps the float32 weight itself in hi (lo undefined).
  struct SplitWeight {
    Tensor hi, lo;
  };
  virtual SplitWeight split_weight(const Tensor& w) { return {w, Tensor()}; }
  // linear() with a split weight. CUDA splits x the same way and sums three bf16
  // tensor-core GEMMs in float32, hi.hi + hi.lo + lo.hi; the dropped lo.lo term is about
  // 2^-16 of each product. That is near-float32 products at bf16 speed, where TF32 keeps 10
  // mantissa bits. The CPU runs the exact linear().
  virtual Tensor linear_split(const Tensor& x, const SplitWeight& w, const Tensor* b) {
    return linear(x, w.hi, b);
  }
  // How linear() multiplies F32 weights from now on. Exact: float32 products (the default).
  // Tf32: TF32 tensor cores where the backend has them (10-bit mantissa products, float32
  // accumulation, as the VAE's convolutions); the CPU backend stays exact. Returns the
  // previous mode.
  enum class F32Matmul { Exact, Tf32 };
  F32Matmul set_f32_matmul(F32Matmul m) {
    const F32Matmul old = f32_matmul_;
    f32_matmul_ = m;
    return old;
  }

  // ---- elementwise ---------------------------------------------------------------------
  virtual Tensor add(const Tensor& a, const Tensor& b) = 0;       // same numel
  virtual void add_(Tensor& a, const Tensor& b) = 0;              // a += b
  virtual Tensor mul(const Tensor& a, const Tensor& b) = 0;       // same numel
  virtual Tensor gelu_tanh(const Tensor& x) = 0;  // 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
  virtual Tensor silu(const Tensor& x) = 0;
  // a += y * gate[D] (row broadcast), a,y: [N, D]
  virtual void gated_add_(Tensor& a, const Tensor& y, const Tensor& gate) = 0;
  // x[N, D] + row[D] broadcast
  virtual Tensor add_row(const Tensor& x, const Tensor& row) = 0;
  // GELU_tanh(a) * b (T5 gated FFN)
  virtual Tensor gelu_tanh_mul(const Tensor& a, const Tensor& b) = 0;

  // ---- norms (statistics in float32) ----------------------------------------------------
  // LayerNorm over the last dim; w and b optional (no affine when null).
  virtual Tensor layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps) = 0;
  // LayerNorm (no affine) then x*(1+scale)+shift, scale/shift [D].
  virtual Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                     float eps) = 0;
  // layer_norm_modulate in gemm_input() form, for a GEMM with bf16 weights: CUDA writes the
  // bf16 rows directly, never the float32 ones; the CPU keeps float32.
  virtual Tensor layer_norm_modulate_gemm(const Tensor& x, const Tensor& shift,
                                          const Tensor& scale, float eps) {
    return gemm_input(layer_norm_modulate(x, shift, scale, eps));
  }
  // y = x * rsqrt(mean(x^2) + eps) * w over the last dim.
  virtual Tensor rms_norm(const Tensor& x, const Tensor& w, float eps) = 0;
  // Wan VAE RMS_norm over channels of [C, T, H, W]: x / max(||x||_2, eps) * sqrt(C) * gamma[C]
  virtual Tensor channel_l2_norm(const Tensor& x, const Tensor& gamma, float eps = 1e-12f) = 0;
  // silu(channel_l2_norm(x, gamma, eps)): the VAE's norm and activation in front of each
  // causal conv (its only use: the result feeds conv3d, conv3d_after and cache_tail). The
  // composition is the default; CUDA computes both in one pass, and with bf16 convolutions
  // (MOGAGEN_CONV=bf16) writes the result in bf16, the convolutions' input form.
  virtual Tensor channel_l2_norm_silu(const Tensor& x, const Tensor& gamma, float eps = 1e-12f) {
    return silu(channel_l2_norm(x, gamma, eps));
  }

  // gemm_input(layer_norm(x, w, b, eps)) for an input that only feeds GEMMs with bf16
  // weights (the DiT's cross-attention q): CUDA writes the bf16 GEMM input directly.
  virtual Tensor layer_norm_gemm(const Tensor& x, const Tensor* w, const Tensor* b, float eps) {
    return gemm_input(layer_norm(x, w, b, eps));
  }
  // compact(rms_norm(x, w, eps).reshape({N, heads, hd})) for x [N, heads * hd] (float32 or
  // bf16 from linear_compact): the cross-attention's q, in the form attention reads. CUDA
  // reads the row once and writes bf16 once where cuDNN takes the head size.
  virtual Tensor rms_norm_compact(const Tensor& x, const Tensor& w, float eps, int64_t heads) {
    if (heads <= 0 || x.ndim() != 2 || x.dim(1) % heads != 0)
      throw internal_error("rms_norm_compact: x " + x.str() + " for " + std::to_string(heads) + " heads");
    return compact(rms_norm(x, w, eps).reshape({x.dim(0), heads, x.dim(1) / heads}));
  }

  // ---- positional ----------------------------------------------------------------------
  // Interleaved (GPT-J) rotary embedding in place: x [N, H, hd]; cos/sin [N, hd/2]
  // (pair j of token n rotates by the angle whose cos/sin are cos[n, j], sin[n, j]).
  virtual void rope_(Tensor& x, const Tensor& cos, const Tensor& sin) = 0;
  // The DiT's q and k: RMSNorm over the whole row x [N, H * hd] (weight w), then RoPE per
  // head, in the compact() form attention reads: compact(rope_(rms_norm(x).reshape({N, H,
  // hd}))). That composition is the default; CUDA fuses it into one pass that reads the
  // row once (float32, or bf16 from linear_compact) and writes bf16 once.
  virtual Tensor rms_norm_rope(const Tensor& x, const Tensor& w, float eps, int64_t heads,
                               const Tensor& cos, const Tensor& sin) {
    if (heads <= 0 || x.ndim() != 2 || x.dim(1) % heads != 0)
      throw internal_error("rms_norm_rope: x " + x.str() + " for " + std::to_string(heads) + " heads");
    Tensor y = rms_norm(x, w, eps).reshape({x.dim(0), heads, x.dim(1) / heads});
    rope_(y, cos, sin);
    return compact(y);
  }

  // T5's relative position bias [H, L, L]: bias[h, i, j] = table[bucket[j - i + L - 1], h],
  // from a layer's table [buckets, H] (F32) and the bucket of every offset -(L-1)..L-1, an
  // I64 index tensor [2L - 1] from index(). One pass that writes the result (CUDA), where a
  // gather of L*L table rows and a transpose wrote it twice.
  virtual Tensor relative_position_bias(const Tensor& table, const Tensor& bucket, int64_t L) = 0;

  // ---- attention -----------------------------------------------------------------------
  // o[Nq,H,hd] = softmax(scale * q k^T + bias) v, non-causal, per head.
  // bias (optional) is [H, Nq, Nk]. k/v may have a different token count than q.
  // The result may be in compact() form: CUDA returns its fused path's bf16 output as it
  // is (what the next GEMM reads); every op accepts either form.
  virtual Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                           const Tensor* bias = nullptr) = 0;
  // Variable-length packed attention: query segment i (rows cu_q[i]..cu_q[i+1]) attends
  // to key/value segment i (rows cu_kv[i]..cu_kv[i+1]). Empty segments produce nothing.
  virtual Tensor attention_varlen(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const CuSeqlens& cu_q, const CuSeqlens& cu_kv,
                                  float scale) = 0;

  // ---- gather / scatter (token rows) -----------------------------------------------------
  // out[i] = x[idx[i]] for [N, ...] tensors (rows are dim 0)
  virtual Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& idx) = 0;
  // out[idx[i]] += x[i] * w[i]  (w optional: 1)
  virtual void scatter_add_rows_(Tensor& out, const Tensor& x, const std::vector<int64_t>& idx,
                                 const std::vector<float>* w = nullptr) = 0;
  virtual Tensor scale(const Tensor& x, float s) = 0;
  // Index lists already on the backend: idx is an I64 tensor [m] from index() or from
  // route_groups(). Same results as the overloads above.
  virtual Tensor index(const std::vector<int64_t>& idx) = 0;  // host list -> backend I64 [m]
  // The result has x's dtype (a compact() operand stays compact).
  virtual Tensor gather_rows(const Tensor& x, const Tensor& idx) = 0;
  // out[idx[i]] += x[i] * w[i], w a backend F32 [m] or null (1). idx must not repeat a row
  // (a permutation, or part of one), so every row has one writer: race-free and
  // deterministic. The CPU backend checks this; the CUDA backend relies on it.
  virtual void scatter_add_rows_(Tensor& out, const Tensor& x, const Tensor& idx,
                                 const Tensor* w = nullptr) = 0;
  // out[perm[i]] = x[i] * w[i] (w optional: 1) for a permutation perm of 0..m-1 (m = x's
  // rows): a sorted order undone, every row written once. Defined as zeros then
  // scatter_add_rows_ (the CPU runs exactly that); CUDA writes each row once without the
  // zeros pass or the read of out. It relies on perm being a permutation.
  virtual Tensor unpermute_rows(const Tensor& x, const Tensor& perm, const Tensor* w = nullptr) {
    Tensor out = zeros(x.shape());
    scatter_add_rows_(out, x, perm, w);
    return out;
  }
  // gemm_input(scale(a + b, s)) for a sum that only feeds GEMMs with bf16 weights (MoGA's
  // mean of its branches before the output projection): a float32, b float32 or the
  // backend's compact form. CUDA writes the bf16 GEMM input in one pass; the CPU returns the
  // float32 composition.
  virtual Tensor add_scale_gemm_input(const Tensor& a, const Tensor& b, float s) {
    Tensor t = add(a, b);
    return gemm_input(scale(t, s));
  }

  // ---- MoGA routing (moga-spec step 2) ----------------------------------------------------
  // Top-1 routing of N tokens to M groups from router logits [N, M] (F32): each token's
  // group g = argmax (ties: the lowest index) and p_win = softmax(logits)[g], the
  // exponentials summed in double; then the tokens stably sorted by group (token order
  // within a group). order and weight stay on the backend for gather_rows and
  // scatter_add_rows_; the group sizes come to the host (the varlen segment lengths).
  struct GroupRouting {
    Tensor order;                // [N] I64: the token at each sorted position
    Tensor weight;               // [N] F32: that token's p_win
    std::vector<int64_t> sizes;  // [M] tokens per group
    std::vector<int> gid;        // [N] per token, host; filled only with host_copy
    std::vector<float> p_win;    // [N] per token, host; filled only with host_copy
  };
  virtual GroupRouting route_groups(const Tensor& logits, bool host_copy = false) = 0;

  // ---- video / conv (VAE) --------------------------------------------------------------
  // 3D convolution (cross-correlation), x [Cin, T, H, W], w [Cout, Cin, kt, kh, kw], b [Cout]
  // optional. Zero padding: pad_t_front frames before (none after), pad_h / pad_w on both
  // sides of H / W. Stride 1.
  virtual Tensor conv3d(const Tensor& x, const Tensor& w, const Tensor* b, int pad_t_front,
                        int pad_h, int pad_w) = 0;
  // conv3d(cat_time(front, x), ...): a causal convolution over the cached frames `front`
  // (held or float32) followed by x. That composition is the default. CUDA's bf16
  // convolutions (MOGAGEN_CONV=bf16) write their bf16 input once from both, without the
  // float32 concatenation.
  virtual Tensor conv3d_after(const Tensor& front, const Tensor& x, const Tensor& w, const Tensor* b,
                              int pad_t_front, int pad_h, int pad_w) {
    return conv3d(cat_time(front, x), w, b, pad_t_front, pad_h, pad_w);
  }
  // conv3d_after(...) + residual (float32, of the output's shape): the VAE residual block's
  // second convolution and its skip connection. CUDA's bf16 convolutions add the residual
  // in the pass that widens their output, so the sum is not a pass of its own.
  virtual Tensor conv3d_after_add(const Tensor& front, const Tensor& x, const Tensor& w, const Tensor* b,
                                  int pad_t_front, int pad_h, int pad_w, const Tensor& residual) {
    return add(conv3d_after(front, x, w, b, pad_t_front, pad_h, pad_w), residual);
  }
  // Nearest 2x spatial upsample of [C, T, H, W].
  virtual Tensor upsample2x(const Tensor& x) = 0;
  // upsample2x for a conv3d that reads it next (the VAE's resample): the same values, in the
  // form the backend's convolution reads (CUDA with bf16 convolutions: bf16, written once).
  virtual Tensor upsample2x_for_conv(const Tensor& x) { return upsample2x(x); }
  // Concatenate along dim 1 (time) of [C, T, H, W] tensors; slice frames [t0, t1).
  virtual Tensor cat_time(const Tensor& a, const Tensor& b) = 0;
  virtual Tensor slice_time(const Tensor& x, int64_t t0, int64_t t1) = 0;
  // The DiT's patches (Wan's patch embedding as a linear layer): x [C, T, h, w] ->
  // [F * H * W, C * pt * ph * pw] with F = T / pt, H = h / ph, W = w / pw, token (f, y, x)
  // and feature c * P + (i * ph + a) * pw + b reading x[c, f pt + i, y ph + a, x pw + b].
  virtual Tensor patchify(const Tensor& x, int pt, int ph, int pw) = 0;
  // The head's output back to a latent: y [F * H * W, C * P] with feature ((i * ph + a) * pw
  // + b) * C + c of token (f, y, x) -> v[c, f pt + i, y ph + a, x pw + b], v [C, F pt, H ph, W pw].
  virtual Tensor unpatchify(const Tensor& y, int64_t c, int64_t f, int64_t h, int64_t w, int pt, int ph,
                            int pw) = 0;
  // [C, T, 2H, W] from time_conv output [2C, T, H, W] -> [C, 2T, H, W]: channel half 0 is
  // frame 2j, half 1 frame 2j+1.
  virtual Tensor interleave_time(const Tensor& x) = 0;
  // Frames kept for a later chunk (the VAE's causal caches) in the form the backend stores
  // them: the CPU keeps float32 (the exact reference); CUDA keeps bf16, half the bytes,
  // which cat_time and slice_time read back as float32. A causal conv rounds its inputs to
  // TF32 anyway (10 mantissa bits; bf16 keeps 7).
  virtual Tensor hold_frames(const Tensor& x) { return x; }
  // The causal cache after a chunk: hold_frames() of the last min(frames, T_old + T) frames
  // of cat_time(old, x), where old is the previous cache (undefined: none yet). That
  // composition is the default; CUDA writes the held form once, from old's and x's frames.
  virtual Tensor cache_tail(const Tensor& old, const Tensor& x, int64_t frames) {
    const int64_t T = x.dim(1), from_x = std::min(frames, T);
    Tensor keep = slice_time(x, T - from_x, T);
    const int64_t from_old = old.defined() ? std::min(frames - from_x, old.dim(1)) : 0;
    if (from_old > 0) keep = cat_time(slice_time(old, old.dim(1) - from_old, old.dim(1)), keep);
    return hold_frames(keep);
  }
  // 2D transpose of a [R, C] tensor.
  virtual Tensor transpose(const Tensor& x) = 0;
  // Clamp elementwise.
  virtual Tensor clamp(const Tensor& x, float lo, float hi) = 0;

  // ---- copies ---------------------------------------------------------------------------
  virtual Tensor copy(const Tensor& x) = 0;
  virtual void copy_(Tensor& dst, const Tensor& src) = 0;  // same numel
  virtual void synchronize() {}

 protected:
  F32Matmul f32_matmul_ = F32Matmul::Exact;
};

// Shape contract of attention / attention_varlen shared by the backends: q, k, v are
// [N, H, hd], k and v alike, heads and head dims equal. Throws mg::Error(Internal).
inline void check_qkv_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3 || k.shape() != v.shape() ||
      q.dim(1) != k.dim(1) || q.dim(2) != k.dim(2))
    throw internal_error(std::string(op) + ": q " + q.str() + " k " + k.str() + " v " + v.str() +
                         " (expected [N, H, hd])");
}

// The float32 CPU reference backend (OpenBLAS GEMM).
std::unique_ptr<Ops> make_cpu_ops();
// The CUDA backend; throws mg::Error(Device) when CUDA is not built or no GPU is present.
std::unique_ptr<Ops> make_cuda_ops(int device_index);
bool cuda_available();  // built with CUDA and a device is visible
// Device `device_index`'s compute capability as 10 * major + minor (90: H100, H200); 0 where
// CUDA is not built in or there is no such device.
int cuda_compute_capability(int device_index);
// "cpu" | "cuda" | "cuda:N"
std::unique_ptr<Ops> make_ops(const std::string& device);

}  // namespace mg
