// Public C++ API: nucleus (top-p) sampling of the next token from fp32 logits, given one uniform draw
// per row (the caller's random generator; the Python runtime draws them from numpy's, so the host and
// device paths pick the same token for the same logits and draws):
//
//   temperature <= 0                  out[b] = argmax(logits[b]) (the first maximum; a NaN counts as one)
//   else p = softmax(logits[b] / temperature); rows whose p is not finite (logits / T overflowed: the
//        greedy limit) take the argmax as above; otherwise
//        order = indices by p descending, ties by index (a stable sort);
//        keep  = the smallest k with p[order[0]] + ... + p[order[k-1]] >= top_p (all V when top_p >= 1);
//        out[b] = order[j], j the first index < keep with cdf[j] > u[b], cdf = the kept prefix sums / their total
//
// which is the numpy op set's top_p_sample (backends/decoder_numpy.py; generation.sample_with_uniforms).
//
// Implementations (kernels/top_p_sample/):
//   top_p_sample_reference  top_p_sample_ref.cpp  naive: fp64 softmax and sums, std::stable_sort
//   top_p_sample_cpu        top_p_sample_cpu.cpp  the thread pool over rows, fp64 sums, the nucleus found
//                                                 by partial sorts of growing prefixes (a full sort past V / 8)
//   top_p_sample_cuda       top_p_sample.cu       fp32: a block per row for the softmax, a segmented radix
//                                                 sort (CUB), a block scan per row for the nucleus and the draw
// fp32 on the GPU against fp64 on the host: the same token unless u[b] falls within ~1e-6 of a cdf step.
#pragma once

#include <cstddef>
#include <cstdint>

#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct TopPSampleParams {
  const float* logits = nullptr;    // (B, V) fp32
  const float* uniforms = nullptr;  // (B) in [0, 1); unused where temperature <= 0
  int64_t* out = nullptr;           // (B) sampled token ids
  int batch = 0;                    // B >= 0
  int vocab = 0;                    // V >= 1
  float temperature = 1.f;          // <= 0: greedy
  float top_p = 1.f;                // in (0, 1]
  // CUDA only: top_p_sample_cuda_workspace(B, V) bytes of device memory; nullptr = the launcher takes a
  // stream-ordered allocation for the call.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

Status top_p_sample_validate(const TopPSampleParams& p);
Status top_p_sample_reference(const TopPSampleParams& p);  // host pointers
Status top_p_sample_cpu(const TopPSampleParams& p);        // host pointers
// Device pointers; `stream` a cudaStream_t; kNotCompiled without CUDA.
Status top_p_sample_cuda(const TopPSampleParams& p, void* stream);
// Bytes of workspace top_p_sample_cuda needs for B rows of V logits (0 without CUDA).
size_t top_p_sample_cuda_workspace(int batch, int vocab);

}  // namespace rsvlm_edge
