// Tensor arguments for the pybind11 bindings: one struct for any array the user passes.
//
//   TensorArg t = rsvlm_edge::tensor_arg(obj, "images");
//
// accepts, without copying:
//   * a numpy.ndarray                         -> device cpu
//   * an object with __dlpack__ (torch, cupy, jax, numpy >= 1.22): the DLPack capsule is consumed
//     (renamed "used_dltensor") and its deleter runs when the last TensorArg copy goes away
//   * an object with __cuda_array_interface__ (v3: shape, typestr, data, strides, stream)
// and records data pointer, dtype, shape, strides (in elements) and device. The TensorArg keeps the
// producer's memory alive for as long as it exists.
//
// Validation: an ArgChecker binds symbolic dimensions across the arguments of one call and throws
// std::invalid_argument (pybind11 turns it into ValueError) with messages such as
//   patch_embed: argument 'images' must have shape (B, H, W, 3) uint8 C-contiguous, got (2, 224, 224) float32
//
//   ArgChecker c("patch_embed");
//   c.check(images, {"B", "H", "W", 3}, {DType::u8});
//   c.check(bias, {"D"}, {weight.dtype});          // "D" must match what an earlier check bound
//   c.same_device({&images, &weight, &bias});
//   int64_t B = c.dim("B");
//
// Header-only on purpose: it needs pybind11 and Python, which librsvlm_edge (the C++ API) must not.
// The two CUDA runtime queries it needs live in csrc/core/device.cpp (cuda_pointer_device,
// cuda_wait_for_stream) so that this header does not include CUDA headers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dlpack.h"
#include "rsvlm_edge/device.h"
#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

namespace py = pybind11;

