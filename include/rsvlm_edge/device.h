// Public C++ API: the few CUDA runtime queries the bindings need, callable from code that does not
// include CUDA headers (streams are passed as integers: cudaStream_t values, 0 = legacy default).
// In a build without CUDA they answer "unknown" / an error string instead of failing to link.
#pragma once

#include <cstdint>
#include <string>

namespace rsvlm_edge {

// CUDA ordinal of the device that owns `ptr`, or -1 when unknown (no CUDA in this build, or a
// host pointer).
int cuda_pointer_device(const void* ptr);

// Current CUDA device ordinal, or -1 without CUDA in this build (or when the query fails).
int cuda_current_device();

// Make `device` current. Returns "" on success, else the CUDA error with file:line.
std::string cuda_set_device(int device);

// Make `consumer_stream` wait for the work queued so far on `producer_stream` (event record +
// stream wait; nothing when they are the same stream). Returns "" on success, else the CUDA error
// with file:line. Without CUDA in this build: returns an error string.
std::string cuda_wait_for_stream(int64_t producer_stream, int64_t consumer_stream);

}  // namespace rsvlm_edge
