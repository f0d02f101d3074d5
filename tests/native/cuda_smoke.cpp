// CUDA smoke test of the public C++ API: every CUDA launcher of include/rsvlm_edge/*.h once (or a few
// times) at small odd shapes, each result checked against the matching *_reference CPU function.
//
// Built as rsvlm_cuda_smoke (CMakeLists.txt, CUDA builds only); scripts/gpu-check.sh runs it under
// compute-sanitizer (memcheck --leak-check full, racecheck, synccheck, initcheck), so the GPU work is
// tiny and every allocation is freed. Inputs are seeded (fixed std::mt19937 seeds), rounded to fp16
// on the host so that the fp16 CUDA path and the fp32 reference see the same values.
//
// Output: one line per case, `ok   <case> max_abs_err=<x>` or `FAIL <case> ...`, then a total line.
// Exit status: 0 when every case passed, 1 when one failed (a wrong value, a launcher Status that is
// not ok, or a CUDA error while running the cases), 2 when CUDA cannot be set up (no device, no
// driver, or a library built without CUDA).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "rsvlm_edge/kernels.h"

namespace {

namespace re = rsvlm_edge;

constexpr double kTolF16 = 2e-2;     // absolute + relative, fp16 activations
constexpr double kTolInt8Kv = 6e-2;  // absolute + relative, int8 KV cache

int g_cases = 0;
int g_failures = 0;
std::string g_case;  // the case running now (named in a CUDA error)
cudaStream_t g_stream = nullptr;

// ---------------------------------------------------------------- CUDA errors

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void cuda_check(cudaError_t e, const char* expr, int line) {
  if (e != cudaSuccess)
    throw CudaError(std::string(expr) + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e) +
                    " (cuda_smoke.cpp:" + std::to_string(line) + ")");
}
#define CUDA_CHECK(expr) cuda_check((expr), #expr, __LINE__)

void sync() {
  CUDA_CHECK(cudaStreamSynchronize(g_stream));
  CUDA_CHECK(cudaGetLastError());
}

// A cudaMalloc'd buffer, freed by the destructor. Copies are synchronous on g_stream.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    upload(host);
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

  template <typename T>
  void upload(const std::vector<T>& host) {
    if (host.size() * sizeof(T) != bytes_) throw std::logic_error("DeviceBuffer::upload: size mismatch");
    if (bytes_ == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(ptr_, host.data(), bytes_, cudaMemcpyHostToDevice, g_stream));
    sync();
  }
  template <typename T>
  std::vector<T> download() const {
    std::vector<T> host(bytes_ / sizeof(T));
    if (bytes_ == 0) return host;
    CUDA_CHECK(cudaMemcpyAsync(host.data(), ptr_, bytes_, cudaMemcpyDeviceToHost, g_stream));
    sync();
    return host;
  }
  // Every byte = `byte` (0xFF poisons fp16 outputs with NaN).
  void fill(int byte) {
    if (bytes_ == 0) return;
    CUDA_CHECK(cudaMemsetAsync(ptr_, byte, bytes_, g_stream));
    sync();
  }

 private:
  void reset() {
    if (ptr_ != nullptr) {
      const cudaError_t e = cudaFree(ptr_);
      if (e != cudaSuccess) std::fprintf(stderr, "cuda_smoke: cudaFree failed: %s\n", cudaGetErrorString(e));
      ptr_ = nullptr;
      bytes_ = 0;
    }
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---------------------------------------------------------------- host data

uint16_t half_bits(float x) { return static_cast<__half_raw>(__float2half_rn(x)).x; }

float half_value(uint16_t bits) {
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

float round_f16(float x) { return half_value(half_bits(x)); }

std::vector<uint16_t> to_half(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = half_bits(v[i]);
  return out;
}

std::vector<float> from_half(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = half_value(v[i]);
  return out;
}

// Seeded uniform numbers (the mapping from mt19937 words is spelled out: the same on every platform).
class Rng {
 public:
  explicit Rng(uint32_t seed) : gen_(seed) {}
  float uniform(float lo, float hi) { return lo + (hi - lo) * float(gen_() >> 8) * (1.f / 16777216.f); }
  int integer(int lo, int hi) { return lo + int(gen_() % uint32_t(hi - lo + 1)); }
  // n values in [lo, hi), rounded to fp16 (the values both sides compute with).
  std::vector<float> f16(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (float& x : v) x = round_f16(uniform(lo, hi));
    return v;
  }

 private:
  std::mt19937 gen_;
};

// ---------------------------------------------------------------- reporting

const char* code_name(re::StatusCode c) {
  switch (c) {
    case re::StatusCode::kOk:
      return "kOk";
    case re::StatusCode::kInvalidArgument:
      return "kInvalidArgument";
    case re::StatusCode::kNotCompiled:
      return "kNotCompiled";
    case re::StatusCode::kCudaError:
      return "kCudaError";
    case re::StatusCode::kOutOfMemory:
      return "kOutOfMemory";
  }
  return "?";
}

void begin_case(const std::string& name) { g_case = name; }

void fail(const std::string& why) {
  ++g_cases;
  ++g_failures;
  std::printf("FAIL %s %s\n", g_case.c_str(), why.c_str());
  std::fflush(stdout);
}

// True when s is ok; else prints a FAIL line for the current case.
bool status_ok(const char* call, const re::Status& s) {
  if (s.ok()) return true;
  fail(std::string(call) + " returned " + code_name(s.code) + ": " + s.message);
  return false;
}

// Compares got against want elementwise (|got - want| <= tol + tol * |want|, NaN fails) and prints
// the case's line. Returns true when it passed.
bool report(const std::vector<float>& got, const std::vector<float>& want, double tol) {
  if (got.size() != want.size()) {
    fail("size mismatch: got " + std::to_string(got.size()) + " values, want " + std::to_string(want.size()));
    return false;
  }
  double max_err = 0.0;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i], err = std::fabs(g - w);
    if (!(err <= tol + tol * std::fabs(w))) {
      if (bad++ == 0) first = i;
    }
    if (std::isnan(err))
      max_err = INFINITY;
    else
      max_err = std::max(max_err, err);
  }
  if (bad > 0) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "max_abs_err=%.3e tol=%.0e: %zu of %zu values off, first [%zu] got %.6g want %.6g",
                  max_err, tol, bad, got.size(), first, double(got[first]), double(want[first]));
    fail(buf);
    return false;
  }
  ++g_cases;
  std::printf("ok   %s max_abs_err=%.3e\n", g_case.c_str(), max_err);
  std::fflush(stdout);
  return true;
}