// "(2, 224, 224)", "(5,)". Built with std::to_string, not iostreams: with torch imported, numeric ostream
// insertion in this module crashed on one GPU machine (Ubuntu 24.04 libstdc++, torch 2.11: locale facets
// mixed up between libstdc++ copies, pytorch/pytorch#109923), and these strings exist to report errors.
inline std::string format_shape(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

struct TensorArg {
  std::string name;      // argument name, for messages
  void* data = nullptr;  // first element (byte offsets already applied)
  DType dtype = DType::f32;
  std::vector<int64_t> shape;    // (ndim)
  std::vector<int64_t> strides;  // (ndim), in elements
  Device device;                 // cpu, or cuda:id
  bool readonly = false;         // numpy arrays with writeable=False, CAI data[1] == True
  std::shared_ptr<void> owner;   // keeps the producer's memory alive

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  // Row-major contiguous (dimensions of size 1 may have any stride; an empty tensor is contiguous).
  bool contiguous() const {
    if (numel() == 0) return true;
    int64_t expect = 1;
    for (int64_t i = ndim() - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
  template <class T>
  T* ptr() const {
    return static_cast<T*>(data);
  }

  // "(2, 224, 224)"
  std::string shape_str() const { return format_shape(shape); }
  std::string device_str() const {
    if (device.type == DeviceType::cpu) return "cpu";
    return device.id < 0 ? std::string("cuda") : "cuda:" + std::to_string(device.id);
  }
  // "(2, 224, 224) float32", plus " non-contiguous" / " on cuda:0" when that applies.
  std::string describe() const {
    std::string s = shape_str() + " " + dtype_name(dtype);
    if (!contiguous()) s += " non-contiguous";
    if (device.type != DeviceType::cpu) s += " on " + device_str();
    return s;
  }
};

namespace detail {

[[noreturn]] inline void arg_fail(const std::string& name, const std::string& msg) {
  throw std::invalid_argument("argument '" + name + "' " + msg);
}

inline std::string py_type_name(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>();
}

inline void compact_strides(TensorArg& t) {
  t.strides.assign(t.shape.size(), 1);
  for (int64_t i = t.ndim() - 2; i >= 0; --i) t.strides[i] = t.strides[i + 1] * t.shape[i + 1];
}

// The DType of a numpy dtype in native byte order (uint8, int8, int32, int64, float16, float32), or false for a
// big-endian or any other one. The one mapping every binding uses.
inline bool numpy_dtype(const py::dtype& dt, DType* out) {
  if (dt.byteorder() == '>') return false;
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'u' && size == 1) *out = DType::u8;
  else if (kind == 'i' && size == 1) *out = DType::i8;
  else if (kind == 'i' && size == 4) *out = DType::i32;
  else if (kind == 'i' && size == 8) *out = DType::i64;
  else if (kind == 'f' && size == 2) *out = DType::f16;
  else if (kind == 'f' && size == 4) *out = DType::f32;
  else return false;
  return true;
}

inline TensorArg from_numpy(const py::array& arr, const std::string& name) {
  TensorArg t;
  t.name = name;
  py::dtype dt = arr.dtype();
  if (dt.byteorder() == '>') arg_fail(name, "is a big-endian numpy array; pass arr.astype(arr.dtype.newbyteorder('='))");
  if (!numpy_dtype(dt, &t.dtype))
    arg_fail(name, "has numpy dtype " + py::str(dt).cast<std::string>() +
                       ", which is not supported (use uint8, int8, int32, int64, float16 or float32)");
  const int64_t size = static_cast<int64_t>(dt.itemsize());
  t.data = const_cast<void*>(arr.data());
  t.readonly = !arr.writeable();
  for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
    t.shape.push_back(arr.shape(i));
    const int64_t sb = arr.strides(i);
    if (sb % size != 0)
      arg_fail(name, "has strides that are not a multiple of its item size; pass np.ascontiguousarray(x)");
    t.strides.push_back(sb / size);
  }
  t.owner = std::shared_ptr<void>(new py::object(arr), [](void* p) { delete static_cast<py::object*>(p); });
  return t;
}

inline DType dlpack_dtype(const DLDataType& d, const std::string& name) {
  if (d.lanes != 1) arg_fail(name, "has a vector DLPack dtype (lanes != 1), which is not supported");
  if (d.code == kDLUInt && d.bits == 8) return DType::u8;
  if (d.code == kDLInt && d.bits == 8) return DType::i8;
  if (d.code == kDLInt && d.bits == 32) return DType::i32;
  if (d.code == kDLInt && d.bits == 64) return DType::i64;
  if (d.code == kDLFloat && d.bits == 16) return DType::f16;
  if (d.code == kDLFloat && d.bits == 32) return DType::f32;
  if (d.code == kDLBfloat && d.bits == 16) return DType::bf16;
  arg_fail(name, "has DLPack dtype (code " + std::to_string(d.code) + ", bits " + std::to_string(d.bits) +
                     "), which is not supported (use uint8, int8, int32, int64, float16, bfloat16 or float32)");
}

// `cuda_stream`: the stream the op will run on (0 = legacy default). Passed to __dlpack__ so that
// the producer orders its pending work before ours (DLPack: 1 means the legacy default stream).
inline TensorArg from_dlpack(py::handle obj, const std::string& name, int64_t cuda_stream) {
  bool on_cuda = false;
  if (py::hasattr(obj, "__dlpack_device__")) {
    py::tuple dev = obj.attr("__dlpack_device__")();
    const int dev_type = dev[0].cast<int>();
    on_cuda = dev_type == kDLCUDA || dev_type == kDLCUDAManaged;
  }
  py::object cap_obj;
  try {
    cap_obj = on_cuda ? obj.attr("__dlpack__")(py::arg("stream") = cuda_stream == 0 ? 1 : cuda_stream)
                      : obj.attr("__dlpack__")();
  } catch (py::error_already_set& e) {  // e.g. torch: "Can't export tensors that require gradient"
    arg_fail(name, std::string("could not be exported through __dlpack__: ") + e.what());
  }
  PyObject* cap = cap_obj.ptr();
  if (!PyCapsule_IsValid(cap, RSVLM_DLPACK_CAPSULE_NAME))
    arg_fail(name, "returned a DLPack capsule that is not a fresh 'dltensor' (already consumed?)");
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, RSVLM_DLPACK_CAPSULE_NAME));
  if (managed == nullptr) throw py::error_already_set();
  // Take ownership: from here on we (not the capsule destructor) call the deleter.
  if (PyCapsule_SetName(cap, RSVLM_DLPACK_USED_CAPSULE_NAME) != 0) throw py::error_already_set();
  std::shared_ptr<void> owner(managed, [](void* p) {
    auto* m = static_cast<DLManagedTensor*>(p);
    if (m->deleter) m->deleter(m);
  });

  const DLTensor& dl = managed->dl_tensor;
  TensorArg t;
  t.name = name;
  t.owner = std::move(owner);
  switch (dl.device.device_type) {
    case kDLCPU:
    case kDLCUDAHost:
      t.device = {DeviceType::cpu, 0};
      break;
    case kDLCUDA:
    case kDLCUDAManaged:
      t.device = {DeviceType::cuda, dl.device.device_id};
      break;
    default:
      arg_fail(name, "is on DLPack device type " + std::to_string(static_cast<int>(dl.device.device_type)) +
                         "; only CPU and CUDA tensors are supported");
  }
  t.dtype = dlpack_dtype(dl.dtype, name);
  t.data = static_cast<char*>(dl.data) + dl.byte_offset;
  t.shape.assign(dl.shape, dl.shape + dl.ndim);
  if (dl.strides != nullptr)
    t.strides.assign(dl.strides, dl.strides + dl.ndim);
  else
    compact_strides(t);
  return t;
}

