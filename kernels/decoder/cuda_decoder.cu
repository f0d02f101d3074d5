// CudaDecoder (rsvlm_edge/cuda_decoder.h): a LLaMA-family decoder on one CUDA device, built from the
// library's CUDA launchers (rms_norm with the residual add, linear, qlinear, kv_append with RoPE, attention,
// swiglu) plus the small step kernels below (embedding gather, residual add, positions, last-row gather,
// logits + argmax). The reference is the CPU decoder (rsvlm_edge/models/llava/decoder.py):
// tests/test_cuda_decoder.py compares logits and greedy tokens on a GPU.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/cuda_check.cuh"
#include "rsvlm_edge/cuda_decoder.h"
#include "rsvlm_edge/kv_attention.h"
#include "rsvlm_edge/linear.h"
#include "rsvlm_edge/qlinear.h"
#include "rsvlm_edge/rms_norm.h"
#include "rsvlm_edge/top_p_sample.h"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

// out[r, :] = table[ids[r], :] for r < rows; ids outside [0, vocab) give a zero row (the host checks
// ids before they are uploaded, so this only guards memory).
// table (vocab, c) fp16, ids (rows) int32, out (rows, c) fp16.
__global__ void gather_rows_kernel(const __half* table, const int32_t* ids, int rows, int c, int vocab, __half* out) {
  const int64_t total = int64_t(rows) * c;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / c, col = i % c;
    const int32_t id = ids[r];
    out[i] = (id >= 0 && id < vocab) ? table[int64_t(id) * c + col] : __float2half(0.f);
  }
}

// x[i] += y[i] in fp32, rounded to fp16. x, y (n) fp16.
__global__ void add_inplace_kernel(__half* x, const __half* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = __float2half(__half2float(x[i]) + __half2float(y[i]));
}

// Decode bookkeeping: positions[b] = lengths[b] (where the new token goes), then lengths[b] += 1
// (what attention reads). lengths, positions (batch) int32.
__global__ void advance_kernel(int32_t* lengths, int32_t* positions, int batch) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < batch) {
    positions[b] = lengths[b];
    lengths[b] += 1;
  }
}

// Prefill positions: pos[b * t + i] = i. pos (n = batch * t) int32.
__global__ void prefill_positions_kernel(int32_t* pos, int t, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    pos[i] = static_cast<int32_t>(i % t);
}

// fp32 -> fp16. in (n) f32, out (n) fp16.
__global__ void to_half_kernel(const float* in, __half* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2half(in[i]);
}

// out[b, :] = x[b, lengths[b] - 1, :] (the last prompt row of each sequence).
// x (batch, t, c) fp16, lengths (batch) int32 in [1, t] (checked on the host), out (batch, c) fp16.
__global__ void gather_last_kernel(const __half* x, const int32_t* lengths, int batch, int t, int c, __half* out) {
  const int64_t total = int64_t(batch) * c;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / c, col = i % c;
    const int last = min(max(lengths[b], 1), t) - 1;
    out[i] = x[(b * t + last) * c + col];
  }
}

// Greedy next token as one 64-bit key per row, so that many blocks can reduce a row with atomicMax:
// high 32 bits = the value's bits mapped to an unsigned order (NaN above everything, as numpy's argmax
// returns the first NaN), low 32 bits = ~index (equal values: the lowest index wins, as numpy's).
__device__ __forceinline__ unsigned long long argmax_key(float x, int i) {
  unsigned bits = __float_as_uint(x);
  bits = (x != x) ? 0xFFFFFFFFu : ((bits & 0x80000000u) ? ~bits : (bits | 0x80000000u));
  return (static_cast<unsigned long long>(bits) << 32) | static_cast<unsigned>(~i);
}

// grid (chunks, batch): logits[b, :] = float(logits_h[b, :]) and keys[b] = max over the row of
// argmax_key (keys must be zeroed first). logits_h (batch, v) fp16, logits (batch, v) f32, keys (batch).
__global__ void __launch_bounds__(kThreads) logits_argmax_kernel(const __half* logits_h, float* logits,
                                                                 unsigned long long* keys, int v) {
  const int64_t row = blockIdx.y;
  const __half* in = logits_h + row * v;
  float* out = logits + row * v;
  unsigned long long best = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < v; i += gridDim.x * blockDim.x) {
    const float x = __half2float(in[i]);
    out[i] = x;
    best = max(best, argmax_key(x, i));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  if (threadIdx.x % 32 == 0 && best != 0) atomicMax(keys + row, best);
}

// argmax[b] = the index held in keys[b] (keys (batch), argmax (batch) int32).
__global__ void argmax_index_kernel(const unsigned long long* keys, int32_t* argmax, int batch) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < batch) argmax[b] = static_cast<int32_t>(~static_cast<unsigned>(keys[b] & 0xFFFFFFFFull));
}

// Widen a quantised weight for the prefill GEMM: out[r, c] = q[r, c] * scale[r, c / (k / groups)].
// w: i8 (n, k) int8 or i4 (n, k / 2) packed nibbles (low nibble = even input, stored q + 8);
// scale (n, groups) f32; out (n, k) fp16.
template <bool kI4>
__global__ void dequantize_kernel(const void* w, const float* scale, int n, int k, int groups, __half* out) {
  const int64_t total = int64_t(n) * k;
  const int group = k / groups;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / k;
    const int c = static_cast<int>(i % k);
    int q;
    if constexpr (kI4) {
      const uint8_t b = static_cast<const uint8_t*>(w)[r * (k / 2) + c / 2];
      q = int(c % 2 == 0 ? b & 0x0F : b >> 4) - 8;
    } else {
      q = static_cast<const int8_t*>(w)[i];
    }
    out[i] = __float2half(float(q) * scale[r * groups + c / group]);
  }
}

enum class LinearKind { none, f16, i8, i4 };

struct DevLinear {
  void* w = nullptr;        // f16 (N, K) | i8 (N, K) | i4 packed u8 (N, K / 2)
  float* scale = nullptr;   // (N, G) f32, quantised kinds only
  __half* bias = nullptr;   // (N) fp16 or nullptr
  int n = 0, k = 0;         // N, K expected from the shape
  int groups = 0;           // G of the scale as uploaded (0 = no scale yet)
  LinearKind kind = LinearKind::none;
  int64_t w_bytes = 0, scale_bytes = 0, bias_bytes = 0;
};

// Linears that read the same input, stored back to back in one allocation once the layer is complete
// (fuse_layer): q/k/v (N = H*D + 2*H_kv*D) and gate/up (N = 2*I). The members then point at their rows
// of it, so that a batch-1 decode step runs each group as one GEMV writing one contiguous output.
struct FusedGroup {
  DevLinear all;  // w / scale / bias own the group's memory; n = the members' N summed
  bool ready = false;
};

struct DevLayer {
  __half* input_norm = nullptr;  // (C)
  __half* post_norm = nullptr;   // (C)
  DevLinear q, k, v, o, gate, up, down;
  FusedGroup qkv, gate_up;
};

// Activations of one step for `rows` token rows.
struct StepBuffers {
  int64_t rows = 0;
  __half *x = nullptr, *h = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *attn = nullptr, *proj = nullptr,
         *gate = nullptr, *up = nullptr;
  int32_t* positions = nullptr;  // (rows)

