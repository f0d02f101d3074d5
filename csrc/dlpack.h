// The few DLPack ABI structs we consume, written from the stable DLPack v0.8 specification
// (https://dmlc.github.io/dlpack/latest/c_api.html). Only what a consumer needs; layout must match
// the spec exactly because producers (torch, cupy, numpy, jax) hand us pointers to these.
#pragma once

#include <cstdint>

extern "C" {

typedef enum {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,  // pinned host memory: readable by the CPU
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13,  // managed memory: readable by CPU and GPU
  kDLOneAPI = 14,
  kDLWebGPU = 15,
  kDLHexagon = 16,
} DLDeviceType;

typedef struct {
  DLDeviceType device_type;
  int32_t device_id;
} DLDevice;

typedef enum {
  kDLInt = 0U,
  kDLUInt = 1U,
  kDLFloat = 2U,
  kDLOpaqueHandle = 3U,
  kDLBfloat = 4U,
  kDLComplex = 5U,
  kDLBool = 6U,
} DLDataTypeCode;

typedef struct {
  uint8_t code;    // DLDataTypeCode
  uint8_t bits;    // bits per lane, e.g. 8, 16, 32
  uint16_t lanes;  // 1 for scalar tensors (the only kind we accept)
} DLDataType;

typedef struct {
  void* data;  // base pointer; the first element is at (char*)data + byte_offset
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;    // (ndim)
  int64_t* strides;  // (ndim) in elements, or NULL for compact row-major
  uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);  // may be NULL
} DLManagedTensor;

}  // extern "C"

// PyCapsule names: a fresh capsule is named "dltensor"; a consumer that takes ownership renames it
// to "used_dltensor" so that the capsule's own destructor does not free the tensor a second time.
#define RSVLM_DLPACK_CAPSULE_NAME "dltensor"
#define RSVLM_DLPACK_USED_CAPSULE_NAME "used_dltensor"
