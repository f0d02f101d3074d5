// kv_attention naive reference: plain loops, one (sequence, query, head) at a time, fp64 scores and
// softmax (two passes: max, then exp / sum / weighted V). The one reference the CPU fast path and the
// CUDA kernels are tested against. See rsvlm_edge/kv_attention.h for shapes and semantics.
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "common/host_checks.h"
#include "rsvlm_edge/kv_attention.h"
#include "rsvlm_edge/rope.h"

namespace rsvlm_edge {

namespace {

// Cache row of (sequence b, KV head h, position pos), in units of D elements.
int64_t cache_row(const KvCacheView& c, int64_t b, int64_t h, int64_t pos) {
  if (c.paged()) {
    const int64_t page = c.page_table[b * c.max_pages_per_seq + pos / kKvPageSize];
    return (page * c.num_kv_heads + h) * kKvPageSize + pos % kKvPageSize;
  }
  return (b * c.num_kv_heads + h) * c.s_max + pos;
}

// Element t of K (which = 0) or V (which = 1) at cache row `row`, dequantised for int8.
double cache_at(const KvCacheView& c, int which, int64_t row, int64_t t) {
  const void* base = which ? c.v : c.k;
  if (c.dtype == DType::i8) {
    const float scale = which ? c.v_scale[row] : c.k_scale[row];
    return double(static_cast<const int8_t*>(base)[row * c.head_dim + t]) * double(scale);
  }
  return static_cast<const float*>(base)[row * c.head_dim + t];
}

}  // namespace

Status kv_append_reference(const KvAppendParams& p) {
  if (p.rope.positions != nullptr) return kv_append_with_rope(p, rope_reference, kv_append_reference);
  RSVLM_RETURN_IF_ERROR(kv_append_validate_host(p));
  const KvCacheView& c = p.cache;
  const int64_t hk = c.num_kv_heads, d = c.head_dim;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t n = p.new_lens ? p.new_lens[b] : p.s_new;
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t h = 0; h < hk; ++h) {
        const int64_t row = cache_row(c, b, h, int64_t(p.start_pos[b]) + s);
        for (int which = 0; which < 2; ++which) {
          const float* src = static_cast<const float*>(which ? p.v_new : p.k_new) + ((b * p.s_new + s) * hk + h) * d;
          if (c.dtype != DType::i8) {
            float* dst = static_cast<float*>(which ? c.v : c.k) + row * d;
            for (int64_t t = 0; t < d; ++t) dst[t] = src[t];
            continue;
          }
          // Symmetric int8 (the cache format): scale = max|row| / 127, q = round-half-even(x * (127 / max)).
          float amax = 0.f;
          for (int64_t t = 0; t < d; ++t) amax = std::fabs(src[t]) > amax ? std::fabs(src[t]) : amax;
          const float inv = amax > 0.f ? 127.f / amax : 0.f;
          int8_t* dst = static_cast<int8_t*>(which ? c.v : c.k) + row * d;
          for (int64_t t = 0; t < d; ++t) {
            float r = std::nearbyint(src[t] * inv);
            r = r > 127.f ? 127.f : (r < -127.f ? -127.f : r);
            dst[t] = static_cast<int8_t>(r);
          }
          (which ? c.v_scale : c.k_scale)[row] = amax / 127.f;
        }
      }
    }
  }
  return Status::Ok();
}

Status attention_reference(const AttentionParams& p) {
  RSVLM_RETURN_IF_ERROR(attention_validate_host(p));
  const KvCacheView& c = p.cache;
  const int64_t h_q = p.num_heads, d = c.head_dim, group = p.num_heads / c.num_kv_heads;
  const double scale = p.scale > 0.f ? double(p.scale) : 1.0 / std::sqrt(double(d));
  const float* q = static_cast<const float*>(p.q);  // (B, S_q, H, D)
  float* out = static_cast<float*>(p.out);          // (B, S_q, H, D)
  std::vector<double> scores, acc;
  try {
    acc.resize(static_cast<size_t>(d));
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory("attention_reference: cannot allocate " + std::to_string(d) + " accumulators");
  }
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t ql = p.q_lens ? p.q_lens[b] : p.s_q;
    const int64_t past = int64_t(p.kv_lens[b]) - ql;
    for (int64_t i = 0; i < p.s_q; ++i) {
      for (int64_t h = 0; h < h_q; ++h) {
        const float* qr = q + ((b * p.s_q + i) * h_q + h) * d;
        float* o = out + ((b * p.s_q + i) * h_q + h) * d;
        if (i >= ql) {  // padding row
          for (int64_t t = 0; t < d; ++t) o[t] = 0.f;
          continue;
        }
        const int64_t hk = h / group, n_keys = p.causal ? past + i + 1 : past + ql;  // causal: keys [0, past + i]
        try {
          scores.resize(static_cast<size_t>(n_keys));
        } catch (const std::bad_alloc&) {
          return Status::OutOfMemory("attention_reference: cannot allocate " + std::to_string(n_keys) + " scores");
        }
        double mx = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) {
          const int64_t row = cache_row(c, b, hk, j);
          double s = 0.0;
          for (int64_t t = 0; t < d; ++t) s += double(qr[t]) * cache_at(c, 0, row, t);
          scores[j] = s * scale;
          mx = scores[j] > mx ? scores[j] : mx;
        }
        double sum = 0.0;
        for (int64_t j = 0; j < n_keys; ++j) {
          scores[j] = std::exp(scores[j] - mx);
          sum += scores[j];
        }
        for (int64_t t = 0; t < d; ++t) acc[t] = 0.0;
        for (int64_t j = 0; j < n_keys; ++j) {
          const int64_t row = cache_row(c, b, hk, j);
          for (int64_t t = 0; t < d; ++t) acc[t] += scores[j] * cache_at(c, 1, row, t);
        }
        for (int64_t t = 0; t < d; ++t) o[t] = float(acc[t] / sum);
      }
    }
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