  // These buffers as a step of `used` <= rows rows: k and v start right after `used` rows of q (q is
  // allocated with room for rows * (qd + 2 kvd)), up right after `used` rows of gate. For one row that is
  // the [q | k | v] and [gate | up] a fused GEMV writes (with the allocation's own rows, a batch-1 step
  // of a decoder made for larger batches read k and v from past its fused output).
  StepBuffers first_rows(int64_t used, int64_t qd, int64_t kvd, int64_t inter) const {
    StepBuffers b = *this;
    b.k = q + used * qd;
    b.v = b.k + used * kvd;
    b.up = gate + used * inter;
    return b;
  }
};

}  // namespace

struct CudaDecoder::Impl {
  DecoderShape s{};
  int device = 0;
  cudaStream_t stream = nullptr;
  std::vector<void*> owned;  // every cudaMalloc of this decoder but the weights' (freed in the destructor)
  // weights
  __half* embed = nullptr;  // (V, C)
  __half* final_norm = nullptr;
  DevLinear lm_head;
  std::vector<DevLayer> layers;
  std::vector<std::pair<void**, int64_t>> weight_allocs;  // (slot, bytes) of uploaded tensors
  // KV cache: (L, max_batch, H_kv, max_seq, D) fp16 each
  void *k_cache = nullptr, *v_cache = nullptr;   // fp16 or int8 (kv_dtype)
  float *k_scale = nullptr, *v_scale = nullptr;  // int8 only: one per cached row
  DType kv_dtype = DType::f16;
  // Paged KV cache (num_pages > 0): per layer (num_pages, H_kv, 16, D) pools; a sequence holds the pages
  // its positions need, taken from free_pages as it grows and all returned at the next prefill.
  int num_pages = 0;                // 0: contiguous (L, max_batch, H_kv, max_seq, D)
  int max_pages_per_seq = 0;        // ceil(max_seq / 16)
  int32_t* page_table = nullptr;    // device (max_batch, max_pages_per_seq); -1 = no page
  std::vector<int32_t> host_table;  // the host copy, uploaded before each step that changes it
  std::vector<int32_t> free_pages;

  void release_pages() {
    std::fill(host_table.begin(), host_table.end(), -1);
    free_pages.resize(static_cast<size_t>(num_pages));
    for (int p = 0; p < num_pages; ++p) free_pages[static_cast<size_t>(p)] = num_pages - 1 - p;  // 0 first
  }
  // Pages for positions [0, upto) of sequence b; false when the pool has none left. *changed: a page was taken.
  bool hold(int b, int64_t upto, bool* changed) {
    const int64_t need = (upto + kKvPageSize - 1) / kKvPageSize;
    for (int64_t p = 0; p < need; ++p) {
      int32_t& slot = host_table[static_cast<size_t>(int64_t(b) * max_pages_per_seq + p)];
      if (slot >= 0) continue;
      if (free_pages.empty()) return false;
      slot = free_pages.back();
      free_pages.pop_back();
      *changed = true;
    }
    return true;
  }
  Status upload_page_table() {
    RSVLM_CUDA_CHECK(cudaMemcpyAsync(page_table, host_table.data(), sizeof(int32_t) * host_table.size(),
                                     cudaMemcpyHostToDevice, stream));
    return Status::Ok();
  }
  int32_t* lengths = nullptr;      // (max_batch) device
  int32_t* zeros = nullptr;        // (max_batch) device, all 0 (prefill start positions)
  float* attn_ws = nullptr;        // split-KV workspace
  int64_t attn_ws_floats = 0;
  int sms = 1;
  // decode
  StepBuffers dec;
  int32_t* tokens = nullptr;       // (max_batch) device
  __half* logits_h = nullptr;      // (max_batch, V)
  float* logits_f = nullptr;       // (max_batch, V)
  int32_t* argmax = nullptr;       // (max_batch)
  unsigned long long* argmax_keys = nullptr;  // (max_batch) see argmax_key
  int32_t* host_tokens = nullptr;  // pinned (max_batch)
  int32_t* host_argmax = nullptr;  // pinned (max_batch)
  __half* last = nullptr;          // (max_batch, C)
  std::vector<cudaGraphExec_t> graphs;  // per batch size, captured on first use
  // device sampling (decode_sample): the draws, the sampled ids and top_p_sample's workspace (grown on use)
  float* uniforms = nullptr;         // (max_batch)
  int64_t* sampled = nullptr;        // (max_batch)
  void* sample_ws = nullptr;
  size_t sample_ws_bytes = 0;
  // prefill (grown to the largest prompt batch seen)
  StepBuffers pre;
  float* pre_embeds = nullptr;  // (rows, C) f32 staging
  __half* widened = nullptr;    // (N, K) fp16 scratch for the largest quantised layer linear (prefill GEMM)
  std::vector<void*> pre_owned;

  ~Impl() {
    for (cudaGraphExec_t g : graphs)
      if (g) cudaGraphExecDestroy(g);
    for (auto& [slot, bytes] : weight_allocs)
      if (*slot) cudaFree(*slot);
    for (void* p : owned) cudaFree(p);
    for (void* p : pre_owned) cudaFree(p);
    if (sample_ws) cudaFree(sample_ws);
    if (host_tokens) cudaFreeHost(host_tokens);
    if (host_argmax) cudaFreeHost(host_argmax);
    if (stream) cudaStreamDestroy(stream);
  }

