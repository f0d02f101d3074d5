// Python binding of rsvlm_edge::CpuDecodeStep (C++ API: rsvlm_edge/cpu_decoder.h) as
// rsvlm_edge._C.CpuDecodeStep. Thin: numpy arrays in (checked here for dtype, rank and C order, sizes by
// the C++ class; ValueError either way), kept alive by the object; run() releases the GIL and takes a
// lock, so two threads sharing one step wait for each other instead of mixing buffers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bind_util.h"
#include "index_arg.h"
#include "rsvlm_edge/cpu_decoder.h"

namespace {

using rsvlm_edge::CpuDecodeStep;
using rsvlm_edge::CpuDecoderLayer;
using rsvlm_edge::CpuLinearWeights;
using rsvlm_edge::DecoderShape;
using rsvlm_edge::KvCacheView;

struct PyCpuDecodeStep {
  std::unique_ptr<CpuDecodeStep> step;
  std::vector<py::object> keep;  // every array the step reads or writes
  std::mutex lock;
};

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("CpuDecodeStep: " + msg); }

// The array's DType (tensor_arg.h's mapping); i64 for one it refuses (big-endian, float64, ...): no caller's list
// holds i64, so those are refused with the caller's message.
DType dtype_of(const py::array& a) {
  DType d;
  return rsvlm_edge::detail::numpy_dtype(a.dtype(), &d) ? d : DType::i64;
}

// `obj` as a C-contiguous numpy array of rank `ndim` (or either of two ranks) and one of `dtypes`.
py::array array(py::handle obj, const std::string& what, std::initializer_list<int> ranks,
                std::initializer_list<DType> dtypes, bool writable, std::vector<py::object>& keep) {
  if (!py::isinstance<py::array>(obj)) fail(what + " must be a numpy array");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  bool rank_ok = false, dtype_ok = false;
  for (int r : ranks) rank_ok |= a.ndim() == r;
  for (DType d : dtypes) dtype_ok |= dtype_of(a) == d;
  if (!rank_ok || !dtype_ok) {
    std::string allowed;
    for (DType d : dtypes) allowed += std::string(allowed.empty() ? "" : " / ") + rsvlm_edge::dtype_name(d);
    fail(what + " must be a " + std::to_string(*ranks.begin()) + "-D " + allowed + " array, got " +
         std::to_string(a.ndim()) + "-D " + py::str(a.dtype()).cast<std::string>());
  }
  if (!(a.flags() & py::array::c_style)) fail(what + " must be C-contiguous");
  if (writable && !a.writeable()) fail(what + " must be writable");
  keep.push_back(a);
  return a;
}

int dim(const py::array& a, int i) {
  if (a.shape(i) > INT_MAX) fail("a dimension of " + std::to_string(a.shape(i)) + " is beyond int");
  return static_cast<int>(a.shape(i));
}

// {"w": (N, K) or column blocks (S, N, K/S) float, (N, K) int8, (N, K/2) uint8; "scale": (N, G) float32 or
// None; "bias": (N,) float32 or None}.
CpuLinearWeights linear(py::handle obj, const std::string& what, std::vector<py::object>& keep) {
  if (!py::isinstance<py::dict>(obj)) fail(what + " must be a dict with 'w', 'scale', 'bias'");
  const py::dict d = py::reinterpret_borrow<py::dict>(obj);
  if (!d.contains("w")) fail(what + " lacks 'w'");
  CpuLinearWeights l;
  const py::array w = array(d["w"], what + " weights", {2, 3}, {DType::f32, DType::f16, DType::i8, DType::u8},
                            false, keep);
  l.w = w.data();
  l.dtype = dtype_of(w);
  if (w.ndim() == 3) {
    if (l.quantised()) fail(what + " weights: quantised weights are (N, K) or (N, K / 2)");
    l.blocks = dim(w, 0);
    l.n = dim(w, 1);
    l.k = static_cast<int>(std::min<int64_t>(int64_t(dim(w, 0)) * dim(w, 2), INT_MAX));
  } else {
    l.n = dim(w, 0);
    l.k = static_cast<int>(std::min<int64_t>(int64_t(dim(w, 1)) * (l.dtype == DType::u8 ? 2 : 1), INT_MAX));
  }
  const py::object scale = d.contains("scale") ? py::reinterpret_borrow<py::object>(d["scale"]) : py::none();
  if (!scale.is_none()) {
    const py::array s = array(scale, what + " scales", {2}, {DType::f32}, false, keep);
    if (dim(s, 0) != l.n) fail(what + " scales: " + std::to_string(l.n) + " rows expected, got " + std::to_string(dim(s, 0)));
    l.scale = static_cast<const float*>(s.data());
    l.groups = dim(s, 1);
  }
  const py::object bias = d.contains("bias") ? py::reinterpret_borrow<py::object>(d["bias"]) : py::none();
  if (!bias.is_none()) {
    const py::array b = array(bias, what + " bias", {1}, {DType::f32}, false, keep);
    if (dim(b, 0) != l.n) fail(what + " bias: " + std::to_string(l.n) + " values expected, got " + std::to_string(dim(b, 0)));
    l.bias = static_cast<const float*>(b.data());
  }
  return l;
}

