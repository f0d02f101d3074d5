// Python binding of rsvlm_edge::CudaDecoder (C++ API: rsvlm_edge/cuda_decoder.h) as
// rsvlm_edge._C.CudaDecoder. Thin: host numpy arrays in and out; every size and name is checked by
// the C++ class (ValueError), CUDA failures raise RuntimeError, a build without CUDA raises
// RuntimeError at construction. prefill / decode run without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bind_util.h"
#include "rsvlm_edge/cuda_decoder.h"

namespace {

using rsvlm_edge::CudaDecoder;
using rsvlm_edge::DecoderShape;

std::unique_ptr<CudaDecoder> make(const py::dict& shape, int max_batch, int max_seq, const std::string& kv_cache,
                                  int64_t kv_pool_tokens) {
  if (kv_cache != "fp16" && kv_cache != "int8")
    throw std::invalid_argument("CudaDecoder: kv_cache must be 'fp16' or 'int8', got '" + kv_cache + "'");
  const DecoderShape s = rsvlm_edge::bind::decoder_shape(shape, "CudaDecoder");
  std::unique_ptr<CudaDecoder> d;
  rsvlm_edge::throw_if_error(
      CudaDecoder::create(s, max_batch, max_seq, &d, kv_cache == "int8" ? DType::i8 : DType::f16, kv_pool_tokens));
  return d;
}

DType numpy_dtype(const py::array& a, const std::string& name) {
  DType d;
  if (rsvlm_edge::detail::numpy_dtype(a.dtype(), &d) && (d == DType::f32 || d == DType::f16 || d == DType::i8 || d == DType::u8))
    return d;
  throw std::invalid_argument("CudaDecoder.set_tensor: tensor '" + name + "' has dtype " +
                              py::str(a.dtype()).cast<std::string>() + " (float32, float16, int8 or uint8 expected)");
}

void set_tensor(CudaDecoder& d, const std::string& name, const py::array& arr) {
  const DType dt = numpy_dtype(arr, name);
  // A C-contiguous copy only when the caller's array is not one already (memory-mapped weights are).
  py::array a = py::array::ensure(arr, py::array::c_style);
  if (!a) throw std::invalid_argument("CudaDecoder.set_tensor: tensor '" + name + "' is not an array");
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  const void* data = a.data();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = d.set_tensor(name, data, dt, shape);
  }
  rsvlm_edge::throw_if_error(s);
}

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

py::array_t<float> prefill(CudaDecoder& d, const FloatArray& embeds, const IdArray& lengths) {
  if (embeds.ndim() != 3 || embeds.shape(2) != d.shape().hidden_size)
    throw std::invalid_argument("CudaDecoder.prefill: embeds must be (B, T, " + std::to_string(d.shape().hidden_size) +
                                ") float32");
  if (lengths.ndim() != 1 || lengths.shape(0) != embeds.shape(0))
    throw std::invalid_argument("CudaDecoder.prefill: lengths must be (B,) for embeds of batch " +
                                std::to_string(embeds.shape(0)));
  const int64_t b = embeds.shape(0), t = embeds.shape(1);
  if (b < 1 || b > d.max_batch())
    throw std::invalid_argument("CudaDecoder.prefill: batch of " + std::to_string(b) + " is outside [1, max_batch " +
                                std::to_string(d.max_batch()) + "]");
  if (t < 1 || t > d.max_seq())
    throw std::invalid_argument("CudaDecoder.prefill: prompt of " + std::to_string(t) +
                                " tokens exceeds the KV cache (" + std::to_string(d.max_seq()) + " positions)");
  py::array_t<float> logits({b, int64_t(d.shape().vocab_size)});
  const float* e = embeds.data();
  const int64_t* l = lengths.data();
  float* out = logits.mutable_data();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = d.prefill(e, l, static_cast<int>(b), static_cast<int>(t), out);
  }
  rsvlm_edge::throw_if_error(s);
  return logits;
}

// (logits (B, V) float32 or None, argmax (B,) int64).
py::tuple decode(CudaDecoder& d, const IdArray& ids, bool want_logits) {
  if (ids.ndim() != 1) throw std::invalid_argument("CudaDecoder.decode: token_ids must be (B,)");
  const int64_t b = ids.shape(0);
  if (b != d.batch())
    throw std::invalid_argument("CudaDecoder.decode: got " + std::to_string(b) + " token ids for a batch of " +
                                std::to_string(d.batch()) + (d.batch() == 0 ? " (run prefill first)" : ""));
  py::array_t<int64_t> next(b);
  py::object logits = py::none();
  float* out = nullptr;
  if (want_logits) {
    py::array_t<float> l({b, int64_t(d.shape().vocab_size)});
    out = l.mutable_data();
    logits = l;
  }
  const int64_t* in = ids.data();
  int64_t* nx = next.mutable_data();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = d.decode(in, static_cast<int>(b), out, nx);
  }
  rsvlm_edge::throw_if_error(s);
  return py::make_tuple(logits, next);
}