  template <typename T>
  Status alloc(T** p, int64_t count, std::vector<void*>& list, int64_t* counter) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T);
    RSVLM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(p), bytes));
    list.push_back(*p);
    if (counter) *counter += static_cast<int64_t>(bytes);
    return Status::Ok();
  }

  Status alloc_step(StepBuffers& b, int64_t rows, std::vector<void*>& list, int64_t* counter) {
    const int64_t c = s.hidden_size, qd = int64_t(s.num_heads) * s.head_dim, kvd = int64_t(s.num_kv_heads) * s.head_dim,
                  i = s.intermediate_size;
    b.rows = rows;
    RSVLM_RETURN_IF_ERROR(alloc(&b.x, rows * c, list, counter));
    RSVLM_RETURN_IF_ERROR(alloc(&b.h, rows * c, list, counter));
    // q, k, v back to back (and gate, up); layer() places k, v, up for the rows of each step.
    RSVLM_RETURN_IF_ERROR(alloc(&b.q, rows * (qd + 2 * kvd), list, counter));
    RSVLM_RETURN_IF_ERROR(alloc(&b.attn, rows * qd, list, counter));
    RSVLM_RETURN_IF_ERROR(alloc(&b.proj, rows * c, list, counter));
    RSVLM_RETURN_IF_ERROR(alloc(&b.gate, rows * 2 * i, list, counter));
    b = b.first_rows(rows, qd, kvd, i);
    RSVLM_RETURN_IF_ERROR(alloc(&b.positions, rows, list, counter));
    return Status::Ok();
  }

  // The KV cache view of layer `i`.
  KvCacheView cache_view(int i, int max_batch, int max_seq) const {
    KvCacheView v;
    const int64_t rows_per_layer =
        int64_t(num_pages > 0 ? num_pages : max_batch) * s.num_kv_heads * (num_pages > 0 ? kKvPageSize : max_seq);
    const int64_t layer_bytes = rows_per_layer * s.head_dim * dtype_size(kv_dtype);
    v.k = static_cast<char*>(k_cache) + layer_bytes * i;
    v.v = static_cast<char*>(v_cache) + layer_bytes * i;
    if (kv_dtype == DType::i8) {
      v.k_scale = k_scale + rows_per_layer * i;
      v.v_scale = v_scale + rows_per_layer * i;
    }
    v.dtype = kv_dtype;
    v.num_kv_heads = s.num_kv_heads;
    v.head_dim = s.head_dim;
    if (num_pages > 0) {
      v.page_table = page_table;
      v.slots = num_pages;
      v.s_max = kKvPageSize;
      v.max_pages_per_seq = max_pages_per_seq;
    } else {
      v.slots = max_batch;
      v.s_max = max_seq;
    }
    return v;
  }

  Status linear(const DevLinear& l, const __half* x, int64_t m, __half* out) const {
    // Prefill-sized M with quantised weights: widen them into the scratch once per call and run the
    // tensor-core GEMM (decode keeps qlinear: the weights are then read once, never widened).
    const bool widen = l.kind != LinearKind::f16 && m > 8 && widened != nullptr;
    if (widen) {
      const int64_t total = int64_t(l.n) * l.k;
      if (l.kind == LinearKind::i4)
        dequantize_kernel<true><<<blocks_for(total), kThreads, 0, stream>>>(l.w, l.scale, l.n, l.k, l.groups, widened);
      else
        dequantize_kernel<false><<<blocks_for(total), kThreads, 0, stream>>>(l.w, l.scale, l.n, l.k, l.groups, widened);
      RSVLM_CUDA_CHECK(cudaGetLastError());
    }
    if (l.kind == LinearKind::f16 || widen) {
      LinearParams p;
      p.x = x;
      p.w = widen ? widened : l.w;
      p.bias = l.bias;
      p.out = out;
      p.m = m;
      p.n = l.n;
      p.k = l.k;
      p.act_dtype = DType::f16;
      p.w_dtype = DType::f16;
      return linear_cuda(p, stream);
    }
    QLinearParams p;
    p.x = x;
    p.w = l.w;
    p.w_scale = l.scale;
    p.bias = l.bias;
    p.out = out;
    p.m = m;
    p.n = l.n;
    p.k = l.k;
    p.groups = l.groups;
    p.format = l.kind == LinearKind::i8 ? QWeight::i8 : QWeight::i4;
    p.act_dtype = DType::f16;
    return qlinear_cuda(p, stream);
  }

  // The linears of a group on the same input x (rows, K), each into its own output. One row and a
  // packed group: one GEMV over the packed weights, whose output row is the members' outputs back to back
  // (the step buffers place them so). Otherwise one launch per member.
  Status grouped(const FusedGroup& g, std::initializer_list<std::pair<const DevLinear*, __half*>> parts,
                 const __half* x, int64_t rows) const {
    if (rows == 1 && g.ready) return linear(g.all, x, 1, parts.begin()->second);
    for (const auto& [lin, out] : parts) RSVLM_RETURN_IF_ERROR(linear(*lin, x, rows, out));
    return Status::Ok();
  }

  // out = RMSNorm(x) * w over `rows` rows; with `add`, x += add first (the residual add fused in).
  Status rms_norm(__half* x, const __half* add, const __half* w, int64_t rows, __half* out) const {
    RmsNormParams p;
    p.x = x;
    p.add = add;
    p.weight = w;
    p.out = out;
    p.rows = rows;
    p.dim = s.hidden_size;
    p.eps = s.rms_norm_eps;
    p.dtype = DType::f16;
    return rms_norm_cuda(p, stream);
  }

  Status add(__half* x, const __half* y, int64_t n) const {
    add_inplace_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, n);
    RSVLM_CUDA_CHECK(cudaGetLastError());
    return Status::Ok();
  }

  // One transformer layer over `b.rows`-sized buffers holding `batch` sequences of `t` rows each
  // (decode: t = 1). positions (batch * t), start (batch): first cache row written, new_lens (batch)
  // or nullptr (= t), kv_lens (batch): tokens cached after the append.
  // Residual adds are fused into the RMSNorm after them: the layer leaves its MLP output in b.proj,
  // not yet added into b.x, and with `proj_pending` it adds the previous layer's first (the caller
  // adds the last layer's: into the final norm, or with add()).
  Status layer(int i, const StepBuffers& buffers, int batch, int t, const int32_t* start, const int32_t* new_lens,
               const int32_t* kv_lens, int max_batch, int max_seq, bool proj_pending) const {
    const DevLayer& L = layers[i];
    const int64_t rows = int64_t(batch) * t;
    if (rows > buffers.rows) return Status::Invalid("decoder step of " + std::to_string(rows) + " rows in buffers of " +
                                                    std::to_string(buffers.rows));
    const StepBuffers b = buffers.first_rows(rows, int64_t(s.num_heads) * s.head_dim,
                                             int64_t(s.num_kv_heads) * s.head_dim, s.intermediate_size);
    RSVLM_RETURN_IF_ERROR(rms_norm(b.x, proj_pending ? b.proj : nullptr, L.input_norm, rows, b.h));
    RSVLM_RETURN_IF_ERROR(grouped(L.qkv, {{&L.q, b.q}, {&L.k, b.k}, {&L.v, b.v}}, b.h, rows));
    // RoPE fused into the append: q rotated in place, k stored rotated (one launch).
    const KvCacheView view = cache_view(i, max_batch, max_seq);
    KvAppendParams a;
    a.k_new = b.k;
    a.v_new = b.v;
    a.start_pos = start;
    a.new_lens = new_lens;
    a.act_dtype = DType::f16;
    a.batch = batch;
    a.s_new = t;
    a.cache = view;
    a.rope.positions = b.positions;
    a.rope.q = b.q;
    a.rope.num_heads = s.num_heads;
    a.rope.theta = s.rope_theta;
    RSVLM_RETURN_IF_ERROR(kv_append_cuda(a, stream));
    AttentionParams at;
    at.q = b.q;
    at.out = b.attn;
    at.q_lens = t == 1 ? nullptr : new_lens;
    at.kv_lens = kv_lens;
    at.act_dtype = DType::f16;
    at.batch = batch;
    at.s_q = t;
    at.num_heads = s.num_heads;
    at.cache = view;
    if (t == 1) {
      at.num_splits = decode_splits(batch, max_seq);
      at.workspace = attn_ws;
      at.workspace_floats = attn_ws_floats;
    }
    RSVLM_RETURN_IF_ERROR(attention_cuda(at, stream));
    RSVLM_RETURN_IF_ERROR(linear(L.o, b.attn, rows, b.proj));
    RSVLM_RETURN_IF_ERROR(rms_norm(b.x, b.proj, L.post_norm, rows, b.h));
    RSVLM_RETURN_IF_ERROR(grouped(L.gate_up, {{&L.gate, b.gate}, {&L.up, b.up}}, b.h, rows));
    SwiGluParams g;
    g.gate = b.gate;
    g.up = b.up;
    g.out = b.gate;
    g.n = rows * s.intermediate_size;
    g.dtype = DType::f16;
    RSVLM_RETURN_IF_ERROR(swiglu_cuda(g, stream));
    return linear(L.down, b.gate, rows, b.proj);  // added into b.x by the next norm (or the caller)
  }

  // Every layer of a step in turn; the last layer's MLP output is left in b.proj (see layer()).
  Status layers_of_step(const StepBuffers& b, int batch, int t, const int32_t* start, const int32_t* new_lens,
                        const int32_t* kv_lens, int max_batch, int max_seq) const {
    for (int i = 0; i < s.num_layers; ++i)
      RSVLM_RETURN_IF_ERROR(layer(i, b, batch, t, start, new_lens, kv_lens, max_batch, max_seq, i > 0));
    return Status::Ok();
  }

  // Forget the weight_allocs entry of `slot` (its memory moved into a fused group).
  void forget(void** slot) {
    weight_allocs.erase(std::remove_if(weight_allocs.begin(), weight_allocs.end(),
                                       [slot](const std::pair<void**, int64_t>& e) { return e.first == slot; }),
                        weight_allocs.end());
  }

  // Move the members' weights (and scales, biases) into one allocation each, rows in member order, and
  // point the members at their rows. Only when every member is set with one format and group count;
  // otherwise the group stays unfused (separate GEMVs, still correct).
  Status fuse(FusedGroup& g, std::initializer_list<DevLinear*> members) {
    if (g.ready) return Status::Ok();
    const DevLinear& first = **members.begin();
    int n_total = 0;
    bool any_bias = false;
    for (const DevLinear* l : members) {
      if (!l->w || l->kind != first.kind || l->k != first.k || l->groups != first.groups) return Status::Ok();
      if (l->kind != LinearKind::f16 && !l->scale) return Status::Ok();
      n_total += l->n;
      any_bias |= l->bias != nullptr;
    }
    const int64_t row_bytes = first.kind == LinearKind::f16 ? int64_t(first.k) * 2
                              : first.kind == LinearKind::i8 ? int64_t(first.k)
                                                             : int64_t(first.k) / 2;
    DevLinear all = first;
    all.n = n_total;
    all.w = nullptr;
    all.scale = nullptr;
    all.bias = nullptr;
    RSVLM_CUDA_CHECK(cudaMalloc(&all.w, static_cast<size_t>(row_bytes * n_total)));
    if (first.kind != LinearKind::f16)
      RSVLM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&all.scale), sizeof(float) * size_t(n_total) * first.groups));
    if (any_bias) {
      RSVLM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&all.bias), sizeof(__half) * size_t(n_total)));
      RSVLM_CUDA_CHECK(cudaMemsetAsync(all.bias, 0, sizeof(__half) * size_t(n_total), stream));
    }
    int64_t row = 0;
    for (DevLinear* l : members) {
      uint8_t* w_dst = static_cast<uint8_t*>(all.w) + row * row_bytes;
      RSVLM_CUDA_CHECK(cudaMemcpyAsync(w_dst, l->w, size_t(row_bytes * l->n), cudaMemcpyDeviceToDevice, stream));
      float* s_dst = all.scale ? all.scale + row * first.groups : nullptr;
      if (s_dst)
        RSVLM_CUDA_CHECK(cudaMemcpyAsync(s_dst, l->scale, sizeof(float) * size_t(l->n) * first.groups,
                                         cudaMemcpyDeviceToDevice, stream));
      __half* b_dst = all.bias ? all.bias + row : nullptr;
      if (l->bias)
        RSVLM_CUDA_CHECK(cudaMemcpyAsync(b_dst, l->bias, sizeof(__half) * size_t(l->n), cudaMemcpyDeviceToDevice, stream));
      RSVLM_CUDA_CHECK(cudaStreamSynchronize(stream));  // before the members' memory is freed
      cudaFree(l->w);
      forget(&l->w);
      l->w = w_dst;
      if (l->scale) {
        cudaFree(l->scale);
        forget(reinterpret_cast<void**>(&l->scale));
        l->scale = s_dst;
      }
      if (l->bias) {
        cudaFree(l->bias);
        forget(reinterpret_cast<void**>(&l->bias));
        l->bias = b_dst;
      }
      row += l->n;
    }
    g.all = all;
    g.ready = true;
    weight_allocs.push_back({&g.all.w, 0});
    if (g.all.scale) weight_allocs.push_back({reinterpret_cast<void**>(&g.all.scale), 0});
    if (g.all.bias) weight_allocs.push_back({reinterpret_cast<void**>(&g.all.bias), 0});
    return Status::Ok();
  }

  Status fuse_layers() {
    for (DevLayer& L : layers) {
      RSVLM_RETURN_IF_ERROR(fuse(L.qkv, {&L.q, &L.k, &L.v}));
      RSVLM_RETURN_IF_ERROR(fuse(L.gate_up, {&L.gate, &L.up}));
    }
    return Status::Ok();
  }

  // Split-KV chunks for a decode step of `batch` sequences: about two blocks per SM, each chunk at
  // least 64 keys of the cache's capacity, at most 32 (the workspace is sized for batch 1's count).
  // (Chunks of >= 256 keys, the launcher's own default, left TinyLlama at batch 1 with 8 blocks on
  // 132 SMs: 45.6 us of a 2.5 ms step per layer under ncu on an H200.)
  int decode_splits(int batch, int max_seq) const {
    const int64_t blocks = std::max<int64_t>(int64_t(batch) * s.num_kv_heads, 1);
    const int64_t want = (2 * int64_t(sms) + blocks - 1) / blocks;
    const int64_t by_len = std::max<int64_t>(max_seq / 64, 1);
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, by_len, 32})));
  }

  // The final norm, lm_head, fp32 logits and argmax for `batch` rows of `x` (batch, C); with `add`
  // (batch, C), x += add first (the last layer's pending MLP output).
  Status head(__half* x, const __half* add, int batch, __half* h) const {
    RSVLM_RETURN_IF_ERROR(rms_norm(x, add, final_norm, batch, h));
    RSVLM_RETURN_IF_ERROR(linear(lm_head, h, batch, logits_h));
    RSVLM_CUDA_CHECK(cudaMemsetAsync(argmax_keys, 0, sizeof(unsigned long long) * batch, stream));
    const int chunks = std::max(1, std::min(64, (s.vocab_size + 4 * kThreads - 1) / (4 * kThreads)));
    logits_argmax_kernel<<<dim3(chunks, batch), kThreads, 0, stream>>>(logits_h, logits_f, argmax_keys, s.vocab_size);
    RSVLM_CUDA_CHECK(cudaGetLastError());
    argmax_index_kernel<<<(batch + 127) / 128, 128, 0, stream>>>(argmax_keys, argmax, batch);
    RSVLM_CUDA_CHECK(cudaGetLastError());
    return Status::Ok();
  }

  // Everything of one decode step after the token ids are on the device (graph-capturable: no
  // allocation, no host synchronisation).
  Status decode_step(int batch, int max_batch, int max_seq) const {
    gather_rows_kernel<<<blocks_for(int64_t(batch) * s.hidden_size), kThreads, 0, stream>>>(
        embed, tokens, batch, s.hidden_size, s.vocab_size, dec.x);
    RSVLM_CUDA_CHECK(cudaGetLastError());
    advance_kernel<<<1, std::max(32, ((batch + 31) / 32) * 32), 0, stream>>>(lengths, dec.positions, batch);
    RSVLM_CUDA_CHECK(cudaGetLastError());
    RSVLM_RETURN_IF_ERROR(layers_of_step(dec, batch, 1, dec.positions, nullptr, lengths, max_batch, max_seq));
    return head(dec.x, s.num_layers > 0 ? dec.proj : nullptr, batch, dec.h);
  }
};

