#include "rsvlm_edge/device.h"

#ifdef RSVLM_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rsvlm_edge {

#ifdef RSVLM_WITH_CUDA

namespace {
std::string cuda_error(cudaError_t e, const char* what, int line) {
  return std::string(what) + " failed: " + cudaGetErrorString(e) + " (" + __FILE__ + ":" + std::to_string(line) + ")";
}
}  // namespace

int cuda_pointer_device(const void* ptr) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error this query leaves behind
    return -1;
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) return -1;
  return attr.device;
}

int cuda_current_device() {
  int d = -1;
  if (cudaGetDevice(&d) != cudaSuccess) return -1;
  return d;
}

std::string cuda_set_device(int device) {
  const cudaError_t e = cudaSetDevice(device);
  return e == cudaSuccess ? "" : cuda_error(e, "cudaSetDevice", __LINE__);
}

std::string cuda_wait_for_stream(int64_t producer_stream, int64_t consumer_stream) {
  // 0 (NULL) and 1 (cudaStreamLegacy) are the same legacy default stream.
  const int64_t p = producer_stream == 1 ? 0 : producer_stream;
  const int64_t c = consumer_stream == 1 ? 0 : consumer_stream;
  if (p == c) return "";
  cudaEvent_t ev;
  cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
  if (e != cudaSuccess) return cuda_error(e, "cudaEventCreateWithFlags", __LINE__);
  e = cudaEventRecord(ev, reinterpret_cast<cudaStream_t>(producer_stream));
  if (e == cudaSuccess) {
    e = cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(consumer_stream), ev, 0);
    if (e != cudaSuccess) {
      cudaEventDestroy(ev);
      return cuda_error(e, "cudaStreamWaitEvent", __LINE__);
    }
  } else {
    cudaEventDestroy(ev);
    return cuda_error(e, "cudaEventRecord", __LINE__);
  }
  e = cudaEventDestroy(ev);  // safe: the wait is already enqueued
  if (e != cudaSuccess) return cuda_error(e, "cudaEventDestroy", __LINE__);
  return "";
}

#else  // no CUDA in this build

int cuda_pointer_device(const void*) { return -1; }

int cuda_current_device() { return -1; }

std::string cuda_set_device(int) { return "this build of rsvlm_edge has no CUDA"; }

std::string cuda_wait_for_stream(int64_t, int64_t) { return "this build of rsvlm_edge has no CUDA"; }

#endif

}  // namespace rsvlm_edge
