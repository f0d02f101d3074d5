// CUDA KV-cache append and causal attention (fp16/bf16 activations, cache fp16/bf16 or int8,
// fp32 accumulation). Tested against kv_attention_ref.cpp; see rsvlm_edge/kv_attention.h for shapes and semantics.
//
// Attention kernel: one block of 4 warps per (tile of 16 "rows", KV head, sequence, KV split).
// A row is one (query position i, query head g of the KV head's group): row = i * G + g, so the
// G query heads sharing a KV head reuse each K/V tile (GQA). Warp w owns block rows w, w + 4, w + 8,
// w + 12 (so a decode group of G <= 4 heads keeps G warps busy) and keeps their online-softmax
// state (running max m, sum l, fp32 accumulator) in registers. K/V are staged 32 keys at a time in
// shared memory as fp32 (dequantised for int8); lane j scores key j, so a tile costs one warp
// max/sum per row. Decode is the same kernel with S_q = 1; for long contexts the
// keys are cut into num_splits chunks (flash-decoding) whose partial (m, l, acc) are merged by
// combine_kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/cuda_check.cuh"
#include "common/cuda_launch.cuh"
#include "common/cuda_math.cuh"
#include "common/rope_math.cuh"
#include "rsvlm_edge/kv_attention.h"

namespace rsvlm_edge {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;  // 16 (query, head) rows per block
constexpr int kKeyTile = 32;                          // keys per shared-memory tile: one per lane
constexpr int kMaxSplits = 64;
constexpr int kMinKeysPerSplit = 256;

using cuda::from_float;
using cuda::load8;
using cuda::to_float;
using cuda::warp_max;
using cuda::warp_sum;

__device__ __forceinline__ int64_t capacity(const KvCacheView& c) {
  return c.page_table ? int64_t(c.max_pages_per_seq) * kKvPageSize : c.s_max;
}

// Index of the cache row (token pos of KV head h of sequence b) in units of D elements, or -1
// when the page table points outside the page pool (the row is then skipped).
__device__ __forceinline__ int64_t row_index(const KvCacheView& c, int b, int h, int64_t pos) {
  if (c.page_table) {
    const int64_t page = c.page_table[int64_t(b) * c.max_pages_per_seq + pos / kKvPageSize];
    if (page < 0 || page >= c.slots) return -1;
    return (page * c.num_kv_heads + h) * kKvPageSize + pos % kKvPageSize;
  }
  return (int64_t(b) * c.num_kv_heads + h) * c.s_max + pos;
}

// ---------------------------------------------------------------- append

// Element t of a new row `src` (D elements) as stored: rotated at `pos` (rope.h; rounded to TA, as the
// rope kernel stores it) when `rotate`, else as is.
template <typename TA>
__device__ __forceinline__ TA row_element(const TA* src, int t, int d, bool rotate, int32_t pos, float theta) {
  if (!rotate) return src[t];
  const int half = d / 2, i = t < half ? t : t - half;
  float c, s;
  cuda::rope_cos_sin(i, d, theta, pos, &c, &s);
  const float x1 = to_float(src[i]), x2 = to_float(src[i + half]);
  return from_float<TA>(t < half ? cuda::rope_first(x1, x2, c, s) : cuda::rope_second(x1, x2, c, s));
}

// One warp per new row (b, s, h): copy it into the cache, or quantise it (int8, one scale per row).
// Rows past new_lens[b] or outside the cache are skipped (the CPU path reports them as errors).
// With p.rope.positions the K row is stored rotated, and the warp first rotates the G query heads of
// KV head h of token (b, s) in place when p.rope.q is given (every token, valid or not).
template <typename TA, typename TC>
__global__ void __launch_bounds__(kThreads) append_kernel(KvAppendParams p) {
  const KvCacheView& c = p.cache;
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;  // row id in (B, S_new, H_kv)
  const int hk = c.num_kv_heads, d = c.head_dim;
  if (r >= int64_t(p.batch) * p.s_new * hk) return;
  const int h = int(r % hk);
  const int s = int((r / hk) % p.s_new);
  const int b = int(r / (int64_t(hk) * p.s_new));
  const bool rotate = p.rope.positions != nullptr;
  const int64_t token = int64_t(b) * p.s_new + s;
  const int32_t rope_pos = rotate ? p.rope.positions[token] : 0;
  if (rotate && p.rope.q != nullptr) {  // q (B, S_new, H, D): heads h * G .. h * G + G - 1 of this token
    const int group = p.rope.num_heads / hk, half = d / 2;
    TA* q0 = static_cast<TA*>(p.rope.q) + (token * p.rope.num_heads + int64_t(h) * group) * d;
    for (int idx = lane; idx < group * half; idx += 32) {
      TA* x = q0 + int64_t(idx / half) * d;
      const int i = idx % half;
      float cs, sn;
      cuda::rope_cos_sin(i, d, p.rope.theta, rope_pos, &cs, &sn);
      const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
      x[i] = from_float<TA>(cuda::rope_first(x1, x2, cs, sn));
      x[i + half] = from_float<TA>(cuda::rope_second(x1, x2, cs, sn));
    }
  }
  const int n = p.new_lens ? p.new_lens[b] : p.s_new;
  const int64_t pos = int64_t(p.start_pos[b]) + s;
  if (s >= n || pos < 0 || pos >= capacity(c) || (!c.page_table && b >= c.slots)) return;
  const int64_t dst = row_index(c, b, h, pos);
  if (dst < 0) return;
  for (int which = 0; which < 2; ++which) {
    const TA* src = static_cast<const TA*>(which ? p.v_new : p.k_new) + r * d;
    TC* out = static_cast<TC*>(which ? c.v : c.k) + dst * d;
    const bool rot = rotate && which == 0;
    if constexpr (std::is_same<TC, int8_t>::value) {
      float amax = 0.f;
      for (int t = lane; t < d; t += 32)
        amax = fmaxf(amax, fabsf(to_float(row_element(src, t, d, rot, rope_pos, p.rope.theta))));
      amax = warp_max(amax);
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      for (int t = lane; t < d; t += 32) {
        const float q = rintf(to_float(row_element(src, t, d, rot, rope_pos, p.rope.theta)) * inv);
        out[t] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, q)));
      }
      if (lane == 0) (which ? c.v_scale : c.k_scale)[dst] = amax / 127.f;
    } else {
      for (int t = lane; t < d; t += 32) out[t] = row_element(src, t, d, rot, rope_pos, p.rope.theta);
    }
  }
}