// ---------------------------------------------------------------- rms_norm

// mode: 0 = separate out, 1 = in place (out = x), 2 = fused residual add (x += add, separate out).
void test_rms_norm(int64_t rows, int dim, int mode, uint32_t seed) {
  const bool in_place = mode == 1, with_add = mode == 2;
  begin_case("rms_norm f16 T=" + std::to_string(rows) + " D=" + std::to_string(dim) +
             (in_place ? " in-place" : with_add ? " +add" : ""));
  Rng rng(seed);
  const std::vector<float> x = rng.f16(size_t(rows) * dim, -2.f, 2.f), w = rng.f16(size_t(dim), 0.5f, 1.5f);
  const std::vector<float> add = with_add ? rng.f16(x.size(), -1.f, 1.f) : std::vector<float>();
  // The reference of the fused add normalises the sum as the GPU stores it: rounded to fp16.
  std::vector<float> x_ref = x;
  if (with_add)
    for (size_t i = 0; i < x.size(); ++i) x_ref[i] = from_half(to_half(std::vector<float>{x[i] + add[i]}))[0];
  std::vector<float> want(x.size());
  re::RmsNormParams r;
  r.x = x_ref.data();
  r.weight = w.data();
  r.out = want.data();
  r.rows = rows;
  r.dim = dim;
  r.eps = 1e-5f;
  r.dtype = re::DType::f32;
  if (!status_ok("rms_norm_reference", re::rms_norm_reference(r))) return;

  DeviceBuffer dx(to_half(x)), dw(to_half(w)), dout, dadd;
  if (!in_place) {
    dout = DeviceBuffer(x.size() * sizeof(uint16_t));
    dout.fill(0xFF);
  }
  if (with_add) dadd = DeviceBuffer(to_half(add));
  re::RmsNormParams p = r;
  p.x = dx.get();
  p.add = with_add ? dadd.get() : nullptr;
  p.weight = dw.get();
  p.out = in_place ? dx.get() : dout.get();
  p.dtype = re::DType::f16;
  if (!status_ok("rms_norm_cuda", re::rms_norm_cuda(p, g_stream))) return;
  sync();
  report(from_half((in_place ? dx : dout).download<uint16_t>()), want, kTolF16);
}

// ---------------------------------------------------------------- rope

void test_rope(int64_t tokens, int heads, int kv_heads, int dim, float theta, bool with_k, uint32_t seed) {
  begin_case("rope f16 T=" + std::to_string(tokens) + " H=" + std::to_string(heads) +
             (with_k ? " H_kv=" + std::to_string(kv_heads) : std::string(" q-only")) + " D=" + std::to_string(dim));
  Rng rng(seed);
  std::vector<float> q = rng.f16(size_t(tokens) * heads * dim, -1.f, 1.f);
  std::vector<float> k = with_k ? rng.f16(size_t(tokens) * kv_heads * dim, -1.f, 1.f) : std::vector<float>();
  std::vector<int32_t> pos(static_cast<size_t>(tokens));
  for (auto& v : pos) v = rng.integer(0, 3000);
  pos[0] = 0;

  DeviceBuffer dq(to_half(q)), dk(to_half(k)), dpos(pos);
  re::RopeParams p;
  p.q = dq.get();
  p.k = with_k ? dk.get() : nullptr;
  p.positions = dpos.as<int32_t>();
  p.tokens = tokens;
  p.num_heads = heads;
  p.num_kv_heads = kv_heads;
  p.head_dim = dim;
  p.theta = theta;
  p.dtype = re::DType::f16;
  if (!status_ok("rope_cuda", re::rope_cuda(p, g_stream))) return;
  sync();

  re::RopeParams r = p;  // in place on the host copies
  r.q = q.data();
  r.k = with_k ? k.data() : nullptr;
  r.positions = pos.data();
  r.dtype = re::DType::f32;
  if (!status_ok("rope_reference", re::rope_reference(r))) return;

  std::vector<float> got = from_half(dq.download<uint16_t>()), want = q;
  if (with_k) {
    const std::vector<float> gk = from_half(dk.download<uint16_t>());
    got.insert(got.end(), gk.begin(), gk.end());
    want.insert(want.end(), k.begin(), k.end());
  }
  report(got, want, kTolF16);
}

// ---------------------------------------------------------------- swiglu

void test_swiglu(int64_t n, bool in_place, uint32_t seed) {
  begin_case("swiglu f16 n=" + std::to_string(n) + (in_place ? " out=gate" : ""));
  Rng rng(seed);
  const std::vector<float> gate = rng.f16(size_t(n), -4.f, 4.f), up = rng.f16(size_t(n), -2.f, 2.f);
  std::vector<float> want(static_cast<size_t>(n));
  re::SwiGluParams r;
  r.gate = gate.data();
  r.up = up.data();
  r.out = want.data();
  r.n = n;
  r.dtype = re::DType::f32;
  if (!status_ok("swiglu_reference", re::swiglu_reference(r))) return;

  DeviceBuffer dg(to_half(gate)), du(to_half(up)), dout;
  if (!in_place) {
    dout = DeviceBuffer(size_t(n) * sizeof(uint16_t));
    dout.fill(0xFF);
  }
  re::SwiGluParams p = r;
  p.gate = dg.get();
  p.up = du.get();
  p.out = in_place ? dg.get() : dout.get();
  p.dtype = re::DType::f16;
  if (!status_ok("swiglu_cuda", re::swiglu_cuda(p, g_stream))) return;
  sync();
  report(from_half((in_place ? dg : dout).download<uint16_t>()), want, kTolF16);
}

// ---------------------------------------------------------------- top_p_sample

