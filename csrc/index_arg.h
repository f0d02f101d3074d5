// Integer index arguments (lengths, positions, page tables) for the kernel bindings.
//
// Host (numpy arrays of any integer dtype and strides, lists / tuples of ints, CPU DLPack tensors):
// every value is read at its full width (int64 / uint64), checked to lie in [min_value, 2^31 - 1]
// and copied into a C-contiguous int32 array kept alive by the returned TensorArg. A value that does
// not fit raises ValueError naming the argument, the index and the value: a 64-bit index is never
// truncated. Whether a value is within the cache is checked by the kernels (kv_attention.cpp).
// Device tensors are passed through unchanged and must already be int32 (checked by the caller:
// the kernels read int32 and the values cannot be inspected on the host).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "tensor_arg.h"

namespace rsvlm_edge {

namespace detail {

inline std::string index_str(const std::vector<int64_t>& shape, int64_t flat) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) {
    idx[i] = shape[i] > 0 ? flat % shape[i] : 0;
    flat = shape[i] > 0 ? flat / shape[i] : 0;
  }
  std::string s = "[";
  for (size_t i = 0; i < idx.size(); ++i) s += (i ? ", " : "") + std::to_string(idx[i]);
  return s + "]";
}

[[noreturn]] inline void index_out_of_range(const std::string& name, const std::vector<int64_t>& shape, int64_t flat,
                                            const std::string& value, int64_t min_value) {
  arg_fail(name, "has value " + value + " at " + index_str(shape, flat) + ", outside [" + std::to_string(min_value) +
                     ", 2^31-1]: lengths, positions and page indices must be int32 values (never truncated)");
}

// Copies the integer values of `t` (host, any strides) into `dst` (C order), range-checking each.
template <typename T>
void copy_checked(const TensorArg& t, int32_t* dst, int64_t min_value) {
  const int64_t n = t.numel(), nd = t.ndim();
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  const T* base = static_cast<const T*>(t.data);
  for (int64_t flat = 0; flat < n; ++flat) {
    int64_t off = 0;
    for (int64_t d = 0; d < nd; ++d) off += idx[d] * t.strides[d];
    const T v = base[off];
    bool ok;
    if constexpr (std::is_signed<T>::value)
      ok = int64_t(v) >= min_value && int64_t(v) <= 0x7fffffff;
    else
      ok = uint64_t(v) <= 0x7fffffffu && int64_t(v) >= min_value;
    if (!ok) index_out_of_range(t.name, t.shape, flat, std::to_string(v), min_value);
    dst[flat] = static_cast<int32_t>(v);
    for (int64_t d = nd - 1; d >= 0; --d) {  // next C-order index
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace detail

// See the file comment. `min_value`: smallest accepted value (e.g. 0 for positions).
inline TensorArg index_arg(py::handle obj, const std::string& name, int64_t stream,
                           int64_t min_value = std::numeric_limits<int32_t>::min()) {
  if (obj.is_none()) detail::arg_fail(name, "is required but got None");
  py::object holder = py::reinterpret_borrow<py::object>(obj);
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    py::module_ np = py::module_::import("numpy");
    // An empty sequence has no element type: numpy would make it float64.
    holder = py::len(obj) == 0 ? np.attr("zeros")(0, np.attr("int64")) : np.attr("asarray")(obj);
  }
  if (py::isinstance<py::array>(holder)) {
    py::array arr = py::reinterpret_borrow<py::array>(holder);
    const char kind = arr.dtype().kind();
    if (kind != 'i' && kind != 'u')
      detail::arg_fail(name, "must be an integer array, got " + py::str(arr.dtype()).cast<std::string>());
    // Full-width, native-endian copy (lossless for every integer dtype), then the checked int32 copy.
    if (kind == 'u')
      holder = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    else
      holder = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    if (!holder) throw py::error_already_set();
  }
  bool u64 = false;
  TensorArg t;
  if (py::isinstance<py::array>(holder)) {  // the C-contiguous int64 / uint64 copy made above
    py::array arr = py::reinterpret_borrow<py::array>(holder);
    u64 = arr.dtype().kind() == 'u';
    t.name = name;
    t.data = const_cast<void*>(arr.data());
    t.dtype = DType::i64;
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) t.shape.push_back(arr.shape(i));
    detail::compact_strides(t);
  } else {
    t = tensor_arg(holder, name, stream);
    if (t.device.type != DeviceType::cpu) return t;  // device: int32 required by the caller's check
  }
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  py::array_t<int32_t> out(shape);
  int32_t* dst = out.mutable_data();
  switch (t.dtype) {
    case DType::i64:
      if (u64)
        detail::copy_checked<uint64_t>(t, dst, min_value);
      else
        detail::copy_checked<int64_t>(t, dst, min_value);
      break;
    case DType::i32:
      detail::copy_checked<int32_t>(t, dst, min_value);
      break;
    case DType::i8:
      detail::copy_checked<int8_t>(t, dst, min_value);
      break;
    case DType::u8:
      detail::copy_checked<uint8_t>(t, dst, min_value);
      break;
    default:
      detail::arg_fail(name, std::string("must be an integer array, got ") + dtype_name(t.dtype));
  }
  TensorArg r = tensor_arg(out, name, stream);
  return r;
}

}  // namespace rsvlm_edge