namespace {

Status linear_shape(const DecoderShape& s, const std::string& proj, int* n, int* k) {
  const int c = s.hidden_size, qd = s.num_heads * s.head_dim, kvd = s.num_kv_heads * s.head_dim,
            i = s.intermediate_size;
  if (proj == "q_proj") *n = qd, *k = c;
  else if (proj == "k_proj" || proj == "v_proj") *n = kvd, *k = c;
  else if (proj == "o_proj") *n = c, *k = qd;
  else if (proj == "gate_proj" || proj == "up_proj") *n = i, *k = c;
  else if (proj == "down_proj") *n = c, *k = i;
  else if (proj == "lm_head") *n = s.vocab_size, *k = c;
  else return Status::Invalid("unknown decoder linear '" + proj + "'");
  return Status::Ok();
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Copy a float tensor (f32 or f16 host) to a new fp16 device allocation.
Status upload_half(const void* host, DType dtype, int64_t count, cudaStream_t stream, __half** dev) {
  std::vector<__half> tmp;
  const void* src = host;
  if (dtype == DType::f32) {
    tmp.resize(static_cast<size_t>(count));
    const float* f = static_cast<const float*>(host);
    for (int64_t i = 0; i < count; ++i) tmp[i] = __float2half_rn(f[i]);
    src = tmp.data();
  }
  RSVLM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(dev), static_cast<size_t>(std::max<int64_t>(count, 1)) * 2));
  RSVLM_CUDA_CHECK(cudaMemcpyAsync(*dev, src, static_cast<size_t>(count) * 2, cudaMemcpyHostToDevice, stream));
  return Status::Ok();
}

