// gelu CUDA path (fp32/fp16/bf16 in place, fp32 math): grid-stride elementwise loop. erf through
// erfcf (0.5 x erfc(-x / sqrt 2): no 1 + erf cancellation for x < 0), tanh and quick as x * sigmoid(z)
// with expf; +-inf map to +inf / -0 as in rsvlm_edge/gelu.h. Tested against gelu_reference.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/cuda_check.cuh"
#include "common/cuda_launch.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/gelu.h"

namespace rsvlm_edge {
namespace {

using cuda::from_float;
using cuda::to_float;

template <GeluKind K>
__device__ __forceinline__ float gelu_f(float x) {
  if (isinf(x)) return x > 0.f ? x : -0.f;  // the limits (x * 0 would be NaN)
  if (K == GeluKind::erf) return 0.5f * x * erfcf(-0.70710678118654752f * x);
  // x * sigmoid(z): expf(-z) overflows to inf for z < -88 and the quotient is then -0
  const float z = K == GeluKind::tanh ? x * (1.5957691216057308f + 0.0713548162726009f * (x * x)) : 1.702f * x;
  return x / (1.f + expf(-z));
}

template <typename T, GeluKind K>
__global__ void __launch_bounds__(cuda::kGridStrideThreads) gelu_kernel(T* x,  // (M * N), in place
                                                                        int64_t n) {
  cuda::grid_stride_loop(n, [&](int64_t i) { x[i] = from_float<T>(gelu_f<K>(to_float(x[i]))); });
}

template <typename T>
void launch_gelu(const GeluParams& p, int64_t n, cudaStream_t stream) {
  const unsigned blocks = cuda::grid_stride_blocks(n);
  T* x = static_cast<T*>(p.x);
  switch (p.kind) {
    case GeluKind::tanh:
      gelu_kernel<T, GeluKind::tanh><<<blocks, cuda::kGridStrideThreads, 0, stream>>>(x, n);
      break;
    case GeluKind::quick:
      gelu_kernel<T, GeluKind::quick><<<blocks, cuda::kGridStrideThreads, 0, stream>>>(x, n);
      break;
    default:
      gelu_kernel<T, GeluKind::erf><<<blocks, cuda::kGridStrideThreads, 0, stream>>>(x, n);
      break;
  }
}

}  // namespace

Status gelu_cuda(const GeluParams& p, void* stream_ptr) {
  Status st = gelu_validate(p, /*cuda=*/true);
  if (!st.ok()) return st;
  const int64_t n = p.m * p.n;  // validate checked it fits
  if (n == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.dtype) {  // gelu_validate allowed exactly these three
    case DType::f32:
      launch_gelu<float>(p, n, stream);
      break;
    case DType::f16:
      launch_gelu<__half>(p, n, stream);
      break;
    case DType::bf16:
      launch_gelu<__nv_bfloat16>(p, n, stream);
      break;
    default:
      return Status::Invalid("gelu: unsupported dtype on CUDA");
  }
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace rsvlm_edge
