// Python bindings for the LLaMA decoder ops: rms_norm, rope, swiglu, linear (dense or weight-only
// int8) and quantize_weight_int8. numpy arrays run the CPU kernels (float32); objects exposing
// __cuda_array_interface__ (torch.cuda tensors) run the CUDA kernels (float16/bfloat16, out= given).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "decoder_ops.h"
#include "pyarg.h"

namespace py = pybind11;
using rsvlm_edge::DType;
using rsvlm_edge::KernelStatus;
namespace dec = rsvlm_edge::dec;
using rsvlm_edge::pyarg::Arg;
using rsvlm_edge::pyarg::ArgType;
using rsvlm_edge::pyarg::fail;
using rsvlm_edge::pyarg::shape_str;

namespace {

DType act_dtype(const Arg& a) {
  if (a.cuda ? (a.type == ArgType::kF16 || a.type == ArgType::kBF16) : a.type == ArgType::kF32)
    return a.type == ArgType::kF32 ? DType::kF32 : a.type == ArgType::kF16 ? DType::kF16 : DType::kBF16;
  fail(a.name + (a.cuda ? " must be float16 or bfloat16 on the GPU" : " must be float32 on the CPU") + ", got " +
       a.type_name());
}

int64_t leading(const std::vector<int64_t>& s, size_t trailing) {
  int64_t r = 1;
  for (size_t i = 0; i + trailing < s.size(); ++i) r *= s[i];
  return r;
}

// Output shaped `shape` like `like`: the given array (checked) or a new float32 numpy array.
Arg make_out(const py::object& out, const Arg& like, const std::vector<int64_t>& shape, py::object* result) {
  if (out.is_none()) {
    if (like.cuda) fail("out= is required for CUDA tensors: pass an empty tensor of shape " + shape_str(shape));
    py::array_t<float> a(shape);
    *result = a;
    return Arg::from(a, "out", true);
  }
  Arg o = Arg::from(out, "out", true);
  if (o.shape != shape) fail("out must have shape " + shape_str(shape) + ", got " + shape_str(o.shape));
  o.expect_type(like.type, like.type_name() + " (the dtype of " + like.name + ")");
  o.expect_device(like.cuda, like.name);
  *result = out;
  return o;
}

// Run the CPU launcher without the GIL, or the CUDA launcher; failures become ValueError (CPU) or
// RuntimeError (CUDA launch errors).
void run(bool cuda, const std::function<KernelStatus()>& cpu, const std::function<KernelStatus()>& gpu,
         const KernelStatus& checked) {
  if (!checked.ok()) throw py::value_error(checked.message);
  KernelStatus st;
  if (!cuda) {
    {
      py::gil_scoped_release nogil;
      st = cpu();
    }
    if (!st.ok()) throw py::value_error(st.message);
    return;
  }
  (void)gpu;
#ifdef RSVLM_WITH_CUDA
  st = gpu();
  if (!st.ok()) throw std::runtime_error(st.message);
#else
  fail("this build of rsvlm_edge has no CUDA kernels; pass numpy arrays or rebuild with RSVLM_CUDA=ON");
#endif
}

#ifdef RSVLM_WITH_CUDA
#define GPU_LAUNCHER(fn, p) [&] { return dec::fn(p); }
#else
#define GPU_LAUNCHER(fn, p) [] { return KernelStatus::Ok(); }
#endif

py::object rms_norm(const py::object& x_obj, const py::object& w_obj, double eps, const py::object& out) {
  Arg x = Arg::from(x_obj, "x", false);
  if (x.shape.empty()) fail("x must have shape (..., D), got a scalar");
  const DType dt = act_dtype(x);
  const int64_t d = x.shape.back();
  Arg w = Arg::from(w_obj, "weight", false);
  w.expect_shape({d}, "(D,)");
  w.expect_type(x.type, x.type_name() + " (the dtype of x)");
  w.expect_device(x.cuda, "x");
  py::object result;
  Arg o = make_out(out, x, x.shape, &result);
  dec::RmsNormParams p;
  p.x = x.data;
  p.weight = w.data;
  p.out = o.data;
  p.rows = leading(x.shape, 1);
  p.dim = int(d);
  p.eps = float(eps);
  p.dtype = dt;
  run(x.cuda, [&] { return dec::rms_norm_cpu(p); }, GPU_LAUNCHER(rms_norm_cuda, p), dec::check_rms_norm(p, x.cuda));
  return result;
}

void rope(const py::object& q_obj, const py::object& k_obj, const py::object& pos_obj, double theta) {
  Arg q = Arg::from(q_obj, "q", true);
  if (q.shape.size() < 2) fail("q must have shape (..., H, D) e.g. (T, H, D), got " + shape_str(q.shape));
  const DType dt = act_dtype(q);
  const std::vector<int64_t> lead(q.shape.begin(), q.shape.end() - 2);
  const int64_t d = q.shape.back();
  if (d % 2 != 0) fail("q must have an even head_dim D for rotate-half RoPE, got shape " + shape_str(q.shape));
  Arg k;
  if (!k_obj.is_none()) {
    k = Arg::from(k_obj, "k", true);
    std::vector<int64_t> want = lead;
    want.push_back(k.shape.size() >= 2 ? k.shape[k.shape.size() - 2] : -1);
    want.push_back(d);
    if (k.shape != want)
      fail("k must have shape (..., H_kv, D) with the leading dims and D of q " + shape_str(q.shape) + ", got " +
           shape_str(k.shape));
    k.expect_type(q.type, q.type_name() + " (the dtype of q)");
    k.expect_device(q.cuda, "q");
    if (k.data == q.data) fail("k and q must be different arrays");
  }
  Arg pos = Arg::from_index(pos_obj, "positions", q.cuda);
  if (pos.shape != lead)
    fail("positions must have shape " + shape_str(lead) + " (the leading dims of q " + shape_str(q.shape) +
         "), got " + shape_str(pos.shape));
  dec::RopeParams p;
  p.q = q.data;
  p.k = k_obj.is_none() ? nullptr : k.data;
  p.positions = static_cast<const int32_t*>(pos.data);
  p.tokens = leading(q.shape, 2);
  p.num_heads = int(q.shape[q.shape.size() - 2]);
  p.num_kv_heads = k_obj.is_none() ? 0 : int(k.shape[k.shape.size() - 2]);
  p.head_dim = int(d);
  p.theta = float(theta);
  p.dtype = dt;
  run(q.cuda, [&] { return dec::rope_cpu(p); }, GPU_LAUNCHER(rope_cuda, p), dec::check_rope(p, q.cuda));
}

py::object swiglu(const py::object& g_obj, const py::object& u_obj, const py::object& out) {
  Arg g = Arg::from(g_obj, "gate", false);
  const DType dt = act_dtype(g);
  Arg u = Arg::from(u_obj, "up", false);
  u.expect_like(g);
  u.expect_device(g.cuda, "gate");
  py::object result;
  Arg o = make_out(out, g, g.shape, &result);
  dec::SwiGluParams p;
  p.gate = g.data;
  p.up = u.data;
  p.out = o.data;
  p.n = leading(g.shape, 0);
  p.dtype = dt;
  run(g.cuda, [&] { return dec::swiglu_cpu(p); }, GPU_LAUNCHER(swiglu_cuda, p), dec::check_swiglu(p, g.cuda));
  return result;
}

py::object linear(const py::object& x_obj, const py::object& w_obj, const py::object& bias_obj,
                  const py::object& scale_obj, const py::object& out) {
  Arg x = Arg::from(x_obj, "x", false);
  if (x.shape.empty()) fail("x must have shape (..., K), got a scalar");
  const DType dt = act_dtype(x);
  const int64_t kdim = x.shape.back();
  Arg w = Arg::from(w_obj, "w", false);
  w.expect_rank(2, "(N, K)");
  w.expect_device(x.cuda, "x");
  if (w.shape[1] != kdim)
    fail("w must have shape (N, K=" + std::to_string(kdim) + ") to match x " + shape_str(x.shape) + ", got " +
         shape_str(w.shape));
  const int64_t n = w.shape[0];
  const bool i8 = w.type == ArgType::kI8;
  if (!i8 && w.type != x.type)
    fail("w must be int8 (with w_scale) or " + x.type_name() + " (the dtype of x), got " + w.type_name());
  Arg scale;
  if (i8) {
    if (scale_obj.is_none()) fail("int8 w needs w_scale, a float32 array of shape (N,) = (" + std::to_string(n) + ",)");
    scale = Arg::from(scale_obj, "w_scale", false);
    scale.expect_shape({n}, "(N,)");
    scale.expect_type(ArgType::kF32, "float32");
    scale.expect_device(x.cuda, "x");
  } else if (!scale_obj.is_none()) {
    fail("w_scale is only used with int8 w; w is " + w.type_name());
  }
  Arg bias;
  if (!bias_obj.is_none()) {
    bias = Arg::from(bias_obj, "bias", false);
    bias.expect_shape({n}, "(N,)");
    bias.expect_type(x.type, x.type_name() + " (the dtype of x)");
    bias.expect_device(x.cuda, "x");
  }
  std::vector<int64_t> out_shape(x.shape.begin(), x.shape.end() - 1);
  out_shape.push_back(n);
  py::object result;
  Arg o = make_out(out, x, out_shape, &result);
  if (o.data == x.data) fail("out must not be x: linear cannot run in place");
  dec::LinearParams p;
  p.x = x.data;
  p.w = w.data;
  p.w_scale = i8 ? static_cast<const float*>(scale.data) : nullptr;
  p.bias = bias_obj.is_none() ? nullptr : bias.data;
  p.out = o.data;
  p.m = leading(x.shape, 1);
  p.n = int(n);
  p.k = int(kdim);
  p.act_dtype = dt;
  p.w_dtype = i8 ? DType::kI8 : dt;
  run(x.cuda, [&] { return dec::linear_cpu(p); }, GPU_LAUNCHER(linear_cuda, p), dec::check_linear(p, x.cuda));
  return result;
}

py::tuple quantize_weight_int8(const py::object& w_obj) {
  Arg w = Arg::from(w_obj, "w", false);
  w.expect_rank(2, "(N, K)");
  w.expect_type(ArgType::kF32, "float32");
  if (w.cuda) fail("quantize_weight_int8 runs on the CPU; pass a numpy array");
  const int n = int(w.shape[0]), k = int(w.shape[1]);
  py::array_t<int8_t> q({int64_t(n), int64_t(k)});
  py::array_t<float> scale(n);
  const float* src = static_cast<const float*>(w.data);
  int8_t* qd = q.mutable_data();
  float* sd = scale.mutable_data();
  KernelStatus st;
  {
    py::gil_scoped_release nogil;
    st = dec::quantize_weight_int8_cpu(src, n, k, qd, sd);
  }
  if (!st.ok()) throw py::value_error(st.message);
  return py::make_tuple(q, scale);
}

}  // namespace

