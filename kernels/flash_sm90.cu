// Fused attention forward for Hopper (sm_90a): bf16 q/k/v/o, float32 softmax, head size 128,
// non-causal; our own kernel beside cuDNN's (kernels/attention.cu), built in the manner of
// FlashAttention-3 (Shah et al. 2024):
//  * a CTA takes tiles of 128 query rows of one head (one tile, or, persistent, one CTA per
//    SM looping over the tiles): a producer warp issues TMA loads of Q and of K and V tiles
//    (BN rows, 128B swizzle) into a two-stage ring guarded by mbarriers, running on across
//    tiles; two consumer warpgroups of 64 query rows each run the wgmma instructions and the
//    softmax;
//  * S = Q K^T reads both operands from shared memory; O += P V takes P from registers (the
//    accumulator fragment of S is the A fragment of the next instruction, no shuffles);
//  * within a warpgroup, the next block's Q K^T runs while the softmax of the current one is
//    computed; between the two warpgroups, named barriers alternate the issue of their
//    instructions so that one's softmax overlaps the other's matrix products;
//  * the running maximum is raised only when a block's maximum exceeds it by more than
//    2^8 in exp2 units (then O and the row sum are rescaled, warp by warp); below that, the
//    exponentials stay at most 2^8 and the float32 sums are exact enough. This skips almost
//    every rescale of O after the first blocks.
// Semantics: o = softmax(scale * q k^T) v per head, as CpuOps::attention.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "kernels.cuh"
#include "wgmma_sm90.cuh"