// B rows of V distinct logits; draws that the rule decides away from any cdf step: a tiny top_p (the top
// token), u = 0 with top_p 1 (the first token in probability order) and u just below 1 (the last one).
void test_top_p_sample(int batch, int vocab, float temperature, float top_p, float u_value, uint32_t seed) {
  begin_case("top_p_sample B=" + std::to_string(batch) + " V=" + std::to_string(vocab) + " T=" +
             std::to_string(temperature) + " top_p=" + std::to_string(top_p) + " u=" + std::to_string(u_value));
  Rng rng(seed);
  std::vector<float> logits(size_t(batch) * vocab);
  for (int b = 0; b < batch; ++b) {
    std::vector<float> row = rng.f16(size_t(vocab), -3.f, 3.f);
    for (int i = 0; i < vocab; ++i) logits[size_t(b) * vocab + i] = row[i] + 1e-3f * float(i % 7);  // no ties
  }
  const std::vector<float> u(size_t(batch), u_value);
  std::vector<int64_t> want(size_t(batch), -1);
  re::TopPSampleParams r;
  r.logits = logits.data();
  r.uniforms = u.data();
  r.out = want.data();
  r.batch = batch;
  r.vocab = vocab;
  r.temperature = temperature;
  r.top_p = top_p;
  if (!status_ok("top_p_sample_reference", re::top_p_sample_reference(r))) return;
  DeviceBuffer dl(logits), du(u), dout(size_t(batch) * sizeof(int64_t));
  dout.fill(0xFF);
  re::TopPSampleParams p = r;
  p.logits = dl.as<float>();
  p.uniforms = du.as<float>();
  p.out = dout.as<int64_t>();
  if (!status_ok("top_p_sample_cuda", re::top_p_sample_cuda(p, g_stream))) return;
  sync();
  const std::vector<int64_t> got = dout.download<int64_t>();
  std::vector<float> got_f(got.begin(), got.end()), want_f(want.begin(), want.end());
  report(got_f, want_f, 0.0);
}

// ---------------------------------------------------------------- layer_norm

void test_layer_norm(int64_t rows, int dim, bool with_add, bool with_beta, uint32_t seed) {
  begin_case("layer_norm f16 M=" + std::to_string(rows) + " D=" + std::to_string(dim) + (with_add ? " add" : "") +
             (with_beta ? " beta" : ""));
  Rng rng(seed);
  const std::vector<float> x = rng.f16(size_t(rows) * dim, -2.f, 2.f), add = rng.f16(x.size(), -1.f, 1.f);
  const std::vector<float> g = rng.f16(size_t(dim), 0.5f, 1.5f), b = rng.f16(size_t(dim), -0.5f, 0.5f);
  std::vector<float> xs = x;  // x after the add, rounded to fp16 as the kernel stores it
  if (with_add)
    for (size_t i = 0; i < xs.size(); ++i) xs[i] = round_f16(x[i] + add[i]);
  std::vector<float> want(x.size());
  re::LayerNormParams r;
  r.x = xs.data();
  r.gamma = g.data();
  r.beta = with_beta ? b.data() : nullptr;
  r.out = want.data();
  r.m = rows;
  r.d = dim;
  r.eps = 1e-5f;
  r.dtype = re::DType::f32;
  if (!status_ok("layer_norm_reference", re::layer_norm_reference(r))) return;

  DeviceBuffer dx(to_half(x)), dadd(to_half(add)), dg(to_half(g)), db(to_half(b)), dout(x.size() * sizeof(uint16_t));
  dout.fill(0xFF);
  re::LayerNormParams p = r;
  p.x = dx.get();
  p.add = with_add ? dadd.get() : nullptr;
  p.gamma = dg.get();
  p.beta = with_beta ? db.get() : nullptr;
  p.out = dout.get();
  p.dtype = re::DType::f16;
  if (!status_ok("layer_norm_cuda", re::layer_norm_cuda(p, g_stream))) return;
  sync();
  std::vector<float> got = from_half(dout.download<uint16_t>());
  const std::vector<float> x_got = from_half(dx.download<uint16_t>());
  got.insert(got.end(), x_got.begin(), x_got.end());  // out, then x (updated in place by the add)
  want.insert(want.end(), xs.begin(), xs.end());
  report(got, want, kTolF16);
}

// ---------------------------------------------------------------- gelu

void test_gelu(re::GeluKind kind, int64_t m, int64_t n, uint32_t seed) {
  begin_case(std::string("gelu ") + re::gelu_kind_name(kind) + " f16 M=" + std::to_string(m) +
             " N=" + std::to_string(n));
  Rng rng(seed);
  std::vector<float> want = rng.f16(size_t(m * n), -6.f, 6.f);
  DeviceBuffer dx(to_half(want));
  re::GeluParams p;
  p.x = dx.get();
  p.m = m;
  p.n = n;
  p.kind = kind;
  p.dtype = re::DType::f16;
  if (!status_ok("gelu_cuda", re::gelu_cuda(p, g_stream))) return;
  sync();
  re::GeluParams r = p;  // in place on the host copy
  r.x = want.data();
  r.dtype = re::DType::f32;
  if (!status_ok("gelu_reference", re::gelu_reference(r))) return;
  report(from_half(dx.download<uint16_t>()), want, kTolF16);
}

// ---------------------------------------------------------------- linear

