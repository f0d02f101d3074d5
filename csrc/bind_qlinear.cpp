// Python bindings of the quantised linear (C++ API: rsvlm_edge/qlinear.h): qlinear (int8 / int4
// weights x int8 activations quantised per block of 128) and qlinear_reference. Thin: validate every
// argument (tensor_arg.h), then call the launcher.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bind_util.h"
#include "rsvlm_edge/qlinear.h"

using rsvlm_edge::bind::on_cuda;

namespace {

py::object qlinear(Impl impl, py::handle x_obj, py::handle w_obj, py::handle scale_obj, py::handle bias_obj,
                   py::handle out_obj, int64_t stream) {
  ArgChecker c(rsvlm_edge::bind::op_name("qlinear", impl));
  auto [x, w, scale, bias, out] = rsvlm_edge::bind::load_args(
      c, impl, stream,
      {{x_obj, "x"}, {w_obj, "w"}, {scale_obj, "w_scale"}, {bias_obj, "bias", true}, {out_obj, "out", true}});
  rsvlm_edge::bind::check_activation(c, x, {"M", "K"});  // x: (M, K)
  const int64_t k = c.dim("K");
  rsvlm_edge::QLinearParams p;
  if (w.dtype == DType::u8) {  // int4: (N, K / 2) packed bytes
    RSVLM_CHECK(c, k % 2 == 0, "int4 weights (uint8 w) pack two inputs per byte and need an even K, got x " +
                                   x.describe());
    c.check(w, {"N", Dim("K/2", k / 2)}, {DType::u8});
    p.format = rsvlm_edge::QWeight::i4;
  } else {
    c.check(w, {"N", "K"}, {DType::i8});  // w: (N, K) int8, or uint8 (N, K/2) for int4
    p.format = rsvlm_edge::QWeight::i8;
  }
  c.check(scale, {"N", "G"}, {DType::f32});  // w_scale: (N, G)
  const int64_t g = c.dim("G");
  RSVLM_CHECK(c, g >= 1 && k % g == 0 && (g == 1 || (k / g) % rsvlm_edge::kQActBlock == 0),
              "argument 'w_scale' must have G groups of K / G inputs, the whole row (G = 1) or a multiple of 128; "
              "got G=" + std::to_string(g) + " for K=" + std::to_string(k));
  if (!bias_obj.is_none()) c.check(bias, {"N"}, {x.dtype});  // bias: (N,)
  p.m = c.dim("M");
  p.n = c.dim_int("N", w);
  p.k = c.dim_int("K", x, 1);
  p.groups = c.dim_int("G", scale, 1);
  py::object result =
      rsvlm_edge::bind::output(c, out_obj, out, x, {"M", "N"}, {c.dim("M"), c.dim("N")});  // out: (M, N)
  RSVLM_CHECK(c, out.data != x.data || out.numel() == 0 || x.numel() == 0,
              "argument 'out' must not be x: qlinear cannot run in place");
  p.x = x.data;
  p.w = w.data;
  p.w_scale = scale.ptr<const float>();
  p.bias = bias_obj.is_none() ? nullptr : bias.data;
  p.out = out.data;
  p.act_dtype = x.dtype;
  rsvlm_edge::bind::run(
      "qlinear", impl, x, stream, [&] { return rsvlm_edge::qlinear_cpu(p); },
      [&] { return rsvlm_edge::qlinear_reference(p); }, [&](void* st) { return rsvlm_edge::qlinear_cuda(p, st); });
  return result;
}

}  // namespace

void bind_qlinear(py::module_& m) {
  m.def(
      "qlinear",
      [](py::handle x, py::handle w, py::handle w_scale, py::handle bias, py::handle out, int64_t stream) {
        return qlinear(Impl::kFast, x, w, w_scale, bias, out, stream);
      },
      py::arg("x"), py::arg("w"), py::arg("w_scale"), py::arg("bias") = py::none(), py::kw_only(),
      py::arg("out") = py::none(), py::arg("stream") = 0,
      R"doc(Quantised linear y = x @ W.T (+ bias): int8 or int4 weights, int8 activations (W8A8 / W4A8).

x: (M, K) float32 (CPU) or float16/bfloat16 (CUDA); every row is quantised on the fly per block of
128 inputs (scale = max|x| / 127, round half to even). w: int8 (N, K) values in [-127, 127], or
uint8 (N, K/2) packed int4 (input 2j in the low nibble, 2j+1 in the high one, each stored as q + 8).
w_scale: (N, G) float32, G groups of K/G inputs (the whole row, or a multiple of 128 inputs).
bias: (N,) or None. Returns y (M, N) = sum over blocks of sx * sw * (exact integer block dot) + bias.
The weights are never widened in memory (rsvlm_edge/qlinear.h).)doc");
  m.def(
      "qlinear_reference",
      [](py::handle x, py::handle w, py::handle w_scale, py::handle bias, py::handle out) {
        return qlinear(Impl::kReference, x, w, w_scale, bias, out, 0);
      },
      py::arg("x"), py::arg("w"), py::arg("w_scale"), py::arg("bias") = py::none(), py::kw_only(),
      py::arg("out") = py::none(),
      "Naive reference of qlinear (kernels/qlinear/qlinear_ref.cpp: exact integer block dots, fp64 outer sum), "
      "CPU only; same arguments and checks as qlinear.");
}
