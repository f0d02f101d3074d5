// Python bindings of rope / rope_reference (C++ API: rsvlm_edge/rope.h). Thin: validate every
// argument (tensor_arg.h, index_arg.h), then call the launcher.
#include <pybind11/pybind11.h>

#include <string>

#include "bind_util.h"
#include "index_arg.h"
#include "rsvlm_edge/rope.h"

namespace {

void rope(Impl impl, py::handle q_obj, py::handle k_obj, py::handle pos_obj, double theta, int64_t stream) {
  ArgChecker c(rsvlm_edge::bind::op_name("rope", impl));
  const TensorArg q = rsvlm_edge::tensor_arg(q_obj, "q", stream);
  const bool has_k = !k_obj.is_none();
  const TensorArg k = has_k ? rsvlm_edge::tensor_arg(k_obj, "k", stream) : TensorArg{};
  const TensorArg pos = rsvlm_edge::index_arg(pos_obj, "positions", stream, /*min_value=*/0);
  rsvlm_edge::bind::check_devices(c, impl, {&q, rsvlm_edge::bind::maybe(k, has_k), &pos});
  rsvlm_edge::bind::check_activation(c, q, {"T", "H", "D"});  // q: (T, H, D)
  c.writable(q);
  rsvlm_edge::RopeParams p;
  p.num_heads = c.dim_int("H", q, 1);
  p.head_dim = c.dim_int("D", q, 2);
  RSVLM_CHECK(c, p.head_dim % 2 == 0,
              "argument 'q' must have an even head_dim D for rotate-half RoPE, got D=" + std::to_string(p.head_dim));
  if (has_k) {
    c.check(k, {"T", "H_kv", "D"}, {q.dtype});  // k: (T, H_kv, D)
    c.writable(k);
    RSVLM_CHECK(c, k.data != q.data || k.numel() == 0, "arguments 'q' and 'k' must be different arrays");
    p.num_kv_heads = c.dim_int("H_kv", k, 1);
  }
  c.check(pos, {"T"}, {DType::i32});  // positions: (T,) int32 (host: any integer dtype, range-checked)
  RSVLM_CHECK(c, theta > 0.0, "argument 'theta' must be > 0, got " + std::to_string(theta));
  p.q = q.data;
  p.k = has_k ? k.data : nullptr;
  p.positions = pos.ptr<const int32_t>();
  p.tokens = c.dim("T");
  p.theta = static_cast<float>(theta);
  p.dtype = q.dtype;
  rsvlm_edge::bind::run(
      "rope", impl, q, stream, [&] { return rsvlm_edge::rope_cpu(p); }, [&] { return rsvlm_edge::rope_reference(p); },
      [&](void* st) { return rsvlm_edge::rope_cuda(p, st); });
}

}  // namespace

void bind_rope(py::module_& m) {
  m.def(
      "rope",
      [](py::handle q, py::handle k, py::handle pos, double theta, int64_t stream) {
        rope(Impl::kFast, q, k, pos, theta, stream);
      },
      py::arg("q"), py::arg("k"), py::arg("positions"), py::arg("theta") = 10000.0, py::kw_only(),
      py::arg("stream") = 0,
      R"doc(Rotary position embedding (LLaMA rotate-half, as HF LlamaRotaryEmbedding with rope_type "default"), in place.

q: (T, H, D); k: (T, H_kv, D) or None; positions: (T,) absolute position of each token, in
[0, 2^31) (on the CPU any integer array or list, range-checked; CUDA tensors int32);
theta: rope_theta (10000 for LLaMA-2 / Vicuna). With f_i = theta**(-2i/D), a = position * f_i (fp32):
x[i], x[i+D/2] -> x[i] cos a - x[i+D/2] sin a, x[i+D/2] cos a + x[i] sin a for i < D/2. Returns None.)doc");
  m.def(
      "rope_reference",
      [](py::handle q, py::handle k, py::handle pos, double theta) { rope(Impl::kReference, q, k, pos, theta, 0); },
      py::arg("q"), py::arg("k"), py::arg("positions"), py::arg("theta") = 10000.0,
      "Naive reference of rope (kernels/rope/rope_ref.cpp: plain loops, fp64 rotation), CPU float32 only, in place.");
}
