// Launch helpers shared by the CUDA launchers: grid-stride loops (one item per thread, a capped
// grid) and the dispatch from a DType to the CUDA activation type (float16 / bfloat16).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "rsvlm_edge/dtype.h"

namespace rsvlm_edge {
namespace cuda {

// Threads per block of the grid-stride kernels.
constexpr int kGridStrideThreads = 256;

// Blocks of kGridStrideThreads for a grid-stride loop over n items: one item per thread, at most
// 2^20 blocks (the loop covers the rest).
inline unsigned grid_stride_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kGridStrideThreads - 1) / kGridStrideThreads, 1 << 20));
}

// Calls body(i) for the items i in [0, n) of this thread in a grid-stride loop.
template <typename Body>
__device__ __forceinline__ void grid_stride_loop(int64_t n, Body body) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) body(i);
}

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<T>{}) with T = __half for DType::f16, else __nv_bfloat16: the CUDA activation type of a
// launcher whose validate() allowed only these two.
template <typename F>
auto with_half_type(DType dtype, F&& f) {
  return dtype == DType::f16 ? f(TypeTag<__half>{}) : f(TypeTag<__nv_bfloat16>{});
}

}  // namespace cuda
}  // namespace rsvlm_edge
