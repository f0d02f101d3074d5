// pybind11 module rsvlm_edge._C. Thin: each op family binds itself in csrc/bind_<op>.cpp (the op and
// its naive `<op>_reference`); this file adds the build facts and the generic tensor_arg_info helper.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "rsvlm_edge/version.h"
#include "tensor_arg.h"

namespace py = pybind11;

void bind_patch_embed(py::module_& m);   // csrc/bind_patch_embed.cpp
void bind_kv_attention(py::module_& m);  // csrc/bind_kv_attention.cpp
void bind_linear(py::module_& m);        // csrc/bind_linear.cpp
void bind_qlinear(py::module_& m);       // csrc/bind_qlinear.cpp
void bind_qgemm(py::module_& m);         // csrc/bind_qgemm.cpp
void bind_rms_norm(py::module_& m);      // csrc/bind_rms_norm.cpp
void bind_layer_norm(py::module_& m);    // csrc/bind_layer_norm.cpp
void bind_gelu(py::module_& m);          // csrc/bind_gelu.cpp
void bind_rope(py::module_& m);          // csrc/bind_rope.cpp
void bind_swiglu(py::module_& m);        // csrc/bind_swiglu.cpp
void bind_top_p_sample(py::module_& m);      // csrc/bind_top_p_sample.cpp
void bind_cuda_decoder(py::module_& m);  // csrc/bind_cuda_decoder.cpp
void bind_cpu_decoder(py::module_& m);   // csrc/bind_cpu_decoder.cpp
void bind_threads(py::module_& m);       // csrc/bind_threads.cpp
void bind_device_array(py::module_& m);  // csrc/bind_device_array.cpp

namespace {

py::dict tensor_arg_info(py::handle obj, int64_t stream) {
  const rsvlm_edge::TensorArg t = rsvlm_edge::tensor_arg(obj, "tensor", stream);
  py::dict d;
  d["data"] = reinterpret_cast<uintptr_t>(t.data);
  d["dtype"] = rsvlm_edge::dtype_name(t.dtype);
  d["shape"] = py::tuple(py::cast(t.shape));
  d["strides"] = py::tuple(py::cast(t.strides));
  d["device"] = t.device_str();
  d["contiguous"] = t.contiguous();
  d["readonly"] = t.readonly;
  return d;
}

bool built_with_sanitizers() {
#ifdef RSVLM_SANITIZE
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "rsvlm-edge native runtime (C++/CUDA kernels)";
  py::register_exception<rsvlm_edge::CapacityExceeded>(m, "CapacityError", PyExc_ValueError);
  m.def("version", &rsvlm_edge::version, "Version of librsvlm_edge (the Python package version it was built from).");
  m.def("built_with_cuda", &rsvlm_edge::built_with_cuda, "True when the CUDA kernels were compiled into this build.");
  m.def("built_with_sanitizers", &built_with_sanitizers,
        "True for the AddressSanitizer + UBSan test build (CMake -DRSVLM_SANITIZE=ON).");
  m.def("tensor_arg_info", &tensor_arg_info, py::arg("tensor"), py::arg("stream") = 0,
        "How the bindings see an array argument (numpy / __dlpack__ / __cuda_array_interface__): dict with "
        "data (pointer), dtype, shape, strides (elements), device, contiguous, readonly. No copy is made.");
  bind_patch_embed(m);
  bind_kv_attention(m);
  bind_linear(m);
  bind_qlinear(m);
  bind_qgemm(m);
  bind_rms_norm(m);
  bind_layer_norm(m);
  bind_gelu(m);
  bind_rope(m);
  bind_swiglu(m);
  bind_top_p_sample(m);
  bind_cuda_decoder(m);
  bind_cpu_decoder(m);
  bind_threads(m);
  bind_device_array(m);
}
