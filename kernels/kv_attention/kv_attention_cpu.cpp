// kv_attention fast CPU path (OpenMP): KV-cache append and causal attention in fp32, one
// (sequence, query, KV head) work item at a time; the G query heads of a group share each K/V row
// read. Tested against kv_append_reference / attention_reference (kv_attention_ref.cpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/cpu_math.h"
#include "common/host_checks.h"
#include "rsvlm_edge/kv_attention.h"

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

}  // namespace

Status kv_append_cpu(const KvAppendParams& p) {
  RSVLM_RETURN_IF_ERROR(kv_append_validate_host(p));
  const KvCacheView& c = p.cache;
  const int hk = c.num_kv_heads, d = c.head_dim;
  const float* kn = static_cast<const float*>(p.k_new);  // (B, S_new, H_kv, D)
  const float* vn = static_cast<const float*>(p.v_new);  // (B, S_new, H_kv, D)
#pragma omp parallel for collapse(3) schedule(static) \
    num_threads(host::threads_for(int64_t(p.batch) * p.s_new * hk * d))
  for (int b = 0; b < p.batch; ++b) {
    for (int s = 0; s < p.s_new; ++s) {
      for (int h = 0; h < hk; ++h) {
        if (s >= (p.new_lens ? p.new_lens[b] : p.s_new)) continue;
        const int64_t src = ((int64_t(b) * p.s_new + s) * hk + h) * d;
        const int64_t row = row_index(c, b, h, int64_t(p.start_pos[b]) + s);
        if (c.dtype == DType::i8) {
          c.k_scale[row] = quantise_row(kn + src, static_cast<int8_t*>(c.k) + row * d, d);
          c.v_scale[row] = quantise_row(vn + src, static_cast<int8_t*>(c.v) + row * d, d);
        } else {
          std::copy(kn + src, kn + src + d, static_cast<float*>(c.k) + row * d);
          std::copy(vn + src, vn + src + d, static_cast<float*>(c.v) + row * d);
        }
      }
    }
  }
  return Status::Ok();
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
  // Per thread: scores (G, max_keys), qs (G, D), acc (G, D), m (G), sum (G); allocated before the region.
  const int64_t per_thread = host::checked_mul(group, max_keys + 2 * int64_t(d) + 2);
  const double work = double(p.batch) * double(p.s_q) * double(h_q) * double(max_keys) * double(d);  // no overflow
  const int threads = work < double(host::kMinParallelWork) ? 1 : host::max_threads();
  std::vector<float> scratch;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(scratch, per_thread < 0 ? std::numeric_limits<int64_t>::max() : per_thread,
                                            threads, "attention"));
  // Work item (sequence b, query i, KV head hk): per head the arithmetic is the plain
  // softmax(q k^T * scale) v, in key order.
#pragma omp parallel num_threads(threads)
  {
    float* const scores = scratch.data() + int64_t(host::thread_id()) * per_thread;  // (G, max_keys)
    float* const qs = scores + int64_t(group) * max_keys;                            // (G, D)
    float* const acc = qs + int64_t(group) * d;                                      // (G, D)
    float* const m = acc + int64_t(group) * d;                                       // (G)
    float* const sum = m + group;                                                    // (G)
#pragma omp for collapse(3) schedule(dynamic, 2)
    for (int b = 0; b < p.batch; ++b) {
      for (int i = 0; i < p.s_q; ++i) {
        for (int hk = 0; hk < h_kv; ++hk) {
          const int64_t off = ((int64_t(b) * p.s_q + i) * h_q + int64_t(hk) * group) * d;  // head hk * G
          const int ql = p.q_lens ? p.q_lens[b] : p.s_q;
          if (i >= ql) {  // padding row
            std::fill(out + off, out + off + int64_t(group) * d, 0.f);
            continue;
          }
          const int64_t n_keys = int64_t(p.kv_lens[b]) - ql + i + 1;  // causal: keys [0, past + i]
          for (int64_t t = 0; t < int64_t(group) * d; ++t) qs[t] = q[off + t] * scale;
          std::fill(m, m + group, -std::numeric_limits<float>::infinity());
          for (int64_t j = 0; j < n_keys; ++j) {
            const int64_t row = row_index(c, b, hk, j);
            for (int g = 0; g < group; ++g) {
              const float sc = dot_row(c, qs + int64_t(g) * d, row);
              scores[g * max_keys + j] = sc;
              m[g] = std::max(m[g], sc);
            }
          }
          std::fill(acc, acc + int64_t(group) * d, 0.f);
          std::fill(sum, sum + group, 0.f);
          for (int64_t j = 0; j < n_keys; ++j) {
            const int64_t row = row_index(c, b, hk, j);
            for (int g = 0; g < group; ++g) {
              const float w = std::exp(scores[g * max_keys + j] - m[g]);
              sum[g] += w;
              axpy_row(c, w, row, acc + int64_t(g) * d);
            }
          }
          for (int g = 0; g < group; ++g) {
            const float inv = 1.f / sum[g];
            for (int t = 0; t < d; ++t) out[off + int64_t(g) * d + t] = acc[int64_t(g) * d + t] * inv;
          }
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
