// Public C++ API: the linear layer y = x @ W^T (+ bias), dense or weight-only INT8 weights.
//
//   y[m, n] = (sum_k x[m, k] * float(W[n, k])) * scale[n] + bias[n]      (scale: int8 weights only)
//
// int8: W = W8 * scale[n] per output channel (symmetric, scale = max|W[n, :]| / 127, see
// quantize_weight_int8_cpu). Every reduction accumulates in fp32 (fp64 in the reference).
//
// Implementations (kernels/linear/):
//   linear_reference  linear_ref.cpp  naive loops, fp64 accumulation: what every other path is tested against
//   linear_cpu        linear_cpu.cpp  thread pool, blocked GEMM / GEMV with avx2 or portable micro-kernels
//   linear_cuda       linear.cu       a warp per output feature (GEMV / small-M GEMM)
// Dtypes: CPU (reference and fast) fp32 activations with fp32, fp16 or int8 weights (converted to fp32
// exactly); CUDA fp16 or bf16 activations with weights in the activation dtype or int8.
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct LinearParams {
  const void* x = nullptr;         // (M, K) activations, act_dtype
  const void* w = nullptr;         // (N, K) w_dtype: int8; dense: CPU fp32 or fp16, CUDA act_dtype
  const float* w_scale = nullptr;  // (N) per-output-channel scales; int8 weights only
  const void* bias = nullptr;      // (N) act_dtype, or nullptr
  void* out = nullptr;             // (M, N) act_dtype; must not alias x
  int64_t m = 0;                   // M (tokens), >= 0
  int n = 0;                       // N (output features), >= 0
  int k = 0;                       // K (input features), >= 1
  DType act_dtype = DType::f32;    // of x, bias, out
  DType w_dtype = DType::f32;      // i8; CPU f32 or f16; CUDA act_dtype
  // Permission (CPU, fp16 weights): on the amx kernel set, from 32 rows of x on, multiply as three bf16 products
  // on AMX-BF16 tiles (w = w_hi + w_lo exactly; x = x_hi + x_lo to 2^-16; x_lo * w_lo dropped): each product
  // within about 2^-15 of x * w relatively, fp32 accumulation (see linear_cpu.cpp). Elsewhere no effect.
  bool bf16x3 = false;
};

// Argument checks shared by every implementation (sizes, pointers, dtypes; not devices).
Status linear_validate(const LinearParams& p, bool cuda);

// Naive reference (CPU, single thread, fp64 accumulation). All pointers host.
Status linear_reference(const LinearParams& p);

// Fast CPU path (thread pool). All pointers host.
Status linear_cpu(const LinearParams& p);

// CUDA path: all pointers on the current device; `stream` is a cudaStream_t (nullptr = legacy
// default). Returns kNotCompiled in a build without CUDA.
Status linear_cuda(const LinearParams& p, void* stream);

// Micro-kernels the CPU linear ops run: avx2 (x86-64 CPUs with AVX2, FMA and F16C, detected at run
// time; the library is not built with -mavx2), avx512vnni (avx2, plus AVX512-VNNI/VL integer dot
// products on 256- and 512-bit registers for qlinear), amx (avx512vnni, plus the AMX tile unit: INT8 for qgemm and
// qlinear's GEMM (M >= 4), BF16 for attention_prefill with bf16_products and for fp16 linears with bf16x3;
// Sapphire Rapids and later Xeons, with the kernel's
// permission to use tile data; every other op runs its avx512vnni body) or portable (plain C++: aarch64, older x86-64). The sets are ordered: each runs
// on a CPU that runs the next one up. The default is the best this CPU supports (best_cpu_kernels);
// set_cpu_kernels forces one process-wide (tests, benchmarks) and returns an error when this CPU cannot
// run it.
enum class CpuKernels : int32_t { portable, avx2, avx512vnni, amx };
CpuKernels cpu_kernels();
CpuKernels best_cpu_kernels();
bool cpu_kernels_supported(CpuKernels k);
Status set_cpu_kernels(CpuKernels k);
const char* cpu_kernels_name(CpuKernels k);  // "portable", "avx2", "avx512vnni", "amx"

// Per-output-channel symmetric INT8 quantisation of a weight w (N, K) fp32 (CPU, load time):
// scale[n] = max|w[n, :]| / 127 (0 for an all-zero row), q[n, k] = round(w[n, k] / scale[n]).
Status quantize_weight_int8_cpu(const float* w,  // (N, K)
                                int n, int k,
                                int8_t* q,      // (N, K)
                                float* scale);  // (N)

}  // namespace rsvlm_edge
