// Python bindings of the W8A8 encoder GEMM (C++ API: rsvlm_edge/qgemm.h): qgemm_pack (int8 weights +
// scales -> one packed uint8 buffer), qgemm (fp32 activations quantised per row x the packed weights)
// and qgemm_reference (the naive definition on the unpacked weights). CPU only. Thin: validate every
// argument (tensor_arg.h), then call the launcher.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bind_util.h"
#include "rsvlm_edge/qgemm.h"

using rsvlm_edge::bind::on_cuda;

namespace {

// ValueError unless `t` is a CPU array (qgemm has no CUDA kernel).
void check_cpu(const ArgChecker& c, const TensorArg& t) {
  RSVLM_CHECK(c, !on_cuda(t),
              "argument '" + t.name + "' is on " + t.device_str() +
                  "; qgemm runs on the CPU only (no CUDA kernel): pass CPU arrays (use qlinear on the GPU)");
}

// ValueError "<op>: <message>" for a failed Status of kInvalidArgument (its message already starts with
// the C++ op name), else the Status's own exception.
void throw_status(const std::string& op, const Status& s) {
  if (s.ok()) return;
  if (s.code == rsvlm_edge::StatusCode::kInvalidArgument) {
    const size_t colon = s.message.find(": ");
    throw std::invalid_argument(op + ": " + (colon == std::string::npos ? s.message : s.message.substr(colon + 2)));
  }
  rsvlm_edge::throw_if_error(s);
}

py::array qgemm_pack(py::handle w_obj, py::handle scale_obj) {
  ArgChecker c("qgemm_pack");
  auto [w, scale] = rsvlm_edge::bind::load_args(c, Impl::kReference, 0, {{w_obj, "w"}, {scale_obj, "w_scale"}});
  check_cpu(c, w);
  c.check(w, {"N", "K"}, {DType::i8});  // w: (N, K) int8
  c.check(scale, {"N"}, {DType::f32});  // w_scale: (N,)
  const int n = c.dim_int("N", w, 1), k = c.dim_int("K", w, 1);
  RSVLM_CHECK(c, k <= rsvlm_edge::kQGemmMaxK,
              "argument 'w' has K=" + std::to_string(k) + ", more than " + std::to_string(rsvlm_edge::kQGemmMaxK) +
                  ", the largest K whose int8 dots fit int32");
  const int64_t bytes = rsvlm_edge::qgemm_packed_bytes(n, k);
  // 63 spare bytes: the returned view starts on a 64-byte boundary (full-cache-line weight loads).
  py::array_t<uint8_t> storage(bytes + 63);
  const uintptr_t base = reinterpret_cast<uintptr_t>(storage.mutable_data());
  const py::ssize_t off = py::ssize_t((64 - base % 64) % 64);
  py::array packed = storage[py::slice(off, off + bytes, 1)];
  uint8_t* dst = storage.mutable_data() + off;
  Status s;
  {
    py::gil_scoped_release nogil;
    s = rsvlm_edge::qgemm_pack(w.ptr<const int8_t>(), scale.ptr<const float>(), n, k, dst, bytes);
  }
  throw_status("qgemm_pack", s);
  return packed;
}

py::object qgemm(Impl impl, py::handle x_obj, py::handle w_obj, py::handle scale_obj, py::handle bias_obj,
                 py::handle out_obj) {
  const bool packed = impl == Impl::kFast;
  const std::string op = rsvlm_edge::bind::op_name("qgemm", impl);
  ArgChecker c(op);
  rsvlm_edge::QGemmParams p;
  TensorArg x, w, scale, bias, out;
  if (packed) {
    auto args = rsvlm_edge::bind::load_args(
        c, impl, 0, {{x_obj, "x"}, {w_obj, "packed"}, {bias_obj, "bias", true}, {out_obj, "out", true}});
    x = args[0], w = args[1], bias = args[2], out = args[3];
    check_cpu(c, x);
    check_cpu(c, w);
    c.check(w, {"bytes"}, {DType::u8});  // packed: (bytes,) uint8 from qgemm_pack
    int n = 0, k = 0;
    throw_status(op, rsvlm_edge::qgemm_packed_shape(w.ptr<const uint8_t>(), w.numel(), &n, &k));
    c.bind("N", n);
    c.bind("K", k);
    p.packed = w.ptr<const uint8_t>();
    p.packed_bytes = w.numel();
  } else {
    auto args = rsvlm_edge::bind::load_args(
        c, impl, 0,
        {{x_obj, "x"}, {w_obj, "w"}, {scale_obj, "w_scale"}, {bias_obj, "bias", true}, {out_obj, "out", true}});
    x = args[0], w = args[1], scale = args[2], bias = args[3], out = args[4];
    c.check(x, {"M", "K"}, {DType::f32});  // x: (M, K) float32
    c.check(w, {"N", "K"}, {DType::i8});   // w: (N, K) int8
    c.check(scale, {"N"}, {DType::f32});   // w_scale: (N,)
    p.w = w.ptr<const int8_t>();
    p.w_scale = scale.ptr<const float>();
  }
  if (packed) c.check(x, {"M", "K"}, {DType::f32});             // x: (M, K) float32, K from the header
  if (!bias_obj.is_none()) c.check(bias, {"N"}, {DType::f32});  // bias: (N,)
  p.m = c.dim("M");
  p.n = c.dim_int("N", w, 1);
  p.k = c.dim_int("K", x, 1);
  RSVLM_CHECK(c, p.k <= rsvlm_edge::kQGemmMaxK,
              "argument 'x' has K=" + std::to_string(p.k) + ", more than " + std::to_string(rsvlm_edge::kQGemmMaxK) +
                  ", the largest K whose int8 dots fit int32");
  py::object result = rsvlm_edge::bind::output(c, out_obj, out, x, {"M", "N"}, {c.dim("M"), c.dim("N")});  // (M, N)
  const auto byte_range = [](const TensorArg& t) {
    const char* b = static_cast<const char*>(t.data);
    return std::make_pair(b, b + t.numel() * int64_t(rsvlm_edge::dtype_size(t.dtype)));
  };
  const auto overlap = [&](const TensorArg& a, const TensorArg& b) {
    if (a.numel() == 0 || b.numel() == 0) return false;
    const auto ra = byte_range(a), rb = byte_range(b);
    return ra.first < rb.second && rb.first < ra.second;
  };
  RSVLM_CHECK(c, !overlap(out, x), "argument 'out' must not overlap x: qgemm cannot run in place");
  RSVLM_CHECK(c, bias_obj.is_none() || !overlap(out, bias), "argument 'out' must not overlap bias");
  RSVLM_CHECK(c, !overlap(out, w), "argument 'out' must not overlap " + std::string(packed ? "packed" : "w"));
  p.x = x.ptr<const float>();
  p.bias = bias_obj.is_none() ? nullptr : bias.ptr<const float>();
  p.out = out.ptr<float>();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = packed ? rsvlm_edge::qgemm_cpu(p) : rsvlm_edge::qgemm_reference(p);
  }
  throw_status(op, s);
  return result;
}

}  // namespace

