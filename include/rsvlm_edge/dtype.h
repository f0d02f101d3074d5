// Public C++ API: element types and devices shared by all ops. No torch, no Python, no CUDA headers.
#pragma once

#include <cstdint>

namespace rsvlm_edge {

// Element type of a tensor argument. f16 = IEEE binary16, bf16 = bfloat16 (both 2 bytes).
enum class DType : int32_t { u8, i8, i32, i64, f16, bf16, f32 };

namespace detail {

struct DTypeInfo {
  const char* name;  // numpy-style
  int64_t size;      // bytes per element
};

// One entry per DType, in the enum's order.
constexpr DTypeInfo kDTypeInfo[] = {{"uint8", 1},   {"int8", 1},     {"int32", 4},  {"int64", 8},
                                    {"float16", 2}, {"bfloat16", 2}, {"float32", 4}};

// The entry of `t`, or nullptr for a value outside the enum.
inline const DTypeInfo* dtype_info(DType t) {
  const auto i = static_cast<uint32_t>(t);
  return i < sizeof(kDTypeInfo) / sizeof(kDTypeInfo[0]) ? &kDTypeInfo[i] : nullptr;
}

}  // namespace detail

// Bytes per element (0 for a value outside the enum).
inline int64_t dtype_size(DType t) {
  const detail::DTypeInfo* info = detail::dtype_info(t);
  return info ? info->size : 0;
}

// numpy-style name: "uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32" ("?" for a
// value outside the enum).
inline const char* dtype_name(DType t) {
  const detail::DTypeInfo* info = detail::dtype_info(t);
  return info ? info->name : "?";
}

enum class DeviceType : int32_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int32_t id = 0;  // CUDA ordinal; 0 for cpu
  bool operator==(const Device& o) const { return type == o.type && id == o.id; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

}  // namespace rsvlm_edge