inline DType cai_dtype(const std::string& typestr, const std::string& name) {
  if (typestr.size() < 3 || typestr[0] == '>')
    arg_fail(name, "has __cuda_array_interface__ typestr '" + typestr + "', which is not supported");
  const std::string k = typestr.substr(1);
  if (k == "u1") return DType::u8;
  if (k == "i1") return DType::i8;
  if (k == "i4") return DType::i32;
  if (k == "i8") return DType::i64;
  if (k == "f2") return DType::f16;
  if (k == "f4") return DType::f32;
  arg_fail(name, "has __cuda_array_interface__ typestr '" + typestr +
                     "', which is not supported (use uint8, int8, int32, int64, float16 or float32; "
                     "bfloat16 only through DLPack)");
}

inline TensorArg from_cuda_array_interface(py::handle obj, const std::string& name, int64_t cuda_stream) {
  py::dict cai = obj.attr("__cuda_array_interface__");
  TensorArg t;
  t.name = name;
  if (cai.contains("mask") && !cai["mask"].is_none())
    arg_fail(name, "is a masked __cuda_array_interface__ array, which is not supported");
  t.dtype = cai_dtype(cai["typestr"].cast<std::string>(), name);
  py::tuple data = cai["data"];
  t.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  t.readonly = data[1].cast<bool>();
  for (py::handle s : py::tuple(cai["shape"])) t.shape.push_back(s.cast<int64_t>());
  const int64_t size = dtype_size(t.dtype);
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    for (py::handle s : py::tuple(cai["strides"])) {
      const int64_t sb = s.cast<int64_t>();
      if (sb % size != 0) arg_fail(name, "has strides that are not a multiple of its item size");
      t.strides.push_back(sb / size);
    }
  } else {
    compact_strides(t);
  }
  // CAI v3 has no device field: ask the CUDA runtime which device owns the pointer (-1 when this
  // build has no CUDA; the op then reports "built without CUDA").
  t.device = {DeviceType::cuda, t.numel() > 0 ? cuda_pointer_device(t.data) : -1};
  // CAI v3 "stream": the producer's stream; make `cuda_stream` wait for its pending work.
  if (cai.contains("stream") && !cai["stream"].is_none()) {
    const int64_t producer = cai["stream"].cast<int64_t>();
    const std::string err = cuda_wait_for_stream(producer, cuda_stream);
    if (!err.empty()) arg_fail(name, "could not be synchronised with its producer stream: " + err);
  }
  t.owner = std::shared_ptr<void>(new py::object(py::reinterpret_borrow<py::object>(obj)),
                                  [](void* p) { delete static_cast<py::object*>(p); });
  return t;
}

}  // namespace detail

// Build a TensorArg from a numpy array, a __dlpack__ object or a __cuda_array_interface__ object.
// `name` is the argument name used in messages; `cuda_stream` (a cudaStream_t as an integer, 0 =
// legacy default) is the stream the op will run on. Throws std::invalid_argument (-> ValueError).
inline TensorArg tensor_arg(py::handle obj, const std::string& name, int64_t cuda_stream = 0) {
  if (obj.is_none()) detail::arg_fail(name, "is required but got None");
  if (py::isinstance<py::array>(obj)) return detail::from_numpy(py::reinterpret_borrow<py::array>(obj), name);
  if (py::hasattr(obj, "__dlpack__")) return detail::from_dlpack(obj, name, cuda_stream);
  if (py::hasattr(obj, "__cuda_array_interface__")) return detail::from_cuda_array_interface(obj, name, cuda_stream);
  detail::arg_fail(name,
                   "must be a numpy array or a tensor with __dlpack__ or __cuda_array_interface__ "
                   "(torch, cupy, jax), got " +
                       detail::py_type_name(obj));
}