// ---------------------------------------------------------------- attention

// grid (ceil(S_q * G / 16), H_kv, B * num_splits), block 128.
// num_splits == 1: writes normalised rows to p.out (zeros for padding rows).
// num_splits > 1 (S_q == 1 only): writes partial_o (B, H, num_splits, D) = unnormalised sum of
// exp(s - m) * v over the split's keys and partial_ml (B, H, num_splits, 2) = (m, l).
template <int D, typename TA, typename TC>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(AttentionParams p, float scale, int num_splits, float* partial_o, float* partial_ml) {
  static_assert(D % 8 == 0, "K/V tiles are loaded 8 elements at a time");
  constexpr int kDPL = (D + 31) / 32;  // head-dim elements per lane
  __shared__ float q_s[kRowsPerBlock][D];
  __shared__ float k_s[kKeyTile][D + 1];  // +1: lane j reading row j hits distinct banks
  __shared__ float v_s[kKeyTile][D + 1];

  cuda::allow_dependent_launch();  // the output projection may start on its weights
  const KvCacheView& c = p.cache;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int hk = blockIdx.y;
  const int b = blockIdx.z / num_splits, split = blockIdx.z % num_splits;
  const int group = p.num_heads / c.num_kv_heads;
  const int n_rows = p.s_q * group;
  const int row0 = blockIdx.x * kRowsPerBlock;
  const int q_len = min(max(p.q_lens ? p.q_lens[b] : p.s_q, 0), p.s_q);
  const int64_t kv_len = min(int64_t(max(p.kv_lens[b], q_len)), capacity(c));
  const int64_t past = max(kv_len - q_len, int64_t(0));

  // Keys this block needs: up to the causal limit of its last valid row (all keys when not causal),
  // then this split's chunk.
  const int last_i = min((row0 + kRowsPerBlock - 1) / group, q_len - 1);
  const int64_t key_end = last_i < 0 ? 0 : p.causal ? min(past + last_i + 1, kv_len) : kv_len;
  const int64_t chunk = ((key_end + num_splits - 1) / num_splits + kKeyTile - 1) / kKeyTile * kKeyTile;
  const int64_t key_begin = min(int64_t(split) * chunk, key_end);
  const int64_t key_stop = min(key_begin + chunk, key_end);

  // K/V tiles go through registers: the loads of tile n + 1 are issued before tile n's scores and
  // weighted sums, so their latency hides behind that work. Each thread holds kVecsPerThread vectors of
  // 8 consecutive elements of K and of V (D % 8 == 0; rows are 16-byte aligned), raw as stored.
  constexpr int kVecs = kKeyTile * D / 8;
  constexpr int kVecsPerThread = (kVecs + kThreads - 1) / kThreads;
  using Raw = typename std::conditional<sizeof(TC) == 1, uint2, uint4>::type;  // 8 elements of TC
  Raw k_raw[kVecsPerThread], v_raw[kVecsPerThread];
  float k_sc[kVecsPerThread], v_sc[kVecsPerThread];
  bool have[kVecsPerThread];
  auto fetch = [&](int64_t tile) {  // issue the loads of the tile starting at key `tile`
#pragma unroll
    for (int u = 0; u < kVecsPerThread; ++u) {
      const int idx = tid + u * kThreads;
      const int j = idx / (D / 8), t0 = idx % (D / 8) * 8;
      const int64_t pos = tile + j;
      const int64_t row = idx < kVecs && pos < key_stop ? row_index(c, b, hk, pos) : -1;
      have[u] = row >= 0;
      if (have[u]) {
        k_raw[u] = *reinterpret_cast<const Raw*>(static_cast<const TC*>(c.k) + row * D + t0);
        v_raw[u] = *reinterpret_cast<const Raw*>(static_cast<const TC*>(c.v) + row * D + t0);
        if constexpr (std::is_same<TC, int8_t>::value) {
          k_sc[u] = c.k_scale[row];
          v_sc[u] = c.v_scale[row];
        }
      }
    }
  };
  auto stage = [&]() {  // the fetched tile into k_s / v_s as fp32 (zeros for keys past the split)
#pragma unroll
    for (int u = 0; u < kVecsPerThread; ++u) {
      const int idx = tid + u * kThreads;
      if (idx >= kVecs) break;
      const int j = idx / (D / 8), t0 = idx % (D / 8) * 8;
      float kx[8] = {}, vx[8] = {};
      if (have[u]) {
        load8(reinterpret_cast<const TC*>(&k_raw[u]), kx);
        load8(reinterpret_cast<const TC*>(&v_raw[u]), vx);
        if constexpr (std::is_same<TC, int8_t>::value) {
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            kx[i] *= k_sc[u];
            vx[i] *= v_sc[u];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        k_s[j][t0 + i] = kx[i];
        v_s[j][t0 + i] = vx[i];
      }
    }
  };
  if (key_begin < key_stop) fetch(key_begin);  // the first tile's loads overlap the q staging

  // Stage this block's query rows (pre-scaled) in shared memory; invalid rows are zero. 8 elements per
  // load when q is 16-byte aligned (its rows are: D % 8 == 0), else one at a time.
  const TA* q = static_cast<const TA*>(p.q);
  if (reinterpret_cast<uintptr_t>(q) % 16 == 0) {
    for (int idx = tid; idx < kRowsPerBlock * D / 8; idx += kThreads) {
      const int r = idx / (D / 8), t0 = idx % (D / 8) * 8, row = row0 + r;
      const int i = row / group, h = hk * group + row % group;
      float x[8] = {};
      if (row < n_rows && i < q_len) load8(q + ((int64_t(b) * p.s_q + i) * p.num_heads + h) * D + t0, x);
#pragma unroll
      for (int k = 0; k < 8; ++k) q_s[r][t0 + k] = x[k] * scale;
    }
  } else {
    for (int idx = tid; idx < kRowsPerBlock * D; idx += kThreads) {
      const int r = idx / D, t = idx % D, row = row0 + r;
      const int i = row / group, h = hk * group + row % group;
      float x = 0.f;
      if (row < n_rows && i < q_len) x = to_float(q[((int64_t(b) * p.s_q + i) * p.num_heads + h) * D + t]) * scale;
      q_s[r][t] = x;
    }
  }

  // Per-row state of this warp. qpos = absolute position of the row's query (-1: invalid row).
  int64_t qpos[kRowsPerWarp];
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDPL];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int row = row0 + rr * kWarps + warp;
    const int i = row / group;
    qpos[rr] = (row < n_rows && i < q_len) ? (p.causal ? past + i : kv_len - 1) : -1;
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int k = 0; k < kDPL; ++k) acc[rr][k] = 0.f;
  }

  for (int64_t tile = key_begin; tile < key_stop; tile += kKeyTile) {
    __syncthreads();  // q_s written / previous tile consumed
    stage();
    __syncthreads();
    if (tile + kKeyTile < key_stop) fetch(tile + kKeyTile);  // in flight during this tile's work
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = rr * kWarps + warp;
      const int64_t pos = tile + lane;
      float s = -INFINITY;
      if (pos < key_stop && pos <= qpos[rr]) {
        s = 0.f;
#pragma unroll 8
        for (int t = 0; t < D; ++t) s += q_s[r][t] * k_s[lane][t];
      }
      const float tile_max = warp_max(s);
      if (tile_max == -INFINITY) continue;  // no visible key in this tile (warp-uniform)
      const float m_new = fmaxf(m[rr], tile_max);
      const float corr = expf(m[rr] - m_new);  // 0 when m was -inf
      const float pr = s == -INFINITY ? 0.f : expf(s - m_new);
      l[rr] = l[rr] * corr + warp_sum(pr);
      m[rr] = m_new;
#pragma unroll
      for (int k = 0; k < kDPL; ++k) acc[rr][k] *= corr;
      for (int j = 0; j < kKeyTile; ++j) {
        const float pj = __shfl_sync(0xffffffffu, pr, j);
#pragma unroll
        for (int k = 0; k < kDPL; ++k) {
          const int t = lane + 32 * k;
          if (t < D) acc[rr][k] += pj * v_s[j][t];
        }
      }
    }
  }

  // Write results.
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int row = row0 + rr * kWarps + warp;
    if (row >= n_rows) continue;
    const int i = row / group, h = hk * group + row % group;
    if (num_splits == 1) {
      TA* o = static_cast<TA*>(p.out) + ((int64_t(b) * p.s_q + i) * p.num_heads + h) * D;
      const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;  // padding rows: l = 0 -> zeros
#pragma unroll
      for (int k = 0; k < kDPL; ++k) {
        const int t = lane + 32 * k;
        if (t < D) o[t] = from_float<TA>(acc[rr][k] * inv);
      }
    } else {
      const int64_t slot = (int64_t(b) * p.num_heads + h) * num_splits + split;
#pragma unroll
      for (int k = 0; k < kDPL; ++k) {
        const int t = lane + 32 * k;
        if (t < D) partial_o[slot * D + t] = acc[rr][k];
      }
      if (lane == 0) {
        partial_ml[slot * 2] = m[rr];
        partial_ml[slot * 2 + 1] = l[rr];
      }
    }
  }
}

