// kv_attention fast CPU path (thread pool): KV-cache append and causal attention in fp32, one
// (sequence, query, KV head) work item at a time; the G query heads of a group share each K/V row
// read. Prefill on an fp32 cache with the avx512vnni kernel set runs 16 (query, head) rows per work
// item instead (attend_block_avx512, D 64/80/96/128, G dividing 16). Tested against
// kv_append_reference / attention_reference (kv_attention_ref.cpp) on every kernel set.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <immintrin.h>

#include "common/cpu_exp_simd.h"
#endif

#include "common/cpu_math.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/kv_attention.h"
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
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int t = 0; t < D; ++t) {
      const __m512 qd = _mm512_loadu_ps(blk.qt + t * kBlockRows);
      a0 = _mm512_fmadd_ps(qd, _mm512_set1_ps(kr[0][t]), a0);
      a1 = _mm512_fmadd_ps(qd, _mm512_set1_ps(kr[1][t]), a1);
      a2 = _mm512_fmadd_ps(qd, _mm512_set1_ps(kr[2][t]), a2);
      a3 = _mm512_fmadd_ps(qd, _mm512_set1_ps(kr[3][t]), a3);
    }
    const __m512 acc[4] = {a0, a1, a2, a3};
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
// attention_cpu's prefill over 16-row blocks: work item (sequence b, block of Bq = 16 / G queries, KV
// head hk), item = (b * n_blocks + block) * H_kv + hk, one per chunk (later blocks have longer ranges).
Status attention_blocks_cpu(const AttentionParams& p, BlockFn block, float scale, int64_t max_keys, int threads) {
  const KvCacheView& c = p.cache;
  const int h_q = p.num_heads, h_kv = c.num_kv_heads, d = c.head_dim, group = h_q / h_kv;
  const int bq = kBlockRows / group;
  const int64_t n_blocks = (int64_t(p.s_q) + bq - 1) / bq;
  const float* q = static_cast<const float*>(p.q);  // (B, S_q, H, D)
  float* out = static_cast<float*>(p.out);          // (B, S_q, H, D)
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
    const int ql = p.q_lens ? p.q_lens[b] : p.s_q;
    const int64_t past = int64_t(p.kv_lens[b]) - ql;
    alignas(64) int32_t limit[kBlockRows];
    float* out_row[kBlockRows];
    int64_t n_max = 0;
    for (int r = 0; r < kBlockRows; ++r) {
      const int64_t i = blk_i * bq + r / group;
      const int g = r % group;
      const int64_t off = ((int64_t(b) * p.s_q + i) * h_q + int64_t(hk) * group + g) * d;
      limit[r] = 0;
      out_row[r] = nullptr;
      if (i < ql) {
        limit[r] = int32_t(p.causal ? past + i + 1 : past + ql);  // causal: keys [0, past + i]; else all
        n_max = std::max<int64_t>(n_max, limit[r]);
        out_row[r] = out + off;
        for (int t = 0; t < d; ++t) qt[int64_t(t) * kBlockRows + r] = q[off + t] * scale;
      } else {
        for (int t = 0; t < d; ++t) qt[int64_t(t) * kBlockRows + r] = 0.f;
        if (i < p.s_q) std::fill(out + off, out + off + d, 0.f);  // padding row
      }
    }
    if (n_max == 0) return;
    block(PrefillBlock{&c, b, hk, n_max, limit, qt, st, out_row});
  });
  return Status::Ok();
}
#endif

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
#if RSVLM_X86
  // Prefill (more than one query) on an fp32 cache with the AVX-512 kernel set: 16-row blocks.
  const BlockFn block = (c.dtype == DType::f32 && p.s_q > 1 && group <= kBlockRows && kBlockRows % group == 0 &&
                         cpu_kernels() >= CpuKernels::avx512vnni)
                            ? choose_block(d)
                            : nullptr;
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
