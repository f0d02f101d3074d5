// kv_attention fast CPU path (thread pool): KV-cache append and causal attention in fp32, one
// (sequence, query, KV head) work item at a time; the G query heads of a group share each K/V row
// read. Prefill and decode on an fp32 cache with the avx512vnni kernel set run 16 (query, head) rows per work
// item instead (attend_block_avx512, D 64/80/96/128, G dividing 16; decode fills G of the 16 rows: TinyLlama's
// shape, 570 keys, 2 threads: 155 -> 86 us per call against the G-row avx2 body); with bf16_products on the amx kernel
// set, AMX-BF16 tiles (attend_item_amx, D 64/128). Tested against
// kv_append_reference / attention_reference (kv_attention_ref.cpp) on every kernel set.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <immintrin.h>

#include "common/amx_tiles.h"
#include "common/cpu_exp_simd.h"
#endif

#include "common/cpu_math.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/kv_attention.h"
#include "rsvlm_edge/rope.h"
#include "rsvlm_edge/linear.h"

namespace rsvlm_edge {
namespace {

// Index of the cache row (token `pos` of KV head h of sequence b) in units of D elements.
inline int64_t row_index(const KvCacheView& c, int b, int h, int64_t pos) {
  if (c.paged()) {
    const int64_t page = c.page_table[int64_t(b) * c.max_pages_per_seq + pos / kKvPageSize];
    return (page * c.num_kv_heads + h) * kKvPageSize + pos % kKvPageSize;
  }
  return (int64_t(b) * c.num_kv_heads + h) * c.s_max + pos;
}

// Symmetric int8 quantisation of one row: dst = round(src * (127 / max|src|)), returns the scale max|src| / 127.
float quantise_row(const float* src, int8_t* dst, int d) {
  float amax = 0.f;
  for (int i = 0; i < d; ++i) amax = std::max(amax, std::fabs(src[i]));
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  for (int i = 0; i < d; ++i) {
    const float r = std::nearbyint(src[i] * inv);
    dst[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, r)));
  }
  return amax / 127.f;
}

// Dot product of q (D) with cache row `row`, dequantised for int8.
inline float dot_row(const KvCacheView& c, const float* q, int64_t row) {
  const int d = c.head_dim;
  if (c.dtype == DType::i8) return cpu::dot(q, static_cast<const int8_t*>(c.k) + row * d, d) * c.k_scale[row];
  return cpu::dot(q, static_cast<const float*>(c.k) + row * d, d);
}

// acc (D) += w * v_row (dequantised for int8).
inline void axpy_row(const KvCacheView& c, float w, int64_t row, float* acc) {
  const int d = c.head_dim;
  if (c.dtype == DType::i8) {
    const int8_t* v = static_cast<const int8_t*>(c.v) + row * d;
    const float ws = w * c.v_scale[row];
    for (int i = 0; i < d; ++i) acc[i] += ws * float(v[i]);
    return;
  }
  const float* v = static_cast<const float*>(c.v) + row * d;
  for (int i = 0; i < d; ++i) acc[i] += w * v[i];
}

// One work item's softmax(q k^T) v for the G query heads of a KV head over keys [0, n_keys), in three
// passes: scores and their row maxima, then the weights exp(s - m) and their sums, then the weighted
// sum of V rows. qs (G, D) are the scaled queries; scores (G, stride >= n_keys), acc (G, D), m (G), sum (G)
// are scratch; out (G, D).
struct Item {
  const KvCacheView* c;
  int b, hk, group, d;
  int64_t n_keys, stride;
  const float* qs;
  float *scores, *acc, *m, *sum, *out;
};

void attend_portable(const Item& it) {
  const KvCacheView& c = *it.c;
  const int group = it.group, d = it.d;
  std::fill(it.m, it.m + group, -std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < it.n_keys; ++j) {
    const int64_t row = row_index(c, it.b, it.hk, j);
    for (int g = 0; g < group; ++g) {
      const float sc = dot_row(c, it.qs + int64_t(g) * d, row);
      it.scores[g * it.stride + j] = sc;
      it.m[g] = std::max(it.m[g], sc);
    }
  }
  for (int g = 0; g < group; ++g) {
    float* sg = it.scores + g * it.stride;
    float total = 0.f;
    for (int64_t j = 0; j < it.n_keys; ++j) total += (sg[j] = std::exp(sg[j] - it.m[g]));
    it.sum[g] = total;
  }
  std::fill(it.acc, it.acc + int64_t(group) * d, 0.f);
  for (int64_t j = 0; j < it.n_keys; ++j) {
    const int64_t row = row_index(c, it.b, it.hk, j);
    for (int g = 0; g < group; ++g) axpy_row(c, it.scores[g * it.stride + j], row, it.acc + int64_t(g) * d);
  }
  for (int g = 0; g < group; ++g) {
    const float inv = 1.f / it.sum[g];
    for (int t = 0; t < d; ++t) it.out[int64_t(g) * d + t] = it.acc[int64_t(g) * d + t] * inv;
  }
}

#if RSVLM_X86
#define RSVLM_ATT_AVX2 __attribute__((target("avx2,fma")))

