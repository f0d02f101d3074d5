// KV-cache attention: append new K/V rows into a preallocated cache, then causal attention of
// new queries over the cache (prefill: many queries per sequence; decode: one query per sequence).
//
// Shapes (B = batch, H = query heads, H_kv = KV heads, D = head_dim, G = H / H_kv):
//   contiguous cache  k, v: (B_cache >= B, H_kv, S_max, D); sequence b lives in slot b
//   paged cache       k, v: (num_pages, H_kv, 16, D); page_table (B, max_pages) int32: position
//                     p of sequence b is row p % 16 of page page_table[b, p / 16]
//   INT8 cache        k, v int8 plus k_scale, v_scale fp32 with one scale per (slot, KV head, token):
//                     contiguous (B_cache, H_kv, S_max), paged (num_pages, H_kv, 16).
//                     Symmetric per-head-per-token quantisation: scale = max|row| / 127,
//                     q = round(x / scale) in [-127, 127]. Chosen over one static scale per head
//                     because append then needs no calibration and an outlier token cannot
//                     degrade the rest of the cache; the cost is 4 bytes per D bytes (3% at D=128).
//   Query head h reads KV head h / G (grouped-query attention).
//
// Prefill: q (B, S_q, H, D), q_lens (B), kv_lens (B). Sequence b has kv_lens[b] tokens in the cache
// (its past plus its q_lens[b] new tokens, already appended); query i sits at absolute position
// past + i with past = kv_lens[b] - q_lens[b] and attends to keys [0, past + i] (all kv_lens[b] keys when
// causal is false). Rows i >= q_lens[b]
// are padding and get zeros. Decode is prefill with S_q = 1: q (B, H, D), seq_lens (B) counting the
// new token.
//
// Dtypes: CPU computes in fp32 (activations fp32, cache fp32 or int8). CUDA takes fp16 or bf16
// activations with a cache of the same dtype or int8, and accumulates in fp32.
//
// Implementations (kernels/kv_attention/):
//   kv_append_reference, attention_reference  kv_attention_ref.cpp  naive loops, fp64 softmax: the one
//                                             reference every other path is tested against
//   kv_append_cpu, attention_cpu              kv_attention_cpu.cpp  thread pool, fp32 (an int8 cache's span is
//                                             dequantised into fp32 scratch for the call, then the fp32 kernels,
//                                             while that scratch stays within 64 MiB)
//   kv_append_cuda, attention_cuda            kv_attention.cu       flash-style tiles, split-KV decode
// Host launchers (reference and CPU) check every length, position and page-table entry against the
// cache before touching memory (kInvalidArgument naming the sequence and value).
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

constexpr int kKvPageSize = 16;  // tokens per page of the paged cache

// Where sequence b's K/V rows live. Every pointer is on the device the launcher runs on.
struct KvCacheView {
  void* k = nullptr;                    // contiguous (B_cache, H_kv, S_max, D) | paged (num_pages, H_kv, 16, D)
  void* v = nullptr;                    // same shape and dtype as k
  float* k_scale = nullptr;             // int8 only: contiguous (B_cache, H_kv, S_max) | paged (num_pages, H_kv, 16)
  float* v_scale = nullptr;             // int8 only: same shape as k_scale
  const int32_t* page_table = nullptr;  // paged only: (B, max_pages_per_seq); nullptr = contiguous
  DType dtype = DType::f32;             // element type of k and v: f32 | f16 | bf16 | i8
  int num_kv_heads = 0;                 // H_kv
  int head_dim = 0;                     // D
  int slots = 0;                        // contiguous: B_cache; paged: num_pages
  int s_max = 0;                        // contiguous: S_max; paged: 16
  int max_pages_per_seq = 0;            // paged: page_table row length; contiguous: 0

  bool paged() const { return page_table != nullptr; }
  // Largest number of tokens one sequence can hold.
  int64_t capacity() const { return paged() ? int64_t(max_pages_per_seq) * kKvPageSize : s_max; }
};

// Optional rotary embedding fused into kv_append (the rotation of rope.h, bit for bit its CUDA kernel's
// arithmetic): with `positions`, each k_new row is stored rotated at its position (k_new itself is left
// as it is) and `q`, when given, is rotated in place at the same positions, every (b, s) row of it
// (padding rows too, as rope over B * S_new tokens would). One launch where rope + kv_append were two.
struct KvAppendRope {
  const int32_t* positions = nullptr;  // (B, S_new) absolute position of each new row, >= 0; nullptr = none
  void* q = nullptr;                   // (B, S_new, H, D) activation dtype, rotated in place; nullptr = k only
  int num_heads = 0;                   // H (with q), a positive multiple of H_kv
  float theta = 10000.f;               // rope_theta, > 0; D must be even
};

// Write k_new/v_new rows of each sequence at positions [start_pos[b], start_pos[b] + new_lens[b]).
struct KvAppendParams {
  const void* k_new = nullptr;         // (B, S_new, H_kv, D), activation dtype
  const void* v_new = nullptr;         // (B, S_new, H_kv, D)
  const int32_t* start_pos = nullptr;  // (B) first position written (= tokens already cached)
  const int32_t* new_lens = nullptr;   // (B) valid rows of k_new per sequence, <= S_new; nullptr = all S_new
  DType act_dtype = DType::f32;        // dtype of k_new, v_new: f32 (CPU) | f16 | bf16 (CUDA)
  int batch = 0;                       // B
  int s_new = 0;                       // S_new
  KvCacheView cache;
  KvAppendRope rope;                   // optional rotation of k (and q) before the append
};

