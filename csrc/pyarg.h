// Array arguments for the kernel bindings: a numpy array (host) or an object exposing
// __cuda_array_interface__ (device, e.g. a torch.cuda tensor) becomes one Arg with a data pointer,
// dtype, shape and device, plus checks that raise ValueError naming the argument.
// Interim helper of the kv_attention / decoder_ops bindings; to be replaced by csrc/tensor_arg.h
// (numpy + DLPack + __cuda_array_interface__) once that lands on main.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace rsvlm_edge {
namespace pyarg {

namespace py = pybind11;

enum class ArgType { kF32, kF16, kBF16, kI8, kI32, kOther };

[[noreturn]] inline void fail(const std::string& msg) { throw py::value_error(msg); }

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

struct Arg {
  py::object keep;              // keeps the underlying buffer alive
  std::string name;             // argument name used in messages
  void* data = nullptr;
  ArgType type = ArgType::kOther;
  std::string type_str;         // dtype as the producer spells it (for messages)
  std::vector<int64_t> shape;
  bool cuda = false;            // device memory (__cuda_array_interface__)

  std::string type_name() const {
    switch (type) {
      case ArgType::kF32: return "float32";
      case ArgType::kF16: return "float16";
      case ArgType::kBF16: return "bfloat16";
      case ArgType::kI8: return "int8";
      case ArgType::kI32: return "int32";
      default: return type_str;
    }
  }

  static ArgType numpy_type(const py::dtype& dt) {
    const std::string n = py::str(dt.attr("name"));
    if (n == "float32") return ArgType::kF32;
    if (n == "float16") return ArgType::kF16;
    if (n == "bfloat16") return ArgType::kBF16;  // ml_dtypes
    if (n == "int8") return ArgType::kI8;
    if (n == "int32") return ArgType::kI32;
    return ArgType::kOther;
  }

  static ArgType cai_type(const std::string& t) {
    if (t == "<f4") return ArgType::kF32;
    if (t == "<f2") return ArgType::kF16;
    if (t == "<V2") return ArgType::kBF16;  // torch exports bfloat16 as "<V2" (as ml_dtypes does)
    if (t == "|i1" || t == "<i1") return ArgType::kI8;
    if (t == "<i4") return ArgType::kI32;
    return ArgType::kOther;
  }

  static int64_t itemsize(ArgType t) {
    switch (t) {
      case ArgType::kF32: case ArgType::kI32: return 4;
      case ArgType::kF16: case ArgType::kBF16: return 2;
      case ArgType::kI8: return 1;
      default: return 0;
    }
  }

  // A numpy array or a __cuda_array_interface__ object, C-contiguous, used as is (no copies).
  static Arg from(const py::handle& obj, const char* name, bool writable) {
    Arg a;
    a.name = name;
    if (py::hasattr(obj, "__cuda_array_interface__") && !py::isinstance<py::array>(obj)) {
      py::dict cai = obj.attr("__cuda_array_interface__");
      a.keep = py::reinterpret_borrow<py::object>(obj);
      a.cuda = true;
      a.type_str = py::str(cai["typestr"]);
      a.type = cai_type(a.type_str);
      for (auto d : cai["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
      py::tuple data = cai["data"].cast<py::tuple>();
      a.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
      if (writable && data[1].cast<bool>()) fail(std::string(name) + " is read-only; pass a writable tensor");
      if (cai.contains("strides") && !cai["strides"].is_none()) {
        int64_t expect = itemsize(a.type);
        py::tuple st = cai["strides"].cast<py::tuple>();
        for (int i = int(a.shape.size()) - 1; i >= 0; --i) {
          if (a.shape[i] != 1 && st[i].cast<int64_t>() != expect)
            fail(std::string(name) + " must be contiguous; call .contiguous() on it first");
          expect *= a.shape[i];
        }
      }
      return a;
    }
    if (!py::isinstance<py::array>(obj))
      fail(std::string(name) + " must be a numpy array or a CUDA tensor, got " +
           std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    py::array arr = py::reinterpret_borrow<py::array>(obj);
    if (!(arr.flags() & py::array::c_style))
      fail(std::string(name) + " must be C-contiguous; pass numpy.ascontiguousarray(" + name + ")");
    if (writable && !arr.writeable()) fail(std::string(name) + " is read-only; pass a writable array");
    a.keep = arr;
    a.type = numpy_type(arr.dtype());
    a.type_str = py::str(arr.dtype().attr("name"));
    for (py::ssize_t i = 0; i < arr.ndim(); ++i) a.shape.push_back(arr.shape(i));
    a.data = writable ? arr.mutable_data() : const_cast<void*>(arr.data());
    return a;
  }

  // An int32 index array (lengths, positions, page table). On the host any integer sequence is
  // accepted and converted; on the device it must already be int32.
  static Arg from_index(const py::handle& obj, const char* name, bool cuda) {
    if (cuda) {
      Arg a = from(obj, name, false);
      a.expect_device(true, "q");
      a.expect_type(ArgType::kI32, "int32");
      return a;
    }
    if (py::hasattr(obj, "__cuda_array_interface__") && !py::isinstance<py::array>(obj))
      fail(std::string(name) + " is a CUDA tensor but the other arguments are on the host; use one device");
    py::array probe = py::array::ensure(obj);
    if (!probe || (probe.dtype().kind() != 'i' && probe.dtype().kind() != 'u'))
      fail(std::string(name) + " must be an integer array");
    py::array_t<int32_t, py::array::c_style | py::array::forcecast> arr(probe);
    return from(arr, name, false);
  }

  void expect_rank(size_t rank, const std::string& desc) const {
    if (shape.size() != rank) fail(name + " must have shape " + desc + ", got " + shape_str(shape));
  }
  void expect_shape(const std::vector<int64_t>& s, const std::string& desc) const {
    if (shape != s) fail(name + " must have shape " + desc + " = " + shape_str(s) + ", got " + shape_str(shape));
  }
  void expect_like(const Arg& other) const {
    if (shape != other.shape)
      fail(name + " must have the shape of " + other.name + " " + shape_str(other.shape) + ", got " + shape_str(shape));
    if (type != other.type)
      fail(name + " must have the dtype of " + other.name + " (" + other.type_name() + "), got " + type_name());
  }
  void expect_type(ArgType t, const std::string& desc) const {
    if (type != t) fail(name + " must have dtype " + desc + ", got " + type_name());
  }
  void expect_device(bool want_cuda, const std::string& other) const {
    if (cuda != want_cuda)
      fail(name + " is on the " + (cuda ? "GPU" : "CPU") + " but " + other + " is on the " +
           (want_cuda ? "GPU" : "CPU") + "; put all arguments on one device");
  }
};

}  // namespace pyarg
}  // namespace rsvlm_edge
