// Python bindings of layer_norm / layer_norm_reference (C++ API: rsvlm_edge/layer_norm.h). Thin:
// validate every argument (tensor_arg.h), then call the launcher.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind_util.h"
#include "rsvlm_edge/layer_norm.h"

namespace {

// CPU float32 activations; CUDA float32, float16 or bfloat16.
void check_act(ArgChecker& c, const TensorArg& t, std::initializer_list<Dim> dims) {
  if (rsvlm_edge::bind::on_cuda(t))
    c.check(t, dims, {DType::f32, DType::f16, DType::bf16});
  else
    c.check(t, dims, {DType::f32});
}

py::object layer_norm(Impl impl, py::handle x_obj, py::handle g_obj, py::handle b_obj, py::handle add_obj, double eps,
                      py::handle out_obj, int64_t stream) {
  ArgChecker c(rsvlm_edge::bind::op_name("layer_norm", impl));
  auto [x, gamma, beta, add, out] = rsvlm_edge::bind::load_args(
      c, impl, stream,
      {{x_obj, "x"}, {g_obj, "gamma"}, {b_obj, "beta", true}, {add_obj, "add", true}, {out_obj, "out", true}});
  const bool has_beta = !b_obj.is_none(), has_add = !add_obj.is_none();
  check_act(c, x, {"M", "D"});                    // x: (M, D)
  c.check(gamma, {"D"}, {x.dtype});               // gamma: (D,)
  if (has_beta) c.check(beta, {"D"}, {x.dtype});  // beta: (D,)
  if (has_add) {
    c.check(add, {"M", "D"}, {x.dtype});  // add: (M, D)
    c.writable(x);                        // x += add in place
  }
  RSVLM_CHECK(c, eps >= 0.0, "argument 'eps' must be >= 0, got " + std::to_string(eps));
  rsvlm_edge::LayerNormParams p;
  p.m = c.dim("M");
  p.d = c.dim_int("D", x, 1);
  py::object result = rsvlm_edge::bind::output(c, out_obj, out, x, {"M", "D"}, x.shape);  // out: (M, D)
  for (const TensorArg* other : {&x, &add, &gamma, &beta})
    RSVLM_CHECK(c, !rsvlm_edge::bind::overlap(out, *other),
                "argument 'out' shares memory with '" + other->name + "'; pass a separate output array");
  if (has_add)
    for (const TensorArg* other : {&add, &gamma, &beta})
      RSVLM_CHECK(c, !rsvlm_edge::bind::overlap(x, *other),
                  "argument 'x' (updated in place by the add) shares memory with '" + other->name + "'");
  p.x = x.data;
  p.add = has_add ? add.data : nullptr;
  p.gamma = gamma.data;
  p.beta = has_beta ? beta.data : nullptr;
  p.out = out.data;
  p.eps = static_cast<float>(eps);
  p.dtype = x.dtype;
  rsvlm_edge::bind::run(
      "layer_norm", impl, x, stream, [&] { return rsvlm_edge::layer_norm_cpu(p); },
      [&] { return rsvlm_edge::layer_norm_reference(p); },
      [&](void* st) { return rsvlm_edge::layer_norm_cuda(p, st); });
  return result;
}

const char* kDoc = R"doc(LayerNorm over the last dim (torch.nn.LayerNorm: biased variance, eps inside the sqrt),
with an optional fused residual add: if add is given, x += add in place first; then
out = (x - mean) / sqrt(var + eps) * gamma + beta (fp32 two-pass statistics).

x: (M, D) with D >= 1 (M = 0 is valid); gamma: (D,), beta: (D,) or None, add: (M, D) or None, all of
x's dtype. Returns out (M, D), which must not share memory with x, add, gamma or beta. CPU: float32.
CUDA tensors: float32/float16/bfloat16, out= required; `stream` is a cudaStream_t as an integer
(0 = legacy default).)doc";

}  // namespace

void bind_layer_norm(py::module_& m) {
  m.def(
      "layer_norm",
      [](py::handle x, py::handle g, py::handle b, py::handle add, double eps, py::handle out, int64_t stream) {
        return layer_norm(Impl::kFast, x, g, b, add, eps, out, stream);
      },
      py::arg("x"), py::arg("gamma"), py::arg("beta") = py::none(), py::kw_only(), py::arg("add") = py::none(),
      py::arg("eps") = 1e-5, py::arg("out") = py::none(), py::arg("stream") = 0, kDoc);
  m.def(
      "layer_norm_reference",
      [](py::handle x, py::handle g, py::handle b, py::handle add, double eps, py::handle out) {
        return layer_norm(Impl::kReference, x, g, b, add, eps, out, 0);
      },
      py::arg("x"), py::arg("gamma"), py::arg("beta") = py::none(), py::kw_only(), py::arg("add") = py::none(),
      py::arg("eps") = 1e-5, py::arg("out") = py::none(),
      "Naive reference of layer_norm (kernels/layer_norm/layer_norm_ref.cpp: plain loops, fp64 statistics), CPU "
      "float32 only; same arguments and checks as layer_norm (x is updated in place when add is given).");
}