// grid (H, B), block D: out[b, h] = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s, M = max_s m_s.
template <typename TA>
__global__ void combine_kernel(const float* partial_o,   // (B, H, num_splits, D)
                               const float* partial_ml,  // (B, H, num_splits, 2)
                               int num_heads, int head_dim, int num_splits,
                               TA* out) {  // (B, H, D)
  cuda::allow_dependent_launch();
  const int h = blockIdx.x, b = blockIdx.y, t = threadIdx.x;
  const int64_t base = (int64_t(b) * num_heads + h) * num_splits;
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s)
    if (partial_ml[(base + s) * 2 + 1] > 0.f) mx = fmaxf(mx, partial_ml[(base + s) * 2]);
  float num = 0.f, den = 0.f;
  for (int s = 0; s < num_splits; ++s) {
    const float ms = partial_ml[(base + s) * 2], ls = partial_ml[(base + s) * 2 + 1];
    if (ls > 0.f) {
      const float w = expf(ms - mx);
      num += w * partial_o[(base + s) * head_dim + t];
      den += w * ls;
    }
  }
  out[(int64_t(b) * num_heads + h) * head_dim + t] = from_float<TA>(den > 0.f ? num / den : 0.f);
}

// ---------------------------------------------------------------- dispatch

template <typename TA, typename TC>
Status launch_append(const KvAppendParams& p, cudaStream_t stream) {
  const int64_t rows = int64_t(p.batch) * p.s_new * p.cache.num_kv_heads;
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  if (blocks > 0x7fffffff) return Status::Invalid("kv_append: B x S_new x H_kv too large for one launch");
  append_kernel<TA, TC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

template <int D, typename TA, typename TC>
Status launch_attention(const AttentionParams& p, float scale, int splits, float* ws, cudaStream_t stream) {
  const int group = p.num_heads / p.cache.num_kv_heads;
  const int64_t tiles = (int64_t(p.s_q) * group + kRowsPerBlock - 1) / kRowsPerBlock;
  const dim3 grid(static_cast<unsigned>(tiles), p.cache.num_kv_heads, p.batch * splits);
  float* partial_o = ws;
  float* partial_ml = ws ? ws + int64_t(p.batch) * p.num_heads * splits * D : nullptr;
  attention_kernel<D, TA, TC><<<grid, kThreads, 0, stream>>>(p, scale, splits, partial_o, partial_ml);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  if (splits > 1) {
    combine_kernel<TA><<<dim3(p.num_heads, p.batch), D, 0, stream>>>(partial_o, partial_ml, p.num_heads, D, splits,
                                                                     static_cast<TA*>(p.out));
    RSVLM_CUDA_CHECK(cudaGetLastError());
  }
  return Status::Ok();
}

template <typename TA, typename TC>
Status dispatch_head_dim(const AttentionParams& p, float scale, int splits, float* ws, cudaStream_t stream) {
  switch (p.cache.head_dim) {
    case 64:
      return launch_attention<64, TA, TC>(p, scale, splits, ws, stream);
    case 80:
      return launch_attention<80, TA, TC>(p, scale, splits, ws, stream);
    case 96:
      return launch_attention<96, TA, TC>(p, scale, splits, ws, stream);
    case 128:
      return launch_attention<128, TA, TC>(p, scale, splits, ws, stream);
    default:
      return Status::Invalid("unsupported head_dim " + std::to_string(p.cache.head_dim));
  }
}

}  // namespace

