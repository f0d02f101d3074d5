// Helpers shared by the csrc/bind_<op>.cpp files (header-only; needs pybind11 and Python).
//
// Every op is bound twice: `<op>` (numpy / CPU tensors -> the fast CPU path, CUDA tensors -> the
// CUDA kernel) and `<op>_reference` (CPU only -> the naive reference in kernels/<op>/<op>_ref.cpp),
// with the same arguments and the same checks, so that tests compare the two on identical inputs.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "rsvlm_edge/decoder_shape.h"
#include "tensor_arg.h"

namespace rsvlm_edge {
namespace bind {

namespace py = pybind11;

// Which implementation a binding call runs.
enum class Impl { kFast, kReference };

// The name the messages of a call start with: `op`, or `op`_reference for the naive reference.
inline std::string op_name(const std::string& op, Impl impl) {
  return impl == Impl::kReference ? op + "_reference" : op;
}

inline bool on_cuda(const TensorArg& t) { return t.device.type == DeviceType::cuda; }

// `&t` for ArgChecker::same_device when the optional argument `t` was given, else nullptr.
inline const TensorArg* maybe(const TensorArg& t, bool given) { return given ? &t : nullptr; }

// The (contiguous, checked) arrays `a` and `b` share memory.
inline bool overlap(const TensorArg& a, const TensorArg& b) {
  const int64_t na = a.numel() * rsvlm_edge::dtype_size(a.dtype), nb = b.numel() * rsvlm_edge::dtype_size(b.dtype);
  if (a.data == nullptr || b.data == nullptr || na <= 0 || nb <= 0) return false;
  const uintptr_t x = reinterpret_cast<uintptr_t>(a.data), y = reinterpret_cast<uintptr_t>(b.data);
  return x < y + static_cast<uint64_t>(nb) && y < x + static_cast<uint64_t>(na);
}

// CPU float32 activations, CUDA float16 / bfloat16.
inline void check_activation(ArgChecker& c, const TensorArg& t, std::initializer_list<Dim> dims) {
  if (on_cuda(t))
    c.check(t, dims, {DType::f16, DType::bf16});
  else
    c.check(t, dims, {DType::f32});
}

// The array arguments of a call (nullptr: an optional one that was not given; the first one is
// always given) are on one device, and for the reference on the CPU: ValueError otherwise.
inline void check_devices(const ArgChecker& c, Impl impl, const std::vector<const TensorArg*>& args) {
  c.same_device(args);
  const TensorArg& first = *args.front();
  if (impl == Impl::kReference && first.device.type != DeviceType::cpu)
    c.fail("argument '" + first.name + "' is on " + first.device_str() +
           "; the naive reference runs on the CPU: pass CPU arrays (e.g. t.float().cpu())");
}

// An array argument of a binding: its Python object and name; `optional`: None is allowed (it
// loads as an empty TensorArg).
struct ArgSpec {
  py::handle obj;
  const char* name;
  bool optional = false;
};

// Loads the array arguments of a call in order (tensor_arg: ValueError for a required one that is
// None or not an array), then check_devices on the given ones.
template <size_t N>
std::array<TensorArg, N> load_args(const ArgChecker& c, Impl impl, int64_t stream, const ArgSpec (&specs)[N]) {
  std::array<TensorArg, N> args;
  std::vector<const TensorArg*> given;
  for (size_t i = 0; i < N; ++i) {
    const bool none = specs[i].optional && specs[i].obj.is_none();
    if (!none) args[i] = tensor_arg(specs[i].obj, specs[i].name, stream);
    given.push_back(maybe(args[i], !none));
  }
  check_devices(c, impl, given);
  return args;
}

// `out` checked against `dims` and the dtype of `like`, or a new float32 numpy array (CPU only).
inline py::object output(ArgChecker& c, py::handle out_obj, TensorArg& out, const TensorArg& like,
                         std::initializer_list<Dim> dims, const std::vector<int64_t>& shape) {
  if (!out_obj.is_none()) {
    c.check(out, dims, {like.dtype});
    c.writable(out);
    return py::reinterpret_borrow<py::object>(out_obj);
  }
  if (on_cuda(like))
    c.fail("argument 'out' is required for CUDA inputs: pass a preallocated " + std::string(dtype_name(like.dtype)) +
           " tensor of shape " + format_shape(shape) + " on the same device");
  py::array_t<float> arr(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  out = tensor_arg(arr, "out");
  return arr;
}

// Runs the fast path (CPU without the GIL, or CUDA on `stream`) or the reference (CPU, without
// the GIL); raises on a failed Status.
inline void run(const char* op, Impl impl, const TensorArg& first, int64_t stream, const std::function<Status()>& cpu,
                const std::function<Status()>& reference, const std::function<Status(void*)>& gpu) {
  if (impl == Impl::kReference) {
    Status s;
    {
      py::gil_scoped_release nogil;
      s = reference();
    }
    throw_if_error(s);
    return;
  }
  launch(op, first, stream, cpu, gpu);
}

// A decoder's sizes from the Python dict the whole-step decoders take (vocab_size, hidden_size,
// intermediate_size, num_layers, num_heads, num_kv_heads, head_dim; rms_norm_eps and rope_theta optional);
// ValueError "<who>: shape lacks '<key>'" for a missing one. The values are checked by decoder_shape_validate.
inline DecoderShape decoder_shape(const py::dict& d, const std::string& who) {
  auto item = [&](const char* key) {
    if (!d.contains(key)) throw std::invalid_argument(who + ": shape lacks '" + key + "'");
    return py::cast<int>(d[key]);
  };
  DecoderShape s;
  s.vocab_size = item("vocab_size");
  s.hidden_size = item("hidden_size");
  s.intermediate_size = item("intermediate_size");
  s.num_layers = item("num_layers");
  s.num_heads = item("num_heads");
  s.num_kv_heads = item("num_kv_heads");
  s.head_dim = item("head_dim");
  s.rms_norm_eps = d.contains("rms_norm_eps") ? py::cast<float>(d["rms_norm_eps"]) : 1e-6f;
  s.rope_theta = d.contains("rope_theta") ? py::cast<float>(d["rope_theta"]) : 10000.f;
  return s;
}

}  // namespace bind
}  // namespace rsvlm_edge

// The names the csrc/bind_<op>.cpp files (which alone include this header) use unqualified.
namespace py = pybind11;
using rsvlm_edge::ArgChecker;
using rsvlm_edge::DeviceType;
using rsvlm_edge::Dim;
using rsvlm_edge::DType;
using rsvlm_edge::Status;
using rsvlm_edge::TensorArg;
using rsvlm_edge::bind::Impl;