RSVLM_ATT_AVX2 inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// attend_portable for an fp32 cache and D % 8 == 0: 8-lane FMA dots and axpys, 8-lane exp.
RSVLM_ATT_AVX2 void attend_avx2(const Item& it) {
  const KvCacheView& c = *it.c;
  const int group = it.group, d = it.d;
  const float* kc = static_cast<const float*>(c.k);
  const float* vc = static_cast<const float*>(c.v);
  std::fill(it.m, it.m + group, -std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < it.n_keys; ++j) {
    const float* krow = kc + row_index(c, it.b, it.hk, j) * d;
    for (int g = 0; g < group; ++g) {
      const float* q = it.qs + int64_t(g) * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int t = 0;
      for (; t + 16 <= d; t += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + t), _mm256_loadu_ps(krow + t), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + t + 8), _mm256_loadu_ps(krow + t + 8), a1);
      }
      if (t < d) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + t), _mm256_loadu_ps(krow + t), a0);
      const float sc = hsum_ps(_mm256_add_ps(a0, a1));
      it.scores[g * it.stride + j] = sc;
      it.m[g] = std::max(it.m[g], sc);
    }
  }
  for (int g = 0; g < group; ++g) {
    float* sg = it.scores + g * it.stride;
    const __m256 mg = _mm256_set1_ps(it.m[g]);
    __m256 tot = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= it.n_keys; j += 8) {
      const __m256 w = cpu::exp_nonpositive_ps(_mm256_sub_ps(_mm256_loadu_ps(sg + j), mg));
      _mm256_storeu_ps(sg + j, w);
      tot = _mm256_add_ps(tot, w);
    }
    float total = hsum_ps(tot);
    if (j < it.n_keys) {  // the last < 8 keys through the same exp, on a padded copy
      alignas(32) float tail[8];
      const int64_t left = it.n_keys - j;
      for (int i = 0; i < 8; ++i) tail[i] = i < left ? sg[j + i] - it.m[g] : -1000.f;
      _mm256_store_ps(tail, cpu::exp_nonpositive_ps(_mm256_load_ps(tail)));
      for (int64_t i = 0; i < left; ++i) total += (sg[j + i] = tail[i]);
    }
    it.sum[g] = total;
  }
  std::fill(it.acc, it.acc + int64_t(group) * d, 0.f);
  for (int64_t j = 0; j < it.n_keys; ++j) {
    const float* vrow = vc + row_index(c, it.b, it.hk, j) * d;
    for (int g = 0; g < group; ++g) {
      const __m256 w = _mm256_set1_ps(it.scores[g * it.stride + j]);
      float* a = it.acc + int64_t(g) * d;
      for (int t = 0; t < d; t += 8)
        _mm256_storeu_ps(a + t, _mm256_fmadd_ps(w, _mm256_loadu_ps(vrow + t), _mm256_loadu_ps(a + t)));
    }
  }
  for (int g = 0; g < group; ++g) {
    const __m256 inv = _mm256_set1_ps(1.f / it.sum[g]);
    for (int t = 0; t < d; t += 8)
      _mm256_storeu_ps(it.out + int64_t(g) * d + t, _mm256_mul_ps(_mm256_loadu_ps(it.acc + int64_t(g) * d + t), inv));
  }
}

// ---- Prefill, 16 rows at a time (AVX-512, fp32 cache, D = 16 * NV) ----------------------------------
// A block is 16 (query, head) rows of one KV head: Bq = 16 / G consecutive queries x the G query heads of
// the group, row r = (query i0 + r / G, head r % G). Keys are read once per block instead of once per
// query: the scores are a (16 rows) x (keys) product with the rows in the 16 lanes, each key element
// broadcast against the transposed queries (no horizontal sums), and the causal limit of each row is a
// lane mask. Then exp(s - m) per key on 16 lanes, and P V with the accumulators of RB rows in registers.
constexpr int kBlockRows = 16;

struct PrefillBlock {
  const KvCacheView* c;
  int b, hk;
  int64_t n_max;          // keys [0, n_max): the block's longest causal range
  const int32_t* limit;   // (16) keys of row r: [0, limit[r]); 0 for rows without a query
  const float* qt;        // (D, 16) scaled queries, transposed
  float* st;              // (round4(n_max), 16) scores, then weights
  float* const* out_row;  // (16) output row of r (D floats), nullptr for rows without a query
};

// Keys ahead whose K / V rows the 16-row body prefetches into L1: a decode step reads the cache from DRAM (the
// weights streamed since the layer's last step evicted it). Measured in the TinyLlama-shape w8 decode step on the
// AMX Xeon (570 keys, 2 threads): none 105 us per layer, 8 keys 88, 16 keys 89, 32 keys 94; 512-token prefill
// attention unchanged (5.9-6.1 ms).
constexpr int kAttPrefetchKeys = 16;

template <int D>
inline void prefetch_row(const float* row) {  // the D floats of one cache row (D * 4 / 64 lines)
  for (int t = 0; t < D; t += 16) _mm_prefetch(reinterpret_cast<const char*>(row + t), _MM_HINT_T0);
}

