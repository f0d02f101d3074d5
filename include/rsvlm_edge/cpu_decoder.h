// Public C++ API: one decode step of a LLaMA-family decoder on the CPU, in one call.
//
// The CPU twin of CudaDecoder::decode (rsvlm_edge/cuda_decoder.h) for weights, KV cache and buffers the
// caller owns: rsvlm_edge/models/llava/decoder.py's decode_step over the native op set, run from C++ so
// that a step costs its kernels and not ~300 calls from Python (each ~5-10 us of argument handling:
// 2-4 ms of a 40 ms TinyLlama w8 step on two cores). decode_step is its reference, bit for bit: the
// same kernels (rms_norm_cpu, linear_cpu / qlinear_cpu, kv_append_cpu, attention_cpu, swiglu_cpu) on
// the same values in the same order, with two fusions that are exact on the CPU: each residual add
// inside the RMSNorm after it (RmsNormParams::add), and RoPE inside the KV append (KvAppendRope).
// tests/test_cpu_decode_step.py checks the logits are identical for every weight format and cache.
//
// A step for a batch of B <= max_batch sequences: x (B, C) holds the embedded tokens; for each layer
//   h = rms_norm(x [+= proj]); q, k, v = h W_qkv; rotate q, k at positions[b]; append k, v to the cache at
//   positions[b]; attn = attention(q, cache[: positions[b] + 1]); proj = attn W_o; h = rms_norm(x += proj);
//   act = silu(h W_gate) * (h W_up); proj = act W_down
// then logits = rms_norm(x += proj) W_lm_head. The caller keeps every pointer valid while the object lives.
// Not thread-safe: one step at a time per object (the kernels use the library's thread pool).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "rsvlm_edge/decoder_shape.h"
#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/kv_attention.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

// A linear layer's weights as decoder.py's Linear holds them.
struct CpuLinearWeights {
  const void* w = nullptr;       // f32 / f16: (S, N, K / S) column blocks (S = blocks; 1: plain (N, K));
                                 // i8 (w8): (N, K); u8 (w4): (N, K / 2) packed nibbles (qlinear.h)
  DType dtype = DType::f32;      // f32, f16, i8 or u8
  const float* scale = nullptr;  // i8 / u8: (N, G) per-group scales; float weights: nullptr
  int groups = 1;                // G (i8 / u8)
  const float* bias = nullptr;   // (N) or nullptr
  int n = 0;                     // N, output features
  int k = 0;                     // K, input features
  int blocks = 1;                // S (float weights), K % S == 0: y = sum_s x[:, s K/S : (s+1) K/S] W_s^T, in s order

  bool present() const { return w != nullptr; }
  bool quantised() const { return dtype == DType::i8 || dtype == DType::u8; }
};

struct CpuDecoderLayer {
  const float* input_norm = nullptr;  // (C)
  const float* post_norm = nullptr;   // (C)
  CpuLinearWeights qkv;               // (H D + 2 H_kv D, C): q, k, v rows in that order; or absent and then
  CpuLinearWeights q, k, v;           // q (H D, C), k (H_kv D, C), v (H_kv D, C)
  CpuLinearWeights o;                 // (C, H D)
  CpuLinearWeights gate_up;           // (2 I, C): gate rows then up rows; or absent and then
  CpuLinearWeights gate, up;          // (I, C) each
  CpuLinearWeights down;              // (C, I)
  KvCacheView cache;                  // this layer's contiguous cache (B_cache >= max_batch, H_kv, S_max, D): f32, or
                                      // i8 with k_scale / v_scale (kv_attention.h), written by the step
};

class CpuDecodeStep {
 public:
  // Checks every size against `shape` (kInvalidArgument naming the first that does not fit, e.g.
  // "layer 3 o: N 2048 x K 2048 expected, got N 2048 x K 1024") and allocates the step's buffers
  // (kOutOfMemory). bf16x3: LinearParams::bf16x3 for the fp16 linears (a batch of 32 and more on amx).
  static Status create(const DecoderShape& shape, int max_batch, std::vector<CpuDecoderLayer> layers,
                       const float* final_norm, const CpuLinearWeights& lm_head, bool bf16x3,
                       std::unique_ptr<CpuDecodeStep>* out);
  ~CpuDecodeStep();
  CpuDecodeStep(const CpuDecodeStep&) = delete;
  CpuDecodeStep& operator=(const CpuDecodeStep&) = delete;

  // One token per sequence b < batch (1 <= batch <= max_batch):
  //   x          (B, C) fp32: the new tokens' embeddings in; the final residual stream out
  //   positions  (B): tokens sequence b holds before this one, 0 <= positions[b] < S_max: the new token's
  //              position (its K / V row is written there; it attends to positions[b] + 1 tokens)
  //   logits     (B, V) fp32 out
  // kInvalidArgument for a batch out of range, kCapacityExceeded for a position past the KV cache (nothing
  // written either way); a kernel's error otherwise.
  Status run(float* x, const int32_t* positions, int batch, float* logits);

  const DecoderShape& shape() const { return shape_; }
  int max_batch() const { return max_batch_; }

  struct Buffers;  // the step's activations (cpu_decoder.cpp)

 private:
  CpuDecodeStep() = default;
  DecoderShape shape_{};
  int max_batch_ = 0;
  bool bf16x3_ = false;
  std::vector<CpuDecoderLayer> layers_;
  const float* final_norm_ = nullptr;
  CpuLinearWeights lm_head_{};
  std::unique_ptr<Buffers> buf_;
};

}  // namespace rsvlm_edge