py::array_t<int64_t> decode_sample(CudaDecoder& d, const IdArray& ids, double temperature, double top_p,
                                   const py::array_t<float, py::array::c_style | py::array::forcecast>& uniforms) {
  if (ids.ndim() != 1) throw std::invalid_argument("CudaDecoder.decode_sample: token_ids must be (B,)");
  const int64_t b = ids.shape(0);
  if (b != d.batch())
    throw std::invalid_argument("CudaDecoder.decode_sample: got " + std::to_string(b) + " token ids for a batch of " +
                                std::to_string(d.batch()) + (d.batch() == 0 ? " (run prefill first)" : ""));
  if (uniforms.ndim() != 1 || uniforms.shape(0) != b)
    throw std::invalid_argument("CudaDecoder.decode_sample: uniforms must be (B=" + std::to_string(b) +
                                ",) draws in [0, 1)");
  py::array_t<int64_t> next(b);
  const int64_t* in = ids.data();
  const float* u = uniforms.data();
  int64_t* nx = next.mutable_data();
  Status s;
  {
    py::gil_scoped_release nogil;
    s = d.decode_sample(in, static_cast<int>(b), static_cast<float>(temperature), static_cast<float>(top_p), u, nx);
  }
  rsvlm_edge::throw_if_error(s);
  return next;
}

}  // namespace

void bind_cuda_decoder(py::module_& m) {
  py::class_<CudaDecoder>(m, "CudaDecoder", R"doc(A LLaMA-family decoder on the current CUDA device
(rsvlm_edge/cuda_decoder.h): weights uploaded once in their stored precision, a device KV cache, fp16
activations with fp32 accumulation, each decode step replayed from a CUDA graph.)doc")
      .def(py::init(&make), py::arg("shape"), py::arg("max_batch"), py::arg("max_seq"), py::kw_only(),
           py::arg("kv_cache") = "fp16", py::arg("kv_pool_tokens") = 0,
           "shape: dict with vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, "
           "head_dim, rms_norm_eps, rope_theta; kv_cache: 'fp16' or 'int8' (one fp32 scale per cached K / V row); "
           "kv_pool_tokens > 0: a paged cache of that many tokens shared by the batch (0: max_batch x max_seq). "
           "RuntimeError without CUDA or a device.")
      .def("set_tensor", &set_tensor, py::arg("name"), py::arg("array"),
           "Upload one canonical tensor (decoder.safetensors name) from a host numpy array.")
      .def("check_complete", [](const CudaDecoder& d) { rsvlm_edge::throw_if_error(d.check_complete()); },
           "ValueError naming the first tensor not uploaded yet.")
      .def("prefill", &prefill, py::arg("embeds"), py::arg("lengths"),
           "Right-padded prompts embeds (B, T, C) float32, lengths (B,): fp32 logits (B, V) at each last position.")
      .def("decode", &decode, py::arg("token_ids"), py::kw_only(), py::arg("logits") = true,
           "One token per sequence: (logits (B, V) float32 or None when logits=False, greedy next ids (B,) int64).")
      .def("decode_sample", &decode_sample, py::arg("token_ids"), py::arg("temperature"), py::arg("top_p"),
           py::arg("uniforms"),
           "One token per sequence, then nucleus sampling on the device (rsvlm_edge._C.top_p_sample's rule) with "
           "one draw in [0, 1) per sequence: the sampled next ids (B,) int64; the logits stay on the device.")
      .def_property("use_graphs", &CudaDecoder::use_graphs, &CudaDecoder::set_use_graphs,
                    "Replay each decode step from a CUDA graph captured per batch size (default True).")
      .def_property_readonly("max_batch", &CudaDecoder::max_batch)
      .def_property_readonly("max_seq", &CudaDecoder::max_seq)
      .def_property_readonly("batch", &CudaDecoder::batch)
      .def_property_readonly("lengths", &CudaDecoder::lengths, "Tokens cached per sequence of the current batch.")
      .def_property_readonly("weight_bytes", &CudaDecoder::weight_bytes)
      .def_property_readonly("step_weight_bytes", &CudaDecoder::step_weight_bytes)
      .def_property_readonly("device_bytes", &CudaDecoder::device_bytes)
      .def_property_readonly("kv_pool_tokens", &CudaDecoder::kv_pool_tokens)
      .def_property_readonly("kv_cache",
                             [](const CudaDecoder& d) { return d.kv_dtype() == DType::i8 ? "int8" : "fp16"; });
  m.def("cuda_device_count", &CudaDecoder::device_count,
        "CUDA devices visible to this process (0 in a build without CUDA or when the driver query fails).");
}
