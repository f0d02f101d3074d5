// Python bindings of the linear op family (C++ API: rsvlm_edge/linear.h): linear (dense or
// weight-only int8), linear_reference, quantize_weight_int8, and cpu_kernels / set_cpu_kernels (the
// fast CPU path's micro-kernels). Thin: validate every argument (tensor_arg.h), then call the launcher.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bind_util.h"
#include "rsvlm_edge/linear.h"

using rsvlm_edge::bind::on_cuda;

namespace {

py::object linear(Impl impl, py::handle x_obj, py::handle w_obj, py::handle bias_obj, py::handle scale_obj,
                  py::handle out_obj, int64_t stream, bool bf16x3) {
  ArgChecker c(rsvlm_edge::bind::op_name("linear", impl));
  auto [x, w, bias, scale, out] = rsvlm_edge::bind::load_args(
      c, impl, stream,
      {{x_obj, "x"}, {w_obj, "w"}, {bias_obj, "bias", true}, {scale_obj, "w_scale", true}, {out_obj, "out", true}});
  const bool has_bias = !bias_obj.is_none(), has_scale = !scale_obj.is_none();
  rsvlm_edge::bind::check_activation(c, x, {"M", "K"});  // x: (M, K)
  if (on_cuda(x))
    c.check(w, {"N", "K"}, {x.dtype, DType::i8});  // w: (N, K)
  else
    c.check(w, {"N", "K"}, {DType::f32, DType::f16, DType::i8});  // fp16: converted exactly
  const bool int8 = w.dtype == DType::i8;
  RSVLM_CHECK(c, !int8 || has_scale,
              "argument 'w' is int8 and needs w_scale, a float32 array of shape (N,) = (" + std::to_string(c.dim("N")) +
                  ",) (see quantize_weight_int8)");
  RSVLM_CHECK(c, int8 || !has_scale,
              std::string("argument 'w_scale' is only used with int8 w; w is ") + rsvlm_edge::dtype_name(w.dtype));
  if (int8) c.check(scale, {"N"}, {DType::f32});  // w_scale: (N,)
  if (has_bias) c.check(bias, {"N"}, {x.dtype});  // bias: (N,)
  rsvlm_edge::LinearParams p;
  p.m = c.dim("M");
  p.n = c.dim_int("N", w);
  p.k = c.dim_int("K", x, 1);
  py::object result =
      rsvlm_edge::bind::output(c, out_obj, out, x, {"M", "N"}, {c.dim("M"), c.dim("N")});  // out: (M, N)
  RSVLM_CHECK(c, out.data != x.data || out.numel() == 0 || x.numel() == 0,
              "argument 'out' must not be x: linear cannot run in place");
  p.x = x.data;
  p.w = w.data;
  p.w_scale = int8 ? scale.ptr<const float>() : nullptr;
  p.bias = has_bias ? bias.data : nullptr;
  p.out = out.data;
  p.act_dtype = x.dtype;
  p.w_dtype = w.dtype;
  p.bf16x3 = bf16x3;
  rsvlm_edge::bind::run(
      "linear", impl, x, stream, [&] { return rsvlm_edge::linear_cpu(p); },
      [&] { return rsvlm_edge::linear_reference(p); }, [&](void* st) { return rsvlm_edge::linear_cuda(p, st); });
  return result;
}

std::string cpu_kernels() { return rsvlm_edge::cpu_kernels_name(rsvlm_edge::cpu_kernels()); }

std::string set_cpu_kernels(const std::string& name) {
  rsvlm_edge::CpuKernels k;
  if (name == "portable")
    k = rsvlm_edge::CpuKernels::portable;
  else if (name == "avx2")
    k = rsvlm_edge::CpuKernels::avx2;
  else if (name == "avx512vnni")
    k = rsvlm_edge::CpuKernels::avx512vnni;
  else if (name == "amx")
    k = rsvlm_edge::CpuKernels::amx;
  else if (name == "auto")
    k = rsvlm_edge::best_cpu_kernels();
  else
    throw std::invalid_argument(
        "set_cpu_kernels: argument 'name' must be 'auto', 'amx', 'avx512vnni', 'avx2' or 'portable', got '" + name +
        "'");
  rsvlm_edge::throw_if_error(rsvlm_edge::set_cpu_kernels(k));
  return cpu_kernels();
}

py::tuple quantize_weight_int8(py::handle w_obj) {
  ArgChecker c("quantize_weight_int8");
  const TensorArg w = rsvlm_edge::tensor_arg(w_obj, "w");
  RSVLM_CHECK(c, !on_cuda(w),
              "argument 'w' is on " + w.device_str() + "; quantisation runs on the CPU at load time: pass w.cpu()");
  c.check(w, {"N", "K"}, {DType::f32});  // w: (N, K)
  const int64_t n = c.dim("N"), k = c.dim("K");
  RSVLM_CHECK(c, n > 0 && k > 0, "argument 'w' must not be empty, got " + w.describe());
  const int n32 = c.dim_int("N", w, 1), k32 = c.dim_int("K", w, 1);
  py::array_t<int8_t> q({n, k});
  py::array_t<float> scale(n);
  const float* src = w.ptr<const float>();
  int8_t* qd = q.mutable_data();
  float* sd = scale.mutable_data();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = rsvlm_edge::quantize_weight_int8_cpu(src, n32, k32, qd, sd);
  }
  rsvlm_edge::throw_if_error(s);
  return py::make_tuple(q, scale);
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def(
      "linear",
      [](py::handle x, py::handle w, py::handle bias, py::handle w_scale, py::handle out, int64_t stream,
         bool bf16x3) { return linear(Impl::kFast, x, w, bias, w_scale, out, stream, bf16x3); },
      py::arg("x"), py::arg("w"), py::arg("bias") = py::none(), py::kw_only(), py::arg("w_scale") = py::none(),
      py::arg("out") = py::none(), py::arg("stream") = 0, py::arg("bf16x3") = false,
      R"doc(Linear layer y = x @ W.T (+ bias), dense or weight-only INT8 (fp32 accumulation).

x: (M, K) with K >= 1 (M = 0 is valid); w: (N, K) dense, or int8 with w_scale (N,) float32, meaning
W = w * w_scale[:, None] (per-output-channel symmetric, see quantize_weight_int8); bias: (N,) or None.
Returns y (M, N).
CPU: float32 activations; dense w float32 or float16 (converted to fp32 on the fly, exact); GEMV for
M < 4, cache-blocked GEMM above (see cpu_kernels; on avx512vnni 3 x 8 register tiles from M = 2). CUDA: float16/bfloat16 activations, dense w in the
same dtype, out= required; the CUDA kernel is a GEMV / small-M GEMM (decode, M <= 16), correct for
any M but slow for long prefills.
bf16x3=True allows, for float16 w on a CPU with AMX-BF16 (kernel set amx) and M >= 32, three bf16 products per
weight on AMX tiles (w = w_hi + w_lo exactly, x = x_hi + x_lo to 2^-16, x_lo * w_lo left out; fp32 accumulation):
each product within about 2^-15 of x * w relatively; elsewhere it changes nothing.)doc");
  m.def(
      "linear_reference",
      [](py::handle x, py::handle w, py::handle bias, py::handle w_scale, py::handle out) {
        return linear(Impl::kReference, x, w, bias, w_scale, out, 0, false);
      },
      py::arg("x"), py::arg("w"), py::arg("bias") = py::none(), py::kw_only(), py::arg("w_scale") = py::none(),
      py::arg("out") = py::none(),
      "Naive reference of linear (kernels/linear/linear_ref.cpp: plain loops, fp64 accumulation), CPU only: "
      "float32 x, float32 / float16 / int8 w; same arguments and checks as linear.");
  m.def("cpu_kernels", &cpu_kernels,
        "Micro-kernels the CPU linear ops run: 'amx' (avx512vnni plus AMX tiles: INT8 for qgemm and qlinear's GEMM, "
        "BF16 for bf16-product attention and bf16x3 fp16 linears), 'avx512vnni' (avx2 plus AVX512-VNNI int8 dot "
        "products for qlinear), 'avx2' (x86-64 with AVX2+FMA+F16C, detected at run time) or "
        "'portable'.");
  m.def("set_cpu_kernels", &set_cpu_kernels, py::arg("name"),
        "Force the CPU linear's micro-kernels process-wide: 'auto' (best supported), 'amx', 'avx512vnni', 'avx2' or "
        "'portable' "
        "(tests, benchmarks). Returns the active name; ValueError when this CPU cannot run them.");
  m.def("quantize_weight_int8", &quantize_weight_int8, py::arg("w"),
        R"doc(Per-output-channel symmetric INT8 quantisation of w (N, K) float32 (CPU, load time).

Returns (w8 (N, K) int8, scale (N,) float32): scale = max|w[n]| / 127 (0 for an all-zero row),
w8 = round(w / scale) in [-127, 127]. Use as linear(x, w8, w_scale=scale).)doc");
}
