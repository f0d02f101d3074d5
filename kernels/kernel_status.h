// Status returned by every kernel launcher (CPU and CUDA). No exceptions cross the launcher
// boundary: the bindings turn a failed status into a Python error with the same message.
#pragma once

#include <string>
#include <utility>

namespace rsvlm_edge {

struct KernelStatus {
  std::string message;  // empty when the launch succeeded

  bool ok() const { return message.empty(); }
  static KernelStatus Ok() { return {}; }
  static KernelStatus Error(std::string msg) { return KernelStatus{std::move(msg)}; }
};

}  // namespace rsvlm_edge

#ifdef __CUDACC__
#include <cuda_runtime.h>
// Evaluate a CUDA runtime call; on failure return a KernelStatus naming the call and file:line.
#define RSVLM_CUDA_RETURN_IF_ERROR(expr)                                                      \
  do {                                                                                       \
    cudaError_t rsvlm_err_ = (expr);                                                          \
    if (rsvlm_err_ != cudaSuccess) {                                                          \
      return ::rsvlm_edge::KernelStatus::Error(std::string(#expr) + " failed at " + __FILE__ + \
                                               ":" + std::to_string(__LINE__) + ": " +        \
                                               cudaGetErrorString(rsvlm_err_));               \
    }                                                                                        \
  } while (0)
#endif