void test_linear(bool int8, int64_t m, int n, int k, bool bias, uint32_t seed) {
  begin_case(std::string("linear f16 x ") + (int8 ? "int8" : "f16") + " w M=" + std::to_string(m) +
             " N=" + std::to_string(n) + " K=" + std::to_string(k) + (bias ? " bias" : ""));
  Rng rng(seed);
  const std::vector<float> x = rng.f16(size_t(m) * k, -1.f, 1.f);
  const std::vector<float> b = bias ? rng.f16(size_t(n), -0.5f, 0.5f) : std::vector<float>();
  std::vector<float> w = rng.f16(size_t(n) * k, -1.f, 1.f);
  std::vector<int8_t> w8;
  std::vector<float> scale;
  if (int8) {
    w8.resize(w.size());
    scale.resize(size_t(n));
    if (!status_ok("quantize_weight_int8_cpu", re::quantize_weight_int8_cpu(w.data(), n, k, w8.data(), scale.data())))
      return;
  }
  const std::vector<uint16_t> w16 = to_half(w);

  std::vector<float> want(size_t(m) * n);
  re::LinearParams r;
  r.x = x.data();
  r.w = int8 ? static_cast<const void*>(w8.data()) : static_cast<const void*>(w16.data());
  r.w_scale = int8 ? scale.data() : nullptr;
  r.bias = bias ? b.data() : nullptr;
  r.out = want.data();
  r.m = m;
  r.n = n;
  r.k = k;
  r.act_dtype = re::DType::f32;
  r.w_dtype = int8 ? re::DType::i8 : re::DType::f16;
  if (!status_ok("linear_reference", re::linear_reference(r))) return;

  DeviceBuffer dx(to_half(x)), db(to_half(b)), dout(want.size() * sizeof(uint16_t));
  DeviceBuffer dw = int8 ? DeviceBuffer(w8) : DeviceBuffer(w16);
  DeviceBuffer ds(scale);
  dout.fill(0xFF);
  re::LinearParams p = r;
  p.x = dx.get();
  p.w = dw.get();
  p.w_scale = int8 ? ds.as<float>() : nullptr;
  p.bias = bias ? db.get() : nullptr;
  p.out = dout.get();
  p.act_dtype = re::DType::f16;
  p.w_dtype = int8 ? re::DType::i8 : re::DType::f16;
  if (!status_ok("linear_cuda", re::linear_cuda(p, g_stream))) return;
  sync();
  report(from_half(dout.download<uint16_t>()), want, kTolF16);
}

// ---------------------------------------------------------------- qlinear

void test_qlinear(re::QWeight format, int64_t m, int n, int k, int groups, bool bias, uint32_t seed) {
  const bool i4 = format == re::QWeight::i4;
  begin_case(std::string("qlinear f16 x ") + (i4 ? "int4" : "int8") + " w M=" + std::to_string(m) + " N=" +
             std::to_string(n) + " K=" + std::to_string(k) + " G=" + std::to_string(groups) + (bias ? " bias" : ""));
  Rng rng(seed);
  const std::vector<float> x = rng.f16(size_t(m) * k, -1.f, 1.f);
  const std::vector<float> b = bias ? rng.f16(size_t(n), -0.5f, 0.5f) : std::vector<float>();
  std::vector<float> scale(size_t(n) * groups);
  // i4: signed scales, as export's rule writes them (a group's positive extreme is level -8 times a negative scale)
  for (float& s : scale) s = i4 ? rng.uniform(0.02f, 0.2f) * float(2 * rng.integer(0, 1) - 1) : rng.uniform(0.002f, 0.02f);
  std::vector<uint8_t> w;  // i8: (N, K) int8 bytes; i4: (N, K / 2) packed nibbles, stored as q + 8
  if (i4) {
    w.resize(size_t(n) * (k / 2));
    for (uint8_t& byte : w) byte = uint8_t((rng.integer(-8, 7) + 8) | ((rng.integer(-8, 7) + 8) << 4));
  } else {
    w.resize(size_t(n) * k);
    for (uint8_t& byte : w) byte = uint8_t(int8_t(rng.integer(-127, 127)));
  }

  std::vector<float> want(size_t(m) * n);
  re::QLinearParams r;
  r.x = x.data();
  r.w = w.data();
  r.w_scale = scale.data();
  r.bias = bias ? b.data() : nullptr;
  r.out = want.data();
  r.m = m;
  r.n = n;
  r.k = k;
  r.groups = groups;
  r.format = format;
  r.act_dtype = re::DType::f32;
  if (!status_ok("qlinear_reference", re::qlinear_reference(r))) return;

  DeviceBuffer dx(to_half(x)), dw(w), ds(scale), db(to_half(b)), dout(want.size() * sizeof(uint16_t));
  dout.fill(0xFF);
  re::QLinearParams p = r;
  p.x = dx.get();
  p.w = dw.get();
  p.w_scale = ds.as<float>();
  p.bias = bias ? db.get() : nullptr;
  p.out = dout.get();
  p.act_dtype = re::DType::f16;
  if (!status_ok("qlinear_cuda", re::qlinear_cuda(p, g_stream))) return;
  sync();
  report(from_half(dout.download<uint16_t>()), want, kTolF16);
}

// ---------------------------------------------------------------- patch_embed

