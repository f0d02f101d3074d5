// swiglu CUDA path (fp16/bf16, fp32 math): grid-stride elementwise loop. Tested against
// swiglu_reference (see rsvlm_edge/swiglu.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/cuda_check.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {
namespace {

constexpr int kThreads = 256;

using cuda::from_float;
using cuda::to_float;

unsigned grid_for(int64_t n, int threads) {
  return static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, 1 << 20));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) swiglu_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.f + expf(-g)) * to_float(up[i]));
  }
}

}  // namespace

Status swiglu_cuda(const SwiGluParams& p, void* stream_ptr) {
  Status st = swiglu_validate(p, true);
  if (!st.ok() || p.n == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.dtype == DType::f16)
    swiglu_kernel<__half><<<grid_for(p.n, kThreads), kThreads, 0, stream>>>(
        static_cast<const __half*>(p.gate), static_cast<const __half*>(p.up), static_cast<__half*>(p.out), p.n);
  else
    swiglu_kernel<__nv_bfloat16><<<grid_for(p.n, kThreads), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(p.gate), static_cast<const __nv_bfloat16*>(p.up),
        static_cast<__nv_bfloat16*>(p.out), p.n);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace rsvlm_edge
