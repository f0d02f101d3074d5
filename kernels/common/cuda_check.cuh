// CUDA error checking for kernel launchers that return rsvlm_edge::Status (never throw, never exit).
//   RSVLM_CUDA_CHECK(cudaGetLastError());   // returns Status::Cuda("... failed: <why> (file.cu:123)")
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "rsvlm_edge/status.h"

#define RSVLM_CUDA_CHECK(expr)                                                                                     \
  do {                                                                                                             \
    const cudaError_t rsvlm_err_ = (expr);                                                                         \
    if (rsvlm_err_ != cudaSuccess)                                                                                 \
      return ::rsvlm_edge::Status::Cuda(std::string(#expr) + " failed: " + cudaGetErrorString(rsvlm_err_) + " (" + \
                                        __FILE__ + ":" + std::to_string(__LINE__) + ")");                          \
  } while (0)
