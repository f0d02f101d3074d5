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
#include "common/cuda_launch.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {
namespace {

using cuda::from_float;
using cuda::to_float;

template <typename T>
__global__ void __launch_bounds__(cuda::kGridStrideThreads)
    swiglu_kernel(const T* gate, const T* up, T* out, int64_t n) {
  cuda::allow_dependent_launch();  // the down projection may start on its weights
  cuda::grid_stride_loop(n, [&](int64_t i) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.f + expf(-g)) * to_float(up[i]));
  });
}

}  // namespace

Status swiglu_cuda(const SwiGluParams& p, void* stream_ptr) {
  Status st = swiglu_validate(p, true);
  if (!st.ok() || p.n == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cuda::with_half_type(p.dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    swiglu_kernel<T><<<cuda::grid_stride_blocks(p.n), cuda::kGridStrideThreads, 0, stream>>>(
        static_cast<const T*>(p.gate), static_cast<const T*>(p.up), static_cast<T*>(p.out), p.n);
  });
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace rsvlm_edge