py::object item(const py::dict& d, const char* key) {
  return d.contains(key) ? py::reinterpret_borrow<py::object>(d[key]) : py::none();
}

CpuLinearWeights optional_linear(const py::dict& d, const char* key, const std::string& what,
                                 std::vector<py::object>& keep) {
  const py::object o = item(d, key);
  return o.is_none() ? CpuLinearWeights{} : linear(o, what + key, keep);
}

// k_cache / v_cache (B_cache, H_kv, S_max, D) float32 or int8, k_scale / v_scale (B_cache, H_kv, S_max) float32
// with int8: the same arrays as the Python KVCache's layer.
KvCacheView cache(const py::dict& d, const std::string& what, std::vector<py::object>& keep) {
  py::array k = array(item(d, "k_cache"), what + "k_cache", {4}, {DType::f32, DType::i8}, true, keep);
  py::array v = array(item(d, "v_cache"), what + "v_cache", {4}, {dtype_of(k)}, true, keep);
  for (int i = 0; i < 4; ++i)
    if (v.shape(i) != k.shape(i)) fail(what + "v_cache must have k_cache's shape");
  const auto* kb = static_cast<const char*>(k.data());
  const auto* vb = static_cast<const char*>(v.data());
  if (kb < vb + v.nbytes() && vb < kb + k.nbytes()) fail(what + "k_cache and v_cache share memory");
  KvCacheView c;
  c.k = k.mutable_data();
  c.v = v.mutable_data();
  c.dtype = dtype_of(k);
  c.slots = dim(k, 0);
  c.num_kv_heads = dim(k, 1);
  c.s_max = dim(k, 2);
  c.head_dim = dim(k, 3);
  if (c.dtype == DType::i8) {
    float* scales[2];
    const char* names[2] = {"k_scale", "v_scale"};
    for (int j = 0; j < 2; ++j) {
      py::array s = array(item(d, names[j]), what + names[j], {3}, {DType::f32}, true, keep);
      for (int i = 0; i < 3; ++i)
        if (s.shape(i) != k.shape(i)) fail(what + names[j] + " must be (B_cache, H_kv, S_max) of its int8 cache");
      scales[j] = static_cast<float*>(s.mutable_data());
    }
    c.k_scale = scales[0];
    c.v_scale = scales[1];
  }
  return c;
}

std::unique_ptr<PyCpuDecodeStep> make(const py::dict& shape, int max_batch, const py::list& layers,
                                      py::handle final_norm, py::handle lm_head, bool bf16x3) {
  auto self = std::make_unique<PyCpuDecodeStep>();
  auto& keep = self->keep;
  const DecoderShape s = rsvlm_edge::bind::decoder_shape(shape, "CpuDecodeStep");
  const int c = s.hidden_size;
  auto norm_weight = [&](py::handle obj, const std::string& what) {
    const py::array a = array(obj, what, {1}, {DType::f32}, false, keep);
    if (a.shape(0) != c) fail(what + ": (" + std::to_string(c) + ",) expected, got (" + std::to_string(a.shape(0)) + ",)");
    return static_cast<const float*>(a.data());
  };
  std::vector<CpuDecoderLayer> ls;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = "layer " + std::to_string(i) + " ";
    if (!py::isinstance<py::dict>(layers[i])) fail(p + "must be a dict");
    const py::dict d = py::reinterpret_borrow<py::dict>(layers[i]);
    CpuDecoderLayer l;
    l.input_norm = norm_weight(item(d, "input_norm"), p + "input_norm");
    l.post_norm = norm_weight(item(d, "post_norm"), p + "post_norm");
    l.qkv = optional_linear(d, "qkv", p, keep);
    l.q = optional_linear(d, "q", p, keep);
    l.k = optional_linear(d, "k", p, keep);
    l.v = optional_linear(d, "v", p, keep);
    l.o = optional_linear(d, "o", p, keep);
    l.gate_up = optional_linear(d, "gate_up", p, keep);
    l.gate = optional_linear(d, "gate", p, keep);
    l.up = optional_linear(d, "up", p, keep);
    l.down = optional_linear(d, "down", p, keep);
    l.cache = cache(d, p, keep);
    ls.push_back(l);
  }
  const float* fn = norm_weight(final_norm, "final_norm");
  const CpuLinearWeights head = linear(lm_head, "lm_head", keep);
  rsvlm_edge::throw_if_error(CpuDecodeStep::create(s, max_batch, std::move(ls), fn, head, bf16x3, &self->step));
  return self;
}

