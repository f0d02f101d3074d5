// top_p_sample CUDA path (see rsvlm_edge/top_p_sample.h), fp32:
//   1. softmax_kernel, a block of 1024 threads per row: the max and the sum of exp(x / T - max), then the
//      probabilities and their token ids into the workspace; a row whose softmax is not finite (or T <= 0)
//      writes its argmax (numpy's: the first NaN, else the first maximum) and is marked done.
//   2. CUB's segmented radix sort, descending (stable: equal probabilities keep the index order).
//   3. draw_kernel, a block per row: prefix sums of the sorted probabilities 1024 at a time (block scan),
//      once to find the nucleus (the first prefix >= top_p) and once to find the first prefix > u * its mass.
// Tested against top_p_sample_reference by tests/test_kernels_top_p_sample.py on a GPU.
#include <cub/cub.cuh>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "common/cuda_check.cuh"
#include "rsvlm_edge/top_p_sample.h"

namespace rsvlm_edge {
namespace {

constexpr int kThreads = 1024;

// Where the workspace's parts start (bytes), each 256-byte aligned.
struct Layout {
  size_t probs_in = 0, probs_out = 0, ids_in = 0, ids_out = 0, offsets = 0, done = 0, cub = 0, cub_bytes = 0,
         total = 0;
};

size_t align256(size_t x) { return (x + 255) / 256 * 256; }

Layout layout(int batch, int vocab, size_t cub_bytes) {
  const size_t n = size_t(batch) * size_t(vocab);
  Layout l;
  l.probs_in = 0;
  l.probs_out = align256(l.probs_in + n * sizeof(float));
  l.ids_in = align256(l.probs_out + n * sizeof(float));
  l.ids_out = align256(l.ids_in + n * sizeof(int32_t));
  l.offsets = align256(l.ids_out + n * sizeof(int32_t));
  l.done = align256(l.offsets + size_t(batch + 1) * sizeof(int32_t));
  l.cub = align256(l.done + size_t(batch) * sizeof(int32_t));
  l.cub_bytes = cub_bytes;
  l.total = align256(l.cub + cub_bytes);
  return l;
}

size_t cub_sort_bytes(int batch, int vocab) {
  size_t bytes = 0;
  const int n = batch * vocab;
  if (cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, bytes, static_cast<const float*>(nullptr),
                                                         static_cast<float*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                         static_cast<int32_t*>(nullptr), n, batch,
                                                         static_cast<const int32_t*>(nullptr),
                                                         static_cast<const int32_t*>(nullptr)) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return bytes;
}

// numpy.argmax's order: a NaN beats everything (the first NaN wins), then the larger value, then the lower index.
struct ArgMax {
  float v;
  int i;
};
__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) {
  const bool an = isnan(a.v), bn = isnan(b.v);
  if (an != bn) return an ? a : b;
  if (!an && a.v != b.v) return a.v > b.v ? a : b;
  return a.i <= b.i ? a : b;
}
struct BetterOp {
  __device__ __forceinline__ ArgMax operator()(ArgMax a, ArgMax b) const { return better(a, b); }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// grid (B), block 1024.
__global__ void __launch_bounds__(kThreads) softmax_kernel(const float* logits,  // (B, V)
                                                           int vocab, float temperature,
                                                           float* probs,        // (B, V)
                                                           int32_t* ids,        // (B, V)
                                                           int32_t* offsets,    // (B + 1)
                                                           int32_t* done,       // (B): 1 = out[b] written
                                                           int64_t* out) {      // (B)
  using Reduce = cub::BlockReduce<float, kThreads>;
  using ReduceArg = cub::BlockReduce<ArgMax, kThreads>;
  __shared__ union {
    typename Reduce::TempStorage f;
    typename ReduceArg::TempStorage a;
  } tmp;
  __shared__ float shared_max, shared_sum;
  __shared__ int greedy;
  const int b = blockIdx.x;
  const int64_t base = int64_t(b) * vocab;
  const float* x = logits + base;
  if (threadIdx.x == 0) {
    offsets[b] = int32_t(base);
    if (b == gridDim.x - 1) offsets[b + 1] = int32_t(base + vocab);
  }
  float mx = -INFINITY;
  bool nan = false;
  if (temperature > 0.f)
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const float z = x[i] / temperature;
      nan = nan || isnan(z);
      mx = fmaxf(mx, z);
    }
  const int any_nan = __syncthreads_or(nan);
  mx = Reduce(tmp.f).Reduce(mx, MaxOp());
  if (threadIdx.x == 0) shared_max = mx;
  __syncthreads();
  mx = shared_max;
  float sum = 0.f;
  const bool finite_max = temperature > 0.f && !any_nan && isfinite(mx);
  if (finite_max)
    for (int i = threadIdx.x; i < vocab; i += kThreads) sum += expf(x[i] / temperature - mx);
  sum = Reduce(tmp.f).Sum(sum);
  if (threadIdx.x == 0) {
    shared_sum = sum;
    greedy = !(finite_max && sum > 0.f && isfinite(sum));
  }
  __syncthreads();
  if (greedy) {
    ArgMax best{x[0], 0};
    for (int i = threadIdx.x; i < vocab; i += kThreads) best = better(best, ArgMax{x[i], i});
    best = ReduceArg(tmp.a).Reduce(best, BetterOp());
    if (threadIdx.x == 0) {
      out[b] = best.i;
      done[b] = 1;
    }
    for (int i = threadIdx.x; i < vocab; i += kThreads) {  // a defined input for the sort
      probs[base + i] = 0.f;
      ids[base + i] = i;
    }
    return;
  }
  const float inv = 1.f / shared_sum;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    probs[base + i] = expf(x[i] / temperature - mx) * inv;
    ids[base + i] = i;
  }
  if (threadIdx.x == 0) done[b] = 0;
}

