// Public C++ API: SwiGLU (HF transformers' LlamaMLP activation), elementwise:
//
//   out = silu(gate) * up,   silu(g) = g / (1 + exp(-g))
//
// Implementations (kernels/swiglu/):
//   swiglu_reference  swiglu_ref.cpp  naive loop in fp64
//   swiglu_cpu        swiglu_cpu.cpp  thread pool, fp32
//   swiglu_cuda       swiglu.cu       grid-stride loop, fp32 math
// Dtypes: CPU fp32; CUDA fp16 or bf16.
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct SwiGluParams {
  const void* gate = nullptr;  // (n) elements (any shape, contiguous)
  const void* up = nullptr;    // (n)
  void* out = nullptr;         // (n); may alias gate or up
  int64_t n = 0;               // >= 0
  DType dtype = DType::f32;
};

Status swiglu_validate(const SwiGluParams& p, bool cuda);
Status swiglu_reference(const SwiGluParams& p);  // naive, fp64; host pointers
Status swiglu_cpu(const SwiGluParams& p);        // fast CPU (thread pool); host pointers
// Device pointers; `stream` is a cudaStream_t (nullptr = legacy default); kNotCompiled without CUDA.
Status swiglu_cuda(const SwiGluParams& p, void* stream);

}  // namespace rsvlm_edge