void run(PyCpuDecodeStep& self, const py::array& x_obj, py::handle positions_obj, const py::array& logits_obj) {
  std::vector<py::object> keep;
  const DecoderShape& s = self.step->shape();
  py::array x = array(x_obj, "x", {2}, {DType::f32}, true, keep);
  py::array logits = array(logits_obj, "logits", {2}, {DType::f32}, true, keep);
  const int64_t b = x.shape(0);
  if (x.shape(1) != s.hidden_size) fail("x must be (B, " + std::to_string(s.hidden_size) + ") float32");
  // Any integer dtype, every value checked into [0, 2^31 - 1] and copied as int32 (never truncated).
  const TensorArg positions = rsvlm_edge::index_arg(positions_obj, "positions", 0, /*min_value=*/0);
  if (positions.ndim() != 1 || positions.shape[0] != b)
    fail("positions must be (B,) for x of " + std::to_string(b) + " rows");
  if (logits.shape(0) != b || logits.shape(1) != s.vocab_size)
    fail("logits must be (" + std::to_string(b) + ", " + std::to_string(s.vocab_size) + ") float32");
  if (b < 1 || b > self.step->max_batch())
    fail("batch " + std::to_string(b) + " is outside [1, max_batch " + std::to_string(self.step->max_batch()) + "]");
  const auto* xb = static_cast<const char*>(x.data());
  const auto* lb = static_cast<const char*>(logits.data());
  if (xb < lb + logits.nbytes() && lb < xb + x.nbytes()) fail("x and logits share memory");
  float* xp = static_cast<float*>(x.mutable_data());
  float* lp = static_cast<float*>(logits.mutable_data());
  const int32_t* pos = positions.ptr<const int32_t>();
  rsvlm_edge::Status st;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> guard(self.lock);
    st = self.step->run(xp, pos, static_cast<int>(b), lp);
  }
  rsvlm_edge::throw_if_error(st);
}

}  // namespace

void bind_cpu_decoder(py::module_& m) {
  py::class_<PyCpuDecodeStep>(m, "CpuDecodeStep", R"doc(One decode step of a LLaMA-family decoder on the CPU in
one call (rsvlm_edge/cpu_decoder.h): decoder.py's decode_step over the native kernels, bit for bit, from C++,
over weights and a KV cache the caller owns (the arrays are kept alive by this object).)doc")
      .def(py::init(&make), py::arg("shape"), py::arg("max_batch"), py::arg("layers"), py::arg("final_norm"),
           py::arg("lm_head"), py::kw_only(), py::arg("bf16x3") = false,
           "shape: dict (vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim, "
           "rms_norm_eps, rope_theta). layers: one dict per layer with input_norm, post_norm (C,) float32; linears "
           "qkv or q / k / v, o, gate_up or gate / up, down, each a dict {'w', 'scale', 'bias'} (decoder.py's Linear); "
           "k_cache, v_cache (B_cache, H_kv, S_max, D) float32 or int8 (+ k_scale, v_scale (B_cache, H_kv, S_max) "
           "float32). final_norm (C,) float32; lm_head a linear dict. ValueError for anything that does not fit.")
      .def("run", &run, py::arg("x"), py::arg("positions"), py::arg("logits"),
           "One token per sequence: x (B, C) float32 embeddings in (the residual stream after), positions (B,) tokens "
           "each sequence holds before this one, logits (B, V) float32 written.")
      .def_property_readonly("max_batch", [](const PyCpuDecodeStep& s) { return s.step->max_batch(); });
}