void bind_decoder_ops(py::module_& m) {
  m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6, py::kw_only(),
        py::arg("out") = py::none(),
        R"doc(RMSNorm over the last dim: out = x * rsqrt(mean(x**2) + eps) * weight (fp32 accumulation).

x: (..., D), e.g. (T, D); weight: (D,) same dtype. Returns out (same shape as x); out= may be x.
CPU: float32 numpy arrays. CUDA: float16/bfloat16 tensors, out= required.)doc");
  m.def("rope", &rope, py::arg("q"), py::arg("k"), py::arg("positions"), py::arg("theta") = 10000.0,
        R"doc(Rotary position embedding (LLaMA rotate-half convention, HF rope_type "default"), in place.

q: (..., H, D), e.g. (T, H, D); k: (..., H_kv, D) with the same leading dims, or None;
positions: (...,) e.g. (T,) integer absolute positions; theta: rope_theta (10000 for LLaMA/Vicuna).
For i < D/2, a = positions * theta**(-2i/D): x[i], x[i+D/2] -> x[i] cos a - x[i+D/2] sin a,
x[i+D/2] cos a + x[i] sin a. Returns None.)doc");
  m.def("swiglu", &swiglu, py::arg("gate"), py::arg("up"), py::kw_only(), py::arg("out") = py::none(),
        R"doc(SwiGLU: out = silu(gate) * up, elementwise. gate, up: same shape (e.g. (T, F)); out= may alias either.)doc");
  m.def("linear", &linear, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(), py::kw_only(),
        py::arg("w_scale") = py::none(), py::arg("out") = py::none(),
        R"doc(Linear layer y = x @ W.T (+ bias) with dense or weight-only INT8 weights (fp32 accumulation).

x: (..., K), e.g. (M, K); w: (N, K) in the dtype of x (dense) or int8 with w_scale (N,) float32
(W = w * w_scale[:, None], per-output-channel symmetric; see quantize_weight_int8); bias: (N,) or None.
Returns y (..., N). CPU: float32. CUDA: float16/bfloat16 activations, out= required.)doc");
  m.def("quantize_weight_int8", &quantize_weight_int8, py::arg("w"),
        R"doc(Per-output-channel symmetric INT8 quantisation of w (N, K) float32.

Returns (w8 (N, K) int8, scale (N,) float32) with scale = max|w[n]| / 127 and
w8 = round(w / scale) in [-127, 127], for linear(x, w8, w_scale=scale).)doc");
}