void bind_qgemm(py::module_& m) {
  m.def("qgemm_pack", &qgemm_pack, py::arg("w"), py::arg("w_scale"),
        R"doc(Pack int8 weights for qgemm (load time, CPU): w (N, K) int8 in [-127, 127] and w_scale (N,) float32
(the w8 format of quantize_w8) -> one uint8 buffer of qgemm_packed_bytes(N, K) bytes, 64-byte aligned:
a header (N, K, checksum), the weights in panels of 16 output channels, their per-channel sums and the
scales (rsvlm_edge/qgemm.h). The layout is the same on every CPU.)doc");
  m.def(
      "qgemm",
      [](py::handle x, py::handle packed, py::handle bias, py::handle out) {
        return qgemm(Impl::kFast, x, packed, py::none(), bias, out);
      },
      py::arg("x"), py::arg("packed"), py::arg("bias") = py::none(), py::kw_only(), py::arg("out") = py::none(),
      R"doc(W8A8 GEMM of encoders y = x @ W.T (+ bias), CPU only (no CUDA kernel).

x: (M, K) float32, every row quantised on the fly as one block (sx = max|x| / 127, round half to even);
packed: the uint8 buffer of qgemm_pack(w, w_scale) (N and K come from its header; x's K must match);
bias: (N,) float32 or None. Returns y (M, N) float32 = sx[m] * w_scale[n] * (exact int32 dot) + bias[n]
(out= a preallocated (M, N) float32 array that does not overlap x). rsvlm_edge/qgemm.h.)doc");
  m.def(
      "qgemm_reference",
      [](py::handle x, py::handle w, py::handle w_scale, py::handle bias, py::handle out) {
        return qgemm(Impl::kReference, x, w, w_scale, bias, out);
      },
      py::arg("x"), py::arg("w"), py::arg("w_scale"), py::arg("bias") = py::none(), py::kw_only(),
      py::arg("out") = py::none(),
      "Naive reference of qgemm (kernels/qgemm/qgemm_ref.cpp: exact integer dots, fp64 outer product) on the "
      "UNPACKED weights w (N, K) int8 and w_scale (N,) float32; CPU only.");
}
