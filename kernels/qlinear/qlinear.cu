// qlinear CUDA path (fp16/bf16 activations; int8 or int4 weights; int8 activations quantised per block
// of 128 inputs exactly as quantize_activations does; __dp4a integer dots; fp32 outer sum). Tested
// against qlinear_reference (see rsvlm_edge/qlinear.h) by tests/test_kernels_qlinear.py on a GPU.
//
// grid (ceil(N / 8), ceil(M / 2)), block 256 = 8 warps. Each block first quantises its (up to) 2 rows
// of x into shared memory (xq: 2 x K int8, sx: 2 x blocks fp32; one warp per 128-input block), then
// warp w computes out[m0 .. m0 + 1, n0 + w]: each lane takes 16 consecutive inputs per step when
// K % 16 == 0 (else 4 of every block), one __dp4a per 4, scales its integer partial by sx * sw in fp32,
// and the warp sums the lanes once at the end. Decode-shaped (small M); x is re-quantised per block of outputs (K reads from L2
// against 8 K weight bytes from memory). Launched programmatically (cuda_launch.cuh): each warp's weight
// row starts into L2 while the kernel ahead still runs; x is read after the wait.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/cuda_check.cuh"
#include "common/cuda_launch.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/qlinear.h"

namespace rsvlm_edge {
namespace {

constexpr int kWarps = 8;          // output features per block
constexpr int kRows = 2;           // rows of x per block
constexpr int kMaxSharedBytes = 48 * 1024;

using cuda::from_float;
using cuda::to_float;
using cuda::warp_sum;

// Four signed int8 values in one int, lowest input in the lowest byte (the operand of __dp4a).
__device__ __forceinline__ int pack4(int a, int b, int c, int d) {
  return (a & 0xFF) | ((b & 0xFF) << 8) | ((c & 0xFF) << 16) | ((d & 0xFF) << 24);
}

// q[n, k .. k + 3] of a weight row as 4 packed int8 (k % 4 == 0; the caller guarantees k + 3 < K).
template <QWeight F>
__device__ __forceinline__ int load_w4(const uint8_t* row, int k) {
  if constexpr (F == QWeight::i8) {
    const int8_t* w = reinterpret_cast<const int8_t*>(row);
    return pack4(w[k], w[k + 1], w[k + 2], w[k + 3]);
  } else {
    const uint8_t b0 = row[k / 2], b1 = row[k / 2 + 1];
    return pack4(int(b0 & 0x0F) - 8, int(b0 >> 4) - 8, int(b1 & 0x0F) - 8, int(b1 >> 4) - 8);
  }
}

// The same from one aligned 4-byte (i8) or 2-byte (i4) load: row must be 4-byte aligned (i8: K % 4 == 0;
// i4: K % 4 == 0 so that k / 2 is even) and k % 4 == 0.
template <QWeight F>
__device__ __forceinline__ int load_w4_aligned(const uint8_t* row, int k) {
  if constexpr (F == QWeight::i8) {
    return __ldg(reinterpret_cast<const int*>(row + k));
  } else {
    const unsigned b = __ldg(reinterpret_cast<const unsigned short*>(row + k / 2));
    return pack4(int(b & 0xFu) - 8, int((b >> 4) & 0xFu) - 8, int((b >> 8) & 0xFu) - 8, int(b >> 12) - 8);
  }
}

template <QWeight F>
__device__ __forceinline__ int weight_q(const uint8_t* row, int k) {
  if constexpr (F == QWeight::i8) return reinterpret_cast<const int8_t*>(row)[k];
  const uint8_t b = row[k / 2];
  return int(k % 2 == 0 ? b & 0x0F : b >> 4) - 8;
}

// The dot of 16 quantised inputs (four words, input order) with 16 weights of a row: i8 one 16-byte load,
// i4 one 8-byte load whose nibbles are split into the even and odd inputs (byte j of a word holds input
// 2j in its low nibble) and met by the matching bytes of x (__byte_perm).
template <QWeight F>
__device__ __forceinline__ int dot16(const uint8_t* row, int k, int4 x) {
  if constexpr (F == QWeight::i8) {
    const int4 w = __ldg(reinterpret_cast<const int4*>(row + k));
    return __dp4a(x.w, w.w, __dp4a(x.z, w.z, __dp4a(x.y, w.y, __dp4a(x.x, w.x, 0))));
  } else {
    const uint2 b = __ldg(reinterpret_cast<const uint2*>(row + k / 2));
    const unsigned bias = 0x08080808u;
    const int lo0 = int(__vsub4(b.x & 0x0F0F0F0Fu, bias)), hi0 = int(__vsub4((b.x >> 4) & 0x0F0F0F0Fu, bias));
    const int lo1 = int(__vsub4(b.y & 0x0F0F0F0Fu, bias)), hi1 = int(__vsub4((b.y >> 4) & 0x0F0F0F0Fu, bias));
    int d = __dp4a(int(__byte_perm(x.x, x.y, 0x6420)), lo0, 0);
    d = __dp4a(int(__byte_perm(x.x, x.y, 0x7531)), hi0, d);
    d = __dp4a(int(__byte_perm(x.z, x.w, 0x6420)), lo1, d);
    return __dp4a(int(__byte_perm(x.z, x.w, 0x7531)), hi1, d);
  }
}

// kAligned: K % 4 == 0 and w 4-byte aligned, so weights and quantised inputs load 4 at a time.
// kVec16: K % 16 == 0 and w 16-byte aligned: each lane takes 16 inputs of one block per step (one 16- or
// 8-byte weight load, four __dp4a), 512 inputs per warp step, several steps in flight.
template <typename TA, QWeight F, bool kAligned, bool kVec16>
__global__ void __launch_bounds__(kWarps * 32) qlinear_kernel(QLinearParams p) {
  extern __shared__ float smem[];
  const int blocks = (p.k + kQActBlock - 1) / kQActBlock;
  // xq first: 16-byte aligned rows when K % 16 == 0 (kVec16 loads 16 of them at a time)
  int8_t* xq = reinterpret_cast<int8_t*>(smem);                                   // (kRows, K)
  float* sx = reinterpret_cast<float*>(xq + ((int64_t(kRows) * p.k + 15) / 16) * 16);  // (kRows, blocks)
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t m0 = int64_t(blockIdx.y) * kRows;
  const int rows = int(min(int64_t(kRows), p.m - m0));
  const TA* x = static_cast<const TA*>(p.x);
  const int64_t row_bytes = F == QWeight::i8 ? p.k : p.k / 2;
  const int n = blockIdx.x * kWarps + warp;
  if (blockIdx.y == 0 && n < p.n)  // weights: written by no kernel
    cuda::prefetch_l2(static_cast<const uint8_t*>(p.w) + int64_t(n) * row_bytes, row_bytes, lane);
  cuda::wait_for_prior_grids();

  // 1. quantise rows m0 .. m0 + rows - 1 (one warp per (row, block); lane i holds inputs 4i .. 4i + 3)
  for (int task = warp; task < rows * blocks; task += kWarps) {
    const int r = task / blocks, b = task % blocks, k0 = b * kQActBlock;
    const int len = min(kQActBlock, p.k - k0);
    float v[4];
    float amax = 0.f;
    bool finite = true;
    for (int j = 0; j < 4; ++j) {
      const int i = lane * 4 + j;
      v[j] = i < len ? to_float(x[(m0 + r) * p.k + k0 + i]) : 0.f;
      finite = finite && isfinite(v[j]);
      amax = fmaxf(amax, fabsf(v[j]));
    }
    amax = cuda::warp_max(amax);
    finite = __all_sync(0xffffffffu, finite);
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int j = 0; j < 4; ++j) {
      const int i = lane * 4 + j;
      if (i < len) xq[r * p.k + k0 + i] = finite ? int8_t(fminf(127.f, fmaxf(-127.f, rintf(v[j] * inv)))) : int8_t(0);
    }
    if (lane == 0) sx[r * blocks + b] = finite ? amax / 127.f : __int_as_float(0x7fc00000);
  }
  __syncthreads();

