// Python bindings for the LLaMA decoder ops: rms_norm, rope, swiglu, linear (dense or weight-only
// int8), quantize_weight_int8, and cpu_kernels / set_cpu_kernels (the CPU linear's micro-kernels). Thin: validate every argument (csrc/tensor_arg.h), then call the
// C++ API (kernels/decoder_ops.h). numpy arrays / CPU tensors run the CPU kernels (float32); CUDA
// tensors (DLPack or __cuda_array_interface__) run the CUDA kernels (float16/bfloat16, out= given).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <functional>
#include <string>

#include "decoder_ops.h"
#include "index_arg.h"
#include "tensor_arg.h"

namespace py = pybind11;
using rsvlm_edge::ArgChecker;
using rsvlm_edge::launch;
using rsvlm_edge::DeviceType;
using rsvlm_edge::Dim;
using rsvlm_edge::DType;
using rsvlm_edge::Status;
using rsvlm_edge::TensorArg;

namespace {

bool on_cuda(const TensorArg& t) { return t.device.type == DeviceType::cuda; }

void check_activation(ArgChecker& c, const TensorArg& t, std::initializer_list<Dim> dims) {
  if (on_cuda(t)) c.check(t, dims, {DType::f16, DType::bf16});
  else c.check(t, dims, {DType::f32});
}

// `out` checked against `dims` and the dtype of `like`, or a new float32 numpy array (CPU only).
py::object output(ArgChecker& c, py::handle out_obj, TensorArg& out, const TensorArg& like,
                  std::initializer_list<Dim> dims, std::vector<int64_t> shape) {
  if (!out_obj.is_none()) {
    c.check(out, dims, {like.dtype});
    c.writable(out);
    return py::reinterpret_borrow<py::object>(out_obj);
  }
  if (on_cuda(like))
    c.fail("argument 'out' is required for CUDA inputs: pass a preallocated " + std::string(rsvlm_edge::dtype_name(like.dtype)) +
           " tensor of shape (" + [&] {
             std::string s;
             for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
             return s;
           }() + ") on the same device");
  py::array_t<float> arr(shape);
  out = rsvlm_edge::tensor_arg(arr, "out");
  return arr;
}

py::object rms_norm(py::handle x_obj, py::handle w_obj, double eps, py::handle out_obj, int64_t stream) {
  ArgChecker c("rms_norm");
  const TensorArg x = rsvlm_edge::tensor_arg(x_obj, "x", stream);
  const TensorArg w = rsvlm_edge::tensor_arg(w_obj, "weight", stream);
  TensorArg out = out_obj.is_none() ? TensorArg{} : rsvlm_edge::tensor_arg(out_obj, "out", stream);
  c.same_device({&x, &w, out_obj.is_none() ? nullptr : &out});
  check_activation(c, x, {"T", "D"});
  c.check(w, {"D"}, {x.dtype});
  if (!(eps >= 0.0)) c.fail("argument 'eps' must be >= 0, got " + std::to_string(eps));
  py::object result = output(c, out_obj, out, x, {"T", "D"}, x.shape);
  rsvlm_edge::RmsNormParams p;
  p.x = x.data;
  p.weight = w.data;
  p.out = out.data;
  p.rows = c.dim("T");
  p.dim = static_cast<int>(c.dim("D"));
  p.eps = static_cast<float>(eps);
  p.dtype = x.dtype;
  launch("rms_norm", x, stream, [&] { return rsvlm_edge::rms_norm_cpu(p); },
         [&](void* st) { return rsvlm_edge::rms_norm_cuda(p, st); });
  return result;
}

void rope(py::handle q_obj, py::handle k_obj, py::handle pos_obj, double theta, int64_t stream) {
  ArgChecker c("rope");
  const TensorArg q = rsvlm_edge::tensor_arg(q_obj, "q", stream);
  const bool has_k = !k_obj.is_none();
  const TensorArg k = has_k ? rsvlm_edge::tensor_arg(k_obj, "k", stream) : TensorArg{};
  const TensorArg pos = rsvlm_edge::index_arg(pos_obj, "positions", stream);
  c.same_device({&q, has_k ? &k : nullptr, &pos});
  check_activation(c, q, {"T", "H", "D"});
  c.writable(q);
  if (c.dim("D") % 2 != 0) c.fail("argument 'q' must have an even head_dim D for rotate-half RoPE, got D=" +
                                  std::to_string(c.dim("D")));
  if (has_k) {
    c.check(k, {"T", "H_kv", "D"}, {q.dtype});
    c.writable(k);
    if (k.data == q.data) c.fail("arguments 'q' and 'k' must be different arrays");
  }
  c.check(pos, {"T"}, {DType::i32});
  if (!(theta > 0.0)) c.fail("argument 'theta' must be > 0, got " + std::to_string(theta));
  rsvlm_edge::RopeParams p;
  p.q = q.data;
  p.k = has_k ? k.data : nullptr;
  p.positions = pos.ptr<const int32_t>();
  p.tokens = c.dim("T");
  p.num_heads = static_cast<int>(c.dim("H"));
  p.num_kv_heads = has_k ? static_cast<int>(c.dim("H_kv")) : 0;
  p.head_dim = static_cast<int>(c.dim("D"));
  p.theta = static_cast<float>(theta);
  p.dtype = q.dtype;
  launch("rope", q, stream, [&] { return rsvlm_edge::rope_cpu(p); },
         [&](void* st) { return rsvlm_edge::rope_cuda(p, st); });
}

py::object swiglu(py::handle g_obj, py::handle u_obj, py::handle out_obj, int64_t stream) {
  ArgChecker c("swiglu");
  const TensorArg g = rsvlm_edge::tensor_arg(g_obj, "gate", stream);
  const TensorArg u = rsvlm_edge::tensor_arg(u_obj, "up", stream);
  TensorArg out = out_obj.is_none() ? TensorArg{} : rsvlm_edge::tensor_arg(out_obj, "out", stream);
  c.same_device({&g, &u, out_obj.is_none() ? nullptr : &out});
  check_activation(c, g, {"T", "F"});
  c.check(u, {"T", "F"}, {g.dtype});
  py::object result = output(c, out_obj, out, g, {"T", "F"}, g.shape);
  rsvlm_edge::SwiGluParams p;
  p.gate = g.data;
  p.up = u.data;
  p.out = out.data;
  p.n = c.dim("T") * c.dim("F");
  p.dtype = g.dtype;
  launch("swiglu", g, stream, [&] { return rsvlm_edge::swiglu_cpu(p); },
         [&](void* st) { return rsvlm_edge::swiglu_cuda(p, st); });
  return result;
}

py::object linear(py::handle x_obj, py::handle w_obj, py::handle bias_obj, py::handle scale_obj, py::handle out_obj,
                  int64_t stream) {
  ArgChecker c("linear");
  const TensorArg x = rsvlm_edge::tensor_arg(x_obj, "x", stream);
  const TensorArg w = rsvlm_edge::tensor_arg(w_obj, "w", stream);
  const bool has_bias = !bias_obj.is_none(), has_scale = !scale_obj.is_none();
  const TensorArg bias = has_bias ? rsvlm_edge::tensor_arg(bias_obj, "bias", stream) : TensorArg{};
  const TensorArg scale = has_scale ? rsvlm_edge::tensor_arg(scale_obj, "w_scale", stream) : TensorArg{};
  TensorArg out = out_obj.is_none() ? TensorArg{} : rsvlm_edge::tensor_arg(out_obj, "out", stream);
  c.same_device({&x, &w, has_bias ? &bias : nullptr, has_scale ? &scale : nullptr, out_obj.is_none() ? nullptr : &out});
  check_activation(c, x, {"M", "K"});
  if (on_cuda(x)) c.check(w, {"N", "K"}, {x.dtype, DType::i8});
  else c.check(w, {"N", "K"}, {DType::f32, DType::f16, DType::i8});  // fp16: converted on the fly
  const bool int8 = w.dtype == DType::i8;
  if (int8 && !has_scale)
    c.fail("argument 'w' is int8 and needs w_scale, a float32 array of shape (N,) = (" + std::to_string(c.dim("N")) +
           ",) (see quantize_weight_int8)");
  if (!int8 && has_scale) c.fail(std::string("argument 'w_scale' is only used with int8 w; w is ") + rsvlm_edge::dtype_name(w.dtype));
  if (int8) c.check(scale, {"N"}, {DType::f32});
  if (has_bias) c.check(bias, {"N"}, {x.dtype});
  py::object result = output(c, out_obj, out, x, {"M", "N"}, {c.dim("M"), c.dim("N")});
  if (out.data == x.data) c.fail("argument 'out' must not be x: linear cannot run in place");
  rsvlm_edge::LinearParams p;
  p.x = x.data;
  p.w = w.data;
  p.w_scale = int8 ? scale.ptr<const float>() : nullptr;
  p.bias = has_bias ? bias.data : nullptr;
  p.out = out.data;
  p.m = c.dim("M");
  p.n = static_cast<int>(c.dim("N"));
  p.k = static_cast<int>(c.dim("K"));
  p.act_dtype = x.dtype;
  p.w_dtype = w.dtype;
  launch("linear", x, stream, [&] { return rsvlm_edge::linear_cpu(p); },
         [&](void* st) { return rsvlm_edge::linear_cuda(p, st); });
  return result;
}

std::string cpu_kernels() { return rsvlm_edge::cpu_kernels_name(rsvlm_edge::cpu_kernels()); }

std::string set_cpu_kernels(const std::string& name) {
  rsvlm_edge::CpuKernels k;
  if (name == "portable") k = rsvlm_edge::CpuKernels::portable;
  else if (name == "avx2") k = rsvlm_edge::CpuKernels::avx2;
  else if (name == "auto")
    k = rsvlm_edge::cpu_kernels_supported(rsvlm_edge::CpuKernels::avx2) ? rsvlm_edge::CpuKernels::avx2
                                                                          : rsvlm_edge::CpuKernels::portable;
  else throw std::invalid_argument("set_cpu_kernels: argument 'name' must be 'auto', 'avx2' or 'portable', got '" + name + "'");
  rsvlm_edge::throw_if_error(rsvlm_edge::set_cpu_kernels(k));
  return cpu_kernels();
}

py::tuple quantize_weight_int8(py::handle w_obj) {
  ArgChecker c("quantize_weight_int8");
  const TensorArg w = rsvlm_edge::tensor_arg(w_obj, "w");
  if (on_cuda(w)) c.fail("argument 'w' is on " + w.device_str() + "; quantisation runs on the CPU at load time: pass w.cpu()");
  c.check(w, {"N", "K"}, {DType::f32});
  const int64_t n = c.dim("N"), k = c.dim("K");
  if (n == 0 || k == 0) c.fail("argument 'w' must not be empty, got " + w.describe());
  py::array_t<int8_t> q({n, k});
  py::array_t<float> scale(n);
  const float* src = w.ptr<const float>();
  int8_t* qd = q.mutable_data();
  float* sd = scale.mutable_data();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = rsvlm_edge::quantize_weight_int8_cpu(src, static_cast<int>(n), static_cast<int>(k), qd, sd);
  }
  rsvlm_edge::throw_if_error(s);
  return py::make_tuple(q, scale);
}

}  // namespace