Status upload_raw(const void* host, int64_t bytes, cudaStream_t stream, void** dev) {
  RSVLM_CUDA_CHECK(cudaMalloc(dev, static_cast<size_t>(std::max<int64_t>(bytes, 1))));
  RSVLM_CUDA_CHECK(cudaMemcpyAsync(*dev, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream));
  return Status::Ok();
}

}  // namespace

Status CudaDecoder::create(const DecoderShape& shape, int max_batch, int max_seq, std::unique_ptr<CudaDecoder>* out,
                           DType kv_dtype, int64_t kv_pool_tokens) {
  RSVLM_RETURN_IF_ERROR(decoder_shape_validate(shape));
  if (kv_dtype != DType::f16 && kv_dtype != DType::i8)
    return Status::Invalid(std::string("the KV cache is float16 or int8, got ") + dtype_name(kv_dtype));
  if (kv_pool_tokens < 0 || kv_pool_tokens > (int64_t(1) << 31) - kKvPageSize)
    return Status::Invalid("kv_pool_tokens must be in [0, 2^31 - 16] (0: a contiguous cache), got " +
                           std::to_string(kv_pool_tokens));
  if (max_batch < 1 || max_batch > 4096) return Status::Invalid("max_batch must be in [1, 4096], got " + std::to_string(max_batch));
  if (max_seq < 1 || max_seq > (1 << 24)) return Status::Invalid("max_seq must be in [1, 16777216], got " + std::to_string(max_seq));
  if (!kv_attention_cuda_head_dim(shape.head_dim))
    return Status::Invalid("head_dim " + std::to_string(shape.head_dim) + " has no CUDA attention kernel (64, 80, 96, 128)");
  int count = 0;
  RSVLM_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (count == 0) return Status::Cuda("no CUDA device is visible");
  std::unique_ptr<CudaDecoder> d(new CudaDecoder());
  d->shape_ = shape;
  d->max_batch_ = max_batch;
  d->max_seq_ = max_seq;
  d->kv_dtype_ = kv_dtype;
  d->impl_ = std::make_unique<Impl>();
  Impl& m = *d->impl_;
  m.s = shape;
  m.kv_dtype = kv_dtype;
  m.num_pages = static_cast<int>((kv_pool_tokens + kKvPageSize - 1) / kKvPageSize);
  m.max_pages_per_seq = (max_seq + kKvPageSize - 1) / kKvPageSize;
  d->kv_pool_tokens_ = int64_t(m.num_pages) * kKvPageSize;
  RSVLM_CUDA_CHECK(cudaGetDevice(&m.device));
  RSVLM_CUDA_CHECK(cudaDeviceGetAttribute(&m.sms, cudaDevAttrMultiProcessorCount, m.device));
  RSVLM_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  m.layers.resize(shape.num_layers);
  int n = 0, k = 0;
  for (DevLayer& L : m.layers) {
    for (auto [lin, name] : {std::pair{&L.q, "q_proj"}, {&L.k, "k_proj"}, {&L.v, "v_proj"}, {&L.o, "o_proj"},
                             {&L.gate, "gate_proj"}, {&L.up, "up_proj"}, {&L.down, "down_proj"}}) {
      RSVLM_RETURN_IF_ERROR(linear_shape(shape, name, &n, &k));
      lin->n = n;
      lin->k = k;
    }
  }
  RSVLM_RETURN_IF_ERROR(linear_shape(shape, "lm_head", &n, &k));
  m.lm_head.n = n;
  m.lm_head.k = k;
  int64_t* bytes = &d->device_bytes_;
  const int64_t cache_rows =
      m.num_pages > 0 ? int64_t(shape.num_layers) * m.num_pages * shape.num_kv_heads * kKvPageSize
                      : int64_t(shape.num_layers) * max_batch * shape.num_kv_heads * max_seq;
  if (m.num_pages > 0) {
    RSVLM_RETURN_IF_ERROR(m.alloc(&m.page_table, int64_t(max_batch) * m.max_pages_per_seq, m.owned, bytes));
    m.host_table.assign(static_cast<size_t>(int64_t(max_batch) * m.max_pages_per_seq), -1);
    m.release_pages();
    RSVLM_RETURN_IF_ERROR(m.upload_page_table());
  }
  const int64_t cache = cache_rows * shape.head_dim;
  char *k_bytes = nullptr, *v_bytes = nullptr;  // fp16 or int8 elements
  RSVLM_RETURN_IF_ERROR(m.alloc(&k_bytes, cache * dtype_size(kv_dtype), m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&v_bytes, cache * dtype_size(kv_dtype), m.owned, bytes));
  m.k_cache = k_bytes;
  m.v_cache = v_bytes;
  if (kv_dtype == DType::i8) {
    RSVLM_RETURN_IF_ERROR(m.alloc(&m.k_scale, cache_rows, m.owned, bytes));
    RSVLM_RETURN_IF_ERROR(m.alloc(&m.v_scale, cache_rows, m.owned, bytes));
  }
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.lengths, max_batch, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.zeros, max_batch, m.owned, bytes));
  RSVLM_CUDA_CHECK(cudaMemsetAsync(m.lengths, 0, sizeof(int32_t) * max_batch, m.stream));
  RSVLM_CUDA_CHECK(cudaMemsetAsync(m.zeros, 0, sizeof(int32_t) * max_batch, m.stream));
  m.attn_ws_floats = attention_workspace_floats(max_batch, shape.num_heads, shape.head_dim, m.decode_splits(1, max_seq));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.attn_ws, m.attn_ws_floats, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc_step(m.dec, max_batch, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.tokens, max_batch, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.logits_h, int64_t(max_batch) * shape.vocab_size, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.logits_f, int64_t(max_batch) * shape.vocab_size, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.argmax, max_batch, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.argmax_keys, max_batch, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.uniforms, max_batch, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.sampled, max_batch, m.owned, bytes));
  RSVLM_RETURN_IF_ERROR(m.alloc(&m.last, int64_t(max_batch) * shape.hidden_size, m.owned, bytes));
  RSVLM_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&m.host_tokens), sizeof(int32_t) * max_batch));
  RSVLM_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&m.host_argmax), sizeof(int32_t) * max_batch));
  m.graphs.assign(static_cast<size_t>(max_batch) + 1, nullptr);
  RSVLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  *out = std::move(d);
  return Status::Ok();
}