template <int NV>
RSVLM_AVX512_FMA void attend_block_avx512(const PrefillBlock& blk) {
  constexpr int D = 16 * NV;
  constexpr int RB = NV <= 6 ? 4 : 2;  // rows whose P V accumulators (RB x NV zmm) stay in registers
  const KvCacheView& c = *blk.c;
  const float* kc = static_cast<const float*>(c.k);
  const float* vc = static_cast<const float*>(c.v);
  const __m512i limit = _mm512_loadu_si512(blk.limit);
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m = neg_inf;
  // Scores, 4 keys per step (keys past n_max are computed from row 0's K row and masked off).
  for (int64_t j = 0; j < blk.n_max; j += 4) {
    const float* kr[4];
    for (int k = 0; k < 4; ++k) kr[k] = kc + row_index(c, blk.b, blk.hk, j + k < blk.n_max ? j + k : 0) * D;
    if (j + kAttPrefetchKeys + 4 <= blk.n_max)  // the K rows kAttPrefetchKeys keys on, into L1 (decode reads them from DRAM)
      for (int k = 0; k < 4; ++k) prefetch_row<D>(kc + row_index(c, blk.b, blk.hk, j + kAttPrefetchKeys + k) * D);
    // Two accumulators per key (even / odd t): eight independent FMA chains, as many as two FMA ports with a
    // 4-cycle latency keep busy. Measured (TinyLlama layer, 512-token prefill, 2 threads, AMX Xeon, alternated):
    // 6.49 -> 6.05 ms median; decode within noise (its time is the cache read, not these chains).
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int t = 0; t < D; t += 2) {
      const __m512 qd = _mm512_loadu_ps(blk.qt + t * kBlockRows);
      const __m512 qe = _mm512_loadu_ps(blk.qt + (t + 1) * kBlockRows);
      a0 = _mm512_fmadd_ps(qd, _mm512_set1_ps(kr[0][t]), a0);
      a1 = _mm512_fmadd_ps(qd, _mm512_set1_ps(kr[1][t]), a1);
      a2 = _mm512_fmadd_ps(qd, _mm512_set1_ps(kr[2][t]), a2);
      a3 = _mm512_fmadd_ps(qd, _mm512_set1_ps(kr[3][t]), a3);
      b0 = _mm512_fmadd_ps(qe, _mm512_set1_ps(kr[0][t + 1]), b0);
      b1 = _mm512_fmadd_ps(qe, _mm512_set1_ps(kr[1][t + 1]), b1);
      b2 = _mm512_fmadd_ps(qe, _mm512_set1_ps(kr[2][t + 1]), b2);
      b3 = _mm512_fmadd_ps(qe, _mm512_set1_ps(kr[3][t + 1]), b3);
    }
    const __m512 acc[4] = {_mm512_add_ps(a0, b0), _mm512_add_ps(a1, b1), _mm512_add_ps(a2, b2), _mm512_add_ps(a3, b3)};
    for (int k = 0; k < 4; ++k) {
      const __mmask16 live = _mm512_cmplt_epi32_mask(_mm512_set1_epi32(int(j + k)), limit);
      const __m512 sc = _mm512_mask_blend_ps(live, neg_inf, acc[k]);
      m = _mm512_max_ps(m, sc);
      _mm512_storeu_ps(blk.st + (j + k) * kBlockRows, sc);
    }
  }
  // Weights exp(s - m) and their sums (a masked score gives exp(-inf) = 0).
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < blk.n_max; ++j) {
    const __m512 w = cpu::exp_nonpositive_ps512(_mm512_sub_ps(_mm512_loadu_ps(blk.st + j * kBlockRows), m));
    _mm512_storeu_ps(blk.st + j * kBlockRows, w);
    sum = _mm512_add_ps(sum, w);
  }
  alignas(64) float inv[kBlockRows];
  _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.f), sum));
  // P V for RB rows at a time, up to the longest range among them.
  for (int r0 = 0; r0 < kBlockRows; r0 += RB) {
    int64_t n_keys = 0;
    for (int r = r0; r < r0 + RB; ++r) n_keys = std::max<int64_t>(n_keys, blk.limit[r]);
    if (n_keys == 0) continue;
    __m512 acc[RB][NV];
    for (int r = 0; r < RB; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n_keys; ++j) {
      const float* vrow = vc + row_index(c, blk.b, blk.hk, j) * D;
      if (r0 == 0 && j + kAttPrefetchKeys < n_keys) prefetch_row<D>(vc + row_index(c, blk.b, blk.hk, j + kAttPrefetchKeys) * D);
      __m512 vv[NV];
      for (int v = 0; v < NV; ++v) vv[v] = _mm512_loadu_ps(vrow + 16 * v);
      for (int r = 0; r < RB; ++r) {
        const __m512 w = _mm512_set1_ps(blk.st[j * kBlockRows + r0 + r]);
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(w, vv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < RB; ++r) {
      float* o = blk.out_row[r0 + r];
      if (o == nullptr) continue;
      const __m512 scale = _mm512_set1_ps(inv[r0 + r]);
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(o + 16 * v, _mm512_mul_ps(acc[r][v], scale));
    }
  }
}

using BlockFn = void (*)(const PrefillBlock&);
// The 16-row prefill body for head_dim d, or nullptr (then the per-query path runs): D 64, 80, 96, 128.
BlockFn choose_block(int d) {
  switch (d) {
    case 64: return attend_block_avx512<4>;
    case 80: return attend_block_avx512<5>;
    case 96: return attend_block_avx512<6>;
    case 128: return attend_block_avx512<8>;
    default: return nullptr;
  }
}
#endif

// The attention body for this cache and CPU: the AVX2 one for an fp32 cache with D % 8 == 0 when the
// active CPU kernel set is avx2 or better (set_cpu_kernels), else the portable one.
using AttendFn = void (*)(const Item&);
AttendFn choose_attend(const KvCacheView& c) {
#if RSVLM_X86
  if (c.dtype == DType::f32 && c.head_dim % 8 == 0 && cpu_kernels() != CpuKernels::portable) return attend_avx2;
#endif
  return attend_portable;
}

}  // namespace

