// Public C++ API: plain CUDA device buffers, for callers that keep activations on the GPU between kernel calls
// without torch or cupy (the Python runtime's CUDA image tower: rsvlm_edge._C.DeviceArray,
// rsvlm_edge/backends/graph_cuda_vit.py). Every call returns a Status and never throws; in a build without CUDA
// they return kNotCompiled (device_free does nothing). Copies are synchronous: device_copy_to_host waits for the
// work already queued on the legacy default stream (where the ops' bindings launch with stream=0).
#pragma once

#include <cstdint>

#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

// *ptr = `bytes` (>= 0; 0 allocates nothing and sets nullptr) of device memory on the current device.
Status device_alloc(int64_t bytes, void** ptr);
// Frees what device_alloc returned (nullptr: nothing). Never fails loudly: the runtime is tearing down.
void device_free(void* ptr) noexcept;
// dst (device) <- src (host), `bytes` bytes.
Status device_copy_from_host(void* dst, const void* src, int64_t bytes);
// dst (host) <- src (device), `bytes` bytes, after the work queued on the legacy default stream.
Status device_copy_to_host(void* dst, const void* src, int64_t bytes);
// dst (device) <- dst (device) of another buffer, `bytes` bytes (stream order: the legacy default stream).
Status device_copy(void* dst, const void* src, int64_t bytes);
// `bytes` zero bytes at dst (device).
Status device_zero(void* dst, int64_t bytes);

}  // namespace rsvlm_edge
