// Small device helpers shared by the CUDA kernels: fp32/fp16/bf16/int8 <-> fp32 conversion, warp
// reductions, and 8-element vector loads and stores.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace rsvlm_edge {
namespace cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(int8_t x) { return static_cast<float>(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
// Sum of `v` over the block (any blockDim.x <= 1024); every thread gets the total. `sh`: 32 floats of
// shared memory; safe to call repeatedly with the same `sh`.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_sum(v);
  __syncthreads();  // a previous call may still be reading sh
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < warps ? sh[lane] : 0.f;
  return warp_sum(v);
}

// 8 consecutive elements as fp32, from one 16-byte (fp16/bf16) or 8-byte (int8) load; `p` must be
// aligned to that size.
__device__ __forceinline__ void load8(const __half* p, float v[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = __half2float(h[i]);
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float v[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = __bfloat162float(h[i]);
}
__device__ __forceinline__ void load8(const int8_t* p, float v[8]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const int8_t* q = reinterpret_cast<const int8_t*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = static_cast<float>(q[i]);
}

// 8 fp32 values rounded to T (fp16/bf16) and stored with one 16-byte store; `p` 16-byte aligned.
template <typename T>
__device__ __forceinline__ void store8(T* p, const float v[8]) {
  static_assert(sizeof(T) == 2, "store8 writes fp16 / bf16");
  uint4 raw;
  T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) h[i] = from_float<T>(v[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

}  // namespace cuda
}  // namespace rsvlm_edge
