// Public C++ API: qgemm, the W8A8 GEMM of transformer encoders (a CLIP ViT image tower: M = batch x
// tokens rows, K and N 768..4096) over weights packed once at load time. CPU only: there is no CUDA
// kernel for this op (qlinear is the GPU's quantised linear), so this header declares no qgemm_cuda.
//
// Activations: each row of x (M, K) is ONE quantisation block (unlike qlinear's blocks of 128):
//     sx[m] = max_k |x[m, k]| / 127,   xq[m, k] = round_half_even(x[m, k] / sx[m])  clamped to [-127, 127]
// computed with exactly the float operations of qlinear's quantize_activations over the whole row
// (amax = max |x|, xq = clamp(nearbyint(x * (127 / amax))) in fp32, sx = amax / 127; an all-zero
// row has sx = 0, xq = 0 and gives the bias; a row with a non-finite value has sx = NaN, xq = 0 and gives
// NaN). qgemm_quantize_row below is qlinear.h's quantize_activation_block over the whole row; a
// vectorised path computes the same float operations and is tested against it bit for bit.
// Weights: w (N, K) int8 in [-127, 127] with per-output-channel scales sw (N) fp32 (the w8 format of
// rsvlm_edge/models/llava/quant.py quantize_w8).
// Output:
//     y[m, n] = sx[m] * sw[n] * (sum_k xq[m, k] * w[n, k]) + bias[n]
// with the dot an exact int32 (|dot| <= K * 127 * 127 < 2^31 for K <= kQGemmMaxK) and the outer product
// in fp32 (fp64 in the reference).
//
// Packed weights (qgemm_pack; one CPU-independent layout that every implementation reads), byte offsets
// from the start of the buffer, every section 64-byte aligned relative to it:
//     [0, 64)             header: magic, version, N, K, K4, panels, total bytes, header checksum
//     [64, +P * K4 * 16)  int8 weights, P = ceil(N / 16) panels of 16 output channels; per panel K4 / 4
//                         k-steps of 64 bytes: channel c's inputs 4s .. 4s + 3 at bytes 4c .. 4c + 3 of
//                         k-step s (K4 = K rounded up to 4; padding inputs and channels are 0)
//     then P * 16 int32   per-channel sums of the weights (the +128 offset of the unsigned activations
//                         that vpdpbusd needs adds 128 * sum_k w[n, k]; it is taken off exactly in int32)
//     then P * 16 fp32    scales sw (0 for padding channels)
// qgemm validates the header against N, K and the buffer's size, so a foreign or truncated buffer is an
// error, not a crash. Keep the buffer 64-byte aligned for speed (the Python binding returns one).
//
// Implementations (kernels/qgemm/):
//   qgemm_reference  qgemm_ref.cpp  naive loops on UNPACKED weights, int64 dots, fp64 outer product: what
//                                   the others are tested against
//   qgemm_cpu        qgemm_cpu.cpp  thread pool over cache-blocked tiles; avx512vnni micro-kernel (8 rows x
//                                   3 panels of 16 int32 zmm accumulators, vpdpbusd, the whole K kept in
//                                   registers) when cpu_kernels() is avx512vnni, else portable C++ over the
//                                   same packed buffer
#pragma once

#include <cstdint>

#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

constexpr int kQGemmMaxK = 133144;             // largest K with K * 127 * 127 < 2^31 (exact int32 dots)
constexpr int kQGemmPanel = 16;                // output channels per packed panel
constexpr int kQGemmKStep = 4;                 // consecutive inputs per channel and k-step (one int32 lane)
constexpr int64_t kQGemmHeaderBytes = 64;      // the packed buffer's header
constexpr uint32_t kQGemmMagic = 0x4D475152u;  // "RQGM" little-endian
constexpr uint32_t kQGemmVersion = 1;

