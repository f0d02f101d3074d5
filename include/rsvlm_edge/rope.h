// Public C++ API: rotary position embedding, LLaMA rotate-half (HF transformers'
// LlamaRotaryEmbedding + apply_rotary_pos_emb with rope_type "default"), in place.
//
// For i < D/2, with f_i = 1 / theta^(2i/D) and a = pos * f_i, both rounded to fp32 as HF does:
//   out[i] = x[i] cos a - x[i + D/2] sin a,   out[i + D/2] = x[i + D/2] cos a + x[i] sin a
//
// Implementations (kernels/rope/):
//   rope_reference  rope_ref.cpp  naive loops; cos/sin and the rotation in fp64
//   rope_cpu        rope_cpu.cpp  thread pool over tokens, fp32
//   rope_cuda       rope.cu       a thread per rotated pair
// Dtypes: CPU fp32; CUDA fp16 or bf16. Positions are int32 >= 0 (the bindings range-check host
// arrays of any integer dtype and refuse values that do not fit).
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct RopeParams {
  void* q = nullptr;                   // (T, H, D), rotated in place
  void* k = nullptr;                   // (T, H_kv, D), rotated in place; nullptr = q only
  const int32_t* positions = nullptr;  // (T) absolute position of each token
  int64_t tokens = 0;                  // T, >= 0
  int num_heads = 0;                   // H, >= 1
  int num_kv_heads = 0;                // H_kv, >= 1 (ignored when k is nullptr)
  int head_dim = 0;                    // D, even, >= 2
  float theta = 10000.f;               // rope_theta, > 0
  DType dtype = DType::f32;            // of q and k
};

Status rope_validate(const RopeParams& p, bool cuda);
Status rope_reference(const RopeParams& p);  // naive; host pointers
Status rope_cpu(const RopeParams& p);        // fast CPU (thread pool); host pointers
// Device pointers; `stream` is a cudaStream_t (nullptr = legacy default); kNotCompiled without CUDA.
Status rope_cuda(const RopeParams& p, void* stream);

}  // namespace rsvlm_edge
