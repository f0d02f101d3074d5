// Shared by every kernel family: the status launchers return and the element types they take.
// No exceptions cross the launcher boundary: the bindings turn a failed status into a Python error
// with the same message.
#pragma once

#include <string>
#include <utility>

namespace rsvlm_edge {

// Element type of a kernel argument.
enum class DType { kF32, kF16, kBF16, kI8 };

inline std::string dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kI8: return "int8";
  }
  return "?";
}

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