// One dimension of an expected shape: a fixed size (3), a symbol ("B") bound by the first argument
// that uses it, or a labelled derived size (Dim("N+1", n + 1)).
struct Dim {
  int64_t value = -1;                                     // >= 0: required size; -1: symbol
  std::string label;                                      // shown in messages
  Dim(int v) : value(v), label(std::to_string(v)) {}      // NOLINT(google-explicit-constructor)
  Dim(int64_t v) : value(v), label(std::to_string(v)) {}  // NOLINT
  Dim(const char* sym) : label(sym) {}                    // NOLINT
  Dim(std::string lab, int64_t v) : value(v), label(std::move(lab)) {}
};

// Checks the arguments of one op call and binds symbolic dimensions across them.
class ArgChecker {
 public:
  explicit ArgChecker(std::string op) : op_(std::move(op)) {}

  // `t` must have exactly `dims`, a dtype in `dtypes`, and be C-contiguous; symbols already bound
  // must match; unbound ones are bound here. Throws std::invalid_argument naming the argument.
  void check(const TensorArg& t, std::initializer_list<Dim> dims, std::initializer_list<DType> dtypes) {
    std::vector<Dim> d(dims);
    bool ok = t.ndim() == static_cast<int64_t>(d.size()) && t.contiguous();
    bool dtype_ok = false;
    for (DType x : dtypes) dtype_ok = dtype_ok || x == t.dtype;
    ok = ok && dtype_ok;
    std::map<std::string, int64_t> newly;
    for (size_t i = 0; ok && i < d.size(); ++i) {
      const int64_t got = t.shape[i];
      if (d[i].value >= 0) {
        ok = got == d[i].value;
      } else if (auto it = bound_.find(d[i].label); it != bound_.end()) {
        ok = got == it->second;
      } else if (auto jt = newly.find(d[i].label); jt != newly.end()) {
        ok = got == jt->second;
      } else {
        newly[d[i].label] = got;
      }
    }
    if (!ok) fail(t, d, dtypes);
    bound_.insert(newly.begin(), newly.end());
  }

  // Every non-null argument must be on the same device as the first one.
  void same_device(const std::vector<const TensorArg*>& args) const {
    const TensorArg* first = nullptr;
    for (const TensorArg* a : args) {
      if (a == nullptr) continue;
      if (first == nullptr) {
        first = a;
        continue;
      }
      if (a->device != first->device)
        throw std::invalid_argument(op_ + ": argument '" + a->name + "' is on " + a->device_str() + " but '" +
                                    first->name + "' is on " + first->device_str() +
                                    "; move all arguments to one device");
    }
  }

  void writable(const TensorArg& t) const {
    if (t.readonly)
      throw std::invalid_argument(op_ + ": argument '" + t.name + "' is read-only; pass a writable array");
  }

  // Size bound to a symbol by an earlier check(); throws std::logic_error if it was never bound.
  int64_t dim(const std::string& sym) const {
    auto it = bound_.find(sym);
    if (it == bound_.end()) throw std::logic_error(op_ + ": dimension '" + sym + "' was never bound");
    return it->second;
  }

  // dim(sym) for the `int` fields of the Params structs: ValueError naming the argument that bound
  // it when it is >= 2^31 (never truncated), or smaller than `min`.
  int dim_int(const std::string& sym, const TensorArg& from, int64_t min = 0) const {
    const int64_t v = dim(sym);
    if (v > 0x7fffffff)
      fail("argument '" + from.name + "' has " + sym + "=" + std::to_string(v) +
           ", more than the 2^31-1 this op supports");
    if (v < min)
      fail("argument '" + from.name + "' must have " + sym + " >= " + std::to_string(min) + ", got " + from.describe());
    return static_cast<int>(v);
  }
  void bind(const std::string& sym, int64_t v) { bound_[sym] = v; }