// Attention of q over the cache, causal unless `causal` is false (prefill; decode uses s_q = 1).
struct AttentionParams {
  const void* q = nullptr;          // (B, S_q, H, D), activation dtype
  void* out = nullptr;              // (B, S_q, H, D), activation dtype
  const int32_t* q_lens = nullptr;  // (B) valid queries per sequence, <= S_q; nullptr = all S_q (decode)
  const int32_t* kv_lens =
      nullptr;  // (B) cached tokens per sequence incl. the new ones, q_lens[b] <= kv_lens[b] <= capacity
  DType act_dtype = DType::f32;  // dtype of q and out: f32 (CPU) | f16 | bf16 (CUDA)
  int batch = 0;                 // B
  int s_q = 0;                   // S_q
  int num_heads = 0;             // H, a multiple of cache.num_kv_heads
  float scale = 0.f;             // softmax scale; <= 0 means 1/sqrt(D)
  // true: query i attends to keys [0, past + i] (decoders); false: every valid query attends to all
  // kv_lens[b] keys of its sequence (bidirectional, e.g. a ViT's self-attention over its tokens).
  bool causal = true;
  // Permission, not a requirement: the CPU prefill over an fp32 cache may use bf16 products where the
  // kernel set is amx (AMX-BF16 tiles): q * scale, k, the softmax weights exp(s - max) and v rounded to
  // bf16 (round to nearest even), products summed in fp32, the softmax sum in fp32 of the unrounded
  // weights. Elsewhere (other kernel sets, int8 caches, decode, CUDA, the reference) the flag changes
  // nothing. For encoders whose weights are int8 anyway (native-vit w8 towers).
  bool bf16_products = false;
  KvCacheView cache;
  // CUDA split-KV (flash-decoding): each (sequence, KV head) is cut into num_splits key chunks whose
  // partial softmax results are merged by a combine kernel. 0 = choose from the GPU size; 1 = off.
  // Only used when s_q == 1 and a workspace is given.
  int num_splits = 0;
  // CUDA only: attention_workspace_floats() floats for the split partials. nullptr = the launcher
  // takes a stream-ordered allocation (cudaMallocAsync) for the call, or runs unsplit if it fails.
  float* workspace = nullptr;
  int64_t workspace_floats = 0;  // size of workspace
};

// Argument checks shared by the CPU and CUDA launchers (sizes, head ratio, dtype pairs, head_dim
// support; not devices, and not the lengths, which may live on the GPU).
Status kv_append_validate(const KvAppendParams& p, bool cuda);
Status attention_validate(const AttentionParams& p, bool cuda);

// Naive references (single thread, fp64 softmax): fp32 activations, fp32 or int8 cache. All
// pointers host. Lengths, positions and page-table entries are checked (kInvalidArgument).
Status kv_append_reference(const KvAppendParams& p);
Status attention_reference(const AttentionParams& p);

// Fast CPU (thread pool) launchers: same dtypes and checks as the references. All pointers host.
Status kv_append_cpu(const KvAppendParams& p);
Status attention_cpu(const AttentionParams& p);

// Host-side checks of the lengths / positions / page-table entries of a call against the cache
// (used by the reference and the CPU path; the CUDA path cannot read device lengths).
Status kv_append_check_lengths(const KvAppendParams& p);
Status attention_check_lengths(const AttentionParams& p);

// Everything the host launchers (reference and CPU path) check before they run:
// <op>_validate(p, /*cuda=*/false), then, when that passed, <op>_check_lengths(p).
Status kv_append_validate_host(const KvAppendParams& p);
Status attention_validate_host(const AttentionParams& p);

// The host launchers' fused RoPE (p.rope.positions set): after kv_append_validate_host, k_new is copied
// and rotated together with q by `rope` (rope_reference or rope_cpu), then `append` (the same launcher)
// stores the rotated copy. fp32 host arrays.
struct RopeParams;
Status kv_append_with_rope(const KvAppendParams& p, Status (*rope)(const RopeParams&),
                           Status (*append)(const KvAppendParams&));

// Head dims the CUDA attention kernel is compiled for.
inline bool kv_attention_cuda_head_dim(int d) { return d == 64 || d == 80 || d == 96 || d == 128; }

// Floats of workspace that split-KV decode needs for B sequences, H heads, head_dim D and num_splits.
int64_t attention_workspace_floats(int batch, int num_heads, int head_dim, int num_splits);

// CUDA launchers: fp16/bf16 activations; cache of the same dtype or int8. All pointers (lengths and
// page table included) on the current device; `stream` is a cudaStream_t (nullptr = legacy
// default). Lengths are not checked on the host: out-of-range positions and pages are skipped.
// Return kNotCompiled in a build without CUDA.
Status kv_append_cuda(const KvAppendParams& p, void* stream);
Status attention_cuda(const AttentionParams& p, void* stream);

}  // namespace rsvlm_edge