Status kv_append_cpu(const KvAppendParams& p) {
  if (p.rope.positions != nullptr) return kv_append_with_rope(p, rope_cpu, kv_append_cpu);
  RSVLM_RETURN_IF_ERROR(kv_append_validate_host(p));
  const KvCacheView& c = p.cache;
  const int hk = c.num_kv_heads, d = c.head_dim;
  const float* kn = static_cast<const float*>(p.k_new);  // (B, S_new, H_kv, D)
  const float* vn = static_cast<const float*>(p.v_new);  // (B, S_new, H_kv, D)
  // Items (b, s, h) in row-major order, i = (b * S_new + s) * H_kv + h.
  const int64_t items = int64_t(p.batch) * p.s_new * hk;
  host::parallel_for(items, 64, host::threads_for(items * d), [&](int64_t i, int) {
    const int h = int(i % hk), s = int((i / hk) % p.s_new), b = int(i / (int64_t(hk) * p.s_new));
    if (s >= (p.new_lens ? p.new_lens[b] : p.s_new)) return;
    const int64_t src = i * d;
    const int64_t row = row_index(c, b, h, int64_t(p.start_pos[b]) + s);
    if (c.dtype == DType::i8) {
      c.k_scale[row] = quantise_row(kn + src, static_cast<int8_t*>(c.k) + row * d, d);
      c.v_scale[row] = quantise_row(vn + src, static_cast<int8_t*>(c.v) + row * d, d);
    } else {
      std::copy(kn + src, kn + src + d, static_cast<float*>(c.k) + row * d);
      std::copy(vn + src, vn + src + d, static_cast<float*>(c.v) + row * d);
    }
  });
  return Status::Ok();
}

#if RSVLM_X86
// Block `blk` of sequence b and KV head hk for the 16-row bodies (avx512 and amx): row r = (query blk * Bq + r / G,
// head hk * G + r % G), Bq = 16 / G. limit[r]: the row's keys are [0, limit[r]) (0 for a row without a query);
// q_row[r] / out_row[r]: its query and output (D floats), nullptr without a query. Padding rows (past q_lens[b],
// inside S_q) are zeroed in out here. Returns the longest limit.
int64_t block_rows(const AttentionParams& p, int b, int hk, int64_t blk, int32_t* limit, const float** q_row,
                   float** out_row) {
  const int h_q = p.num_heads, d = p.cache.head_dim, group = h_q / p.cache.num_kv_heads, bq = kBlockRows / group;
  const int64_t ql = p.q_lens ? p.q_lens[b] : p.s_q, past = int64_t(p.kv_lens[b]) - ql;
  const float* q = static_cast<const float*>(p.q);  // (B, S_q, H, D)
  float* out = static_cast<float*>(p.out);          // (B, S_q, H, D)
  int64_t n_max = 0;
  for (int r = 0; r < kBlockRows; ++r) {
    const int64_t i = blk * bq + r / group;
    const int64_t off = ((int64_t(b) * p.s_q + i) * h_q + int64_t(hk) * group + r % group) * d;
    limit[r] = 0;
    q_row[r] = nullptr;
    out_row[r] = nullptr;
    if (i < ql) {
      limit[r] = int32_t(p.causal ? past + i + 1 : past + ql);  // causal: keys [0, past + i]; else all
      n_max = std::max<int64_t>(n_max, limit[r]);
      q_row[r] = q + off;
      out_row[r] = out + off;
    } else if (i < p.s_q) {
      std::fill(out + off, out + off + d, 0.f);  // padding row
    }
  }
  return n_max;
}

// attention_cpu's prefill over 16-row blocks: work item (sequence b, block of Bq = 16 / G queries, KV
// head hk), item = (b * n_blocks + block) * H_kv + hk, one per chunk (later blocks have longer ranges).
Status attention_blocks_cpu(const AttentionParams& p, BlockFn block, float scale, int64_t max_keys, int threads) {
  const KvCacheView& c = p.cache;
  const int h_q = p.num_heads, h_kv = c.num_kv_heads, d = c.head_dim, group = h_q / h_kv;
  const int bq = kBlockRows / group;
  const int64_t n_blocks = (int64_t(p.s_q) + bq - 1) / bq;
  // Per thread: qt (D, 16) and scores (round4(max_keys), 16).
  const int64_t keys4 = (max_keys + 3) / 4 * 4;  // max_keys <= capacity (an int)
  const int64_t per_thread = host::checked_mul(kBlockRows, keys4 + d);
  const int64_t items = int64_t(p.batch) * n_blocks * h_kv;
  std::vector<float> scratch;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(scratch, per_thread < 0 ? std::numeric_limits<int64_t>::max() : per_thread,
                                            threads, "attention"));
  host::parallel_for(items, 1, threads, [&](int64_t item, int worker) {
    float* const qt = scratch.data() + int64_t(worker) * per_thread;  // (D, 16)
    float* const st = qt + int64_t(d) * kBlockRows;                    // (keys4, 16)
    const int hk = int(item % h_kv);
    const int64_t blk_i = (item / h_kv) % n_blocks;
    const int b = int(item / (int64_t(h_kv) * n_blocks));
    alignas(64) int32_t limit[kBlockRows];
    const float* q_row[kBlockRows];
    float* out_row[kBlockRows];
    const int64_t n_max = block_rows(p, b, hk, blk_i, limit, q_row, out_row);
    if (n_max == 0) return;
    for (int r = 0; r < kBlockRows; ++r)
      for (int t = 0; t < d; ++t) qt[int64_t(t) * kBlockRows + r] = q_row[r] ? q_row[r][t] * scale : 0.f;
    block(PrefillBlock{&c, b, hk, n_max, limit, qt, st, out_row});
  });
  return Status::Ok();
}
#endif

