// rsvlm_edge._C.DeviceArray: a C-contiguous array in CUDA device memory owned by this library
// (rsvlm_edge/device_memory.h), with __cuda_array_interface__ (v3), so that every op of _C takes it as it takes
// a CUDA tensor of torch or cupy: the runtime keeps activations on the GPU without either. Copies to and from
// numpy; reshape() views the same memory (the allocation lives while any view does). In a build without CUDA
// construction raises RuntimeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bind_util.h"
#include "rsvlm_edge/device_memory.h"

namespace {

// One device allocation, freed when the last array viewing it goes.
struct Allocation {
  void* ptr = nullptr;
  int64_t bytes = 0;
  ~Allocation() { rsvlm_edge::device_free(ptr); }
};

struct Kind {
  const char* typestr;  // __cuda_array_interface__
  const char* numpy;    // numpy dtype name
  int64_t size;
};

const Kind kKinds[] = {{"|u1", "uint8", 1},   {"|i1", "int8", 1},      {"<i4", "int32", 4},
                       {"<i8", "int64", 8},   {"<f2", "float16", 2},   {"<f4", "float32", 4}};

const Kind& kind_of(const std::string& dtype) {
  for (const Kind& k : kKinds)
    if (dtype == k.numpy) return k;
  throw std::invalid_argument("DeviceArray: dtype must be uint8, int8, int32, int64, float16 or float32, got '" +
                              dtype + "'");
}

class DeviceArray {
 public:
  DeviceArray(const std::vector<int64_t>& shape, const std::string& dtype) : kind_(&kind_of(dtype)), shape_(shape) {
    const int64_t bytes = checked_bytes();
    alloc_ = std::make_shared<Allocation>();
    rsvlm_edge::throw_if_error(rsvlm_edge::device_alloc(bytes, &alloc_->ptr));
    alloc_->bytes = bytes;
    rsvlm_edge::throw_if_error(rsvlm_edge::device_zero(alloc_->ptr, bytes));
  }

  static DeviceArray from_numpy(const py::array& a) {
    py::array c = py::array::ensure(a, py::array::c_style);
    if (!c) throw std::invalid_argument("DeviceArray.from_numpy: argument is not an array");
    DeviceArray d(std::vector<int64_t>(c.shape(), c.shape() + c.ndim()), py::str(c.dtype()).cast<std::string>());
    d.copy_from(c);
    return d;
  }

  void copy_from(const py::array& a) {
    py::array c = py::array::ensure(a, py::array::c_style);
    if (!c || py::str(c.dtype()).cast<std::string>() != kind_->numpy ||
        std::vector<int64_t>(c.shape(), c.shape() + c.ndim()) != shape_)
      throw std::invalid_argument("DeviceArray.copy_from: needs a " + std::string(kind_->numpy) + " array of shape " +
                                  shape_str() + ", got " + describe(a));
    const void* src = c.data();
    rsvlm_edge::Status s;
    {
      py::gil_scoped_release nogil;
      s = rsvlm_edge::device_copy_from_host(data(), src, nbytes());
    }
    rsvlm_edge::throw_if_error(s);
  }

  py::array numpy() const {
    py::array out(py::dtype(kind_->numpy), shape_);
    void* dst = out.mutable_data();
    rsvlm_edge::Status s;
    {
      py::gil_scoped_release nogil;
      s = rsvlm_edge::device_copy_to_host(dst, data(), nbytes());
    }
    rsvlm_edge::throw_if_error(s);
    return out;
  }

  // The same memory with another shape of the same element count (C order), from element `offset` on.
  DeviceArray reshape(const std::vector<int64_t>& shape, int64_t offset) const {
    DeviceArray v(*this);
    v.shape_ = shape;
    v.offset_ = offset_ + offset;
    const int64_t n = v.numel();
    if (offset < 0 || n < 0 || v.offset_ + n > alloc_->bytes / kind_->size)
      throw std::invalid_argument("DeviceArray.reshape: shape " + v.shape_str() + " at element offset " +
                                  std::to_string(offset) + " does not fit in " + std::to_string(numel()) +
                                  " elements of shape " + shape_str());
    return v;
  }

  py::dict cuda_array_interface() const {
    py::dict d;
    d["shape"] = py::tuple(py::cast(shape_));
    d["typestr"] = kind_->typestr;
    d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(data()), false);
    d["version"] = 3;
    d["strides"] = py::none();
    return d;
  }

  std::vector<int64_t> shape() const { return shape_; }
  std::string dtype() const { return kind_->numpy; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape_) {
      if (s < 0 || (s != 0 && n > INT64_MAX / s)) return -1;
      n *= s;
    }
    return n;
  }
  int64_t nbytes() const { return numel() * kind_->size; }
  std::string shape_str() const {
    std::string s = "(";
    for (size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
    return s + (shape_.size() == 1 ? ",)" : ")");
  }

 private:
  void* data() const { return alloc_->ptr ? static_cast<char*>(alloc_->ptr) + offset_ * kind_->size : nullptr; }
  int64_t checked_bytes() const {
    const int64_t n = numel();
    if (n < 0 || n > INT64_MAX / kind_->size)
      throw std::invalid_argument("DeviceArray: shape " + shape_str() + " is negative or too large");
    return n * kind_->size;
  }
  static std::string describe(const py::array& a) {
    std::string s = py::str(a.dtype()).cast<std::string>() + " (";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + ")";
  }

  const Kind* kind_;
  std::vector<int64_t> shape_;
  int64_t offset_ = 0;  // elements
  std::shared_ptr<Allocation> alloc_;
};

}  // namespace

void bind_device_array(py::module_& m) {
  py::class_<DeviceArray>(m, "DeviceArray", R"doc(A C-contiguous array in CUDA device memory owned by rsvlm_edge
(no torch, no cupy), zero-filled at creation; every op of this module takes it where it takes a CUDA tensor
(__cuda_array_interface__ v3). Ops launched with stream=0 and the copies here run in order on the legacy default
stream. RuntimeError in a build without CUDA.)doc")
      .def(py::init<const std::vector<int64_t>&, const std::string&>(), py::arg("shape"), py::arg("dtype"))
      .def_static("from_numpy", &DeviceArray::from_numpy, py::arg("array"), "A device copy of a host array.")
      .def("copy_from", &DeviceArray::copy_from, py::arg("array"), "Overwrite with a host array of the same shape and dtype.")
      .def("numpy", &DeviceArray::numpy, "A host copy (waits for the work queued before it).")
      .def("reshape", &DeviceArray::reshape, py::arg("shape"), py::arg("offset") = 0,
           "A view of the same memory with another shape, from element `offset` on (no copy).")
      .def_property_readonly("shape", [](const DeviceArray& d) { return py::tuple(py::cast(d.shape())); })
      .def_property_readonly("dtype", [](const DeviceArray& d) { return py::dtype(d.dtype()); })
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("__cuda_array_interface__", &DeviceArray::cuda_array_interface)
      .def("__repr__", [](const DeviceArray& d) { return "DeviceArray(" + d.shape_str() + ", " + d.dtype() + ")"; });
}
