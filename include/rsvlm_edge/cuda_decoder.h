// Public C++ API: a LLaMA-family decoder that runs on one CUDA device, on this library's kernels.
//
// The GPU twin of rsvlm_edge/models/llava/decoder.py (prefill / decode_step over a KV cache), which is
// its reference: the same canonical tensor names, the same weight formats, the same right-padded
// prefill and per-sequence lengths. What lives on the device:
//   weights   uploaded once in their stored precision: fp16 linear weights (fp32 ones are rounded to
//             fp16 at upload), w8 int8 (N, K) + fp32 scales (N, 1), w4 packed uint8 (N, K/2) + fp32
//             scales (N, K/128); the quantised ones run as qlinear (int8 activations, __dp4a), never
//             widened in memory. Norm weights, biases and the embedding table in fp16.
//   KV cache  contiguous (layers, max_batch, H_kv, max_seq, D) or paged (layers, pages, H_kv, 16, D) with
//             a page table, for K and V, fp16 or int8 (the kv_attention.h
//             INT8 cache: one fp32 scale per (layer, sequence, KV head, token), set by the append; about half
//             the bytes at D = 64-128), and the int32 lengths.
//   buffers   every activation of a step, sized for max_batch (decode) or grown to the largest prompt
//             seen (prefill), so that a decode step allocates nothing.
// Activations are fp16 with fp32 accumulation in every kernel (the CPU path computes in fp32).
// decode() runs one step for the batch of the last prefill: embedding gather, the layers (RMSNorm,
// q/k/v, RoPE, KV append, split-KV decode attention, o, residual, RMSNorm, gate/up, SwiGLU, down,
// residual), final norm, lm_head, fp32 logits and their argmax, all on one stream; the step is
// captured once per batch size in a CUDA graph and replayed (set_use_graphs(false) launches it
// directly). Only the token ids go up and the logits (or only the argmax ids) come back. The first
// prefill packs each layer's q/k/v weights into one allocation and gate/up into another (the members
// then point at their rows), so that a batch-1 decode step runs each group as one GEMV; a packed tensor
// cannot be replaced afterwards (set_tensor says so).
//
// Tensor names (canonical, as in decoder.safetensors): embed_tokens.weight (V, C), norm.weight (C),
// lm_head.weight (V, C) [+ .weight_scale], layers.{i}.input_layernorm.weight,
// layers.{i}.post_attention_layernorm.weight, layers.{i}.{q,k,v,o,gate,up,down}_proj.weight
// [+ .weight_scale] [+ .bias]. Shapes and dtypes are checked against the DecoderShape at set_tensor.
//
// Not thread-safe: one caller at a time (the Python runtime serialises generations).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rsvlm_edge/decoder_shape.h"
#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

class CudaDecoder {
 public:
  // Allocates the KV cache (kv_dtype: DType::f16 or DType::i8) and the decode buffers on the current
  // CUDA device. kv_pool_tokens > 0: a paged cache (kv_attention.h's pages of 16 tokens) of that many tokens
  // (rounded up to a page) shared by the batch, pages taken as sequences grow and returned at each prefill,
  // instead of max_batch x max_seq positions; a prefill or step that needs a page the pool no longer has is
  // refused (kCapacityExceeded). kNotCompiled in a build without CUDA; kCudaError when there is no device or
  // not enough memory; kInvalidArgument for another kv_dtype.
  static Status create(const DecoderShape& shape, int max_batch, int max_seq, std::unique_ptr<CudaDecoder>* out,
                       DType kv_dtype = DType::f16, int64_t kv_pool_tokens = 0);
  // CUDA devices visible to this process (0 without CUDA in this build, or when the query fails).
  static int device_count();
  ~CudaDecoder();
  CudaDecoder(const CudaDecoder&) = delete;
  CudaDecoder& operator=(const CudaDecoder&) = delete;

  // Copy one host tensor (C-contiguous, `shape`) to the device. Float tensors may be f32 or f16
  // (converted to fp16); quantised weights i8 (w8) or u8 (w4) with their f32 `.weight_scale`.
  Status set_tensor(const std::string& name, const void* host, DType dtype, const std::vector<int64_t>& shape);
  // kInvalidArgument naming the first required tensor not set yet (a linear whose scale is missing too).
  Status check_complete() const;

  // Right-padded prompts: embeds (B, T, C) f32 host, lengths (B) host with 1 <= lengths[b] <= T.
  // Starts a new batch (the cache is overwritten) and writes fp32 logits (B, V) at each sequence's
  // last prompt position to `logits` (host).
  Status prefill(const float* embeds, const int64_t* lengths, int batch, int tokens, float* logits);
  // One token per sequence of the current batch: token_ids (B) host. Writes fp32 logits (B, V) to
  // `logits` (host, may be nullptr) and the greedy next ids (B) to `argmax` (host, may be nullptr).
  Status decode(const int64_t* token_ids, int batch, float* logits, int64_t* argmax);
  // The same step, then nucleus sampling on the device (rsvlm_edge/top_p_sample.h: temperature, top_p, one
  // draw in [0, 1) per sequence in `uniforms`, host): only the sampled ids (B) come back to `ids` (host).
  // temperature <= 0: the greedy ids. The arguments are checked before the step runs.
  Status decode_sample(const int64_t* token_ids, int batch, float temperature, float top_p, const float* uniforms,
                       int64_t* ids);

  void set_use_graphs(bool on) { use_graphs_ = on; }
  bool use_graphs() const { return use_graphs_; }
  const DecoderShape& shape() const { return shape_; }
  int max_batch() const { return max_batch_; }
  int max_seq() const { return max_seq_; }
  DType kv_dtype() const { return kv_dtype_; }
  int64_t kv_pool_tokens() const { return kv_pool_tokens_; }  // 0: contiguous cache
  int batch() const { return batch_; }
  const std::vector<int64_t>& lengths() const { return lengths_; }  // tokens cached per sequence
  int64_t weight_bytes() const { return weight_bytes_; }            // device bytes of the weights
  int64_t step_weight_bytes() const;                                 // weight bytes one decode step reads
  int64_t device_bytes() const { return device_bytes_; }            // everything this decoder allocated

  struct Impl;  // device state (cuda_decoder.cu)

 private:
  CudaDecoder() = default;
  // decode()'s step up to the logits and argmax on the device (checks, token upload, the graph).
  Status run_step(const int64_t* token_ids, int batch);
  DecoderShape shape_{};
  int max_batch_ = 0, max_seq_ = 0, batch_ = 0;
  DType kv_dtype_ = DType::f16;
  int64_t kv_pool_tokens_ = 0;
  bool use_graphs_ = true;
  std::vector<int64_t> lengths_;
  int64_t weight_bytes_ = 0, device_bytes_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rsvlm_edge
