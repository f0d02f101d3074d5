// rope CUDA path (fp16/bf16, fp32 math): one thread per rotated pair, grid-stride. Tested against
// rope_reference (see rsvlm_edge/rope.h).
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
#include "common/rope_math.cuh"
#include "rsvlm_edge/rope.h"

namespace rsvlm_edge {
namespace {

using cuda::from_float;
using cuda::to_float;

// One thread per rotated pair (token t, head h over q then k, i < D/2); grid-stride.
template <typename T>
__global__ void __launch_bounds__(cuda::kGridStrideThreads) rope_kernel(RopeParams p) {
  const int half = p.head_dim / 2;
  const int heads = p.num_heads + (p.k ? p.num_kv_heads : 0);
  cuda::grid_stride_loop(p.tokens * heads * half, [&](int64_t idx) {
    const int i = int(idx % half);
    const int h = int((idx / half) % heads);
    const int64_t t = idx / (int64_t(half) * heads);
    T* x = h < p.num_heads ? static_cast<T*>(p.q) + (t * p.num_heads + h) * p.head_dim
                           : static_cast<T*>(p.k) + (t * p.num_kv_heads + (h - p.num_heads)) * p.head_dim;
    float c, s;
    cuda::rope_cos_sin(i, p.head_dim, p.theta, p.positions[t], &c, &s);
    const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
    x[i] = from_float<T>(cuda::rope_first(x1, x2, c, s));
    x[i + half] = from_float<T>(cuda::rope_second(x1, x2, c, s));
  });
}

}  // namespace

Status rope_cuda(const RopeParams& p, void* stream_ptr) {
  Status st = rope_validate(p, true);
  if (!st.ok() || p.tokens == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t total = p.tokens * (p.num_heads + (p.k ? p.num_kv_heads : 0)) * (p.head_dim / 2);
  cuda::with_half_type(p.dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    rope_kernel<T><<<cuda::grid_stride_blocks(total), cuda::kGridStrideThreads, 0, stream>>>(p);
  });
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace rsvlm_edge
