// kv_attention: argument checks shared by every implementation (sizes, dtypes, head ratio), the
// host-side length / position / page-table checks of the reference and CPU paths (and both together:
// <op>_validate_host), and the CUDA stubs of CPU-only builds. See rsvlm_edge/kv_attention.h.
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "common/host_checks.h"
#include "rsvlm_edge/kv_attention.h"
#include "rsvlm_edge/rope.h"

namespace rsvlm_edge {
namespace {

Status check_cache(const char* op, const KvCacheView& c, DType act, bool cuda) {
  const std::string o = std::string(op) + ": ";
  if (c.num_kv_heads <= 0 || c.head_dim <= 0 || c.slots <= 0 || c.s_max <= 0)
    return Status::Invalid(o + "cache dimensions must be positive, got H_kv=" + std::to_string(c.num_kv_heads) +
                           ", D=" + std::to_string(c.head_dim) + ", slots=" + std::to_string(c.slots) +
                           ", S_max=" + std::to_string(c.s_max));
  if (c.k == nullptr || c.v == nullptr) return Status::Invalid(o + "k_cache / v_cache is null");
  if (c.paged() && (c.s_max != kKvPageSize || c.max_pages_per_seq <= 0))
    return Status::Invalid(o + "paged cache: page size must be " + std::to_string(kKvPageSize) +
                           " and page_table must have at least one column");
  if (!c.paged() && c.max_pages_per_seq != 0)
    return Status::Invalid(o + "max_pages_per_seq is set without a page_table");
  const bool same = c.dtype == act;
  if (!same && c.dtype != DType::i8)
    return Status::Invalid(o + "cache dtype " + dtype_name(c.dtype) + " does not match activation dtype " +
                           dtype_name(act) + " (use the same dtype or int8)");
  if (c.dtype == DType::i8 && (c.k_scale == nullptr || c.v_scale == nullptr))
    return Status::Invalid(o + "int8 cache needs k_scale and v_scale");
  if (cuda) {
    if (act != DType::f16 && act != DType::bf16)
      return Status::Invalid(o + "CUDA takes float16 or bfloat16 activations, got " + dtype_name(act));
    if (!kv_attention_cuda_head_dim(c.head_dim))
      return Status::Invalid(o + "CUDA attention supports head_dim 64, 80, 96, 128; got " + std::to_string(c.head_dim));
  } else if (act != DType::f32) {
    return Status::Invalid(o + "CPU takes float32 activations, got " + dtype_name(act));
  }
  return Status::Ok();
}

// Positions [0, n) of sequence b must be addressable: n <= capacity, a slot for b (contiguous), and
// every page they touch inside the page pool (paged). `n` is int64: never truncated.
Status check_positions(const char* op, const KvCacheView& c, int b, int64_t n) {
  if (n > c.capacity())
    return Status::Invalid(std::string(op) + " of sequence " + std::to_string(b) + " needs " + std::to_string(n) +
                           " cache positions but the cache holds " + std::to_string(c.capacity()) + " per sequence");
  if (!c.paged() && b >= c.slots)
    return Status::Invalid("sequence " + std::to_string(b) + " has no cache slot (cache batch " +
                           std::to_string(c.slots) + ")");
  if (c.paged()) {
    const int64_t pages = (n + kKvPageSize - 1) / kKvPageSize;
    for (int64_t i = 0; i < pages; ++i) {
      const int32_t page = c.page_table[int64_t(b) * c.max_pages_per_seq + i];
      if (page < 0 || page >= c.slots)
        return Status::Invalid("page_table[" + std::to_string(b) + ", " + std::to_string(i) +
                               "] = " + std::to_string(page) + " is outside [0, " + std::to_string(c.slots) + ")");
    }
  }
  return Status::Ok();
}

}  // namespace

Status kv_append_validate(const KvAppendParams& p, bool cuda) {
  if (p.batch < 0 || p.s_new < 0)
    return Status::Invalid("kv_append: batch and S_new must be >= 0, got B=" + std::to_string(p.batch) +
                           ", S_new=" + std::to_string(p.s_new));
  if (p.batch > 0 && p.start_pos == nullptr) return Status::Invalid("kv_append: start_pos must be given");
  if (p.batch > 0 && p.s_new > 0 && (p.k_new == nullptr || p.v_new == nullptr))
    return Status::Invalid("kv_append: k_new and v_new must be given");
  RSVLM_RETURN_IF_ERROR(check_cache("kv_append", p.cache, p.act_dtype, cuda));
  const KvAppendRope& r = p.rope;
  if (r.positions == nullptr) {
    if (r.q != nullptr) return Status::Invalid("kv_append: rope q given without rope positions");
    return Status::Ok();
  }
  if (p.cache.head_dim % 2 != 0)
    return Status::Invalid("kv_append: rope needs an even head_dim, got D=" + std::to_string(p.cache.head_dim));
  if (!(r.theta > 0.f) || !std::isfinite(r.theta)) return Status::Invalid("kv_append: rope theta must be > 0 and finite");
  if (r.q != nullptr && (r.num_heads <= 0 || r.num_heads % p.cache.num_kv_heads != 0))
    return Status::Invalid("kv_append: rope num_heads (" + std::to_string(r.num_heads) +
                           ") must be a positive multiple of num_kv_heads (" + std::to_string(p.cache.num_kv_heads) + ")");
  if (r.q != nullptr && (r.q == p.k_new || r.q == p.v_new))
    return Status::Invalid("kv_append: rope q must not be k_new or v_new");
  return Status::Ok();
}

Status attention_validate(const AttentionParams& p, bool cuda) {
  if (p.batch < 0 || p.s_q < 0)
    return Status::Invalid("attention: batch and S_q must be >= 0, got B=" + std::to_string(p.batch) +
                           ", S_q=" + std::to_string(p.s_q));
  if (p.num_heads <= 0 || p.cache.num_kv_heads <= 0 || p.num_heads % p.cache.num_kv_heads != 0)
    return Status::Invalid("attention: num_heads (" + std::to_string(p.num_heads) +
                           ") must be a positive multiple of num_kv_heads (" + std::to_string(p.cache.num_kv_heads) +
                           ")");
  if (p.batch > 0 && p.kv_lens == nullptr) return Status::Invalid("attention: kv_lens must be given");
  if (p.batch > 0 && p.s_q > 0 && (p.q == nullptr || p.out == nullptr))
    return Status::Invalid("attention: q and out must be given");
  if (!(p.scale >= 0.f)) return Status::Invalid("attention: scale must be >= 0 (0 = 1/sqrt(D))");
  return check_cache("attention", p.cache, p.act_dtype, cuda);
}

Status kv_append_check_lengths(const KvAppendParams& p) {
  for (int b = 0; b < p.batch; ++b) {
    const int64_t n = p.new_lens ? p.new_lens[b] : p.s_new;
    if (n < 0 || n > p.s_new)
      return Status::Invalid("new_lens[" + std::to_string(b) + "] = " + std::to_string(n) +
                             " is outside [0, S_new=" + std::to_string(p.s_new) + "]");
    const int64_t start = p.start_pos[b];
    if (start < 0)
      return Status::Invalid("start_pos[" + std::to_string(b) + "] = " + std::to_string(start) + " is negative");
    Status st = check_positions("kv_append", p.cache, b, start + n);
    if (!st.ok()) return st;
  }
  return Status::Ok();
}

Status attention_check_lengths(const AttentionParams& p) {
  for (int b = 0; b < p.batch; ++b) {
    const int64_t ql = p.q_lens ? p.q_lens[b] : p.s_q, kl = p.kv_lens[b];
    if (ql < 0 || ql > p.s_q)
      return Status::Invalid("q_lens[" + std::to_string(b) + "] = " + std::to_string(ql) +
                             " is outside [0, S_q=" + std::to_string(p.s_q) + "]");
    if (kl < ql)
      return Status::Invalid((p.q_lens ? "kv_lens[" : "seq_lens[") + std::to_string(b) + "] = " + std::to_string(kl) +
                             " is smaller than " + (p.q_lens ? "q_lens[" + std::to_string(b) + "] = " : "") +
                             std::to_string(ql) + " (it counts the cached past plus the new tokens)");
    Status st = check_positions("attention", p.cache, b, kl);
    if (!st.ok()) return st;
  }
  return Status::Ok();
}

Status kv_append_validate_host(const KvAppendParams& p) {
  RSVLM_RETURN_IF_ERROR(kv_append_validate(p, /*cuda=*/false));
  if (p.rope.positions != nullptr)
    for (int64_t i = 0; i < int64_t(p.batch) * p.s_new; ++i)
      if (p.rope.positions[i] < 0)
        return Status::Invalid("kv_append: rope positions[" + std::to_string(i / p.s_new) + ", " +
                               std::to_string(i % p.s_new) + "] = " + std::to_string(p.rope.positions[i]) +
                               " is negative");
  return kv_append_check_lengths(p);
}

Status kv_append_with_rope(const KvAppendParams& p, Status (*rope)(const RopeParams&),
                           Status (*append)(const KvAppendParams&)) {
  RSVLM_RETURN_IF_ERROR(kv_append_validate_host(p));  // everything checked before q or the cache is written
  const int64_t rows = int64_t(p.batch) * p.s_new, kv_elems = rows * p.cache.num_kv_heads * p.cache.head_dim;
  std::vector<float> k_rotated;
  try {
    k_rotated.assign(static_cast<const float*>(p.k_new), static_cast<const float*>(p.k_new) + kv_elems);
  } catch (const std::bad_alloc&) {
    return Status::Invalid("kv_append: out of memory for the rotated k rows (" + std::to_string(kv_elems) + " floats)");
  }
  RopeParams r;
  r.q = p.rope.q != nullptr ? p.rope.q : k_rotated.data();  // q = nullptr: rotate k alone (as q, with H = H_kv)
  r.k = p.rope.q != nullptr ? k_rotated.data() : nullptr;
  r.positions = p.rope.positions;
  r.tokens = rows;
  r.num_heads = p.rope.q != nullptr ? p.rope.num_heads : p.cache.num_kv_heads;
  r.num_kv_heads = p.cache.num_kv_heads;
  r.head_dim = p.cache.head_dim;
  r.theta = p.rope.theta;
  r.dtype = DType::f32;
  RSVLM_RETURN_IF_ERROR(rope(r));
  KvAppendParams plain = p;
  plain.k_new = k_rotated.data();
  plain.rope = KvAppendRope{};
  return append(plain);
}

Status attention_validate_host(const AttentionParams& p) {
  RSVLM_RETURN_IF_ERROR(attention_validate(p, /*cuda=*/false));
  return attention_check_lengths(p);
}

int64_t attention_workspace_floats(int batch, int num_heads, int head_dim, int num_splits) {
  return int64_t(batch) * num_heads * num_splits * (head_dim + 2);  // partial o (D) + (m, l) per split
}

RSVLM_NO_CUDA_LAUNCHER(kv_append, KvAppendParams)
RSVLM_NO_CUDA_LAUNCHER(attention, AttentionParams)

}  // namespace rsvlm_edge
