// CPU (OpenMP) KV-cache append and causal attention: the runtime's CPU path and the reference the
// CUDA kernels are tested against. Plain fp32 math, one (sequence, query, head) row per work item.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu_math.h"
#include "kv_attention.h"

namespace rsvlm_edge {
namespace {

Status check_cache(const KvCacheView& c, DType act, bool cuda) {
  if (c.k == nullptr || c.v == nullptr) return Status::Invalid("k_cache / v_cache is null");
  if (c.num_kv_heads <= 0 || c.head_dim <= 0 || c.slots <= 0 || c.s_max <= 0)
    return Status::Invalid("cache dimensions must be positive");
  if (c.paged() && (c.s_max != kKvPageSize || c.max_pages_per_seq <= 0))
    return Status::Invalid("paged cache: page size must be " + std::to_string(kKvPageSize) +
                               " and page_table must have at least one column");
  const bool same = c.dtype == act;
  if (!same && c.dtype != DType::i8)
    return Status::Invalid(std::string("cache dtype ") + dtype_name(c.dtype) + " does not match activation dtype " +
                               dtype_name(act) + " (use the same dtype or int8)");
  if (c.dtype == DType::i8 && (c.k_scale == nullptr || c.v_scale == nullptr))
    return Status::Invalid("int8 cache needs k_scale and v_scale");
  if (cuda) {
    if (act != DType::f16 && act != DType::bf16)
      return Status::Invalid(std::string("CUDA kernels take float16 or bfloat16 activations, got ") + dtype_name(act));
    if (!kv_attention_cuda_head_dim(c.head_dim))
      return Status::Invalid("CUDA attention supports head_dim 64, 80, 96, 128; got " +
                                 std::to_string(c.head_dim));
  } else if (act != DType::f32) {
    return Status::Invalid(std::string("CPU kernels take float32 activations, got ") + dtype_name(act));
  }
  return Status::Ok();
}

// Index of the cache row (token `pos` of KV head h of sequence b) in units of D elements.
inline int64_t row_index(const KvCacheView& c, int b, int h, int64_t pos) {
  if (c.paged()) {
    const int64_t page = c.page_table[int64_t(b) * c.max_pages_per_seq + pos / kKvPageSize];
    return (page * c.num_kv_heads + h) * kKvPageSize + pos % kKvPageSize;
  }
  return (int64_t(b) * c.num_kv_heads + h) * c.s_max + pos;
}

// Host-side check that positions [0, n) of sequence b are addressable.
Status check_positions(const KvCacheView& c, int b, int64_t n, const char* what) {
  if (n > c.capacity())
    return Status::Invalid(std::string(what) + " of sequence " + std::to_string(b) + " needs " +
                               std::to_string(n) + " cache positions but the cache holds " +
                               std::to_string(c.capacity()) + " per sequence");
  if (!c.paged() && b >= c.slots)
    return Status::Invalid("sequence " + std::to_string(b) + " has no cache slot (cache batch " +
                               std::to_string(c.slots) + ")");
  if (c.paged()) {
    const int64_t pages = (n + kKvPageSize - 1) / kKvPageSize;
    for (int64_t i = 0; i < pages; ++i) {
      const int32_t page = c.page_table[int64_t(b) * c.max_pages_per_seq + i];
      if (page < 0 || page >= c.slots)
        return Status::Invalid("page_table[" + std::to_string(b) + ", " + std::to_string(i) + "] = " +
                                   std::to_string(page) + " is outside [0, " + std::to_string(c.slots) + ")");
    }
  }
  return Status::Ok();
}

// Symmetric int8 quantisation of one row: dst = round(src / scale), scale = max|src| / 127.
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

}  // namespace

Status kv_append_validate(const KvAppendParams& p, bool cuda) {
  if (p.batch < 0 || p.s_new < 0) return Status::Invalid("batch and S_new must be >= 0");
  if (p.k_new == nullptr || p.v_new == nullptr || p.start_pos == nullptr)
    return Status::Invalid("k_new, v_new and start_pos must be given");
  return check_cache(p.cache, p.act_dtype, cuda);
}

Status attention_validate(const AttentionParams& p, bool cuda) {
  if (p.batch < 0 || p.s_q <= 0) return Status::Invalid("batch must be >= 0 and S_q >= 1");
  if (p.q == nullptr || p.out == nullptr || p.kv_lens == nullptr)
    return Status::Invalid("q, out and kv_lens must be given");
  if (p.num_heads <= 0 || p.cache.num_kv_heads <= 0 || p.num_heads % p.cache.num_kv_heads != 0)
    return Status::Invalid("num_heads (" + std::to_string(p.num_heads) +
                               ") must be a positive multiple of num_kv_heads (" +
                               std::to_string(p.cache.num_kv_heads) + ")");
  return check_cache(p.cache, p.act_dtype, cuda);
}

Status kv_append_cpu(const KvAppendParams& p) {
  Status st = kv_append_validate(p, /*cuda=*/false);
  if (!st.ok()) return st;
  const KvCacheView& c = p.cache;
  const int hk = c.num_kv_heads, d = c.head_dim;
  for (int b = 0; b < p.batch; ++b) {
    const int n = p.new_lens ? p.new_lens[b] : p.s_new;
    if (n < 0 || n > p.s_new)
      return Status::Invalid("new_lens[" + std::to_string(b) + "] = " + std::to_string(n) +
                                 " is outside [0, S_new=" + std::to_string(p.s_new) + "]");
    if (p.start_pos[b] < 0)
      return Status::Invalid("start_pos[" + std::to_string(b) + "] is negative");
    st = check_positions(c, b, int64_t(p.start_pos[b]) + n, "kv_append");
    if (!st.ok()) return st;
  }
  const float* kn = static_cast<const float*>(p.k_new);
  const float* vn = static_cast<const float*>(p.v_new);
#pragma omp parallel for collapse(3) schedule(static)
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

namespace {

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

Status attention_cpu(const AttentionParams& p) {
  Status st = attention_validate(p, /*cuda=*/false);
  if (!st.ok()) return st;
  const KvCacheView& c = p.cache;
  for (int b = 0; b < p.batch; ++b) {
    const int ql = p.q_lens ? p.q_lens[b] : p.s_q, kl = p.kv_lens[b];
    if (ql < 0 || ql > p.s_q)
      return Status::Invalid("q_lens[" + std::to_string(b) + "] = " + std::to_string(ql) +
                                 " is outside [0, S_q=" + std::to_string(p.s_q) + "]");
    if (kl < ql)
      return Status::Invalid("kv_lens[" + std::to_string(b) + "] = " + std::to_string(kl) +
                                 " is smaller than q_lens[" + std::to_string(b) + "] = " + std::to_string(ql) +
                                 " (kv_lens counts the cached past plus the new tokens)");
    st = check_positions(c, b, kl, "attention");
    if (!st.ok()) return st;
  }
  const int h_q = p.num_heads, h_kv = c.num_kv_heads, d = c.head_dim, group = p.num_heads / c.num_kv_heads;
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(float(d));
  const float* q = static_cast<const float*>(p.q);
  float* out = static_cast<float*>(p.out);
  const int64_t cap = std::max<int64_t>(c.capacity(), 1);
  // Work item (sequence b, query i, KV head hk): the G query heads of the group share each K/V row
  // read. Per head the arithmetic is the plain softmax(q k^T * scale) v, in key order.
#pragma omp parallel
  {
    std::vector<float> scores(static_cast<size_t>(group * cap));                // (G, n_keys)
    std::vector<float> qs(static_cast<size_t>(group) * d), acc(qs.size());      // (G, D)
    std::vector<float> m(static_cast<size_t>(group)), sum(m.size());            // (G)
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
          std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
          for (int64_t j = 0; j < n_keys; ++j) {
            const int64_t row = row_index(c, b, hk, j);
            for (int g = 0; g < group; ++g) {
              const float sc = dot_row(c, qs.data() + int64_t(g) * d, row);
              scores[g * cap + j] = sc;
              m[g] = std::max(m[g], sc);
            }
          }
          std::fill(acc.begin(), acc.end(), 0.f);
          std::fill(sum.begin(), sum.end(), 0.f);
          for (int64_t j = 0; j < n_keys; ++j) {
            const int64_t row = row_index(c, b, hk, j);
            for (int g = 0; g < group; ++g) {
              const float w = std::exp(scores[g * cap + j] - m[g]);
              sum[g] += w;
              axpy_row(c, w, row, acc.data() + int64_t(g) * d);
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

int64_t attention_workspace_floats(int batch, int num_heads, int head_dim, int num_splits) {
  return int64_t(batch) * num_heads * num_splits * (head_dim + 2);  // partial o (D) + (m, l) per split
}

#ifndef RSVLM_WITH_CUDA
Status kv_append_cuda(const KvAppendParams&, void*) {
  return Status::NotCompiled("kv_append: this build of rsvlm_edge has no CUDA kernels (built without CUDA); "
                             "rebuild with nvcc available (RSVLM_CUDA=ON) or pass CPU arrays");
}
Status attention_cuda(const AttentionParams&, void*) {
  return Status::NotCompiled("attention: this build of rsvlm_edge has no CUDA kernels (built without CUDA); "
                             "rebuild with nvcc available (RSVLM_CUDA=ON) or pass CPU arrays");
}
#endif

}  // namespace rsvlm_edge
