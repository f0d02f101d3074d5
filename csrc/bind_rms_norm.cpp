// Python bindings of rms_norm / rms_norm_reference (C++ API: rsvlm_edge/rms_norm.h). Thin: validate
// every argument (tensor_arg.h), then call the launcher.
#include <pybind11/pybind11.h>

#include <string>

#include "bind_util.h"
#include "rsvlm_edge/rms_norm.h"

namespace {

py::object rms_norm(Impl impl, py::handle x_obj, py::handle w_obj, double eps, py::handle add_obj,
                    py::handle out_obj, int64_t stream) {
  using rsvlm_edge::bind::overlap;
  ArgChecker c(rsvlm_edge::bind::op_name("rms_norm", impl));
  auto [x, w, add, out] = rsvlm_edge::bind::load_args(
      c, impl, stream, {{x_obj, "x"}, {w_obj, "weight"}, {add_obj, "add", true}, {out_obj, "out", true}});
  const bool has_add = !add_obj.is_none();
  rsvlm_edge::bind::check_activation(c, x, {"T", "D"});  // x: (T, D)
  c.check(w, {"D"}, {x.dtype});                          // weight: (D,)
  if (has_add) {
    c.check(add, {"T", "D"}, {x.dtype});  // add: (T, D)
    c.writable(x);                        // x += add in place
  }
  RSVLM_CHECK(c, eps >= 0.0, "argument 'eps' must be >= 0, got " + std::to_string(eps));
  rsvlm_edge::RmsNormParams p;
  p.rows = c.dim("T");
  p.dim = c.dim_int("D", x, 1);
  py::object result = rsvlm_edge::bind::output(c, out_obj, out, x, {"T", "D"}, x.shape);  // out: (T, D)
  if (has_add) {
    for (const TensorArg* other : {&x, &add, &w})
      RSVLM_CHECK(c, !overlap(out, *other),
                  "argument 'out' shares memory with '" + other->name + "'; with add, pass a separate output array");
    for (const TensorArg* other : {&add, &w})
      RSVLM_CHECK(c, !overlap(x, *other),
                  "argument 'x' (updated in place by the add) shares memory with '" + other->name + "'");
  }
  p.x = x.data;
  p.add = has_add ? add.data : nullptr;
  p.weight = w.data;
  p.out = out.data;
  p.eps = static_cast<float>(eps);
  p.dtype = x.dtype;
  rsvlm_edge::bind::run(
      "rms_norm", impl, x, stream, [&] { return rsvlm_edge::rms_norm_cpu(p); },
      [&] { return rsvlm_edge::rms_norm_reference(p); }, [&](void* st) { return rsvlm_edge::rms_norm_cuda(p, st); });
  return result;
}

const char* kDoc = R"doc(RMSNorm over the last dim with an optional fused residual add: if add is given, x += add
in place first; then out = x * rsqrt(mean(x**2) + eps) * weight (fp32 accumulation).

x: (T, D) with D >= 1 (T = 0 is valid); weight: (D,) same dtype; add: (T, D) or None. Returns out
(T, D); out= may be x (in place) without add; with add, out must not share memory with x, add or
weight (on CUDA the stored sum is rounded to the dtype and the statistics are those of the stored x). CPU: float32. CUDA tensors: float16/bfloat16, out= required; `stream` is a cudaStream_t
as an integer (0 = legacy default).)doc";

}  // namespace

void bind_rms_norm(py::module_& m) {
  m.def(
      "rms_norm",
      [](py::handle x, py::handle w, double eps, py::handle add, py::handle out, int64_t stream) {
        return rms_norm(Impl::kFast, x, w, eps, add, out, stream);
      },
      py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6, py::kw_only(), py::arg("add") = py::none(),
      py::arg("out") = py::none(), py::arg("stream") = 0, kDoc);
  m.def(
      "rms_norm_reference",
      [](py::handle x, py::handle w, double eps, py::handle add, py::handle out) {
        return rms_norm(Impl::kReference, x, w, eps, add, out, 0);
      },
      py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6, py::kw_only(), py::arg("add") = py::none(),
      py::arg("out") = py::none(),
      "Naive reference of rms_norm (kernels/rms_norm/rms_norm_ref.cpp: plain loops, fp64), CPU float32 only; "
      "same arguments and checks as rms_norm (x is updated in place when add is given).");
}
