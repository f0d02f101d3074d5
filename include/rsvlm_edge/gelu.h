// Public C++ API: GELU activations of CLIP's MLP, in place over an (M, N) array:
//
//   erf    x = x * 0.5 * (1 + erf(x / sqrt(2)))                            torch.nn.GELU()
//   tanh   x = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))      torch.nn.GELU(approximate="tanh")
//   quick  x = x * sigmoid(1.702 x)                                        open_clip's QuickGELU
//
// Special values (every kind): act(+inf) = +inf, act(-inf) = -0, NaN stays NaN; large negative x gives
// -0 (or a tiny negative number) and large positive x gives x. torch's float32 kernel gives NaN for
// +-inf with erf (inf * 0); these are the limits, as torch's float64 kernel gives for +inf.
//
// Implementations (kernels/gelu/):
//   gelu_reference  gelu_ref.cpp  naive loop in fp64 (std::erfc / std::exp; tanh as x / (1 + exp(-2u)))
//   gelu_cpu        gelu_cpu.cpp  thread pool, fp32: AVX-512 (16 lanes) / AVX2 (8 lanes) / portable.
//                                 erf: an odd polynomial for |x| <= 1, above it 0.5 erfc(|x| / sqrt 2)
//                                 as a rational fit times exp(-x^2/2) (within 1 ulp of the reference,
//                                 measured); tanh and quick: x * sigmoid(z) through cpu_exp_simd.h's exp
//   gelu_cuda       gelu.cu       grid-stride loop, fp32 math (erfcf / expf)
// Dtypes: CPU fp32; CUDA fp32, fp16 or bf16.
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

enum class GeluKind : int32_t { erf, tanh, quick };

struct GeluParams {
  void* x = nullptr;              // (M, N), `dtype`, contiguous; updated in place: x = act(x)
  int64_t m = 0;                  // M rows, >= 0
  int64_t n = 0;                  // N columns, >= 0 (M * N must fit int64)
  GeluKind kind = GeluKind::erf;  // which activation
  DType dtype = DType::f32;       // of x
};

Status gelu_validate(const GeluParams& p, bool cuda);
Status gelu_reference(const GeluParams& p);  // naive, fp64; host pointers
Status gelu_cpu(const GeluParams& p);        // fast CPU (thread pool); host pointers
// Device pointers; `stream` is a cudaStream_t (nullptr = legacy default); kNotCompiled without CUDA.
Status gelu_cuda(const GeluParams& p, void* stream);

const char* gelu_kind_name(GeluKind k);  // "erf", "tanh", "quick" ("?" for a value outside the enum)

}  // namespace rsvlm_edge
