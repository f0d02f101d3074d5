// linear CUDA path (fp16/bf16 activations, dense or int8 weights, fp32 accumulation): a warp per
// output feature and up to 4 rows of x per block (GEMV / small-M GEMM; 8-wide vector loads when
// K % 8 == 0). Tested against linear_reference (see rsvlm_edge/linear.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/cuda_check.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/linear.h"

namespace rsvlm_edge {
namespace {

constexpr int kLinearWarps = 4;  // output features per block (one per warp)
constexpr int kLinearRows = 4;   // rows of x per block (kept in registers per warp)

using cuda::from_float;
using cuda::load8;
using cuda::to_float;
using cuda::warp_sum;

// grid (ceil(N / 4), ceil(M / 4)), block 128: warp w computes out[m0 .. m0+3, n0 + w].
// Lanes stride K; each weight element is loaded once per block and used for up to 4 rows of x.
// kVec8 (K % 8 == 0 and 16-byte aligned x, w): each lane loads 8 consecutive elements at a time.
template <typename TA, typename TW, bool kVec8>
__global__ void __launch_bounds__(kLinearWarps * 32) linear_kernel(LinearParams p) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kLinearWarps + threadIdx.x / 32;
  const int64_t m0 = int64_t(blockIdx.y) * kLinearRows;
  if (n >= p.n) return;
  const TA* x = static_cast<const TA*>(p.x);
  const TW* w = static_cast<const TW*>(p.w) + int64_t(n) * p.k;
  const int rows = int(min(int64_t(kLinearRows), p.m - m0));
  float acc[kLinearRows] = {0.f, 0.f, 0.f, 0.f};
  if constexpr (kVec8) {
    for (int k = lane * 8; k < p.k; k += 32 * 8) {
      float wv[8], xv[8];
      load8(w + k, wv);
#pragma unroll
      for (int r = 0; r < kLinearRows; ++r) {
        if (r >= rows) break;
        load8(x + (m0 + r) * p.k + k, xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r] += xv[i] * wv[i];
      }
    }
  } else {
    for (int k = lane; k < p.k; k += 32) {
      const float wk = to_float(w[k]);
#pragma unroll
      for (int r = 0; r < kLinearRows; ++r)
        if (r < rows) acc[r] += to_float(x[(m0 + r) * p.k + k]) * wk;
    }
  }
  const float scale = std::is_same<TW, int8_t>::value ? p.w_scale[n] : 1.f;
  const float b = p.bias ? to_float(static_cast<const TA*>(p.bias)[n]) : 0.f;
#pragma unroll
  for (int r = 0; r < kLinearRows; ++r) {
    const float y = warp_sum(acc[r]);
    if (lane == 0 && r < rows) static_cast<TA*>(p.out)[(m0 + r) * p.n + n] = from_float<TA>(y * scale + b);
  }
}

template <typename TA, typename TW>
Status launch_linear(const LinearParams& p, cudaStream_t stream) {
  const int64_t row_blocks = (p.m + kLinearRows - 1) / kLinearRows;
  if (row_blocks > 65535) return Status::Invalid("linear: M too large for one launch (max 262140 rows)");
  const dim3 grid((p.n + kLinearWarps - 1) / kLinearWarps, static_cast<unsigned>(row_blocks));
  const bool vec8 =
      p.k % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.w) % 16 == 0;
  if (vec8)
    linear_kernel<TA, TW, true><<<grid, kLinearWarps * 32, 0, stream>>>(p);
  else
    linear_kernel<TA, TW, false><<<grid, kLinearWarps * 32, 0, stream>>>(p);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace

Status linear_cuda(const LinearParams& p, void* stream_ptr) {
  Status st = linear_validate(p, true);
  if (!st.ok() || p.m == 0 || p.n == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool i8 = p.w_dtype == DType::i8;
  if (p.act_dtype == DType::f16)
    return i8 ? launch_linear<__half, int8_t>(p, stream) : launch_linear<__half, __half>(p, stream);
  return i8 ? launch_linear<__nv_bfloat16, int8_t>(p, stream) : launch_linear<__nv_bfloat16, __nv_bfloat16>(p, stream);
}

}  // namespace rsvlm_edge