#if RSVLM_X86
// ---- Prefill with bf16 products on AMX tiles (kernel set amx, fp32 cache, D 64 or 128) -------------
// Allowed by AttentionParams::bf16_products. One work item per (sequence b, KV head hk): its keys and
// values are converted to bf16 once into AMX B layouts, then every block of 16 (query, head) rows (the
// rows of attention_blocks_cpu) runs
//   S (16, keys) = Q (16, D) K^T   tdpbf16ps: Q rows as A tiles (16 x 32 bf16, kept), K as B tiles
//                                  (16 d-pairs x 16 keys x 2)
//   P = exp(S - rowmax) (masked keys 0) in fp32, sums in fp32, P rounded to bf16 (16 x keys32)
//   O (16, D) = P V                tdpbf16ps: P as A tiles (16 x 32 keys), V as B tiles (16 key-pairs x
//                                  16 d x 2), four 16-wide d blocks of O in C tiles per pass
// and out rows O / sum. Keys are padded with zeros to 16 (K) and 32 (V, P); padded scores are masked.
#define RSVLM_ATT_AMX \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,avx512bf16,amx-tile,amx-bf16")))

constexpr int kAmxRows = cpu::kAmxTileRows;    // rows of every tile
constexpr int kAmxBytes = cpu::kAmxTileBytes;  // bytes per tile row (32 bf16 / 16 fp32)

// 16 floats -> 16 bf16, round to nearest even (vcvtneps2bf16).
RSVLM_ATT_AMX inline __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

// What the work items of one call share, and the parts of each thread's scratch.
struct AmxAttention {
  const AttentionParams* p;
  int d;
  int64_t n_blocks;  // blocks of 16 (query, head) rows per (b, hk)
  float scale;
  int64_t kb_elems, vb_elems, qa_elems, pa_elems, s_floats, o_floats;  // per-thread scratch parts
};