struct QGemmParams {
  const float* x = nullptr;         // (M, K) fp32 activations, row-major
  const uint8_t* packed = nullptr;  // qgemm_cpu: (packed_bytes) the output of qgemm_pack(w, w_scale, N, K)
  int64_t packed_bytes = 0;         // qgemm_cpu: size of `packed` = qgemm_packed_bytes(N, K)
  const int8_t* w = nullptr;        // qgemm_reference: (N, K) int8 in [-127, 127], unpacked
  const float* w_scale = nullptr;   // qgemm_reference: (N) per-output-channel scales
  const float* bias = nullptr;      // (N) fp32, or nullptr
  float* out = nullptr;             // (M, N) fp32; must not overlap x, bias or packed
  int64_t m = 0;                    // M (rows: batch x tokens), >= 0
  int n = 0;                        // N (output channels), >= 1
  int k = 0;                        // K (inputs), 1 .. kQGemmMaxK
};

// Where the sections of the packed buffer of an (N, K) weight start (bytes from its beginning).
struct QGemmLayout {
  int k4 = 0;           // K rounded up to a multiple of 4
  int panels = 0;       // ceil(N / 16)
  int64_t weights = 0;  // (panels, K4 / 4, 16, 4) int8
  int64_t colsum = 0;   // (panels * 16) int32
  int64_t scale = 0;    // (panels * 16) fp32
  int64_t total = 0;    // the buffer's size
};

// The layout of an (N, K) weight; total = -1 when N < 1, K < 1 or K > kQGemmMaxK.
QGemmLayout qgemm_layout(int n, int k);

// Bytes of the packed buffer of an (N, K) weight (qgemm_layout(n, k).total), or -1 when N < 1, K < 1 or
// K > kQGemmMaxK.
int64_t qgemm_packed_bytes(int n, int k);

// Packs w (N, K) int8 and w_scale (N) into packed (packed_bytes = qgemm_packed_bytes(N, K) bytes, any
// alignment; 64 for speed). Invalid when a size is wrong or w holds -128 (outside the symmetric format).
Status qgemm_pack(const int8_t* w,       // (N, K) int8 in [-127, 127]
                  const float* w_scale,  // (N) fp32
                  int n, int k,
                  uint8_t* packed,  // (packed_bytes) written
                  int64_t packed_bytes);

// N and K of a packed buffer of `packed_bytes` bytes, after checking its header (magic, version,
// checksum) and its size; Invalid for anything else.
Status qgemm_packed_shape(const uint8_t* packed,                  // (packed_bytes)
                          int64_t packed_bytes, int* n, int* k);  // (1) each, written on success

// Argument checks shared by every implementation: sizes (M >= 0, N >= 1, 1 <= K <= kQGemmMaxK),
// pointers, overlaps of out with x / bias / packed, and with `packed` (qgemm_cpu) the packed header
// against N and K; without it (qgemm_reference) w and w_scale.
Status qgemm_validate(const QGemmParams& p, bool packed);

// Naive reference on the unpacked weights p.w, p.w_scale (single thread). All pointers host.
Status qgemm_reference(const QGemmParams& p);

// Fast CPU path on p.packed (thread pool). All pointers host. Keeps the quantised activations' scratch
// (M x K bytes, up to 64 MiB) of each calling thread for its next call.
Status qgemm_cpu(const QGemmParams& p);

// Weight (n, k) of a packed buffer of layout `l` (the layout above; no checks: 0 <= n < N, 0 <= k < K).
inline int8_t qgemm_packed_weight(const uint8_t* packed, const QGemmLayout& l, int n, int k) {
  const int64_t at = l.weights + int64_t(n / kQGemmPanel) * l.k4 * kQGemmPanel +
                     int64_t(k / kQGemmKStep) * kQGemmPanel * kQGemmKStep + (n % kQGemmPanel) * kQGemmKStep +
                     k % kQGemmKStep;
  return static_cast<int8_t>(packed[at]);
}

// The activation quantisation of one row (see above): x (K) fp32 -> xq (K) int8; returns sx.
float qgemm_quantize_row(const float* x,  // (K)
                         int k,
                         int8_t* xq);  // (K)

}  // namespace rsvlm_edge