CudaDecoder::~CudaDecoder() = default;

int CudaDecoder::device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

Status CudaDecoder::set_tensor(const std::string& name, const void* host, DType dtype,
                               const std::vector<int64_t>& shape) {
  Impl& m = *impl_;
  const DecoderShape& s = shape_;
  const int64_t count = numel(shape);
  auto is_float = [&] { return dtype == DType::f32 || dtype == DType::f16; };
  auto bad = [&](const std::string& want) {
    return Status::Invalid("decoder tensor '" + name + "' is " + dtype_name(dtype) + " " + shape_str(shape) +
                           ", expected " + want);
  };
  auto set_half = [&](__half** slot, const std::vector<int64_t>& want, int64_t* counter) -> Status {
    if (!is_float() || shape != want) return bad(std::string("float32/float16 ") + shape_str(want));
    if (*slot) {
      cudaFree(*slot);
      *slot = nullptr;
    }
    RSVLM_RETURN_IF_ERROR(upload_half(host, dtype, count, m.stream, slot));
    bool known = false;
    for (auto& [sl, b] : m.weight_allocs) known |= sl == reinterpret_cast<void**>(slot);
    if (!known) m.weight_allocs.push_back({reinterpret_cast<void**>(slot), count * 2});
    *counter = count * 2;
    return Status::Ok();
  };
  // Which slot does the name address?
  DevLinear* lin = nullptr;
  std::string part;  // weight | weight_scale | bias
  __half** norm_slot = nullptr;
  if (name == "embed_tokens.weight") {
    int64_t b = 0;
    RSVLM_RETURN_IF_ERROR(set_half(&m.embed, {s.vocab_size, s.hidden_size}, &b));
  } else if (name == "norm.weight") {
    int64_t b = 0;
    RSVLM_RETURN_IF_ERROR(set_half(&m.final_norm, {s.hidden_size}, &b));
  } else {
    std::string rest = name;
    DevLayer* L = nullptr;
    if (rest.rfind("layers.", 0) == 0) {
      const size_t dot = rest.find('.', 7);
      const std::string idx = dot == std::string::npos ? "" : rest.substr(7, dot - 7);
      if (idx.empty() || idx.size() > 6 || idx.find_first_not_of("0123456789") != std::string::npos)
        return Status::Invalid("unknown decoder tensor '" + name + "'");
      const int i = std::stoi(idx);
      if (i >= s.num_layers)
        return Status::Invalid("decoder tensor '" + name + "' names layer " + idx + " but the decoder has " +
                               std::to_string(s.num_layers));
      L = &m.layers[i];
      rest = rest.substr(dot + 1);
      if (rest == "input_layernorm.weight") norm_slot = &L->input_norm;
      if (rest == "post_attention_layernorm.weight") norm_slot = &L->post_norm;
    }
    if (norm_slot) {
      int64_t b = 0;
      RSVLM_RETURN_IF_ERROR(set_half(norm_slot, {s.hidden_size}, &b));
    } else {
      const size_t dot = rest.find('.');
      const std::string proj = rest.substr(0, dot);
      part = dot == std::string::npos ? "" : rest.substr(dot + 1);
      if (proj == "lm_head" && !L) lin = &m.lm_head;
      else if (L && proj == "q_proj") lin = &L->q;
      else if (L && proj == "k_proj") lin = &L->k;
      else if (L && proj == "v_proj") lin = &L->v;
      else if (L && proj == "o_proj") lin = &L->o;
      else if (L && proj == "gate_proj") lin = &L->gate;
      else if (L && proj == "up_proj") lin = &L->up;
      else if (L && proj == "down_proj") lin = &L->down;
      if (!lin || (part != "weight" && part != "weight_scale" && part != "bias"))
        return Status::Invalid("unknown decoder tensor '" + name + "'");
    }
  }
  if (lin) {
    for (const DevLayer& L : m.layers)
      for (auto [g, members] : {std::pair{&L.qkv, std::vector<const DevLinear*>{&L.q, &L.k, &L.v}},
                                std::pair{&L.gate_up, std::vector<const DevLinear*>{&L.gate, &L.up}}})
        if (g->ready && std::find(members.begin(), members.end(), lin) != members.end())
          return Status::Invalid("decoder tensor '" + name + "' cannot be replaced after the first prefill "
                                 "(its layer's linears were packed together): create a new decoder");
    const int64_t n = lin->n, k = lin->k;
    if (part == "weight") {
      LinearKind kind;
      std::vector<int64_t> want{n, k};
      if (is_float()) kind = LinearKind::f16;
      else if (dtype == DType::i8) kind = LinearKind::i8;
      else if (dtype == DType::u8) kind = LinearKind::i4, want = {n, k / 2};
      else return bad("float32/float16/int8/uint8 (" + std::to_string(n) + ", " + std::to_string(k) + ")");
      if (shape != want || (kind == LinearKind::i4 && k % 2 != 0)) return bad(std::string(dtype_name(dtype)) + " " + shape_str(want));
      if (lin->w) {
        cudaFree(lin->w);
        lin->w = nullptr;
      }
      if (kind == LinearKind::f16) {
        RSVLM_RETURN_IF_ERROR(upload_half(host, dtype, count, m.stream, reinterpret_cast<__half**>(&lin->w)));
        lin->w_bytes = count * 2;
      } else {
        RSVLM_RETURN_IF_ERROR(upload_raw(host, count, m.stream, &lin->w));
        lin->w_bytes = count;
      }
      lin->kind = kind;
      bool known = false;
      for (auto& [sl, b] : m.weight_allocs) known |= sl == &lin->w;
      if (!known) m.weight_allocs.push_back({&lin->w, 0});
    } else if (part == "weight_scale") {
      if (dtype != DType::f32 || shape.empty() || shape.size() > 2 || shape[0] != n)
        return bad("float32 (" + std::to_string(n) + ", G)");
      const int64_t g = shape.size() == 2 ? shape[1] : 1;
      if (g < 1 || k % g != 0 || (g != 1 && (k / g) % kQActBlock != 0))
        return bad("float32 (" + std::to_string(n) + ", G) with K / G a multiple of 128 or G = 1");
      if (lin->scale) {
        cudaFree(lin->scale);
        lin->scale = nullptr;
      }
      RSVLM_RETURN_IF_ERROR(upload_raw(host, count * 4, m.stream, reinterpret_cast<void**>(&lin->scale)));
      lin->groups = static_cast<int>(g);
      lin->scale_bytes = count * 4;
      bool known = false;
      for (auto& [sl, b] : m.weight_allocs) known |= sl == reinterpret_cast<void**>(&lin->scale);
      if (!known) m.weight_allocs.push_back({reinterpret_cast<void**>(&lin->scale), 0});
    } else {
      int64_t b = 0;
      RSVLM_RETURN_IF_ERROR(set_half(&lin->bias, {n}, &b));
      lin->bias_bytes = b;
    }
  }
  // Recount the weight bytes; a new tensor invalidates captured graphs (they hold the old pointers).
  RSVLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  for (cudaGraphExec_t& g : m.graphs)
    if (g) {
      cudaGraphExecDestroy(g);
      g = nullptr;
    }
  int64_t total = (m.embed ? int64_t(s.vocab_size) * s.hidden_size * 2 : 0) + (m.final_norm ? s.hidden_size * 2 : 0);
  auto lin_bytes = [](const DevLinear& l) { return l.w_bytes + l.scale_bytes + l.bias_bytes; };
  total += lin_bytes(m.lm_head);
  for (const DevLayer& L : m.layers) {
    total += (L.input_norm ? s.hidden_size * 2 : 0) + (L.post_norm ? s.hidden_size * 2 : 0);
    for (const DevLinear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) total += lin_bytes(*l);
  }
  weight_bytes_ = total;
  return Status::Ok();
}