// One (b, hk) item with head_dim D = 32 * NA (NA = 2 or 4).
template <int NA>
RSVLM_ATT_AMX void attend_item_amx(const AmxAttention& a, int b, int hk, uint16_t* kb, uint16_t* vb, uint16_t* qa,
                                   uint16_t* pa, float* s, float* o) {
  constexpr int D = 32 * NA;
  const AttentionParams& p = *a.p;
  const KvCacheView& c = p.cache;
  const float* kc = static_cast<const float*>(c.k);
  const float* vc = static_cast<const float*>(c.v);
  const int64_t kv = p.kv_lens[b];
  const int64_t k16 = (kv + 15) / 16 * 16, k32 = (kv + 31) / 32 * 32;
  // K (keys16, D) -> kb: chunk of 16 keys j0, d-pair t at kb[((j0 / 16) * (D / 2) + t) * 32 + (j % 16) * 2].
  // V (keys32, D) -> vb: key pair u, d at vb[(u * D + d) * 2 + (j % 2)]. Padding keys are zeros.
  const __m512i interleave = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38,
                                              6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  alignas(64) uint16_t row[D];
  for (int64_t j = 0; j < k16; ++j) {
    if (j < kv) {
      const float* kr = kc + row_index(c, b, hk, j) * D;
      for (int t = 0; t < D; t += 16) _mm256_store_si256(reinterpret_cast<__m256i*>(row + t), to_bf16(_mm512_loadu_ps(kr + t)));
    } else {
      std::fill(row, row + D, uint16_t(0));
    }
    uint32_t* dst = reinterpret_cast<uint32_t*>(kb) + (j / 16) * (D / 2) * 16 + (j % 16);
    const uint32_t* pairs = reinterpret_cast<const uint32_t*>(row);
    for (int t = 0; t < D / 2; ++t) dst[t * 16] = pairs[t];
  }
  for (int64_t j = 0; j < k32; j += 2) {
    uint16_t* dst = vb + (j / 2) * D * 2;
    for (int t = 0; t < D; t += 16) {
      const __m512 v0 = j < kv ? _mm512_loadu_ps(vc + row_index(c, b, hk, j) * D + t) : _mm512_setzero_ps();
      const __m512 v1 = j + 1 < kv ? _mm512_loadu_ps(vc + row_index(c, b, hk, j + 1) * D + t) : _mm512_setzero_ps();
      const __m512i pair = _mm512_permutex2var_epi16(_mm512_castsi256_si512(to_bf16(v0)), interleave,
                                                     _mm512_castsi256_si512(to_bf16(v1)));
      _mm512_storeu_si512(dst + t * 2, pair);
    }
  }
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t blk = 0; blk < a.n_blocks; ++blk) {
    // The block's rows (block_rows), then Q scaled in bf16; rows without a query are zeros with limit 0.
    int32_t limit[kAmxRows];
    const float* q_row[kAmxRows];
    float* out_row[kAmxRows];
    const int64_t n_max = block_rows(p, b, hk, blk, limit, q_row, out_row);
    if (n_max == 0) continue;
    const __m512 sc = _mm512_set1_ps(a.scale);
    for (int r = 0; r < kAmxRows; ++r) {
      uint16_t* qr = qa + r * D;
      if (q_row[r] == nullptr) {
        std::fill(qr, qr + D, uint16_t(0));
        continue;
      }
      for (int t = 0; t < D; t += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + t), to_bf16(_mm512_mul_ps(_mm512_loadu_ps(q_row[r] + t), sc)));
    }
    const int64_t n16 = (n_max + 15) / 16 * 16, n32 = (n_max + 31) / 32 * 32;
    // S = Q K^T over n16 keys: A tiles 2..2+NA-1 hold Q, C tiles 0 and 1 two key chunks, B tiles 6 and 7.
    _tile_loadd(2, qa, D * 2);
    _tile_loadd(3, qa + 32, D * 2);
    if (NA == 4) {
      _tile_loadd(4, qa + 64, D * 2);
      _tile_loadd(5, qa + 96, D * 2);
    }
    const int64_t lds = n16 * 4;  // bytes per row of s
    for (int64_t j0 = 0; j0 < n16; j0 += 32) {
      const bool two = j0 + 16 < n16;
      const uint16_t* k0 = kb + (j0 / 16) * (D / 2) * 32;
      const uint16_t* k1 = k0 + (D / 2) * 32;
      _tile_zero(0);
      _tile_zero(1);
      _tile_loadd(6, k0, kAmxBytes);
      _tile_dpbf16ps(0, 2, 6);
      if (two) {
        _tile_loadd(7, k1, kAmxBytes);
        _tile_dpbf16ps(1, 2, 7);
      }
      _tile_loadd(6, k0 + 16 * 32, kAmxBytes);
      _tile_dpbf16ps(0, 3, 6);
      if (two) {
        _tile_loadd(7, k1 + 16 * 32, kAmxBytes);
        _tile_dpbf16ps(1, 3, 7);
      }
      if (NA == 4) {
        _tile_loadd(6, k0 + 32 * 32, kAmxBytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(6, k0 + 48 * 32, kAmxBytes);
        _tile_dpbf16ps(0, 5, 6);
        if (two) {
          _tile_loadd(7, k1 + 32 * 32, kAmxBytes);
          _tile_dpbf16ps(1, 4, 7);
          _tile_loadd(7, k1 + 48 * 32, kAmxBytes);
          _tile_dpbf16ps(1, 5, 7);
        }
      }
      _tile_stored(0, s + j0, lds);
      if (two) _tile_stored(1, s + j0 + 16, lds);
    }
    // Softmax per row over its keys [0, limit): weights exp(s - m) in fp32, their sum, P in bf16.
    alignas(64) float inv[kAmxRows];
    for (int r = 0; r < kAmxRows; ++r) {
      const float* sr = s + r * n16;
      uint16_t* pr = pa + r * n32;
      const int64_t lim = limit[r];
      __m512 m = _mm512_set1_ps(neg_inf);
      for (int64_t j = 0; j < lim; j += 16) {
        const __mmask16 live = lim - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (lim - j)) - 1);
        m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(neg_inf), live, sr + j));
      }
      const float mr = lim > 0 ? _mm512_reduce_max_ps(m) : 0.f;
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < n32; j += 16) {
        const int64_t left = lim - j;
        const __mmask16 live = left >= 16 ? __mmask16(0xFFFF) : left > 0 ? __mmask16((1u << left) - 1) : __mmask16(0);
        const __m512 w = _mm512_maskz_mov_ps(
            live, cpu::exp_nonpositive_ps512(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, sr + j), _mm512_set1_ps(mr))));
        sum = _mm512_add_ps(sum, w);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), to_bf16(w));
      }
      const float total = _mm512_reduce_add_ps(sum);
      inv[r] = total > 0.f ? 1.f / total : 0.f;
    }
    // O = P V: per pass four 16-wide d blocks in C tiles 0-3; P chunk in tile 4, V in tiles 5-7 (rotating).
    const int64_t ldp = n32 * 2, ldv = int64_t(D) * 4;  // bytes per row of pa / of a vb key-pair row
    for (int d0 = 0; d0 < D; d0 += 64) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t j0 = 0; j0 < n32; j0 += 32) {
        const uint16_t* vr = vb + (j0 / 2) * D * 2 + d0 * 2;
        _tile_loadd(4, pa + j0, ldp);
        _tile_loadd(5, vr, ldv);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, vr + 32, ldv);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(7, vr + 64, ldv);
        _tile_dpbf16ps(2, 4, 7);
        _tile_loadd(5, vr + 96, ldv);
        _tile_dpbf16ps(3, 4, 5);
      }
      _tile_stored(0, o + d0, D * 4);
      _tile_stored(1, o + d0 + 16, D * 4);
      _tile_stored(2, o + d0 + 32, D * 4);
      _tile_stored(3, o + d0 + 48, D * 4);
    }
    for (int r = 0; r < kAmxRows; ++r) {
      if (out_row[r] == nullptr) continue;
      const __m512 sc = _mm512_set1_ps(inv[r]);
      for (int t = 0; t < D; t += 16) _mm512_storeu_ps(out_row[r] + t, _mm512_mul_ps(_mm512_loadu_ps(o + r * D + t), sc));
    }
  }
}