void test_patch_embed(re::DType dtype, int64_t batch, int64_t height, int64_t width, int64_t patch, int64_t dim,
                      bool bias, bool ln, uint32_t seed) {
  const bool f16 = dtype == re::DType::f16;
  begin_case(std::string("patch_embed ") + (f16 ? "f16" : "f32") + " B=" + std::to_string(batch) + " " +
             std::to_string(height) + "x" + std::to_string(width) + " P=" + std::to_string(patch) +
             " D=" + std::to_string(dim) + (bias ? " bias" : " no-bias") + (ln ? " ln_pre" : " no-ln"));
  Rng rng(seed);
  re::PatchEmbedParams r;
  r.batch = batch;
  r.height = height;
  r.width = width;
  r.patch = patch;
  r.dim = dim;
  const float mean[3] = {0.4815f, 0.4578f, 0.4082f}, stdv[3] = {0.2686f, 0.2613f, 0.2758f};
  for (int c = 0; c < 3; ++c) {
    r.mean[c] = mean[c];
    r.std[c] = stdv[c];
  }
  const int64_t kk = r.k(), tokens = r.tokens();
  std::vector<uint8_t> images(size_t(batch * height * width * 3));
  for (uint8_t& v : images) v = uint8_t(rng.integer(0, 255));
  // fp16-rounded either way (exact in fp32); both sides see the same parameters.
  const std::vector<float> weight = rng.f16(size_t(dim * kk), -0.08f, 0.08f);
  const std::vector<float> bvec = bias ? rng.f16(size_t(dim), -0.2f, 0.2f) : std::vector<float>();
  const std::vector<float> cls = rng.f16(size_t(dim), -0.5f, 0.5f);
  const std::vector<float> pos = rng.f16(size_t(tokens * dim), -0.5f, 0.5f);
  const std::vector<float> gamma = ln ? rng.f16(size_t(dim), 0.5f, 1.5f) : std::vector<float>();
  const std::vector<float> beta = ln ? rng.f16(size_t(dim), -0.2f, 0.2f) : std::vector<float>();

  std::vector<float> want(size_t(batch * tokens * dim));
  r.images = images.data();
  r.weight = weight.data();
  r.bias = bias ? bvec.data() : nullptr;
  r.class_emb = cls.data();
  r.pos_emb = pos.data();
  r.ln_gamma = ln ? gamma.data() : nullptr;
  r.ln_beta = ln ? beta.data() : nullptr;
  r.out = want.data();
  r.dtype = re::DType::f32;
  if (!status_ok("patch_embed_reference", re::patch_embed_reference(r))) return;

  auto dev = [&](const std::vector<float>& v) { return f16 ? DeviceBuffer(to_half(v)) : DeviceBuffer(v); };
  const size_t elem = f16 ? sizeof(uint16_t) : sizeof(float);
  DeviceBuffer dimg(images), dweight = dev(weight), dbias = dev(bvec), dcls = dev(cls), dpos = dev(pos),
                             dgamma = dev(gamma), dbeta = dev(beta), dout(want.size() * elem);
  dout.fill(0xFF);
  re::PatchEmbedParams p = r;
  p.images = dimg.as<uint8_t>();
  p.weight = dweight.get();
  p.bias = bias ? dbias.get() : nullptr;
  p.class_emb = dcls.get();
  p.pos_emb = dpos.get();
  p.ln_gamma = ln ? dgamma.get() : nullptr;
  p.ln_beta = ln ? dbeta.get() : nullptr;
  p.out = dout.get();
  p.dtype = dtype;
  if (!status_ok("patch_embed_cuda", re::patch_embed_cuda(p, g_stream))) return;
  sync();
  report(f16 ? from_half(dout.download<uint16_t>()) : dout.download<float>(), want, f16 ? kTolF16 : 1e-3);
}

// ---------------------------------------------------------------- kv_append + attention

// B = 3 sequences, H = 6 query heads over H_kv = 2 KV heads (G = 3), D = 64. Sequence b has past[b]
// cached tokens, then a prefill of q_new[b] tokens (S_q = 17, padded), then one decode token.
constexpr int kB = 3, kH = 6, kHkv = 2, kD = 64, kSq = 17, kPastMax = 60;
constexpr int kPast[kB] = {0, 7, 60};
constexpr int kQNew[kB] = {5, 17, 13};

struct KvLayout {
  bool paged = false;
  bool int8 = false;
  int slots = 0, s_max = 0, max_pages = 0;
  std::vector<int32_t> page_table;  // paged: (B, max_pages), -1 = unused

  size_t rows() const { return size_t(slots) * kHkv * s_max; }
  size_t elems() const { return rows() * kD; }
  int64_t capacity() const { return paged ? int64_t(max_pages) * re::kKvPageSize : s_max; }
  std::string name() const {
    return std::string(paged ? "paged" : "contiguous") + (int8 ? " int8" : " f16") + " cache";
  }
};

KvLayout make_layout(bool paged, bool int8) {
  KvLayout l;
  l.paged = paged;
  l.int8 = int8;
  if (!paged) {
    l.slots = 4;    // B_cache > B: slot 3 stays unused
    l.s_max = 520;  // >= 512: num_splits = 0 picks 2 splits (at least 256 keys each)
    return l;
  }
  // 11 pages, handed out in a scrambled order; capacity 33 * 16 = 528 tokens per sequence, of which
  // at most 75 (5 pages) are used.
  l.slots = 11;
  l.s_max = re::kKvPageSize;
  l.max_pages = 33;
  l.page_table.assign(size_t(kB) * l.max_pages, -1);
  const int order[11] = {7, 2, 10, 4, 0, 9, 5, 1, 8, 3, 6};
  int next = 0;
  for (int b = 0; b < kB; ++b) {
    const int tokens = kPast[b] + kQNew[b] + 2;  // the prefill, then two decode tokens
    for (int i = 0; i < (tokens + re::kKvPageSize - 1) / re::kKvPageSize; ++i)
      l.page_table[size_t(b) * l.max_pages + i] = order[next++];
  }
  return l;
}

// The reference's cache: fp32 or int8 + scales, on the host.
struct HostCache {
  std::vector<float> k, v, ks, vs;
  std::vector<int8_t> k8, v8;

  explicit HostCache(const KvLayout& l) {
    if (l.int8) {
      k8.assign(l.elems(), 0);
      v8.assign(l.elems(), 0);
      ks.assign(l.rows(), 0.f);
      vs.assign(l.rows(), 0.f);
    } else {
      k.assign(l.elems(), 0.f);
      v.assign(l.elems(), 0.f);
    }
  }
  re::KvCacheView view(const KvLayout& l) {
    re::KvCacheView c;
    c.k = l.int8 ? static_cast<void*>(k8.data()) : static_cast<void*>(k.data());
    c.v = l.int8 ? static_cast<void*>(v8.data()) : static_cast<void*>(v.data());
    c.k_scale = l.int8 ? ks.data() : nullptr;
    c.v_scale = l.int8 ? vs.data() : nullptr;
    c.page_table = l.paged ? l.page_table.data() : nullptr;
    c.dtype = l.int8 ? re::DType::i8 : re::DType::f32;
    c.num_kv_heads = kHkv;
    c.head_dim = kD;
    c.slots = l.slots;
    c.s_max = l.s_max;
    c.max_pages_per_seq = l.max_pages;
    return c;
  }
  // Every cache value, dequantised: K then V.
  std::vector<float> values(const KvLayout& l) const {
    if (!l.int8) {
      std::vector<float> out = k;
      out.insert(out.end(), v.begin(), v.end());
      return out;
    }
    std::vector<float> out(2 * l.elems());
    for (size_t i = 0; i < l.elems(); ++i) {
      out[i] = float(k8[i]) * ks[i / kD];
      out[l.elems() + i] = float(v8[i]) * vs[i / kD];
    }
    return out;
  }
};