namespace mg {
namespace cuda {
namespace sm90 {
namespace {

constexpr int kD = 128;      // head size
constexpr int kBM = 128;     // query rows per CTA (two consumer warpgroups of 64)
constexpr int kStages = 2;   // K and V ring depth
constexpr int kThreads = 384;

template <int BN>
struct Layout {
  static constexpr int kQBytes = kBM * kD * 2;    // two 64-column halves of kBM rows x 128 B
  static constexpr int kQHalf = kBM * 128;
  static constexpr int kTileBytes = BN * kD * 2;  // one K or V tile
  static constexpr int kTileHalf = BN * 128;
  static constexpr int kBarOffset = kQBytes + 2 * kStages * kTileBytes;
  static constexpr int kSmem = kBarOffset + 256 + 1024;  // barriers; alignment slack
};

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MG_SM90A 1
#endif

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#ifdef MG_SM90A
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving register accesses across an asynchronous wgmma.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
__device__ __forceinline__ void named_sync(int id) {
  asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void named_arrive(int id) {
  asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// Shared-memory matrix descriptor, 128B swizzle. K-major operands (Q, K): rows of 128 B, 8-row
// groups 1024 B apart (SBO); the leading offset is unused. MN-major (V): 64-element atoms
// along N are `lbo` bytes apart, 8-row groups along K 1024 B apart.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t lbo) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>(lbo >> 4) << 16;
  d |= static_cast<uint64_t>(1024 >> 4) << 32;
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}
#endif

// The exponent threshold (log2 units) above which the running maximum is raised.
constexpr float kRescaleThreshold = 8.0f;

template <int BN>
__global__ void __launch_bounds__(kThreads, 1)
    flash_fwd_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                     const __grid_constant__ CUtensorMap tv, uint16_t* __restrict__ out, int64_t out_row,
                     const int4* __restrict__ tiles, int tiles_x, int n_tiles, int sq, int skv_dense,
                     float scale_log2) {
#ifdef MG_SM90A
  using L = Layout<BN>;
  constexpr int kSRegs = BN / 2;   // S accumulators per thread
  constexpr int kPRegs = BN / 4;   // P as bf16 pairs
  constexpr int kKSteps = BN / 16; // k16 steps of P V
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t sQ = smem_addr(smem);
  const uint32_t sK = sQ + L::kQBytes;
  const uint32_t sV = sK + kStages * L::kTileBytes;
  const uint32_t bars = sQ + L::kBarOffset;
  const uint32_t q_full = bars, q_empty = bars + 8;
  auto k_full = [&](uint32_t s) { return bars + 8 * (2 + s); };
  auto k_empty = [&](uint32_t s) { return bars + 8 * (2 + kStages + s); };
  auto v_full = [&](uint32_t s) { return bars + 8 * (2 + 2 * kStages + s); };
  auto v_empty = [&](uint32_t s) { return bars + 8 * (2 + 3 * kStages + s); };

  // Tile t (this CTA takes blockIdx.x, + gridDim.x, ...; a grid of one CTA per tile, or of
  // one per SM that loops): head t / tiles_x, and query rows [q_row, q_end), key rows
  // [k_row, k_row + kv). Dense: the x-th 128 rows of the one segment; ragged: tiles[x] =
  // {first query row, end of its segment, first key row, key count} (packed rows).
  struct Tile {
    int head, q_row, q_end, k_row, kv;
  };
  auto tile_at = [&](int t) {
    Tile r;
    r.head = t / tiles_x;
    const int x = t - r.head * tiles_x;
    if (tiles) {
      const int4 tl = tiles[x];
      r.q_row = tl.x;
      r.q_end = tl.y;
      r.k_row = tl.z;
      r.kv = tl.w;
    } else {
      r.q_row = x * kBM;
      r.q_end = sq;
      r.k_row = 0;
      r.kv = skv_dense;
    }
    return r;
  };
  const int wg = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    mbar_init(q_empty, 8);  // one arrival per consumer warp
    for (int s = 0; s < kStages; ++s) {
      mbar_init(k_full(s), 1);
      mbar_init(v_full(s), 1);
      mbar_init(k_empty(s), 8);
      mbar_init(v_empty(s), 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  // The K and V rings run on across tiles: the n-th tile block loaded (and consumed) uses
  // stage n % kStages in its (n / kStages)-th round.
  if (wg == 0) {
    // ---- producer -------------------------------------------------------------------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
    if (threadIdx.x == 0) {
      uint32_t kc = 0, vc = 0, round = 0;
      for (int t = blockIdx.x; t < n_tiles; t += gridDim.x, ++round) {
        const Tile tl = tile_at(t);
        const int n_blocks = (tl.kv + BN - 1) / BN;
        auto load = [&](const CUtensorMap* map, uint32_t ring, bool is_k, uint32_t& cnt, int j) {
          const uint32_t st = cnt % kStages, use = cnt / kStages;
          const uint32_t full = is_k ? k_full(st) : v_full(st), empty = is_k ? k_empty(st) : v_empty(st);
          mbar_wait(empty, (use & 1) ^ 1);
          mbar_expect_tx(full, L::kTileBytes);
          const uint32_t base = ring + st * L::kTileBytes;
          tma_load(base, map, full, 0, tl.head, tl.k_row + j * BN);
          tma_load(base + L::kTileHalf, map, full, 64, tl.head, tl.k_row + j * BN);
          ++cnt;
        };
        load(&tk, sK, true, kc, 0);
        mbar_wait(q_empty, (round & 1) ^ 1);  // the previous tile's last Q K^T is done
        mbar_expect_tx(q_full, L::kQBytes);
        tma_load(sQ, &tq, q_full, 0, tl.head, tl.q_row);
        tma_load(sQ + L::kQHalf, &tq, q_full, 64, tl.head, tl.q_row);
        for (int j = 1; j < n_blocks; ++j) {
          load(&tk, sK, true, kc, j);
          load(&tv, sV, false, vc, j - 1);
        }
        load(&tv, sV, false, vc, n_blocks - 1);
      }
    }
    return;
  }

  // ---- consumers ----------------------------------------------------------------------------
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n");
  const int c = wg - 1;  // which 64 rows of the CTA
  const int t_in = threadIdx.x % 128;
  const int warp = t_in / 32, lane = t_in % 32;
  const bool warp_leader = lane == 0;
  const int my_bar = 1 + c, other_bar = 2 - c;

  float o[64];
  float s[kSRegs];
  uint32_t p[kPRegs];
  float m0, m1, l0, l1;
  int kv = 0;

  const uint32_t q_base = sQ + c * 64 * 128;
  auto issue_qk = [&](uint32_t stage) {
    const uint32_t k_base = sK + stage * L::kTileBytes;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      const uint32_t off = (ks % 4) * 32;
      const uint64_t da = sw128_desc(q_base + (ks / 4) * L::kQHalf + off, 16);
      const uint64_t db = sw128_desc(k_base + (ks / 4) * L::kTileHalf + off, 16);
      if constexpr (BN == 176) {
        wgmma_ss_m64n176k16(s, da, db, ks > 0 ? 1u : 0u);
      } else {
        wgmma_ss_m64n128k16(s, da, db, ks > 0 ? 1u : 0u);
      }
    }
  };
  auto issue_pv = [&](uint32_t stage) {
    const uint32_t v_base = sV + stage * L::kTileBytes;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      const uint64_t db = sw128_desc(v_base + ks * 2048, L::kTileHalf);
      wgmma_rs_m64n128k16(o, p[4 * ks], p[4 * ks + 1], p[4 * ks + 2], p[4 * ks + 3], db, 1u);
    }
  };
  auto release = [&](uint32_t bar) {
    __syncwarp();
    if (warp_leader) mbar_arrive(bar);
  };
  // Columns at or beyond kv in block j get -inf (rows past the tensor's end read as zeros,
  // past a segment's end as the next segment's keys; both are masked).
  auto mask = [&](int j) {
    const int col0 = j * BN + 2 * (lane % 4);
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (col0 + 8 * nb + e >= kv) {
          s[4 * nb + e] = -INFINITY;
          s[4 * nb + 2 + e] = -INFINITY;
        }
      }
    }
  };
  // Softmax of the block in s, in place: raises the running maxima where needed, turns s into
  // exp2(scale_log2 * (s - m)), adds the row sums; a0, a1: the factors O must be scaled by
  // (1 where the maximum was not raised).
  auto softmax = [&](float& a0, float& a1) {
    float x0 = -INFINITY, x1 = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb) {
      x0 = fmaxf(x0, fmaxf(s[4 * nb], s[4 * nb + 1]));
      x1 = fmaxf(x1, fmaxf(s[4 * nb + 2], s[4 * nb + 3]));
    }
    x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 1));
    x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 2));
    x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 1));
    x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 2));
    a0 = 1.f;
    a1 = 1.f;
    if ((x0 - m0) * scale_log2 > kRescaleThreshold) {
      a0 = m0 == -INFINITY ? 0.f : ex2((m0 - x0) * scale_log2);
      m0 = x0;
    }
    if ((x1 - m1) * scale_log2 > kRescaleThreshold) {
      a1 = m1 == -INFINITY ? 0.f : ex2((m1 - x1) * scale_log2);
      m1 = x1;
    }
    const float b0 = -m0 * scale_log2, b1 = -m1 * scale_log2;
    float r0 = 0.f, r1 = 0.f;
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb) {
      s[4 * nb] = ex2(fmaf(s[4 * nb], scale_log2, b0));
      s[4 * nb + 1] = ex2(fmaf(s[4 * nb + 1], scale_log2, b0));
      s[4 * nb + 2] = ex2(fmaf(s[4 * nb + 2], scale_log2, b1));
      s[4 * nb + 3] = ex2(fmaf(s[4 * nb + 3], scale_log2, b1));
      r0 += s[4 * nb] + s[4 * nb + 1];
      r1 += s[4 * nb + 2] + s[4 * nb + 3];
    }
    l0 = l0 * a0 + r0;
    l1 = l1 * a1 + r1;
  };
  // P as the A fragment of P V: the accumulator layout of two adjacent n8 blocks is the A
  // layout of one k16 step.
  auto to_p = [&]() {
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb) {
      p[2 * nb] = pack_bf16(s[4 * nb], s[4 * nb + 1]);
      p[2 * nb + 1] = pack_bf16(s[4 * nb + 2], s[4 * nb + 3]);
    }
  };
  auto rescale = [&](float a0, float a1) {
    if (__any_sync(0xffffffffu, a0 != 1.f || a1 != 1.f)) {
#pragma unroll
      for (int nb = 0; nb < 16; ++nb) {
        o[4 * nb] *= a0;
        o[4 * nb + 1] *= a0;
        o[4 * nb + 2] *= a1;
        o[4 * nb + 3] *= a1;
      }
    }
  };

  // The two warpgroups take turns to issue their products (named barriers 1 and 2), tile
  // after tile; warpgroup 0 first.
  if (c == 1 && static_cast<int>(blockIdx.x) < n_tiles) named_arrive(1);
  uint32_t kc = 0, vc = 0, round = 0;
  for (int t = blockIdx.x; t < n_tiles; t += gridDim.x, ++round) {
    const Tile tl = tile_at(t);
    kv = tl.kv;
    const int n_blocks = (kv + BN - 1) / BN;
    const bool last_tile = t + static_cast<int>(gridDim.x) >= n_tiles;
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.f;
    m0 = m1 = -INFINITY;
    l0 = l1 = 0.f;
    mbar_wait(q_full, round & 1);

    // Block 0: S, then its softmax.
    {
      const uint32_t st = kc % kStages;
      mbar_wait(k_full(st), (kc / kStages) & 1);
      named_sync(my_bar);
      fence_regs(s);
      wgmma_fence();
      issue_qk(st);
      wgmma_commit();
      named_arrive(other_bar);
      wgmma_wait<0>();
      fence_regs(s);
      release(k_empty(st));
      ++kc;
      if (n_blocks == 1) {
        release(q_empty);
        mask(0);
      }
      float a0, a1;
      softmax(a0, a1);
      to_p();
    }

    // Block j: S_j = Q K_j^T and O += P_{j-1} V_{j-1} issued together; the softmax of S_j
    // runs while the second product is in flight.
    for (int j = 1; j < n_blocks; ++j) {
      const uint32_t sk = kc % kStages, sv = vc % kStages;
      mbar_wait(k_full(sk), (kc / kStages) & 1);
      mbar_wait(v_full(sv), (vc / kStages) & 1);
      named_sync(my_bar);
      fence_regs(p);
      fence_regs(o);
      fence_regs(s);
      wgmma_fence();
      issue_qk(sk);
      wgmma_commit();
      issue_pv(sv);
      wgmma_commit();
      named_arrive(other_bar);
      wgmma_wait<1>();
      fence_regs(s);
      release(k_empty(sk));
      ++kc;
      if (j == n_blocks - 1) {
        release(q_empty);  // this tile's last use of Q: the producer may load the next
        mask(j);
      }
      float a0, a1;
      softmax(a0, a1);
      wgmma_wait<0>();
      fence_regs(o);
      fence_regs(p);
      release(v_empty(sv));
      ++vc;
      rescale(a0, a1);
      to_p();
    }

    {
      const uint32_t sv = vc % kStages;
      mbar_wait(v_full(sv), (vc / kStages) & 1);
      named_sync(my_bar);
      fence_regs(p);
      fence_regs(o);
      wgmma_fence();
      issue_pv(sv);
      wgmma_commit();
      if (c == 0 || !last_tile) named_arrive(other_bar);  // warpgroup 1's last turn has no successor
      wgmma_wait<0>();
      fence_regs(o);
      release(v_empty(sv));
      ++vc;
    }

    // Epilogue: O / l as bf16.
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;
    const int row0 = tl.q_row + c * 64 + warp * 16 + lane / 4;
    const int row1 = row0 + 8;
    uint16_t* base0 = out + static_cast<int64_t>(row0) * out_row + tl.head * kD + 2 * (lane % 4);
    uint16_t* base1 = out + static_cast<int64_t>(row1) * out_row + tl.head * kD + 2 * (lane % 4);
#pragma unroll
    for (int nb = 0; nb < 16; ++nb) {
      if (row0 < tl.q_end)
        *reinterpret_cast<uint32_t*>(base0 + 8 * nb) = pack_bf16(o[4 * nb] * inv0, o[4 * nb + 1] * inv0);
      if (row1 < tl.q_end)
        *reinterpret_cast<uint32_t*>(base1 + 8 * nb) = pack_bf16(o[4 * nb + 2] * inv1, o[4 * nb + 3] * inv1);
    }
  }
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// [rows, heads, 128] bf16 with `row` elements between rows; boxes of 64 columns x 1 head x box_rows.
bool make_map(CUtensorMap* map, const uint16_t* base, int64_t rows, int64_t heads, int64_t row, int box_rows) {
  auto fn = encode_fn();
  if (!fn) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(kD), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(kD * 2), static_cast<cuuint64_t>(row * 2)};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t estr[3] = {1, 1, 1};
  return fn(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<uint16_t*>(base), dims, strides, box, estr,
            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The current device's SM count, and its shared-memory opt-in for flash_fwd_kernel<BN> made
// once (a function attribute holds per device).
struct DeviceSetup {
  int sms = 0;
  bool ok = false;
};
template <int BN>
DeviceSetup device_setup() {
  static std::mutex mu;
  static std::map<int, DeviceSetup> done;
  int dev = 0;
  MG_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  auto it = done.find(dev);
  if (it != done.end()) return it->second;
  DeviceSetup d;
  if (cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) d.sms = 0;
  d.ok = cudaFuncSetAttribute(flash_fwd_kernel<BN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              Layout<BN>::kSmem) == cudaSuccess;
  if (!d.ok) cudaGetLastError();  // the call falls back; the error is not left for the next check
  return done.emplace(dev, d).first->second;
}

// persistent: one CTA per SM, each looping over the tiles (the next tile's loads overlap the
// current one's last products and stores); else one CTA per tile.
template <int BN>
bool launch(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, int64_t nq, int64_t nk, int64_t h,
            float scale, const int32_t* tiles, int64_t n_tiles_x, bool persistent, cudaStream_t stream) {
  CUtensorMap tq, tk, tv;
  const int64_t row = h * kD;
  if (!make_map(&tq, q, nq, h, row, kBM) || !make_map(&tk, k, nk, h, row, BN) || !make_map(&tv, v, nk, h, row, BN))
    return false;
  const DeviceSetup dev = device_setup<BN>();
  if (!dev.ok) return false;
  const int64_t tx = tiles ? n_tiles_x : (nq + kBM - 1) / kBM;
  const int64_t total = tx * h;
  if (total > INT32_MAX) return false;
  const int64_t grid = persistent && dev.sms > 0 ? std::min<int64_t>(total, dev.sms) : total;
  flash_fwd_kernel<BN><<<static_cast<unsigned>(grid), kThreads, Layout<BN>::kSmem, stream>>>(
      tq, tk, tv, o, row, reinterpret_cast<const int4*>(tiles), static_cast<int>(tx), static_cast<int>(total),
      static_cast<int>(nq), static_cast<int>(nk), scale * 1.4426950408889634f);
  MG_CUDA_LAUNCH_CHECK();
  return true;
}

bool shape_ok(const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* o, int64_t nq, int64_t nk,
              int64_t h, int64_t d, float scale) {
  // scale > 0: the running maximum of the scores is the maximum of the scaled ones
  return d == kD && scale > 0.0f && std::isfinite(scale) && nq > 0 && nk > 0 && h > 0 && h <= 65535 &&
         nq < (int64_t{1} << 30) &&
         nk < (int64_t{1} << 30) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(o);
}

}  // namespace
}  // namespace sm90