RSVLM_ATT_AMX void attention_amx_item(const AmxAttention& a, int64_t item, char* scratch) {
  cpu::amx_configure_16x64();
  auto* kb = reinterpret_cast<uint16_t*>(scratch);
  uint16_t* vb = kb + a.kb_elems;
  uint16_t* qa = vb + a.vb_elems;
  uint16_t* pa = qa + a.qa_elems;
  float* s = reinterpret_cast<float*>(pa + a.pa_elems);
  float* o = s + a.s_floats;
  const int hk = int(item % a.p->cache.num_kv_heads), b = int(item / a.p->cache.num_kv_heads);
  if (a.d == 64)
    attend_item_amx<2>(a, b, hk, kb, vb, qa, pa, s, o);
  else
    attend_item_amx<4>(a, b, hk, kb, vb, qa, pa, s, o);
  _tile_release();
}

// attention_cpu's prefill with bf16 products on AMX tiles (see above); items (b, hk).
Status attention_amx_cpu(const AttentionParams& p, float scale, int64_t max_keys, int threads) {
  AmxAttention a;
  a.p = &p;
  a.d = p.cache.head_dim;
  const int bq = kAmxRows / (p.num_heads / p.cache.num_kv_heads);  // queries per block
  a.n_blocks = (int64_t(p.s_q) + bq - 1) / bq;
  a.scale = scale;
  const int64_t keys16 = (max_keys + 15) / 16 * 16, keys32 = (max_keys + 31) / 32 * 32;  // longest sequence
  // Every part a multiple of 32 elements (64 bytes), so each starts 64-byte aligned after the first.
  a.kb_elems = keys16 * a.d;
  a.vb_elems = keys32 * a.d;
  a.qa_elems = int64_t(kAmxRows) * a.d;
  a.pa_elems = int64_t(kAmxRows) * keys32;
  a.s_floats = int64_t(kAmxRows) * keys16;
  a.o_floats = int64_t(kAmxRows) * a.d;
  const int64_t bytes =
      2 * (a.kb_elems + a.vb_elems + a.qa_elems + a.pa_elems) + 4 * (a.s_floats + a.o_floats) + 64;
  std::vector<char> scratch;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(scratch, bytes, threads, "attention"));
  const int64_t items = int64_t(p.batch) * p.cache.num_kv_heads;
  host::parallel_for(items, 1, threads, [&](int64_t item, int worker) {
    char* base = scratch.data() + int64_t(worker) * bytes;
    base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
    attention_amx_item(a, item, base);
  });
  return Status::Ok();
}
#endif

// attention_cpu over an int8 cache with the vector kernels: the keys each sequence attends to (its kv_lens[b])
// are dequantised (q * scale, the reference's values) into a contiguous fp32 scratch (B, H_kv, max_keys, D) for
// K and V, and attention_cpu runs on that view: the fp32 kernels (16-row blocks, AVX2 rows) instead of the
// portable int8 loops. Transient memory: 2 x B x H_kv x max_keys x D floats for the call, so only up to
// kMaxDequantBytes (larger spans take the int8 loops: a 7B model's 4k-token layer would need 128 MiB per call).
constexpr int64_t kMaxDequantBytes = int64_t(64) << 20;

static int64_t dequant_bytes(const AttentionParams& p, int64_t max_keys) {
  const int64_t floats = host::checked_mul(host::checked_mul(int64_t(p.batch) * p.cache.num_kv_heads, max_keys),
                                           p.cache.head_dim);
  return floats < 0 || floats > (int64_t(1) << 60) ? -1 : 2 * 4 * floats;
}