// The first index j (of the B x V sorted row) whose inclusive prefix sum passes `pred`, scanning 1024 at a
// time; -1 if none. Every thread gets the answer and, in *at, the prefix sum there; *last gets the sum of
// the whole row when no index passed.
template <typename Pred>
__device__ int first_prefix(const float* sorted, int vocab, Pred pred, float* at, float* last) {
  using Scan = cub::BlockScan<float, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int found;
  __shared__ float found_sum, chunk_total;
  float carry = 0.f;
  if (threadIdx.x == 0) found = vocab;
  __syncthreads();
  for (int c0 = 0; c0 < vocab; c0 += kThreads) {
    const int i = c0 + threadIdx.x;
    const float v = i < vocab ? sorted[i] : 0.f;
    float incl = 0.f;
    float total = 0.f;
    Scan(scan).InclusiveSum(v, incl, total);
    incl += carry;
    if (i < vocab && pred(incl)) atomicMin(&found, i);
    if (threadIdx.x == kThreads - 1) chunk_total = total;
    __syncthreads();
    if (found < vocab) {
      if (i == found) found_sum = incl;
      __syncthreads();
      *at = found_sum;
      return found;
    }
    carry += chunk_total;
    __syncthreads();  // scan storage and chunk_total reused
  }
  *last = carry;
  return -1;
}

// grid (B), block 1024.
__global__ void __launch_bounds__(kThreads) draw_kernel(const float* sorted_probs,  // (B, V), descending
                                                        const int32_t* sorted_ids,  // (B, V)
                                                        const float* uniforms,      // (B)
                                                        const int32_t* done,        // (B)
                                                        int vocab, float top_p,
                                                        int64_t* out) {             // (B)
  const int b = blockIdx.x;
  if (done[b]) return;
  const float* p = sorted_probs + int64_t(b) * vocab;
  float mass = 0.f, all = 0.f;
  int keep = vocab;
  if (top_p < 1.f) {
    const int j = first_prefix(p, vocab, [=](float c) { return c >= top_p; }, &mass, &all);
    if (j >= 0) keep = j + 1;
    else mass = all;
  } else {
    float unused = 0.f;
    first_prefix(p, vocab, [](float) { return false; }, &unused, &mass);
  }
  __syncthreads();
  const float target = uniforms[b] * mass;
  float unused = 0.f, rest = 0.f;
  int j = first_prefix(p, keep, [=](float c) { return c > target; }, &unused, &rest);
  if (j < 0) j = keep - 1;  // rounding: u * mass at or past the last kept prefix
  if (threadIdx.x == 0) out[b] = sorted_ids[int64_t(b) * vocab + j];
}

}  // namespace

size_t top_p_sample_cuda_workspace(int batch, int vocab) {
  if (batch <= 0 || vocab <= 0) return 0;
  return layout(batch, vocab, cub_sort_bytes(batch, vocab)).total;
}

Status top_p_sample_cuda(const TopPSampleParams& p, void* stream_ptr) {
  RSVLM_RETURN_IF_ERROR(top_p_sample_validate(p));
  if (p.batch == 0) return Status::Ok();
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const size_t cub_bytes = cub_sort_bytes(p.batch, p.vocab);
  if (cub_bytes == 0) return Status::Cuda("top_p_sample: the sort's workspace size could not be queried");
  const Layout l = layout(p.batch, p.vocab, cub_bytes);
  char* ws = static_cast<char*>(p.workspace);
  bool owned = false;
  if (ws != nullptr) {
    if (p.workspace_bytes < l.total)
      return Status::Invalid("top_p_sample: workspace holds " + std::to_string(p.workspace_bytes) + " bytes, " +
                             std::to_string(l.total) + " needed (top_p_sample_cuda_workspace)");
  } else {
    RSVLM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ws), l.total, stream));
    owned = true;
  }
  float* probs_in = reinterpret_cast<float*>(ws + l.probs_in);
  float* probs_out = reinterpret_cast<float*>(ws + l.probs_out);
  int32_t* ids_in = reinterpret_cast<int32_t*>(ws + l.ids_in);
  int32_t* ids_out = reinterpret_cast<int32_t*>(ws + l.ids_out);
  int32_t* offsets = reinterpret_cast<int32_t*>(ws + l.offsets);
  int32_t* done = reinterpret_cast<int32_t*>(ws + l.done);
  Status st = Status::Ok();
  softmax_kernel<<<p.batch, kThreads, 0, stream>>>(p.logits, p.vocab, p.temperature, probs_in, ids_in, offsets, done,
                                                   p.out);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) {
    size_t bytes = l.cub_bytes;
    err = cub::DeviceSegmentedRadixSort::SortPairsDescending(ws + l.cub, bytes, probs_in, probs_out, ids_in, ids_out,
                                                             p.batch * p.vocab, p.batch, offsets, offsets + 1, 0, 32,
                                                             stream);
  }
  if (err == cudaSuccess) {
    draw_kernel<<<p.batch, kThreads, 0, stream>>>(probs_out, ids_out, p.uniforms, done, p.vocab, p.top_p, p.out);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess)
    st = Status::Cuda(std::string("top_p_sample: ") + cudaGetErrorString(err));
  if (owned) {
    const cudaError_t freed = cudaFreeAsync(ws, stream);
    if (st.ok() && freed != cudaSuccess) st = Status::Cuda(std::string("top_p_sample: ") + cudaGetErrorString(freed));
  }
  return st;
}

}  // namespace rsvlm_edge