int64_t CudaDecoder::step_weight_bytes() const {
  return weight_bytes_ - (impl_->embed ? int64_t(shape_.vocab_size - 1) * shape_.hidden_size * 2 : 0);
}

Status CudaDecoder::check_complete() const {
  const Impl& m = *impl_;
  auto missing = [](const std::string& n) {
    return Status::Invalid("decoder weights lack '" + n + "'");
  };
  auto check_lin = [&](const DevLinear& l, const std::string& n) -> Status {
    if (!l.w) return missing(n + ".weight");
    if (l.kind == LinearKind::f16 && l.scale)
      return Status::Invalid("decoder tensor '" + n + ".weight_scale' goes with a float weight");
    if (l.kind != LinearKind::f16 && !l.scale) return missing(n + ".weight_scale");
    if (l.kind == LinearKind::i8 && l.groups != 1)
      return Status::Invalid("decoder tensor '" + n + ".weight_scale' of an int8 weight must be one scale per row");
    return Status::Ok();
  };
  if (!m.embed) return missing("embed_tokens.weight");
  if (!m.final_norm) return missing("norm.weight");
  RSVLM_RETURN_IF_ERROR(check_lin(m.lm_head, "lm_head"));
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const DevLayer& L = m.layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    if (!L.input_norm) return missing(p + "input_layernorm.weight");
    if (!L.post_norm) return missing(p + "post_attention_layernorm.weight");
    for (auto [l, n] : {std::pair{&L.q, "q_proj"}, {&L.k, "k_proj"}, {&L.v, "v_proj"}, {&L.o, "o_proj"},
                        {&L.gate, "gate_proj"}, {&L.up, "up_proj"}, {&L.down, "down_proj"}})
      RSVLM_RETURN_IF_ERROR(check_lin(*l, p + n));
  }
  return Status::Ok();
}

Status CudaDecoder::prefill(const float* embeds, const int64_t* lengths, int batch, int tokens, float* logits) {
  RSVLM_RETURN_IF_ERROR(check_complete());
  Impl& m = *impl_;
  RSVLM_RETURN_IF_ERROR(m.fuse_layers());
  const DecoderShape& s = shape_;
  if (batch < 1 || batch > max_batch_)
    return Status::Invalid("batch of " + std::to_string(batch) + " is outside [1, max_batch " + std::to_string(max_batch_) + "]");
  if (tokens < 1 || tokens > max_seq_)
    return Status::Invalid("prompt of " + std::to_string(tokens) + " tokens exceeds the KV cache (" +
                           std::to_string(max_seq_) + " positions)");
  std::vector<int32_t> lens(batch);
  for (int b = 0; b < batch; ++b) {
    if (lengths[b] < 1 || lengths[b] > tokens)
      return Status::Invalid("prompt length " + std::to_string(lengths[b]) + " of sequence " + std::to_string(b) +
                             " is outside [1, " + std::to_string(tokens) + "]");
    lens[b] = static_cast<int32_t>(lengths[b]);
  }
  const int64_t rows = int64_t(batch) * tokens;
  if (rows > m.pre.rows) {  // grow the prefill buffers
    RSVLM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    for (void* p : m.pre_owned) cudaFree(p);
    m.pre_owned.clear();
    m.pre = StepBuffers{};
    m.pre_embeds = nullptr;
    int64_t scratch = 0;
    RSVLM_RETURN_IF_ERROR(m.alloc_step(m.pre, rows, m.pre_owned, &scratch));
    RSVLM_RETURN_IF_ERROR(m.alloc(&m.pre_embeds, rows * s.hidden_size, m.pre_owned, &scratch));
    m.widened = nullptr;
    if (m.layers[0].q.kind != LinearKind::f16) {  // quantised layers: one scratch for the largest
      const int64_t qd = int64_t(s.num_heads) * s.head_dim, c = s.hidden_size, i = s.intermediate_size;
      RSVLM_RETURN_IF_ERROR(m.alloc(&m.widened, std::max({qd * c, c * qd, i * c}), m.pre_owned, &scratch));
    }
  }
  if (m.num_pages > 0) {  // a new batch: every page back to the pool, then the prompts' pages
    m.release_pages();
    bool changed = false;
    for (int b = 0; b < batch; ++b)
      if (!m.hold(b, lens[b], &changed)) {
        batch_ = 0;  // the cache holds no batch now
        return Status::CapacityExceeded("the paged KV cache's pool of " + std::to_string(kv_pool_tokens_) +
                               " tokens cannot hold these prompts (sequence " + std::to_string(b) + " of " +
                               std::to_string(lens[b]) + " tokens is past its end)");
      }
    RSVLM_RETURN_IF_ERROR(m.upload_page_table());
  }
  cudaStream_t st = m.stream;
  const int64_t elems = rows * s.hidden_size;
  RSVLM_CUDA_CHECK(cudaMemcpyAsync(m.pre_embeds, embeds, sizeof(float) * elems, cudaMemcpyHostToDevice, st));
  to_half_kernel<<<blocks_for(elems), kThreads, 0, st>>>(m.pre_embeds, m.pre.x, elems);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  RSVLM_CUDA_CHECK(cudaMemcpyAsync(m.lengths, lens.data(), sizeof(int32_t) * batch, cudaMemcpyHostToDevice, st));
  prefill_positions_kernel<<<blocks_for(rows), kThreads, 0, st>>>(m.pre.positions, tokens, rows);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  RSVLM_RETURN_IF_ERROR(m.layers_of_step(m.pre, batch, tokens, m.zeros, m.lengths, m.lengths, max_batch_, max_seq_));
  if (s.num_layers > 0) RSVLM_RETURN_IF_ERROR(m.add(m.pre.x, m.pre.proj, rows * s.hidden_size));  // the last MLP's
  gather_last_kernel<<<blocks_for(int64_t(batch) * s.hidden_size), kThreads, 0, st>>>(m.pre.x, m.lengths, batch, tokens,
                                                                                     s.hidden_size, m.last);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  RSVLM_RETURN_IF_ERROR(m.head(m.last, nullptr, batch, m.dec.h));
  if (logits)
    RSVLM_CUDA_CHECK(cudaMemcpyAsync(logits, m.logits_f, sizeof(float) * batch * s.vocab_size, cudaMemcpyDeviceToHost, st));
  RSVLM_CUDA_CHECK(cudaStreamSynchronize(st));
  batch_ = batch;
  lengths_.assign(lengths, lengths + batch);
  return Status::Ok();
}