// Split count for num_splits = 0: about two blocks per SM, each split at least 256 keys.
static int attention_auto_splits(int batch, int num_kv_heads, int64_t max_kv_len) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 1;
  const int64_t blocks = std::max<int64_t>(int64_t(batch) * num_kv_heads, 1);
  const int64_t want = (2 * int64_t(sms) + blocks - 1) / blocks;  // about two blocks per SM
  const int64_t by_len = std::max<int64_t>(max_kv_len / kMinKeysPerSplit, 1);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, by_len, kMaxSplits})));
}

Status kv_append_cuda(const KvAppendParams& p, void* stream_ptr) {
  Status st = kv_append_validate(p, /*cuda=*/true);
  if (!st.ok()) return st;
  if (p.batch == 0 || p.s_new == 0) return Status::Ok();
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool i8 = p.cache.dtype == DType::i8;
  if (p.act_dtype == DType::f16)
    return i8 ? launch_append<__half, int8_t>(p, stream) : launch_append<__half, __half>(p, stream);
  return i8 ? launch_append<__nv_bfloat16, int8_t>(p, stream) : launch_append<__nv_bfloat16, __nv_bfloat16>(p, stream);
}

Status attention_cuda(const AttentionParams& p, void* stream_ptr) {
  Status st = attention_validate(p, /*cuda=*/true);
  if (!st.ok()) return st;
  if (p.batch == 0 || p.s_q == 0) return Status::Ok();
  if (p.cache.num_kv_heads > 65535 || p.batch > 65535)
    return Status::Invalid("attention: B and H_kv must be <= 65535 for one CUDA launch; split the batch");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (reinterpret_cast<uintptr_t>(p.cache.k) % 16 != 0 || reinterpret_cast<uintptr_t>(p.cache.v) % 16 != 0)
    return Status::Invalid(
        "attention: k_cache and v_cache must start at a 16-byte aligned address (the kernel "
        "loads 8 elements at a time); pass freshly allocated caches, not offset views");
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(float(p.cache.head_dim));
  // Split-KV only for decode; lengths live on the device, so the cache capacity bounds them.
  int splits = 1;
  if (p.s_q == 1) {
    splits = p.num_splits > 0 ? p.num_splits : attention_auto_splits(p.batch, p.cache.num_kv_heads, p.cache.capacity());
    const int64_t max_useful = (p.cache.capacity() + kKeyTile - 1) / kKeyTile;
    splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(splits, max_useful)));
    if (int64_t(p.batch) * splits > 65535) splits = std::max(1, 65535 / p.batch);
  }
  float* ws = nullptr;
  bool owned = false;
  if (splits > 1) {
    const int64_t need = attention_workspace_floats(p.batch, p.num_heads, p.cache.head_dim, splits);
    if (p.workspace) {
      if (p.workspace_floats < need)
        return Status::Invalid("attention workspace holds " + std::to_string(p.workspace_floats) + " floats but " +
                               std::to_string(splits) + " splits need " + std::to_string(need) +
                               " (see attention_workspace_floats)");
      ws = p.workspace;
    } else if (cudaMallocAsync(reinterpret_cast<void**>(&ws), need * sizeof(float), stream) == cudaSuccess) {
      owned = true;
    } else {
      // No stream-ordered allocator (or no memory): run unsplit, which needs no workspace.
      (void)cudaGetLastError();
      ws = nullptr;
      splits = 1;
    }
  }
  const bool i8 = p.cache.dtype == DType::i8;
  if (p.act_dtype == DType::f16)
    st = i8 ? dispatch_head_dim<__half, int8_t>(p, scale, splits, ws, stream)
            : dispatch_head_dim<__half, __half>(p, scale, splits, ws, stream);
  else
    st = i8 ? dispatch_head_dim<__nv_bfloat16, int8_t>(p, scale, splits, ws, stream)
            : dispatch_head_dim<__nv_bfloat16, __nv_bfloat16>(p, scale, splits, ws, stream);
  if (owned) RSVLM_CUDA_CHECK(cudaFreeAsync(ws, stream));
  return st;
}

}  // namespace rsvlm_edge
