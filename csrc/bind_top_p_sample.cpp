// Python bindings of top_p_sample / top_p_sample_reference (C++ API: rsvlm_edge/top_p_sample.h). Thin:
// validate every argument (tensor_arg.h), then call the launcher.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "bind_util.h"
#include "rsvlm_edge/top_p_sample.h"

namespace {

py::object top_p_sample(Impl impl, py::handle logits_obj, py::handle u_obj, double temperature, double top_p,
                        py::handle out_obj, int64_t stream) {
  ArgChecker c(rsvlm_edge::bind::op_name("top_p_sample", impl));
  auto [logits, u, out] = rsvlm_edge::bind::load_args(
      c, impl, stream, {{logits_obj, "logits"}, {u_obj, "uniforms", true}, {out_obj, "out", true}});
  c.check(logits, {"B", "V"}, {DType::f32});  // logits: (B, V) float32
  RSVLM_CHECK(c, !std::isnan(temperature), "argument 'temperature' is NaN");
  RSVLM_CHECK(c, top_p > 0.0 && top_p <= 1.0, "argument 'top_p' must be in (0, 1], got " + std::to_string(top_p));
  const bool sampling = temperature > 0.0;
  RSVLM_CHECK(c, !sampling || !u_obj.is_none(),
              "argument 'uniforms' (one draw in [0, 1) per row) is required when temperature > 0");
  if (!u_obj.is_none()) c.check(u, {"B"}, {DType::f32});  // uniforms: (B,) float32
  rsvlm_edge::TopPSampleParams p;
  p.batch = c.dim_int("B", logits);
  p.vocab = c.dim_int("V", logits, 1);
  py::object result;
  if (!out_obj.is_none()) {
    c.check(out, {"B"}, {DType::i64});  // out: (B,) int64
    c.writable(out);
    result = py::reinterpret_borrow<py::object>(out_obj);
  } else {
    if (rsvlm_edge::bind::on_cuda(logits))
      c.fail("argument 'out' is required for CUDA inputs: pass a preallocated int64 tensor of shape (B,)");
    py::array_t<int64_t> arr(std::vector<py::ssize_t>{static_cast<py::ssize_t>(p.batch)});
    out = rsvlm_edge::tensor_arg(arr, "out");
    result = arr;
  }
  if (sampling && !rsvlm_edge::bind::on_cuda(u)) {  // host draws: checked here (device ones cannot be read)
    const float* v = u.ptr<const float>();
    for (int64_t b = 0; b < p.batch; ++b)
      RSVLM_CHECK(c, v[b] >= 0.f && v[b] < 1.f,
                  "argument 'uniforms' must hold draws in [0, 1), got " + std::to_string(v[b]) + " at row " +
                      std::to_string(b));
  }
  p.logits = logits.ptr<const float>();
  p.uniforms = u_obj.is_none() ? nullptr : u.ptr<const float>();
  p.out = out.ptr<int64_t>();
  p.temperature = static_cast<float>(temperature);
  p.top_p = static_cast<float>(top_p);
  rsvlm_edge::bind::run(
      "top_p_sample", impl, logits, stream, [&] { return rsvlm_edge::top_p_sample_cpu(p); },
      [&] { return rsvlm_edge::top_p_sample_reference(p); },
      [&](void* st) { return rsvlm_edge::top_p_sample_cuda(p, st); });
  return result;
}

const char* kDoc = R"doc(Nucleus (top-p) sampling of one token per row from logits (B, V) float32, given one
uniform draw per row (uniforms (B,) float32 in [0, 1)): softmax(logits / temperature); the tokens by
probability, descending (ties by index); the smallest prefix whose mass reaches top_p; the first of them
whose prefix mass over the nucleus' mass exceeds u. temperature <= 0: the argmax (numpy's: the first NaN,
else the first maximum), and so for a row whose softmax overflows. Returns out (B,) int64.
models/llava/generation.py's sample_with_uniforms is its numpy definition. CPU: numpy arrays; CUDA
tensors: fp32 math, out= required; `stream` is a cudaStream_t as an integer (0 = legacy default).)doc";

}  // namespace

void bind_top_p_sample(py::module_& m) {
  m.def(
      "top_p_sample",
      [](py::handle logits, py::handle uniforms, double temperature, double top_p, py::handle out, int64_t stream) {
        return top_p_sample(Impl::kFast, logits, uniforms, temperature, top_p, out, stream);
      },
      py::arg("logits"), py::arg("uniforms"), py::arg("temperature"), py::arg("top_p") = 1.0, py::kw_only(),
      py::arg("out") = py::none(), py::arg("stream") = 0, kDoc);
  m.def(
      "top_p_sample_reference",
      [](py::handle logits, py::handle uniforms, double temperature, double top_p, py::handle out) {
        return top_p_sample(Impl::kReference, logits, uniforms, temperature, top_p, out, 0);
      },
      py::arg("logits"), py::arg("uniforms"), py::arg("temperature"), py::arg("top_p") = 1.0, py::kw_only(),
      py::arg("out") = py::none(),
      "Naive reference of top_p_sample (kernels/top_p_sample/top_p_sample_ref.cpp: fp64, a full stable sort per row), "
      "CPU only; same arguments and checks as top_p_sample.");
}