Status CudaDecoder::decode(const int64_t* token_ids, int batch, float* logits, int64_t* argmax) {
  RSVLM_RETURN_IF_ERROR(run_step(token_ids, batch));
  Impl& m = *impl_;
  cudaStream_t st = m.stream;
  RSVLM_CUDA_CHECK(cudaMemcpyAsync(m.host_argmax, m.argmax, sizeof(int32_t) * batch, cudaMemcpyDeviceToHost, st));
  if (logits)
    RSVLM_CUDA_CHECK(
        cudaMemcpyAsync(logits, m.logits_f, sizeof(float) * batch * shape_.vocab_size, cudaMemcpyDeviceToHost, st));
  RSVLM_CUDA_CHECK(cudaStreamSynchronize(st));
  for (int b = 0; b < batch; ++b) {
    lengths_[b] += 1;
    if (argmax) argmax[b] = m.host_argmax[b];
  }
  return Status::Ok();
}

Status CudaDecoder::decode_sample(const int64_t* token_ids, int batch, float temperature, float top_p,
                                  const float* uniforms, int64_t* ids) {
  // The sampling arguments first: nothing runs when they are wrong.
  Impl& m = *impl_;
  cudaStream_t st = m.stream;
  if (ids == nullptr) return Status::Invalid("decode_sample: ids must be given");
  TopPSampleParams p;
  p.logits = m.logits_f;
  p.out = m.sampled;
  p.uniforms = uniforms;
  p.batch = batch;
  p.vocab = shape_.vocab_size;
  p.temperature = temperature;
  p.top_p = top_p;
  RSVLM_RETURN_IF_ERROR(top_p_sample_validate(p));
  if (temperature > 0.f)
    for (int b = 0; b < batch; ++b)
      if (!(uniforms[b] >= 0.f && uniforms[b] < 1.f))
        return Status::Invalid("decode_sample: uniforms[" + std::to_string(b) + "] = " + std::to_string(uniforms[b]) +
                               " is outside [0, 1)");
  const size_t need = top_p_sample_cuda_workspace(batch, shape_.vocab_size);
  if (need > m.sample_ws_bytes) {
    if (m.sample_ws) RSVLM_CUDA_CHECK(cudaFree(m.sample_ws));
    m.sample_ws = nullptr;
    m.sample_ws_bytes = 0;
    RSVLM_CUDA_CHECK(cudaMalloc(&m.sample_ws, need));
    m.sample_ws_bytes = need;
  }
  RSVLM_RETURN_IF_ERROR(run_step(token_ids, batch));
  if (temperature > 0.f)
    RSVLM_CUDA_CHECK(cudaMemcpyAsync(m.uniforms, uniforms, sizeof(float) * batch, cudaMemcpyHostToDevice, st));
  p.uniforms = temperature > 0.f ? m.uniforms : nullptr;
  p.workspace = m.sample_ws;
  p.workspace_bytes = m.sample_ws_bytes;
  RSVLM_RETURN_IF_ERROR(top_p_sample_cuda(p, st));
  RSVLM_CUDA_CHECK(cudaMemcpyAsync(ids, m.sampled, sizeof(int64_t) * batch, cudaMemcpyDeviceToHost, st));
  RSVLM_CUDA_CHECK(cudaStreamSynchronize(st));
  for (int b = 0; b < batch; ++b) lengths_[b] += 1;
  return Status::Ok();
}

Status CudaDecoder::run_step(const int64_t* token_ids, int batch) {
  Impl& m = *impl_;
  const DecoderShape& s = shape_;
  if (batch_ == 0) return Status::Invalid("decode before prefill: run a prompt first");
  if (batch != batch_)
    return Status::Invalid("decode got " + std::to_string(batch) + " token ids for a batch of " + std::to_string(batch_));
  for (int b = 0; b < batch; ++b) {
    if (token_ids[b] < 0 || token_ids[b] >= s.vocab_size)
      return Status::Invalid("token id " + std::to_string(token_ids[b]) + " of sequence " + std::to_string(b) +
                             " is outside the vocabulary [0, " + std::to_string(s.vocab_size) + ")");
    if (lengths_[b] >= max_seq_)
      return Status::Invalid("generation reached the KV cache limit of " + std::to_string(max_seq_) + " positions");
    m.host_tokens[b] = static_cast<int32_t>(token_ids[b]);
  }
  if (m.num_pages > 0) {  // the page of each sequence's new position
    bool changed = false;
    for (int b = 0; b < batch; ++b)
      if (!m.hold(b, lengths_[b] + 1, &changed))
        return Status::CapacityExceeded("the paged KV cache's pool of " + std::to_string(kv_pool_tokens_) +
                               " tokens is full: sequence " + std::to_string(b) + " needs a page for position " +
                               std::to_string(lengths_[b]));
    if (changed) RSVLM_RETURN_IF_ERROR(m.upload_page_table());
  }
  cudaStream_t st = m.stream;
  RSVLM_CUDA_CHECK(cudaMemcpyAsync(m.tokens, m.host_tokens, sizeof(int32_t) * batch, cudaMemcpyHostToDevice, st));
  if (use_graphs_) {
    cudaGraphExec_t& exec = m.graphs[batch];
    if (!exec) {
      cudaGraph_t graph = nullptr;
      RSVLM_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      Status captured = m.decode_step(batch, max_batch_, max_seq_);
      const cudaError_t end = cudaStreamEndCapture(st, &graph);
      if (!captured.ok()) {
        if (graph) cudaGraphDestroy(graph);
        return captured;
      }
      RSVLM_CUDA_CHECK(end);
      const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      if (inst != cudaSuccess) exec = nullptr;  // captured again next time, not replayed half-made
      RSVLM_CUDA_CHECK(inst);
    }
    RSVLM_CUDA_CHECK(cudaGraphLaunch(exec, st));
  } else {
    RSVLM_RETURN_IF_ERROR(m.decode_step(batch, max_batch_, max_seq_));
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