  // One-line failure for conditions check() cannot express ("op: <msg>").
  [[noreturn]] void fail(const std::string& msg) const { throw std::invalid_argument(op_ + ": " + msg); }

 private:
  [[noreturn]] void fail(const TensorArg& t, const std::vector<Dim>& d, std::initializer_list<DType> dtypes) const {
    std::string s = op_ + ": argument '" + t.name + "' must have shape (";  // no iostreams: see format_shape
    for (size_t i = 0; i < d.size(); ++i) {
      s += (i ? ", " : "") + d[i].label;
      auto it = bound_.find(d[i].label);
      if (d[i].value < 0 && it != bound_.end())
        s += "=" + std::to_string(it->second);
      else if (d[i].value >= 0 && d[i].label != std::to_string(d[i].value))
        s += "=" + std::to_string(d[i].value);
    }
    s += d.size() == 1 ? ",) " : ") ";
    size_t k = 0;
    for (DType x : dtypes) s += (k++ ? "|" : "") + std::string(dtype_name(x));
    s += " C-contiguous, got " + t.describe();
    throw std::invalid_argument(s);
  }

  std::string op_;
  std::map<std::string, int64_t> bound_;
};

// kCapacityExceeded as a C++ exception: rsvlm_edge._C.CapacityError in Python (a ValueError; csrc/bindings.cpp
// registers it), so that callers tell a full cache from a wrong argument without reading messages.
struct CapacityExceeded : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Raise the right Python exception for a launcher's Status (no-op when ok); call with the GIL held:
// kInvalidArgument -> ValueError, kCapacityExceeded -> CapacityError (a ValueError), kOutOfMemory -> MemoryError,
// kNotCompiled / kCudaError -> RuntimeError.
inline void throw_if_error(const Status& s) {
  if (s.ok()) return;
  if (s.code == StatusCode::kCapacityExceeded) throw CapacityExceeded(s.message);
  if (s.code == StatusCode::kInvalidArgument) throw std::invalid_argument(s.message);
  if (s.code == StatusCode::kOutOfMemory) {
    PyErr_SetString(PyExc_MemoryError, s.message.c_str());
    throw py::error_already_set();
  }
  throw std::runtime_error(s.message);
}

// RSVLM_CHECK(checker, condition, message): ValueError "<op>: <message>" unless `condition` holds.
// The message names the argument and what was expected, e.g.
//   RSVLM_CHECK(c, c.dim("H") % h_kv == 0, "argument 'q' must have H a multiple of H_kv=" + ...);
#define RSVLM_CHECK(checker, condition, message) \
  do {                                           \
    if (!(condition)) (checker).fail(message);   \
  } while (0)

// While alive, makes the CUDA device of the op's tensors current (restores the previous one after).
// Throws std::invalid_argument when `device` is not a usable CUDA device.
class CudaDeviceGuard {
 public:
  CudaDeviceGuard(const std::string& op, const TensorArg& t) {
    if (t.device.type != DeviceType::cuda) return;
    if (t.device.id < 0)
      throw std::invalid_argument(op + ": argument '" + t.name +
                                  "' does not point to CUDA device memory (its __cuda_array_interface__ "
                                  "pointer is unknown to the CUDA runtime)");
    prev_ = cuda_current_device();
    if (prev_ == t.device.id) return;
    const std::string err = cuda_set_device(t.device.id);
    if (!err.empty()) throw std::runtime_error(op + ": cannot use " + t.device_str() + ": " + err);
    restore_ = true;
  }
  ~CudaDeviceGuard() {
    if (restore_) (void)cuda_set_device(prev_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int prev_ = -1;
  bool restore_ = false;
};

// Run an op's CPU launcher without the GIL, or, when `first` is a CUDA tensor, its CUDA launcher on
// `stream` (a cudaStream_t as an integer) with `first`'s device current; raise on a failed Status.
inline void launch(const char* op, const TensorArg& first, int64_t stream, const std::function<Status()>& cpu,
                   const std::function<Status(void*)>& gpu) {
  Status s;
  if (first.device.type == DeviceType::cuda) {
    CudaDeviceGuard guard(op, first);
    pybind11::gil_scoped_release nogil;
    s = gpu(reinterpret_cast<void*>(stream));
  } else {
    pybind11::gil_scoped_release nogil;
    s = cpu();
  }
  throw_if_error(s);
}

}  // namespace rsvlm_edge