static Status attention_int8_via_fp32(const AttentionParams& p, int64_t max_keys, int threads) {
  const KvCacheView& c = p.cache;
  const int h_kv = c.num_kv_heads, d = c.head_dim;
  const int64_t per_seq_head = max_keys * d;  // bounded by dequant_bytes (the caller checked it)
  const int64_t items = int64_t(p.batch) * h_kv;
  std::vector<float> kf, vf;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(kf, per_seq_head, items, "attention"));
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(vf, per_seq_head, items, "attention"));
  host::parallel_for(items, 1, threads, [&](int64_t item, int) {
    const int b = int(item / h_kv), h = int(item % h_kv);
    const int64_t n = std::min<int64_t>(p.kv_lens[b], max_keys);
    for (int64_t pos = 0; pos < n; ++pos) {
      const int64_t row = row_index(c, b, h, pos);
      const int8_t* ks = static_cast<const int8_t*>(c.k) + row * d;
      const int8_t* vs = static_cast<const int8_t*>(c.v) + row * d;
      float* kd = kf.data() + (item * max_keys + pos) * d;
      float* vd = vf.data() + (item * max_keys + pos) * d;
      const float ksc = c.k_scale[row], vsc = c.v_scale[row];
      for (int t = 0; t < d; ++t) {
        kd[t] = float(ks[t]) * ksc;
        vd[t] = float(vs[t]) * vsc;
      }
    }
  });
  AttentionParams f = p;
  f.cache.k = kf.data();
  f.cache.v = vf.data();
  f.cache.k_scale = nullptr;
  f.cache.v_scale = nullptr;
  f.cache.page_table = nullptr;
  f.cache.dtype = DType::f32;
  f.cache.slots = p.batch;
  f.cache.s_max = static_cast<int>(max_keys);
  f.cache.max_pages_per_seq = 0;
  f.bf16_products = false;  // a permission for fp32 caches only (kv_attention.h)
  return attention_cpu(f);
}

Status attention_cpu(const AttentionParams& p) {
  RSVLM_RETURN_IF_ERROR(attention_validate_host(p));
  if (p.batch == 0 || p.s_q == 0) return Status::Ok();
  const KvCacheView& c = p.cache;
  const int h_q = p.num_heads, h_kv = c.num_kv_heads, d = c.head_dim, group = p.num_heads / c.num_kv_heads;
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(float(d));
  const float* q = static_cast<const float*>(p.q);  // (B, S_q, H, D)
  float* out = static_cast<float*>(p.out);          // (B, S_q, H, D)
  // Longest key range of any query (checked <= capacity above): sizes the per-thread score rows.
  int64_t max_keys = 1;
  for (int b = 0; b < p.batch; ++b) max_keys = std::max<int64_t>(max_keys, p.kv_lens[b]);
  const double work = double(p.batch) * double(p.s_q) * double(h_q) * double(max_keys) * double(d);  // no overflow
  const int threads = work < double(host::kMinParallelWork) ? 1 : host::max_threads();
  if (c.dtype == DType::i8 && cpu_kernels() != CpuKernels::portable) {
    const int64_t bytes = dequant_bytes(p, max_keys);
    if (bytes >= 0 && bytes <= kMaxDequantBytes) return attention_int8_via_fp32(p, max_keys, threads);
  }
#if RSVLM_X86
  // Prefill and decode on an fp32 cache with the AVX-512 kernel set: 16-row blocks.
  const BlockFn block = (c.dtype == DType::f32 && group <= kBlockRows && kBlockRows % group == 0 &&
                         cpu_kernels() >= CpuKernels::avx512vnni)
                            ? choose_block(d)
                            : nullptr;
  if (p.bf16_products && c.dtype == DType::f32 && p.s_q > 1 && group <= kBlockRows && kBlockRows % group == 0 &&
      (d == 64 || d == 128) && cpu_kernels() == CpuKernels::amx)
    return attention_amx_cpu(p, scale, max_keys, threads);
  if (block != nullptr) return attention_blocks_cpu(p, block, scale, max_keys, threads);
#endif
  // Per thread: scores (G, max_keys), qs (G, D), acc (G, D), m (G), sum (G); allocated before the region.
  const int64_t per_thread = host::checked_mul(group, max_keys + 2 * int64_t(d) + 2);
  std::vector<float> scratch;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(scratch, per_thread < 0 ? std::numeric_limits<int64_t>::max() : per_thread,
                                            threads, "attention"));
  // Work item (sequence b, query i, KV head hk): per head the arithmetic is the plain
  // softmax(q k^T * scale) v, in key order.
  const AttendFn attend = choose_attend(c);
  // Items (b, i, hk) in row-major order, item = (b * S_q + i) * H_kv + hk, two per chunk.
  const int64_t items = int64_t(p.batch) * p.s_q * h_kv;
  host::parallel_for(items, 2, threads, [&](int64_t item, int worker) {
    float* const scores = scratch.data() + int64_t(worker) * per_thread;  // (G, max_keys)
    float* const qs = scores + int64_t(group) * max_keys;                 // (G, D)
    float* const acc = qs + int64_t(group) * d;                           // (G, D)
    float* const m = acc + int64_t(group) * d;                            // (G)
    float* const sum = m + group;                                         // (G)
    const int hk = int(item % h_kv), i = int((item / h_kv) % p.s_q), b = int(item / (int64_t(h_kv) * p.s_q));
    const int64_t off = ((int64_t(b) * p.s_q + i) * h_q + int64_t(hk) * group) * d;  // head hk * G
    const int ql = p.q_lens ? p.q_lens[b] : p.s_q;
    if (i >= ql) {  // padding row
      std::fill(out + off, out + off + int64_t(group) * d, 0.f);
      return;
    }
    const int64_t n_keys = p.causal ? int64_t(p.kv_lens[b]) - ql + i + 1 : int64_t(p.kv_lens[b]);  // causal: [0, past + i]
    for (int64_t t = 0; t < int64_t(group) * d; ++t) qs[t] = q[off + t] * scale;
    attend(Item{&c, b, hk, group, d, n_keys, max_keys, qs, scores, acc, m, sum, out + off});
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
