// Public C++ API: LayerNorm over the last dim with an optional fused residual add, as a pre-LN
// transformer block uses it (open_clip's `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`):
//
//   if add:  x[t, i] += add[t, i]                                  (x is updated in place)
//   out[t, i] = (x[t, i] - mean_t) / sqrt(var_t + eps) * gamma[i] + beta[i]
//
// with mean_t and var_t the mean and the biased variance (divided by D) of row t of x after the add:
// exactly torch.nn.LayerNorm (eps inside the square root). Statistics are two-pass (the mean, then the
// sum of squared deviations), never E[x^2] - E[x]^2.
//
// Implementations (kernels/layer_norm/):
//   layer_norm_reference  layer_norm_ref.cpp  naive loops, fp64 mean and variance
//   layer_norm_cpu        layer_norm_cpu.cpp  thread pool over rows, fp32 two-pass (AVX-512 / AVX2 / portable)
//   layer_norm_cuda       layer_norm.cu       a block per row, fp32 two-pass statistics
// Dtypes: CPU fp32; CUDA fp32, fp16 or bf16 (x, add, gamma, beta and out all of `dtype`).
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct LayerNormParams {
  void* x = nullptr;            // (M, D); read, and when `add` is given updated in place: x += add
  const void* add = nullptr;    // (M, D) or nullptr: added into x first (the residual branch); must not overlap x
  const void* gamma = nullptr;  // (D) weight
  const void* beta = nullptr;   // (D) bias, or nullptr (no bias)
  void* out = nullptr;          // (M, D) LayerNorm(x) * gamma + beta; required; must not overlap x, add, gamma, beta
  int64_t m = 0;                // M rows, >= 0
  int d = 0;                    // D, >= 1
  float eps = 1e-5f;            // >= 0
  DType dtype = DType::f32;     // of x, add, gamma, beta, out
};

Status layer_norm_validate(const LayerNormParams& p, bool cuda);
Status layer_norm_reference(const LayerNormParams& p);  // naive, fp64; host pointers
Status layer_norm_cpu(const LayerNormParams& p);        // fast CPU (thread pool); host pointers
// Device pointers; `stream` is a cudaStream_t (nullptr = legacy default); kNotCompiled without CUDA.
Status layer_norm_cuda(const LayerNormParams& p, void* stream);

}  // namespace rsvlm_edge
