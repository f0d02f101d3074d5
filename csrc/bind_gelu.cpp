// Python bindings of gelu / gelu_reference (C++ API: rsvlm_edge/gelu.h). Thin: validate every
// argument (tensor_arg.h), then call the launcher.
#include <pybind11/pybind11.h>

#include <string>

#include "bind_util.h"
#include "rsvlm_edge/gelu.h"

namespace {

rsvlm_edge::GeluKind parse_kind(const ArgChecker& c, const std::string& kind) {
  if (kind == "erf") return rsvlm_edge::GeluKind::erf;
  if (kind == "tanh") return rsvlm_edge::GeluKind::tanh;
  if (kind == "quick") return rsvlm_edge::GeluKind::quick;
  c.fail("argument 'kind' must be 'erf', 'tanh' or 'quick', got '" + kind + "'");
}

py::object gelu(Impl impl, py::handle x_obj, const std::string& kind, int64_t stream) {
  ArgChecker c(rsvlm_edge::bind::op_name("gelu", impl));
  auto [x] = rsvlm_edge::bind::load_args(c, impl, stream, {{x_obj, "x"}});
  if (rsvlm_edge::bind::on_cuda(x))
    c.check(x, {"M", "N"}, {DType::f32, DType::f16, DType::bf16});  // x: (M, N)
  else
    c.check(x, {"M", "N"}, {DType::f32});
  c.writable(x);  // in place
  rsvlm_edge::GeluParams p;
  p.kind = parse_kind(c, kind);
  p.x = x.data;
  p.m = c.dim("M");
  p.n = c.dim("N");  // both sizes of one real array: M * N cannot overflow
  p.dtype = x.dtype;
  rsvlm_edge::bind::run(
      "gelu", impl, x, stream, [&] { return rsvlm_edge::gelu_cpu(p); }, [&] { return rsvlm_edge::gelu_reference(p); },
      [&](void* st) { return rsvlm_edge::gelu_cuda(p, st); });
  return py::reinterpret_borrow<py::object>(x_obj);
}

}  // namespace

void bind_gelu(py::module_& m) {
  m.def(
      "gelu", [](py::handle x, const std::string& kind, int64_t stream) { return gelu(Impl::kFast, x, kind, stream); },
      py::arg("x"), py::arg("kind") = "erf", py::kw_only(), py::arg("stream") = 0,
      R"doc(GELU in place over x (M, N); returns x. kind: "erf" = x * 0.5 * (1 + erf(x / sqrt(2))) (torch.nn.GELU()),
"tanh" = torch's approximate="tanh", "quick" = x * sigmoid(1.702 x) (open_clip QuickGELU).
+inf -> +inf, -inf -> -0, NaN -> NaN. CPU: float32. CUDA tensors: float32/float16/bfloat16; `stream` is a
cudaStream_t as an integer (0 = legacy default).)doc");
  m.def(
      "gelu_reference", [](py::handle x, const std::string& kind) { return gelu(Impl::kReference, x, kind, 0); },
      py::arg("x"), py::arg("kind") = "erf",
      "Naive reference of gelu (kernels/gelu/gelu_ref.cpp: plain loop, fp64), CPU float32 only; same arguments "
      "and checks as gelu (in place, returns x).");
}
