// pybind11 bindings for rsvlm_edge._C. Thin: validate, then call the C++ API.
// Each op family binds itself in csrc/bind_<op>.cpp.
#include <pybind11/pybind11.h>

#include "rsvlm_edge/version.h"

namespace py = pybind11;

void bind_patch_embed(py::module_& m);   // csrc/bind_patch_embed.cpp
void bind_kv_attention(py::module_& m);  // csrc/bind_kv_attention.cpp
void bind_decoder_ops(py::module_& m);   // csrc/bind_decoder_ops.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "rsvlm-edge native runtime (C++/CUDA kernels)";
  m.def("version", &rsvlm_edge::version, "Version of librsvlm_edge.");
  m.def("built_with_cuda", &rsvlm_edge::built_with_cuda,
        "True when the CUDA kernels were compiled into this build.");
  bind_patch_embed(m);
  bind_kv_attention(m);
  bind_decoder_ops(m);
}
