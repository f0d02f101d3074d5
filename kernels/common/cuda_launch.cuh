// Launch helpers shared by the CUDA launchers: grid-stride loops (one item per thread, a capped
// grid), the dispatch from a DType to the CUDA activation type (float16 / bfloat16), and programmatic
// dependent launch (PDL) for kernels that can start on their weights before the kernel ahead of them
// in the stream has finished.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

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

// ---------------------------------------------------------------- programmatic dependent launch
//
// A kernel started with launch_programmatic() may begin while the kernel before it in the stream is
// still running (compute capability >= 9.0; both kernels in one CUDA graph keep that edge). Until it
// calls wait_for_prior_grids() it may only read memory no kernel writes (weights) and write nothing:
// the wait returns once every earlier kernel of the stream has finished and its writes are visible.
// A kernel lets its successor start early with allow_dependent_launch(); without it the successor
// starts when the kernel's last block exits. Both device calls are no-ops below sm_90 and for kernels
// launched with <<<>>>.

__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Hint: bring [p, p + bytes) into L2; lane `lane` (0..31) of a warp takes every 32nd 128-byte line.
// Reads nothing into registers, so it is safe before wait_for_prior_grids() on weights.
__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes, int lane) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = int64_t(lane) * 128; off < bytes; off += 32 * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

// Whether launches on the current device may overlap programmatically: compute capability >= 9.0 and
// RSVLM_EDGE_CUDA_PDL not "off" (read once; the Python package refuses other values than on / off).
// Cached per device (up to 64 devices; beyond that, queried each time).
inline bool programmatic_launch_enabled() {
  static const bool env_on = [] {
    const char* e = std::getenv("RSVLM_EDGE_CUDA_PDL");
    return !(e != nullptr && std::strcmp(e, "off") == 0);
  }();
  if (!env_on) return false;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  static std::atomic<int> cached[64];  // 0 unknown, 1 no, 2 yes
  if (device >= 0 && device < 64) {
    const int c = cached[device].load(std::memory_order_relaxed);
    if (c != 0) return c == 2;
  }
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  const bool yes = major >= 9;
  if (device >= 0 && device < 64) cached[device].store(yes ? 2 : 1, std::memory_order_relaxed);
  return yes;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), as a programmatic dependent launch where
// programmatic_launch_enabled() and `stream` is a created stream (the legacy and per-thread default streams
// launch plainly: their implicit synchronisation with other streams is left as it is). The kernel must follow
// the rule above (wait_for_prior_grids() before touching anything earlier kernels write or read). Returns the
// launch's error.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_programmatic(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared_bytes,
                                cudaStream_t stream, Args&&... args) {
  const bool default_stream = stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread;
  if (default_stream || !programmatic_launch_enabled()) {
    kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace cuda
}  // namespace rsvlm_edge