  // 2. one warp per output feature
  if (n >= p.n) return;
  const uint8_t* wrow = static_cast<const uint8_t*>(p.w) + int64_t(n) * row_bytes;
  const int group = p.k / p.groups;
  float acc[kRows] = {0.f, 0.f};
  if constexpr (kVec16) {
#pragma unroll 4
    for (int k = lane * 16; k < p.k; k += 32 * 16) {
      const int b = k / kQActBlock;
      const float sw = p.w_scale[int64_t(n) * p.groups + k / group];
      for (int r = 0; r < rows; ++r) {
        const int4 xv = *reinterpret_cast<const int4*>(xq + r * p.k + k);
        acc[r] += float(dot16<F>(wrow, k, xv)) * (sx[r * blocks + b] * sw);
      }
    }
  } else {
  // Unrolled so that several independent weight loads are in flight per lane (decode is bound by
  // memory latency x loads in flight, not by the dot products).
#pragma unroll 4
  for (int b = 0; b < blocks; ++b) {
    const int k0 = b * kQActBlock, len = min(kQActBlock, p.k - k0);
    const float sw = p.w_scale[int64_t(n) * p.groups + k0 / group];
    const int k = k0 + lane * 4;
    int dot[kRows] = {0, 0};
    if (lane * 4 + 3 < len) {
      const int wq = kAligned ? load_w4_aligned<F>(wrow, k) : load_w4<F>(wrow, k);
      for (int r = 0; r < rows; ++r) {
        const int8_t* xr = xq + r * p.k + k;
        const int xv = kAligned ? *reinterpret_cast<const int*>(xr) : pack4(xr[0], xr[1], xr[2], xr[3]);
        dot[r] = __dp4a(xv, wq, 0);
      }
    } else {
      for (int i = k; i < k0 + len; ++i)
        for (int r = 0; r < rows; ++r) dot[r] += int(xq[r * p.k + i]) * weight_q<F>(wrow, i);
    }
    for (int r = 0; r < rows; ++r) acc[r] += float(dot[r]) * (sx[r * blocks + b] * sw);
  }
  }
  const float bias = p.bias ? to_float(static_cast<const TA*>(p.bias)[n]) : 0.f;
  for (int r = 0; r < kRows; ++r) {
    const float y = warp_sum(acc[r]);
    if (lane == 0 && r < rows) static_cast<TA*>(p.out)[(m0 + r) * p.n + n] = from_float<TA>(y + bias);
  }
}

template <typename TA, QWeight F>
Status launch_qlinear(const QLinearParams& p, cudaStream_t stream) {
  const int blocks = qact_blocks(p.k);
  const int64_t shared = int64_t(kRows) * blocks * sizeof(float) + (int64_t(kRows) * p.k + 15) / 16 * 16;
  if (shared > kMaxSharedBytes)
    return Status::Invalid("qlinear: K=" + std::to_string(p.k) + " needs " + std::to_string(shared) +
                           " bytes of shared memory, more than the " + std::to_string(kMaxSharedBytes) +
                           " the CUDA kernel uses");
  const int64_t row_blocks = (p.m + kRows - 1) / kRows;
  if (row_blocks > 65535) return Status::Invalid("qlinear: M too large for one launch (max 131070 rows)");
  const dim3 grid((p.n + kWarps - 1) / kWarps, static_cast<unsigned>(row_blocks));
  const bool aligned = p.k % 4 == 0 && reinterpret_cast<uintptr_t>(p.w) % 4 == 0;
  const bool vec16 = p.k % 16 == 0 && reinterpret_cast<uintptr_t>(p.w) % 16 == 0;
  void (*kernel)(QLinearParams) = vec16     ? qlinear_kernel<TA, F, true, true>
                                  : aligned ? qlinear_kernel<TA, F, true, false>
                                            : qlinear_kernel<TA, F, false, false>;
  RSVLM_CUDA_CHECK(cuda::launch_programmatic(kernel, grid, dim3(kWarps * 32), static_cast<size_t>(shared), stream, p));
  return Status::Ok();
}

template <typename TA>
Status launch_format(const QLinearParams& p, cudaStream_t stream) {
  return p.format == QWeight::i8 ? launch_qlinear<TA, QWeight::i8>(p, stream)
                                 : launch_qlinear<TA, QWeight::i4>(p, stream);
}

}  // namespace

Status qlinear_cuda(const QLinearParams& p, void* stream_ptr) {
  Status st = qlinear_validate(p, true);
  if (!st.ok() || p.m == 0 || p.n == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  return p.act_dtype == DType::f16 ? launch_format<__half>(p, stream) : launch_format<__nv_bfloat16>(p, stream);
}

}  // namespace rsvlm_edge
