// layer_norm CUDA path (fp32/fp16/bf16, fp32 accumulation): a block of 256 threads per row, two-pass
// statistics (the mean, then the sum of squared deviations). Tested against layer_norm_reference (see
// rsvlm_edge/layer_norm.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/cuda_check.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/layer_norm.h"

namespace rsvlm_edge {
namespace {

constexpr int kThreads = 256;

using cuda::from_float;
using cuda::to_float;
using cuda::block_sum;

// grid (M), block 256: one row per block. With kAdd the row of x is updated first (x += add, rounded
// to T) and the statistics are those of the stored values; each thread reads back only what it wrote.
template <typename T, bool kAdd, bool kBeta>
__global__ void __launch_bounds__(kThreads) layer_norm_kernel(T* x,            // (M, D), in place with kAdd
                                                              const T* add,    // (M, D) or nullptr
                                                              const T* gamma,  // (D)
                                                              const T* beta,   // (D) or nullptr
                                                              T* out,          // (M, D), overlaps none of the above
                                                              int dim, float eps) {
  __shared__ float sh[32];  // block_sum's scratch
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float v = to_float(x[base + i]);
    if (kAdd) {
      const T r = from_float<T>(v + to_float(add[base + i]));
      x[base + i] = r;
      v = to_float(r);
    }
    s += v;
  }
  const float mean = block_sum(s, sh) / static_cast<float>(dim);
  float sq = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    const float dv = to_float(x[base + i]) - mean;
    sq += dv * dv;
  }
  const float rstd = rsqrtf(block_sum(sq, sh) / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float y = (to_float(x[base + i]) - mean) * rstd * to_float(gamma[i]);
    if (kBeta) y += to_float(beta[i]);
    out[base + i] = from_float<T>(y);
  }
}

template <typename T, bool kAdd, bool kBeta>
void launch_variant(const LayerNormParams& p, cudaStream_t stream) {
  layer_norm_kernel<T, kAdd, kBeta><<<static_cast<unsigned>(p.m), kThreads, 0, stream>>>(
      static_cast<T*>(p.x), static_cast<const T*>(p.add), static_cast<const T*>(p.gamma), static_cast<const T*>(p.beta),
      static_cast<T*>(p.out), p.d, p.eps);
}

template <typename T>
Status launch_layer_norm(const LayerNormParams& p, cudaStream_t stream) {
  if (p.m > 0x7fffffff) return Status::Invalid("layer_norm: too many rows for one launch");
  const bool add = p.add != nullptr, beta = p.beta != nullptr;
  if (add && beta)
    launch_variant<T, true, true>(p, stream);
  else if (add)
    launch_variant<T, true, false>(p, stream);
  else if (beta)
    launch_variant<T, false, true>(p, stream);
  else
    launch_variant<T, false, false>(p, stream);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace

Status layer_norm_cuda(const LayerNormParams& p, void* stream_ptr) {
  Status st = layer_norm_validate(p, /*cuda=*/true);
  if (!st.ok() || p.m == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.dtype) {  // layer_norm_validate allowed exactly these three
    case DType::f32:
      return launch_layer_norm<float>(p, stream);
    case DType::f16:
      return launch_layer_norm<__half>(p, stream);
    case DType::bf16:
      return launch_layer_norm<__nv_bfloat16>(p, stream);
    default:
      return Status::Invalid("layer_norm: unsupported dtype on CUDA");
  }
}

}  // namespace rsvlm_edge
