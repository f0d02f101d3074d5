// Public C++ API: RMSNorm over the last dim (HF transformers' LlamaRMSNorm), with an optional fused
// residual add (a pre-norm decoder's `x = x + branch; h = norm(x)` in one pass):
//
//   if add:  x[t, i] += add[t, i]                                  (x is updated in place)
//   out[t, i] = x[t, i] * rsqrt(mean_i(x[t, :]^2) + eps) * weight[i]
//
// With add, the statistics are those of the stored sum (on CUDA: rounded to fp16/bf16 first, as a
// separate add kernel would store it).
//
// Implementations (kernels/rms_norm/):
//   rms_norm_reference  rms_norm_ref.cpp  naive loops, fp64 accumulation
//   rms_norm_cpu        rms_norm_cpu.cpp  thread pool over rows, fp32 (8 partial sums)
//   rms_norm_cuda       rms_norm.cu       a block per row, fp32 accumulation
// Dtypes: CPU fp32; CUDA fp16 or bf16.
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct RmsNormParams {
  void* x = nullptr;             // (T, D); read, and when `add` is given updated in place: x += add
  const void* add = nullptr;     // (T, D) or nullptr: added into x first (the residual branch); must not overlap x
  const void* weight = nullptr;  // (D), `dtype`
  void* out = nullptr;           // (T, D); may be x itself without add; with add it overlaps none of x, add, weight
  int64_t rows = 0;              // T, >= 0
  int dim = 0;                   // D, >= 1
  float eps = 1e-6f;             // >= 0
  DType dtype = DType::f32;      // of x, weight, out
};

Status rms_norm_validate(const RmsNormParams& p, bool cuda);
Status rms_norm_reference(const RmsNormParams& p);  // naive, fp64; host pointers
Status rms_norm_cpu(const RmsNormParams& p);        // fast CPU (thread pool); host pointers
// Device pointers; `stream` is a cudaStream_t (nullptr = legacy default); kNotCompiled without CUDA.
Status rms_norm_cuda(const RmsNormParams& p, void* stream);

}  // namespace rsvlm_edge
