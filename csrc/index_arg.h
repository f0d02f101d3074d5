// Integer index arguments (lengths, positions, page tables) for the kernel bindings.
// On the host any integer array or Python sequence is accepted and converted to int32 (a copy
// kept alive by the TensorArg); device tensors must already be int32 (checked by the caller).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "tensor_arg.h"

namespace rsvlm_edge {

inline TensorArg index_arg(py::handle obj, const std::string& name, int64_t stream) {
  const bool host_array = py::isinstance<py::array>(obj);
  const bool sequence = py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj);
  if (host_array || sequence) {
    py::array probe = py::array::ensure(obj);
    if (!probe || (probe.dtype().kind() != 'i' && probe.dtype().kind() != 'u'))
      throw std::invalid_argument("argument '" + name + "' must be an integer array, got " +
                                  (probe ? py::str(probe.dtype()).cast<std::string>() : std::string("?")));
    py::array_t<int32_t, py::array::c_style | py::array::forcecast> arr(probe);
    return tensor_arg(arr, name, stream);
  }
  return tensor_arg(obj, name, stream);
}

}  // namespace rsvlm_edge