// The CUDA launchers' cache: fp16 or int8 + scales, zeroed (so that every byte is initialised).
struct DevCache {
  DeviceBuffer k, v, ks, vs, page_table;

  explicit DevCache(const KvLayout& l)
      : k(l.elems() * (l.int8 ? 1 : sizeof(uint16_t))), v(l.elems() * (l.int8 ? 1 : sizeof(uint16_t))) {
    k.fill(0);
    v.fill(0);
    if (l.int8) {
      ks = DeviceBuffer(l.rows() * sizeof(float));
      vs = DeviceBuffer(l.rows() * sizeof(float));
      ks.fill(0);
      vs.fill(0);
    }
    if (l.paged) page_table = DeviceBuffer(l.page_table);
  }
  re::KvCacheView view(const KvLayout& l) const {
    re::KvCacheView c;
    c.k = k.get();
    c.v = v.get();
    c.k_scale = l.int8 ? ks.as<float>() : nullptr;
    c.v_scale = l.int8 ? vs.as<float>() : nullptr;
    c.page_table = l.paged ? page_table.as<int32_t>() : nullptr;
    c.dtype = l.int8 ? re::DType::i8 : re::DType::f16;
    c.num_kv_heads = kHkv;
    c.head_dim = kD;
    c.slots = l.slots;
    c.s_max = l.s_max;
    c.max_pages_per_seq = l.max_pages;
    return c;
  }
  std::vector<float> values(const KvLayout& l) const {
    if (!l.int8) {
      std::vector<float> out = from_half(k.download<uint16_t>());
      const std::vector<float> vv = from_half(v.download<uint16_t>());
      out.insert(out.end(), vv.begin(), vv.end());
      return out;
    }
    const std::vector<int8_t> k8 = k.download<int8_t>(), v8 = v.download<int8_t>();
    const std::vector<float> kss = ks.download<float>(), vss = vs.download<float>();
    std::vector<float> out(2 * l.elems());
    for (size_t i = 0; i < l.elems(); ++i) {
      out[i] = float(k8[i]) * kss[i / kD];
      out[l.elems() + i] = float(v8[i]) * vss[i / kD];
    }
    return out;
  }
};

// Appends k_new / v_new (B, s_new, H_kv, D) at start_pos on both sides. new_lens empty = all s_new.
// With rope_positions (B, s_new): the RoPE fused in, rotating *q (B, s_new, H, D) too when given (on the
// host in place; the device's rotated q is returned in *q_device).
bool append_both(const KvLayout& l, HostCache& hc, DevCache& dc, const std::vector<float>& k_new,
                 const std::vector<float>& v_new, int s_new, const std::vector<int32_t>& start_pos,
                 const std::vector<int32_t>& new_lens, const std::vector<int32_t>* rope_positions = nullptr,
                 std::vector<float>* q = nullptr, std::vector<float>* q_device = nullptr) {
  re::KvAppendParams r;
  r.k_new = k_new.data();
  r.v_new = v_new.data();
  r.start_pos = start_pos.data();
  r.new_lens = new_lens.empty() ? nullptr : new_lens.data();
  r.act_dtype = re::DType::f32;
  r.batch = kB;
  r.s_new = s_new;
  r.cache = hc.view(l);
  DeviceBuffer dq, dpos;
  if (rope_positions) {
    r.rope.positions = rope_positions->data();
    r.rope.q = q ? q->data() : nullptr;
    r.rope.num_heads = kH;
    r.rope.theta = 10000.f;
    dpos = DeviceBuffer(*rope_positions);
    if (q) dq = DeviceBuffer(to_half(*q));
  }
  if (!status_ok("kv_append_reference", re::kv_append_reference(r))) return false;

  DeviceBuffer dk(to_half(k_new)), dv(to_half(v_new)), dstart(start_pos), dlens(new_lens);
  re::KvAppendParams p = r;
  if (rope_positions) {
    p.rope.positions = dpos.as<int32_t>();
    p.rope.q = q ? dq.get() : nullptr;
  }
  p.k_new = dk.get();
  p.v_new = dv.get();
  p.start_pos = dstart.as<int32_t>();
  p.new_lens = new_lens.empty() ? nullptr : dlens.as<int32_t>();
  p.act_dtype = re::DType::f16;
  p.cache = dc.view(l);
  if (!status_ok("kv_append_cuda", re::kv_append_cuda(p, g_stream))) return false;
  sync();
  if (q && q_device) *q_device = from_half(dq.download<uint16_t>());
  return true;
}

enum class Workspace { kNone, kExact, kUpperBound, kShort };

