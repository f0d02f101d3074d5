// Public C++ API: the status every kernel launcher returns. No torch, no Python, no CUDA headers.
#pragma once

#include <string>
#include <utility>

namespace rsvlm_edge {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // a shape, dtype, size or pointer the caller passed cannot be used
  kNotCompiled,      // the requested path (e.g. CUDA) is not in this build
  kCudaError,        // a CUDA runtime call or kernel launch failed (message has file:line)
  kOutOfMemory,      // a host scratch buffer could not be allocated (sizes are checked before allocating)
  kCapacityExceeded, // a resource the caller sized is full (a KV cache's positions, a paged cache's pool)
};

// A launcher's result: ok(), or a code plus one message naming the problem (and the fix).
struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;

  bool ok() const { return code == StatusCode::kOk; }

  static Status Ok() { return {}; }
  static Status Invalid(std::string msg) { return {StatusCode::kInvalidArgument, std::move(msg)}; }
  static Status NotCompiled(std::string msg) { return {StatusCode::kNotCompiled, std::move(msg)}; }
  static Status Cuda(std::string msg) { return {StatusCode::kCudaError, std::move(msg)}; }
  static Status OutOfMemory(std::string msg) { return {StatusCode::kOutOfMemory, std::move(msg)}; }
  static Status CapacityExceeded(std::string msg) { return {StatusCode::kCapacityExceeded, std::move(msg)}; }
};

}  // namespace rsvlm_edge

// Returns the Status of `expr` from the enclosing function when it is not ok.
#define RSVLM_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::rsvlm_edge::Status rsvlm_status_ = (expr);   \
    if (!rsvlm_status_.ok()) return rsvlm_status_; \
  } while (0)
