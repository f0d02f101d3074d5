// rms_norm CUDA path (fp16/bf16, fp32 accumulation), optionally with the residual add fused in front
// (x += add; out = norm(x)): a block of 256 threads per row. Rows of D % 8 == 0 elements (16-byte
// aligned, D <= 8192) stay in registers between the sum of squares and the output: x and add are read
// once, x and out written once. Other rows take the strided loop, which reads x again. Tested against
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
constexpr int kVecsPerThread = 4;                          // 8-element vectors a thread keeps in registers
constexpr int kMaxRegisterDim = kThreads * kVecsPerThread * 8;  // 8192

using cuda::block_sum;
using cuda::from_float;
using cuda::load8;
using cuda::store8;
using cuda::to_float;

// grid (T), block 256: one row per block, held in registers. D % 8 == 0, D <= 8192, rows 16-byte aligned.
// With kAdd each stored x is the sum rounded to T, and the statistics are those of the stored values.
template <typename T, bool kAdd>
__global__ void __launch_bounds__(kThreads) rms_norm_vec_kernel(T* x,             // (T, D), in place with kAdd
                                                                const T* add,     // (T, D) or nullptr
                                                                const T* weight,  // (D)
                                                                T* out,           // (T, D)
                                                                int dim, float eps) {
  __shared__ float sh[32];  // block_sum's scratch
  cuda::allow_dependent_launch();  // the linear after the norm may start on its weights
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  const int vecs = dim / 8;
  float v[kVecsPerThread][8];
  float ss = 0.f;
#pragma unroll
  for (int u = 0; u < kVecsPerThread; ++u) {
    const int vi = threadIdx.x + u * kThreads;
    if (vi >= vecs) break;
    load8(x + base + int64_t(vi) * 8, v[u]);
    if (kAdd) {
      float a[8];
      load8(add + base + int64_t(vi) * 8, a);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[u][i] = to_float(from_float<T>(v[u][i] + a[i]));
      store8(x + base + int64_t(vi) * 8, v[u]);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) ss += v[u][i] * v[u][i];
  }
  const float inv = rsqrtf(block_sum(ss, sh) / float(dim) + eps);
#pragma unroll
  for (int u = 0; u < kVecsPerThread; ++u) {
    const int vi = threadIdx.x + u * kThreads;
    if (vi >= vecs) break;
    float w[8], y[8];
    load8(weight + int64_t(vi) * 8, w);
#pragma unroll
    for (int i = 0; i < 8; ++i) y[i] = v[u][i] * inv * w[i];
    store8(out + base + int64_t(vi) * 8, y);
  }
}

// grid (T), block 256: one row per block, any D. With kAdd each thread reads back only what it wrote.
template <typename T, bool kAdd>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(T* x,             // (T, D), in place with kAdd
                                                            const T* add,     // (T, D) or nullptr
                                                            const T* weight,  // (D)
                                                            T* out,           // (T, D), may alias x without kAdd
                                                            int dim, float eps) {
  __shared__ float sh[32];
  cuda::allow_dependent_launch();
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    float v = to_float(x[base + i]);
    if (kAdd) {
      const T r = from_float<T>(v + to_float(add[base + i]));
      x[base + i] = r;
      v = to_float(r);
    }
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, sh) / float(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += kThreads)
    out[base + i] = from_float<T>(to_float(x[base + i]) * inv * to_float(weight[i]));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, bool kAdd>
void launch_variant(const RmsNormParams& p, cudaStream_t stream) {
  T* x = static_cast<T*>(p.x);
  const T* add = static_cast<const T*>(p.add);
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const unsigned rows = static_cast<unsigned>(p.rows);
  const bool vec = p.dim % 8 == 0 && p.dim <= kMaxRegisterDim && aligned16(x) && aligned16(w) && aligned16(out) &&
                   (!kAdd || aligned16(add));
  if (vec)
    rms_norm_vec_kernel<T, kAdd><<<rows, kThreads, 0, stream>>>(x, add, w, out, p.dim, p.eps);
  else
    rms_norm_kernel<T, kAdd><<<rows, kThreads, 0, stream>>>(x, add, w, out, p.dim, p.eps);
}

template <typename T>
Status launch_rms_norm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows > 0x7fffffff) return Status::Invalid("rms_norm: too many rows for one launch");
  if (p.add != nullptr)
    launch_variant<T, true>(p, stream);
  else
    launch_variant<T, false>(p, stream);
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
