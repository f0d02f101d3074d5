// rms_norm CUDA path (fp16/bf16, fp32 accumulation): a block of 256 threads per row. Tested against
// rms_norm_reference (see rsvlm_edge/rms_norm.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/cuda_check.cuh"
#include "common/cuda_launch.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/rms_norm.h"

namespace rsvlm_edge {
namespace {

constexpr int kThreads = 256;

using cuda::from_float;
using cuda::to_float;
using cuda::warp_sum;

// grid (T), block 256: one row per block.
template <typename T>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const T* x,       // (T, D)
                                                            const T* weight,  // (D)
                                                            T* out,           // (T, D), may alias x
                                                            int dim, float eps) {
  __shared__ float warp_sums[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    const float v = to_float(xr[i]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  const float inv = rsqrtf(total / float(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += kThreads)
    out[row * dim + i] = from_float<T>(to_float(xr[i]) * inv * to_float(weight[i]));
}

template <typename T>
Status launch_rms_norm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows > 0x7fffffff) return Status::Invalid("rms_norm: too many rows for one launch");
  rms_norm_kernel<T><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<T*>(p.out), p.dim, p.eps);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace

Status rms_norm_cuda(const RmsNormParams& p, void* stream_ptr) {
  Status st = rms_norm_validate(p, true);
  if (!st.ok() || p.rows == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  return cuda::with_half_type(p.dtype,
                              [&](auto type) { return launch_rms_norm<typename decltype(type)::type>(p, stream); });
}

}  // namespace rsvlm_edge