// Attention of q (B, s_q, H, D) over the caches on both sides; prints the case's line.
void attention_both(const KvLayout& l, HostCache& hc, DevCache& dc, const std::vector<float>& q, int s_q,
                    const std::vector<int32_t>& q_lens, const std::vector<int32_t>& kv_lens, float scale,
                    int num_splits, Workspace ws, bool causal = true) {
  std::vector<float> want(size_t(kB) * s_q * kH * kD);
  re::AttentionParams r;
  r.causal = causal;
  r.q = q.data();
  r.out = want.data();
  r.q_lens = q_lens.empty() ? nullptr : q_lens.data();
  r.kv_lens = kv_lens.data();
  r.act_dtype = re::DType::f32;
  r.batch = kB;
  r.s_q = s_q;
  r.num_heads = kH;
  r.scale = scale;
  r.cache = hc.view(l);
  if (!status_ok("attention_reference", re::attention_reference(r))) return;

  int64_t ws_floats = 0;
  switch (ws) {
    case Workspace::kNone:
      break;
    case Workspace::kExact:
      ws_floats = re::attention_workspace_floats(kB, kH, kD, num_splits);
      break;
    case Workspace::kShort:
      ws_floats = re::attention_workspace_floats(kB, kH, kD, num_splits) - 1;
      break;
    case Workspace::kUpperBound:  // num_splits = 0: the launcher never uses more than capacity / 32 splits
      ws_floats = re::attention_workspace_floats(kB, kH, kD, int((l.capacity() + 31) / 32));
      break;
  }
  DeviceBuffer dq(to_half(q)), dout(want.size() * sizeof(uint16_t)), dqlens(q_lens), dkvlens(kv_lens),
      dws(size_t(ws_floats) * sizeof(float));
  dout.fill(0xFF);
  re::AttentionParams p = r;
  p.q = dq.get();
  p.out = dout.get();
  p.q_lens = q_lens.empty() ? nullptr : dqlens.as<int32_t>();
  p.kv_lens = dkvlens.as<int32_t>();
  p.act_dtype = re::DType::f16;
  p.cache = dc.view(l);
  p.num_splits = num_splits;
  p.workspace = ws == Workspace::kNone ? nullptr : dws.as<float>();
  p.workspace_floats = ws_floats;
  const re::Status st = re::attention_cuda(p, g_stream);
  if (ws == Workspace::kShort) {  // must be refused before anything runs
    sync();
    if (st.code != re::StatusCode::kInvalidArgument) {
      fail(std::string("attention_cuda with a workspace one float short returned ") + code_name(st.code) +
           ", want kInvalidArgument");
      return;
    }
    ++g_cases;
    std::printf("ok   %s max_abs_err=0 (refused: kInvalidArgument)\n", g_case.c_str());
    return;
  }
  if (!status_ok("attention_cuda", st)) return;
  sync();
  report(from_half(dout.download<uint16_t>()), want, l.int8 ? kTolInt8Kv : kTolF16);
}

void test_kv_attention(bool paged, bool int8, uint32_t seed) {
  const KvLayout l = make_layout(paged, int8);
  const std::string cache = l.name();
  const double tol = int8 ? kTolInt8Kv : kTolF16;
  Rng rng(seed);
  HostCache hc(l);
  DevCache dc(l);

  std::vector<int32_t> zeros(kB, 0), past(kPast, kPast + kB), q_new(kQNew, kQNew + kB), kv_lens(kB), seq_lens(kB);
  for (int b = 0; b < kB; ++b) {
    kv_lens[b] = kPast[b] + kQNew[b];
    seq_lens[b] = kv_lens[b] + 1;
  }

  // 1. the past (new_lens = past, from position 0; sequence 0 has none), then the prefill tokens at
  //    start_pos = past (new_lens = q_new < S_new for padded sequences).
  begin_case("kv_append " + cache + " past + prefill (S_new 60, 17)");
  {
    const std::vector<float> k_past = rng.f16(size_t(kB) * kPastMax * kHkv * kD, -1.5f, 1.5f);
    const std::vector<float> v_past = rng.f16(k_past.size(), -1.5f, 1.5f);
    const std::vector<float> k_pre = rng.f16(size_t(kB) * kSq * kHkv * kD, -1.5f, 1.5f);
    const std::vector<float> v_pre = rng.f16(k_pre.size(), -1.5f, 1.5f);
    if (!append_both(l, hc, dc, k_past, v_past, kPastMax, zeros, past)) return;
    if (!append_both(l, hc, dc, k_pre, v_pre, kSq, past, q_new)) return;
    report(dc.values(l), hc.values(l), tol);
  }

  // 2. prefill attention: S_q = 17, rows past q_new[b] are padding (zeros); default scale.
  begin_case("attention prefill " + cache + " B=3 S_q=17 H=6 H_kv=2 D=64");
  const std::vector<float> q_pre = rng.f16(size_t(kB) * kSq * kH * kD, -1.5f, 1.5f);
  attention_both(l, hc, dc, q_pre, kSq, q_new, kv_lens, 0.f, 0, Workspace::kNone);
  begin_case("attention prefill " + cache + " bidirectional (causal=false) B=3 S_q=17 H=6 H_kv=2 D=64");
  attention_both(l, hc, dc, q_pre, kSq, q_new, kv_lens, 0.f, 0, Workspace::kNone, false);

  // 3. one decode token per sequence at start_pos = kv_lens (new_lens = nullptr: all of S_new = 1).
  begin_case("kv_append " + cache + " decode (S_new 1)");
  {
    const std::vector<float> k_dec = rng.f16(size_t(kB) * kHkv * kD, -1.5f, 1.5f);
    const std::vector<float> v_dec = rng.f16(k_dec.size(), -1.5f, 1.5f);
    if (!append_both(l, hc, dc, k_dec, v_dec, 1, kv_lens, {})) return;
    report(dc.values(l), hc.values(l), tol);
  }

  // 3b. one more decode token with the RoPE fused into the append (q rotated in place, k stored rotated).
  begin_case("kv_append " + cache + " decode with RoPE (S_new 1, q rotated)");
  {
    const std::vector<float> k_dec = rng.f16(size_t(kB) * kHkv * kD, -1.5f, 1.5f);
    const std::vector<float> v_dec = rng.f16(k_dec.size(), -1.5f, 1.5f);
    std::vector<float> q_rot = rng.f16(size_t(kB) * kH * kD, -1.5f, 1.5f), q_dev;
    std::vector<int32_t> positions(seq_lens);  // the token after the decode token above
    if (!append_both(l, hc, dc, k_dec, v_dec, 1, seq_lens, {}, &positions, &q_rot, &q_dev)) return;
    std::vector<float> got = dc.values(l), want = hc.values(l);
    got.insert(got.end(), q_dev.begin(), q_dev.end());
    want.insert(want.end(), q_rot.begin(), q_rot.end());
    report(got, want, tol);
    for (int b = 0; b < kB; ++b) ++seq_lens[b];
  }

  // 4. decode attention (S_q = 1, seq_lens count the new token) unsplit, split with an explicit
  //    workspace, and auto-split (num_splits = 0) with and without a workspace.
  const std::vector<float> q_dec = rng.f16(size_t(kB) * kH * kD, -1.5f, 1.5f);
  const float scale = 0.2f;
  begin_case("attention decode " + cache + " num_splits=1");
  attention_both(l, hc, dc, q_dec, 1, {}, seq_lens, scale, 1, Workspace::kNone);
  begin_case("attention decode " + cache + " num_splits=3 explicit workspace");
  attention_both(l, hc, dc, q_dec, 1, {}, seq_lens, scale, 3, Workspace::kExact);
  begin_case("attention decode " + cache + " num_splits=0 (auto) explicit workspace");
  attention_both(l, hc, dc, q_dec, 1, {}, seq_lens, scale, 0, Workspace::kUpperBound);
  begin_case("attention decode " + cache + " num_splits=0 (auto) stream-ordered workspace");
  attention_both(l, hc, dc, q_dec, 1, {}, seq_lens, scale, 0, Workspace::kNone);
  if (!paged && !int8) {
    begin_case("attention decode " + cache + " num_splits=3 workspace one float short");
    attention_both(l, hc, dc, q_dec, 1, {}, seq_lens, scale, 3, Workspace::kShort);
  }
}

