// Public C++ API: element types and devices shared by all ops. No torch, no Python, no CUDA headers.
#pragma once

#include <cstdint>

namespace rsvlm_edge {

// Element type of a tensor argument. f16 = IEEE binary16, bf16 = bfloat16 (both 2 bytes).
enum class DType : int32_t { u8, i8, i32, i64, f16, bf16, f32 };

inline int64_t dtype_size(DType t) {
  switch (t) {
    case DType::u8:
    case DType::i8:
      return 1;
    case DType::f16:
    case DType::bf16:
      return 2;
    case DType::i32:
    case DType::f32:
      return 4;
    case DType::i64:
      return 8;
  }
  return 0;
}

// numpy-style name: "uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32".
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::u8:
      return "uint8";
    case DType::i8:
      return "int8";
    case DType::i32:
      return "int32";
    case DType::i64:
      return "int64";
    case DType::f16:
      return "float16";
    case DType::bf16:
      return "bfloat16";
    case DType::f32:
      return "float32";
  }
  return "?";
}

enum class DeviceType : int32_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int32_t id = 0;  // CUDA ordinal; 0 for cpu
  bool operator==(const Device& o) const { return type == o.type && id == o.id; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

}  // namespace rsvlm_edge