bool flash_sm90_supported(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return false;
  return prop.major == 9 && prop.minor == 0 && sm90::encode_fn() != nullptr;
}

bool flash_sm90_dense(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, int64_t nq, int64_t nk,
                      int64_t h, int64_t d, float scale, int block_n, bool persistent, cudaStream_t stream) {
  if (!sm90::shape_ok(q, k, v, o, nq, nk, h, d, scale)) return false;
  if (block_n == 176) return sm90::launch<176>(q, k, v, o, nq, nk, h, scale, nullptr, 0, persistent, stream);
  if (block_n == 128) return sm90::launch<128>(q, k, v, o, nq, nk, h, scale, nullptr, 0, persistent, stream);
  return false;
}

std::vector<int32_t> flash_sm90_tiles(const std::vector<int64_t>& lq, const std::vector<int64_t>& lk) {
  std::vector<int32_t> t;
  int64_t oq = 0, ok = 0;
  for (size_t i = 0; i < lq.size(); ++i) {
    for (int64_t r = 0; r < lq[i]; r += sm90::kBM) {
      t.push_back(static_cast<int32_t>(oq + r));
      t.push_back(static_cast<int32_t>(oq + lq[i]));
      t.push_back(static_cast<int32_t>(ok));
      t.push_back(static_cast<int32_t>(lk[i]));
    }
    oq += lq[i];
    ok += lk[i];
  }
  return t;
}

bool flash_sm90_ragged(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, int64_t total_q,
                       int64_t total_k, int64_t h, int64_t d, float scale, const int32_t* tiles, int64_t n_tiles,
                       int block_n, bool persistent, cudaStream_t stream) {
  if (!sm90::shape_ok(q, k, v, o, total_q, total_k, h, d, scale) || !tiles || n_tiles <= 0 || n_tiles > INT32_MAX)
    return false;
  if (block_n == 176)
    return sm90::launch<176>(q, k, v, o, total_q, total_k, h, scale, tiles, n_tiles, persistent, stream);
  if (block_n == 128)
    return sm90::launch<128>(q, k, v, o, total_q, total_k, h, scale, tiles, n_tiles, persistent, stream);
  return false;
}

}  // namespace cuda
}  // namespace mg