void run_all() {
  uint32_t seed = 1000;
  test_rms_norm(5, 333, 0, seed++);
  test_rms_norm(3, 1000, 1, seed++);
  test_rms_norm(3, 2048, 2, seed++);  // the register-resident kernel, fused add
  test_rms_norm(2, 2048, 1, seed++);  // the register-resident kernel, in place
  test_rms_norm(4, 77, 2, seed++);    // the strided kernel, fused add

  test_rope(5, 6, 2, 64, 10000.f, true, seed++);
  test_rope(3, 5, 0, 34, 500000.f, false, seed++);

  test_swiglu(1001, false, seed++);
  test_swiglu(33, true, seed++);

  test_top_p_sample(3, 1000, 0.8f, 1e-6f, 0.5f, seed++);   // the top token
  test_top_p_sample(2, 32000, 1.f, 1.f, 0.f, seed++);      // the first in probability order
  test_top_p_sample(2, 777, 1.3f, 1.f, 0.999999f, seed++);  // the last
  test_top_p_sample(3, 50, 0.f, 1.f, 0.5f, seed++);        // greedy

  // K = 37: scalar path; K = 264: 8-wide vector loads (K % 8 == 0), two strides of 256.
  for (bool int8 : {false, true})
    for (int64_t m : {1, 5})
      for (int k : {37, 264}) test_linear(int8, m, 13, k, m == 5, seed++);
  test_linear(true, 11, 13, 264, true, seed++);  // int8 weights, M 11: several blocks of rows, the last partial

  // K = 37 / 38: partial last dp4a group (scalar tail); K = 300: partial last 128-block; G > 1 groups.
  test_qlinear(re::QWeight::i8, 1, 11, 37, 1, false, seed++);
  test_qlinear(re::QWeight::i8, 5, 11, 300, 1, true, seed++);
  test_qlinear(re::QWeight::i8, 5, 11, 256, 2, false, seed++);
  test_qlinear(re::QWeight::i4, 1, 11, 38, 1, true, seed++);
  test_qlinear(re::QWeight::i4, 5, 11, 300, 1, false, seed++);
  test_qlinear(re::QWeight::i4, 5, 11, 384, 3, true, seed++);
  // M 3 and 11: several blocks of rows, the last one partial.
  test_qlinear(re::QWeight::i8, 3, 11, 264, 1, true, seed++);
  test_qlinear(re::QWeight::i4, 11, 11, 256, 2, false, seed++);

  // 75 patch rows (2 row tiles), D = 72 (2 dim tiles), K = 147 (partial last K stage).
  test_patch_embed(re::DType::f16, 3, 35, 35, 7, 72, true, true, seed++);
  test_patch_embed(re::DType::f16, 2, 14, 21, 7, 40, false, false, seed++);
  test_patch_embed(re::DType::f32, 2, 12, 8, 4, 24, false, true, seed++);

  for (bool paged : {false, true})
    for (bool int8 : {false, true}) test_kv_attention(paged, int8, seed++);

  // D = 333 / 1000: several elements per thread; D = 7: most of the block idle.
  test_layer_norm(5, 333, true, true, seed++);
  test_layer_norm(3, 1000, false, false, seed++);
  test_layer_norm(4, 7, true, false, seed++);
  for (re::GeluKind kind : {re::GeluKind::erf, re::GeluKind::tanh, re::GeluKind::quick})
    test_gelu(kind, 3, 1001, seed++);
}

}  // namespace

int main() {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "cuda_smoke: no usable CUDA device: cudaGetDeviceCount: %s (%s)\n",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices", e != cudaSuccess ? cudaGetErrorName(e) : "-");
    return 2;
  }
  if (!re::built_with_cuda()) {
    std::fprintf(stderr, "cuda_smoke: librsvlm_edge %s was built without CUDA kernels (RSVLM_CUDA=OFF)\n",
                 re::version());
    return 2;
  }
  cudaDeviceProp prop{};
  cudaError_t se = cudaSetDevice(0);
  if (se == cudaSuccess) se = cudaGetDeviceProperties(&prop, 0);
  if (se == cudaSuccess) se = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
  if (se != cudaSuccess) {
    std::fprintf(stderr, "cuda_smoke: CUDA setup failed: %s (%s)\n", cudaGetErrorString(se), cudaGetErrorName(se));
    return 2;
  }
  std::printf("cuda_smoke: rsvlm_edge %s on %s (sm_%d%d)\n", re::version(), prop.name, prop.major, prop.minor);
  std::fflush(stdout);

  bool cuda_failed = false;
  try {
    run_all();
  } catch (const CudaError& err) {
    fail(std::string("CUDA error: ") + err.what());
    cuda_failed = true;
  } catch (const std::exception& err) {
    fail(std::string("exception: ") + err.what());
  }
  if (!cuda_failed) {
    const cudaError_t fin = cudaDeviceSynchronize();
    if (fin != cudaSuccess) {
      g_case = "final cudaDeviceSynchronize";
      fail(cudaGetErrorString(fin));
    }
  }
  const cudaError_t de = cudaStreamDestroy(g_stream);
  if (de != cudaSuccess && !cuda_failed) {
    g_case = "cudaStreamDestroy";
    fail(cudaGetErrorString(de));
  }
  std::printf("cuda_smoke: %d cases, %d failed\n", g_cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}
