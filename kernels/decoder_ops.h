// LLaMA decoder ops: RMSNorm, rotary position embedding (RoPE), SwiGLU, and linear layers with
// dense or weight-only INT8 weights (GEMV / small-M GEMM).
//
// Dtypes: CPU takes fp32 activations (linear weights fp32, fp16 or int8, converted to fp32 on the
// fly, see linear_cpu.cpp). CUDA takes fp16 or bf16 activations
// (dense weights and biases in the activation dtype, or int8 weights with fp32 scales). Every
// reduction accumulates in fp32.
//
// Conventions (match HF transformers' LlamaRMSNorm, LlamaRotaryEmbedding + apply_rotary_pos_emb
// with rope_type "default", and LlamaMLP):
//   rms_norm  out = x * rsqrt(mean(x^2) + eps) * weight
//   rope      rotate-half: for i < D/2, with f_i = theta^(-2i/D) and a = pos * f_i (fp32),
//             out[i] = x[i] cos a - x[i + D/2] sin a, out[i + D/2] = x[i + D/2] cos a + x[i] sin a
//   swiglu    out = silu(gate) * up,  silu(g) = g / (1 + exp(-g))
//   linear    y = x @ W^T (+ bias); int8: W = W8 * scale[n] per output channel (symmetric,
//             scale = max|W[n, :]| / 127, see quantize_weight_int8_cpu)
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct RmsNormParams {
  const void* x = nullptr;       // (T, D)
  const void* weight = nullptr;  // (D), activation dtype
  void* out = nullptr;           // (T, D); may alias x
  int64_t rows = 0;              // T
  int dim = 0;                   // D
  float eps = 1e-6f;
  DType dtype = DType::f32;     // of x, weight, out
};

struct RopeParams {
  void* q = nullptr;                  // (T, H, D), rotated in place
  void* k = nullptr;                  // (T, H_kv, D), rotated in place; nullptr = q only
  const int32_t* positions = nullptr; // (T) absolute position of each token
  int64_t tokens = 0;                 // T
  int num_heads = 0;                  // H
  int num_kv_heads = 0;               // H_kv (ignored when k is nullptr)
  int head_dim = 0;                   // D, even
  float theta = 10000.f;              // rope_theta
  DType dtype = DType::f32;          // of q and k
};

struct SwiGluParams {
  const void* gate = nullptr;  // (n) elements (any shape, contiguous)
  const void* up = nullptr;    // (n)
  void* out = nullptr;         // (n); may alias gate or up
  int64_t n = 0;
  DType dtype = DType::f32;
};

struct LinearParams {
  const void* x = nullptr;         // (M, K) activations
  const void* w = nullptr;         // (N, K): int8; dense: CPU fp32 or fp16, CUDA the activation dtype
  const float* w_scale = nullptr;  // (N) per-output-channel scales; int8 weights only
  const void* bias = nullptr;      // (N) activation dtype, or nullptr
  void* out = nullptr;             // (M, N) activation dtype; must not alias x
  int64_t m = 0;                   // M (tokens)
  int n = 0;                       // N (output features)
  int k = 0;                       // K (input features)
  DType act_dtype = DType::f32;   // of x, bias, out
  DType w_dtype = DType::f32;     // i8; CPU f32 or f16; CUDA act_dtype
};

// Argument checks shared by the CPU and CUDA launchers (not devices).
Status rms_norm_validate(const RmsNormParams& p, bool cuda);
Status rope_validate(const RopeParams& p, bool cuda);
Status swiglu_validate(const SwiGluParams& p, bool cuda);
Status linear_validate(const LinearParams& p, bool cuda);

// CPU (OpenMP, fp32) launchers; also the references for the CUDA kernels.
Status rms_norm_cpu(const RmsNormParams& p);
Status rope_cpu(const RopeParams& p);
Status swiglu_cpu(const SwiGluParams& p);
Status linear_cpu(const LinearParams& p);

// Micro-kernels linear_cpu runs: avx2 (x86-64 CPUs with AVX2, FMA and F16C, detected at run time;
// the library is not built with -mavx2) or portable (plain C++: aarch64, older x86-64). The default
// is the best this CPU supports; set_cpu_kernels forces one process-wide (tests, benchmarks) and
// returns an error when this CPU cannot run it.
enum class CpuKernels : int32_t { portable, avx2 };
CpuKernels cpu_kernels();
bool cpu_kernels_supported(CpuKernels k);
Status set_cpu_kernels(CpuKernels k);
const char* cpu_kernels_name(CpuKernels k);  // "portable", "avx2"

// Per-output-channel symmetric INT8 quantisation of a weight w (N, K) fp32:
// scale[n] = max|w[n, :]| / 127 (0 for an all-zero row), q[n, k] = round(w[n, k] / scale[n]).
Status quantize_weight_int8_cpu(const float* w,  // (N, K)
                                      int n, int k,
                                      int8_t* q,       // (N, K)
                                      float* scale);   // (N)

// CUDA launchers: fp16/bf16 activations, all pointers on the current device; `stream` is a
// cudaStream_t (nullptr = legacy default). Return kNotCompiled in a build without CUDA.
Status rms_norm_cuda(const RmsNormParams& p, void* stream);
Status rope_cuda(const RopeParams& p, void* stream);
Status swiglu_cuda(const SwiGluParams& p, void* stream);
Status linear_cuda(const LinearParams& p, void* stream);

}  // namespace rsvlm_edge