void bind_decoder_ops(py::module_& m) {
  m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6, py::kw_only(),
        py::arg("out") = py::none(), py::arg("stream") = 0,
        R"doc(RMSNorm over the last dim: out = x * rsqrt(mean(x**2) + eps) * weight (fp32 accumulation).

x: (T, D); weight: (D,) same dtype. Returns out (T, D); out= may be x (in place).
CPU: float32. CUDA tensors: float16/bfloat16, out= required; `stream` is a cudaStream_t as an
integer (0 = legacy default).)doc");
  m.def("rope", &rope, py::arg("q"), py::arg("k"), py::arg("positions"), py::arg("theta") = 10000.0, py::kw_only(),
        py::arg("stream") = 0,
        R"doc(Rotary position embedding (LLaMA rotate-half, as HF LlamaRotaryEmbedding with rope_type "default"), in place.

q: (T, H, D); k: (T, H_kv, D) or None; positions: (T,) integer absolute position of each token;
theta: rope_theta (10000 for LLaMA-2 / Vicuna). With f_i = theta**(-2i/D), a = position * f_i (fp32):
x[i], x[i+D/2] -> x[i] cos a - x[i+D/2] sin a, x[i+D/2] cos a + x[i] sin a for i < D/2. Returns None.)doc");
  m.def("swiglu", &swiglu, py::arg("gate"), py::arg("up"), py::kw_only(), py::arg("out") = py::none(),
        py::arg("stream") = 0,
        R"doc(SwiGLU: out = silu(gate) * up = gate / (1 + exp(-gate)) * up. gate, up: (T, F); out= may alias either.)doc");
  m.def("linear", &linear, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(), py::kw_only(),
        py::arg("w_scale") = py::none(), py::arg("out") = py::none(), py::arg("stream") = 0,
        R"doc(Linear layer y = x @ W.T (+ bias), dense or weight-only INT8 (fp32 accumulation).

x: (M, K); w: (N, K) dense, or int8 with w_scale (N,) float32, meaning W = w * w_scale[:, None]
(per-output-channel symmetric, see quantize_weight_int8); bias: (N,) or None. Returns y (M, N).
CPU: float32 activations; dense w float32 or float16 (converted to fp32 on the fly, exact); GEMV for
M < 4, cache-blocked GEMM above (see cpu_kernels). CUDA: float16/bfloat16 activations, dense w in the
same dtype, out= required; the CUDA kernel is a GEMV / small-M GEMM (decode, M <= 16), correct for
any M but slow for long prefills.)doc");
  m.def("cpu_kernels", &cpu_kernels,
        "Micro-kernels the CPU linear runs: 'avx2' (x86-64 with AVX2+FMA+F16C, detected at run time) or 'portable'.");
  m.def("set_cpu_kernels", &set_cpu_kernels, py::arg("name"),
        "Force the CPU linear's micro-kernels process-wide: 'auto' (best supported), 'avx2' or 'portable' "
        "(tests, benchmarks). Returns the active name; ValueError when this CPU cannot run them.");
  m.def("quantize_weight_int8", &quantize_weight_int8, py::arg("w"),
        R"doc(Per-output-channel symmetric INT8 quantisation of w (N, K) float32 (CPU, load time).

Returns (w8 (N, K) int8, scale (N,) float32): scale = max|w[n]| / 127 (0 for an all-zero row),
w8 = round(w / scale) in [-127, 127]. Use as linear(x, w8, w_scale=scale).)doc");
}
