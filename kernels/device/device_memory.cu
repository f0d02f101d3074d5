// device_memory.h on the CUDA runtime (the build without CUDA has device_memory.cpp's stubs).
#include <cuda_runtime.h>

#include <string>

#include "common/cuda_check.cuh"
#include "rsvlm_edge/device_memory.h"

namespace rsvlm_edge {

namespace {
Status check_bytes(int64_t bytes, const char* what) {
  if (bytes < 0) return Status::Invalid(std::string(what) + ": negative size " + std::to_string(bytes));
  return Status::Ok();
}
}  // namespace

Status device_alloc(int64_t bytes, void** ptr) {
  if (ptr == nullptr) return Status::Invalid("device_alloc: ptr is null");
  *ptr = nullptr;
  if (Status st = check_bytes(bytes, "device_alloc"); !st.ok()) return st;
  if (bytes == 0) return Status::Ok();
  RSVLM_CUDA_CHECK(cudaMalloc(ptr, static_cast<size_t>(bytes)));
  return Status::Ok();
}

void device_free(void* ptr) noexcept {
  if (ptr != nullptr) cudaFree(ptr);
}

Status device_copy_from_host(void* dst, const void* src, int64_t bytes) {
  if (Status st = check_bytes(bytes, "device_copy_from_host"); !st.ok()) return st;
  if (bytes == 0) return Status::Ok();
  RSVLM_CUDA_CHECK(cudaMemcpy(dst, src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice));
  return Status::Ok();
}

Status device_copy_to_host(void* dst, const void* src, int64_t bytes) {
  if (Status st = check_bytes(bytes, "device_copy_to_host"); !st.ok()) return st;
  if (bytes == 0) return Status::Ok();
  RSVLM_CUDA_CHECK(cudaMemcpy(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost));
  return Status::Ok();
}

Status device_copy(void* dst, const void* src, int64_t bytes) {
  if (Status st = check_bytes(bytes, "device_copy"); !st.ok()) return st;
  if (bytes == 0) return Status::Ok();
  RSVLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, 0));
  return Status::Ok();
}

Status device_zero(void* dst, int64_t bytes) {
  if (Status st = check_bytes(bytes, "device_zero"); !st.ok()) return st;
  if (bytes == 0) return Status::Ok();
  RSVLM_CUDA_CHECK(cudaMemsetAsync(dst, 0, static_cast<size_t>(bytes), 0));
  return Status::Ok();
}

}  // namespace rsvlm_edge
