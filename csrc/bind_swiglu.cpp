// Python bindings of swiglu / swiglu_reference (C++ API: rsvlm_edge/swiglu.h). Thin: validate every
// argument (tensor_arg.h), then call the launcher.
#include <pybind11/pybind11.h>

#include "bind_util.h"
#include "rsvlm_edge/swiglu.h"

namespace {

py::object swiglu(Impl impl, py::handle g_obj, py::handle u_obj, py::handle out_obj, int64_t stream) {
  ArgChecker c(rsvlm_edge::bind::op_name("swiglu", impl));
  auto [g, u, out] =
      rsvlm_edge::bind::load_args(c, impl, stream, {{g_obj, "gate"}, {u_obj, "up"}, {out_obj, "out", true}});
  rsvlm_edge::bind::check_activation(c, g, {"T", "F"});                                   // gate: (T, F)
  c.check(u, {"T", "F"}, {g.dtype});                                                      // up: (T, F)
  py::object result = rsvlm_edge::bind::output(c, out_obj, out, g, {"T", "F"}, g.shape);  // out: (T, F)
  rsvlm_edge::SwiGluParams p;
  p.gate = g.data;
  p.up = u.data;
  p.out = out.data;
  p.n = c.dim("T") * c.dim("F");  // both sizes of one real array: no overflow
  p.dtype = g.dtype;
  rsvlm_edge::bind::run(
      "swiglu", impl, g, stream, [&] { return rsvlm_edge::swiglu_cpu(p); },
      [&] { return rsvlm_edge::swiglu_reference(p); }, [&](void* st) { return rsvlm_edge::swiglu_cuda(p, st); });
  return result;
}

}  // namespace

void bind_swiglu(py::module_& m) {
  m.def(
      "swiglu",
      [](py::handle g, py::handle u, py::handle out, int64_t stream) { return swiglu(Impl::kFast, g, u, out, stream); },
      py::arg("gate"), py::arg("up"), py::kw_only(), py::arg("out") = py::none(), py::arg("stream") = 0,
      R"doc(SwiGLU: out = silu(gate) * up = gate / (1 + exp(-gate)) * up. gate, up: (T, F); out= may alias either.

CPU: float32. CUDA tensors: float16/bfloat16, out= required.)doc");
  m.def(
      "swiglu_reference",
      [](py::handle g, py::handle u, py::handle out) { return swiglu(Impl::kReference, g, u, out, 0); },
      py::arg("gate"), py::arg("up"), py::kw_only(), py::arg("out") = py::none(),
      "Naive reference of swiglu (kernels/swiglu/swiglu_ref.cpp: plain loop, fp64), CPU float32 only.");
}
