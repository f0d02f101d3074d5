// Public C++ API: the quantised linear layer y = x @ W^T (+ bias) over int8 or int4 weights with
// int8 activations quantised on the fly (W8A8 / W4A8, dynamic per-block activation scales), as the
// fastest CPU engines run decode: the weights are never widened in memory, and every dot product is
// an exact integer sum.
//
// Activations: each row of x (M, K) is cut into blocks of kQActBlock = 128 inputs (the last block of a
// row may be shorter); per block b
//     sx[m, b] = max_{k in b} |x[m, k]| / 127,   xq[m, k] = round_half_even(x[m, k] / sx[m, b])  in [-127, 127]
// (an all-zero block has sx = 0 and xq = 0; a block with a non-finite value has sx = NaN, xq = 0, so
// the output is NaN as the float computation's would be). quantize_activations below is the one
// definition every implementation uses.
// Weights: G groups per output row, group = K / G inputs, a multiple of 128 or the whole row (G = 1):
//     i8  w (N, K) int8 in [-127, 127], W[n, k] = w[n, k] * sw[n, g(k)]
//     i4  w (N, K/2) uint8, two values per byte, input 2j in the low nibble, 2j+1 in the high one,
//         each stored as q + 8 with q in [-8, 7]: W[n, k] = q[n, k] * sw[n, g(k)]
//     (the formats of rsvlm_edge/models/llava/quant.py: w8 = i8 with G = 1, w4 = i4 with group 128).
// Output:
//     y[m, n] = sum_b  sx[m, b] * sw[n, g(b)] * (sum_{k in b} xq[m, k] * q[n, k])  + bias[n]
// with every inner sum an exact int32 and the outer sum in fp32 (fp64 in the reference).
//
// Implementations (kernels/qlinear/):
//   qlinear_reference  qlinear_ref.cpp  naive loops, int64 dots, fp64 outer sum: what the others are tested against
//   qlinear_cpu        qlinear_cpu.cpp  thread pool; avx2 (maddubs), avx512vnni (vpdpbusd; 512-bit for the i4 GEMV),
//                                       amx (the M >= 4 GEMM on AMX-INT8 tiles, bit-identical to avx512vnni) or
//                                       portable (plain C++) micro-kernels, chosen as for linear (cpu_kernels())
//   qlinear_cuda       qlinear.cu       fp16 / bf16 activations, __dp4a dot products, a warp per output feature
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

constexpr int kQActBlock = 128;  // inputs per activation quantisation block

enum class QWeight : int32_t { i8, i4 };

struct QLinearParams {
  const void* x = nullptr;         // (M, K) activations, act_dtype
  const void* w = nullptr;         // i8: (N, K) int8; i4: (N, K / 2) uint8 packed nibbles
  const float* w_scale = nullptr;  // (N, G) per-group weight scales
  const void* bias = nullptr;      // (N) act_dtype, or nullptr
  void* out = nullptr;             // (M, N) act_dtype; must not alias x
  int64_t m = 0;                   // M (tokens), >= 0
  int n = 0;                       // N (output features), >= 0
  int k = 0;                       // K (input features), >= 1; even for i4
  int groups = 1;                  // G, >= 1; K % G == 0 and (G == 1 or (K / G) % 128 == 0)
  QWeight format = QWeight::i8;
  DType act_dtype = DType::f32;    // CPU f32; CUDA f16 or bf16
};

// Argument checks shared by every implementation (sizes, group layout, pointers, dtypes).
Status qlinear_validate(const QLinearParams& p, bool cuda);

// Naive reference (CPU, single thread). All pointers host.
Status qlinear_reference(const QLinearParams& p);

// Fast CPU path (thread pool). All pointers host.
Status qlinear_cpu(const QLinearParams& p);

// CUDA path: all pointers on the current device, `stream` a cudaStream_t (nullptr = legacy default).
// Returns kNotCompiled in a build without CUDA.
Status qlinear_cuda(const QLinearParams& p, void* stream);

// Blocks of 128 inputs per row of K inputs (the last one may be shorter).
inline int qact_blocks(int k) { return (k + kQActBlock - 1) / kQActBlock; }

// One quantisation block of any length (see above): x (len) fp32 -> xq (len) int8; returns its scale
// (0 for an all-zero block, NaN with xq = 0 for a block holding a non-finite value). The one
// definition: quantize_activations runs it per 128-input block, qgemm over whole rows.
float quantize_activation_block(const float* x,  // (len)
                                int len,
                                int8_t* xq);  // (len)
// The activation quantisation of one row (see above): x (K) fp32 -> xq (K) int8, sx (qact_blocks(K)).
void quantize_activations(const float* x,  // (K)
                          int k,
                          int8_t* xq,   // (K)
                          float* sx);   // (qact_blocks(K))

}  // namespace rsvlm_edge
