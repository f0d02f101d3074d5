// The fast CPU kernels against their naive references, as a standalone program: every *_cpu launcher
// of include/rsvlm_edge/*.h at odd shapes, outputs poisoned with NaN first, each CPU kernel set this
// CPU supports (portable everywhere; avx2 / avx512vnni on x86-64). tests/test_native_cpu_check.py
// builds it from the kernel sources alone (no Python, no CMake) natively and, when
// g++-aarch64-linux-gnu and qemu-user are installed, for aarch64 (static) to run under
// qemu-aarch64: the portable kernels there are the NEON code Jetson runs.
//
// Output: `ok   <case> max_rel_err=<x>` / `FAIL <case> ...` per case, then a total. Exit 0 = all ok.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "rsvlm_edge/kernels.h"

namespace re = rsvlm_edge;

namespace {

int g_cases = 0, g_failures = 0;
std::mt19937 g_rng(1234);

std::vector<float> randn(size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g_rng);
  return v;
}

std::vector<float> poisoned(size_t n) { return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()); }

uint16_t to_half(float f) {  // round to nearest even, finite normal range (test data only)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = int32_t((x >> 23) & 0xFF) - 127 + 15;
  uint32_t mant = x & 0x7FFFFFu;
  if (exp <= 0) return uint16_t(sign);  // flush tiny values (not produced by these tests' scales)
  uint32_t h = sign | (uint32_t(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return uint16_t(h);
}

// Largest |got - want| / (tol_abs + tol_rel * |want|) over the arrays; > 1 fails (NaN fails).
void check(const std::string& name, const re::Status& st_got, const re::Status& st_want, const std::vector<float>& got,
           const std::vector<float>& want, double tol) {
  ++g_cases;
  if (!st_got.ok() || !st_want.ok()) {
    ++g_failures;
    std::printf("FAIL %s status: %s / %s\n", name.c_str(), st_got.message.c_str(), st_want.message.c_str());
    return;
  }
  double worst = 0, scale = 0;
  for (float w : want) scale = std::max(scale, double(std::fabs(w)));
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(want[i])) / (tol * (1.0 + scale));
    if (!(err <= worst)) worst = std::isnan(err) ? std::numeric_limits<double>::infinity() : std::max(worst, err);
  }
  const bool ok = worst <= 1.0;
  g_failures += !ok;
  std::printf("%s %s max_rel_err=%.3g\n", ok ? "ok  " : "FAIL", name.c_str(), worst * tol);
}

std::string shape(const char* op, std::initializer_list<int64_t> dims) {
  std::string s = std::string(re::cpu_kernels_name(re::cpu_kernels())) + " " + op;
  for (int64_t d : dims) s += " " + std::to_string(d);
  return s;
}

void linear_cases() {
  // M 8 and 17: the tile GEMM; 64 and 67: the avx512 packed GEMM (K 1030: three K blocks, N 70: a partial panel).
  for (auto [m, n, k] : std::vector<std::array<int, 3>>{{1, 37, 2048}, {2, 7, 300}, {3, 33, 129}, {5, 70, 1030},
                                                        {8, 33, 515}, {64, 70, 1030}, {67, 41, 257}, {17, 41, 257},
                                                        {1, 1, 1}}) {
    const std::vector<float> x = randn(size_t(m) * k), wf = randn(size_t(n) * k, 0.05f), bias = randn(n);
    std::vector<uint16_t> wh(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) wh[i] = to_half(wf[i]);
    std::vector<int8_t> wq(wf.size());
    std::vector<float> wscale(n);
    const re::Status qs = re::quantize_weight_int8_cpu(wf.data(), n, k, wq.data(), wscale.data());
    if (!qs.ok()) std::printf("FAIL quantize_weight_int8_cpu: %s\n", qs.message.c_str());
    for (re::DType wd : {re::DType::f32, re::DType::f16, re::DType::i8}) {
      re::LinearParams p;
      p.x = x.data();
      p.w = wd == re::DType::f32 ? static_cast<const void*>(wf.data())
            : wd == re::DType::f16 ? static_cast<const void*>(wh.data())
                                   : static_cast<const void*>(wq.data());
      p.w_scale = wd == re::DType::i8 ? wscale.data() : nullptr;
      p.bias = bias.data();
      p.m = m, p.n = n, p.k = k, p.w_dtype = wd;
      std::vector<float> got = poisoned(size_t(m) * n), want = poisoned(size_t(m) * n);
      p.out = got.data();
      const re::Status a = re::linear_cpu(p);
      p.out = want.data();
      const re::Status b = re::linear_reference(p);
      check(shape(wd == re::DType::f32 ? "linear f32" : wd == re::DType::f16 ? "linear f16" : "linear i8", {m, n, k}),
            a, b, got, want, 2e-5);
    }
  }
}

void qlinear_cases() {
  struct Case {
    int m, n, k, groups;
    re::QWeight fmt;
  };
  std::uniform_int_distribution<int> i8(-127, 127), u8(0, 255);
  for (const Case& c : std::vector<Case>{{1, 37, 2048, 1, re::QWeight::i8}, {3, 7, 300, 1, re::QWeight::i8},
                                         {5, 33, 1024, 1, re::QWeight::i8}, {1, 37, 2048, 16, re::QWeight::i4},
                                         {2, 9, 256, 2, re::QWeight::i4}, {3, 5, 194, 1, re::QWeight::i4},
                                         {7, 19, 1024, 8, re::QWeight::i4}, {1, 3, 2, 1, re::QWeight::i4}}) {
    const bool four = c.fmt == re::QWeight::i4;
    const size_t wbytes = size_t(c.n) * (four ? c.k / 2 : c.k);
    std::vector<uint8_t> w(wbytes);
    for (uint8_t& b : w) b = four ? uint8_t(u8(g_rng)) : uint8_t(int8_t(i8(g_rng)));
    std::vector<float> x = randn(size_t(c.m) * c.k), scale(size_t(c.n) * c.groups), bias = randn(c.n);
    // i4: signed scales, as export's rule writes them
    for (float& s : scale) s = (0.001f + 0.01f * std::fabs(randn(1)[0])) * (four && u8(g_rng) % 2 ? -1.f : 1.f);
    re::QLinearParams p;
    p.x = x.data(), p.w = w.data(), p.w_scale = scale.data(), p.bias = bias.data();
    p.m = c.m, p.n = c.n, p.k = c.k, p.groups = c.groups, p.format = c.fmt;
    std::vector<float> got = poisoned(size_t(c.m) * c.n), want = poisoned(size_t(c.m) * c.n);
    p.out = got.data();
    const re::Status a = re::qlinear_cpu(p);
    p.out = want.data();
    const re::Status b = re::qlinear_reference(p);
    check(shape(four ? "qlinear i4" : "qlinear i8", {c.m, c.n, c.k, c.groups}), a, b, got, want, 2e-5);
  }
}

void qgemm_cases() {
  // Partial row blocks (M % 8) and panels (N % 16), K padded to 4, several weight groups (N 200, K 771).
  std::uniform_int_distribution<int> i8(-127, 127);
  for (auto [m, n, k] : std::vector<std::array<int, 3>>{
           {1, 1, 1}, {3, 17, 5}, {7, 15, 127}, {9, 33, 3}, {50, 100, 771}, {129, 48, 4}, {20, 200, 771}}) {
    std::vector<int8_t> w(size_t(n) * k);
    for (int8_t& v : w) v = int8_t(i8(g_rng));
    std::vector<float> x = randn(size_t(m) * k), scale(n), bias = randn(n);
    for (float& s : scale) s = 0.001f + 0.01f * std::fabs(randn(1)[0]);
    std::vector<uint8_t> packed(size_t(std::max<int64_t>(0, re::qgemm_packed_bytes(n, k))));
    const re::Status ps = re::qgemm_pack(w.data(), scale.data(), n, k, packed.data(), int64_t(packed.size()));
    re::QGemmParams p;
    p.x = x.data(), p.packed = packed.data(), p.packed_bytes = int64_t(packed.size());
    p.w = w.data(), p.w_scale = scale.data(), p.bias = bias.data();
    p.m = m, p.n = n, p.k = k;
    std::vector<float> got = poisoned(size_t(m) * n), want = poisoned(size_t(m) * n);
    p.out = got.data();
    const re::Status a = ps.ok() ? re::qgemm_cpu(p) : ps;
    p.out = want.data();
    const re::Status b = re::qgemm_reference(p);
    check(shape("qgemm", {m, n, k}), a, b, got, want, 2e-5);
  }
}

void elementwise_cases() {
  for (auto [t, d] : std::vector<std::array<int, 2>>{{1, 2048}, {3, 67}, {40, 1000}}) {
    std::vector<float> x = randn(size_t(t) * d);
    const std::vector<float> w = randn(d);
    re::RmsNormParams p;
    p.x = x.data(), p.weight = w.data(), p.rows = t, p.dim = d, p.eps = 1e-5f;
    std::vector<float> got = poisoned(x.size()), want = poisoned(x.size());
    p.out = got.data();
    const re::Status a = re::rms_norm_cpu(p);
    p.out = want.data();
    const re::Status b = re::rms_norm_reference(p);
    check(shape("rms_norm", {t, d}), a, b, got, want, 1e-5);
  }
  for (int64_t n : {1, 5632, 70001}) {
    const std::vector<float> g = randn(n, 3.f), u = randn(n);
    re::SwiGluParams p;
    p.gate = g.data(), p.up = u.data(), p.n = n;
    std::vector<float> got = poisoned(n), want = poisoned(n);
    p.out = got.data();
    const re::Status a = re::swiglu_cpu(p);
    p.out = want.data();
    const re::Status b = re::swiglu_reference(p);
    check(shape("swiglu", {n}), a, b, got, want, 1e-5);
  }
  for (auto [m, d] : std::vector<std::array<int, 2>>{{1, 768}, {3, 67}, {40, 1000}, {5, 1}}) {
    for (bool with_add : {false, true}) {  // out, then x (updated in place by the add)
      const std::vector<float> x0 = randn(size_t(m) * d, 3.f), add = randn(x0.size()), g = randn(d), b = randn(d);
      std::vector<float> xa = x0, xb = x0, got = poisoned(x0.size()), want = poisoned(x0.size());
      re::LayerNormParams p;
      p.add = with_add ? add.data() : nullptr, p.gamma = g.data(), p.beta = b.data(), p.m = m, p.d = d, p.eps = 1e-5f;
      p.x = xa.data(), p.out = got.data();
      const re::Status sa = re::layer_norm_cpu(p);
      p.x = xb.data(), p.out = want.data();
      const re::Status sb = re::layer_norm_reference(p);
      got.insert(got.end(), xa.begin(), xa.end());
      want.insert(want.end(), xb.begin(), xb.end());
      check(shape(with_add ? "layer_norm add" : "layer_norm", {m, d}), sa, sb, got, want, 1e-5);
    }
  }
  for (re::GeluKind kind : {re::GeluKind::erf, re::GeluKind::tanh, re::GeluKind::quick}) {
    for (int64_t n : {1, 37, 70001}) {  // in place
      std::vector<float> got = randn(n, 4.f), want = got;
      re::GeluParams p;
      p.m = 1, p.n = n, p.kind = kind;
      p.x = got.data();
      const re::Status sa = re::gelu_cpu(p);
      p.x = want.data();
      const re::Status sb = re::gelu_reference(p);
      check(shape((std::string("gelu ") + re::gelu_kind_name(kind)).c_str(), {n}), sa, sb, got, want, 1e-6);
    }
  }
  for (auto [t, h, hk, d] : std::vector<std::array<int, 4>>{{1, 32, 4, 64}, {19, 6, 2, 10}, {300, 4, 4, 128}}) {
    std::vector<float> q = randn(size_t(t) * h * d), k = randn(size_t(t) * hk * d);
    std::vector<int32_t> pos(t);
    for (int i = 0; i < t; ++i) pos[i] = 3 * i + 1;
    std::vector<float> q2 = q, k2 = k;
    re::RopeParams p;
    p.positions = pos.data(), p.tokens = t, p.num_heads = h, p.num_kv_heads = hk, p.head_dim = d;
    p.q = q.data(), p.k = k.data();
    const re::Status a = re::rope_cpu(p);
    p.q = q2.data(), p.k = k2.data();
    const re::Status b = re::rope_reference(p);
    q.insert(q.end(), k.begin(), k.end());
    q2.insert(q2.end(), k2.begin(), k2.end());
    check(shape("rope", {t, h, hk, d}), a, b, q, q2, 1e-4);
  }
}

void attention_cases() {
  struct Case {
    int batch, s_q, heads, kv_heads, dim, s_max;
    re::DType cache;
  };
  for (const Case& c : std::vector<Case>{{1, 1, 32, 4, 64, 77, re::DType::f32}, {3, 5, 6, 2, 24, 40, re::DType::f32},
                                         {2, 1, 8, 8, 128, 300, re::DType::i8}, {2, 9, 4, 1, 16, 31, re::DType::i8}}) {
    const size_t cache_elems = size_t(c.batch) * c.kv_heads * c.s_max * c.dim;
    std::vector<float> kf(cache_elems), vf(cache_elems), ks(size_t(c.batch) * c.kv_heads * c.s_max),
        vs(ks.size());
    std::vector<int8_t> ki(cache_elems), vi(cache_elems);
    // Two identical caches (fast / reference), filled by each side's own kv_append.
    std::vector<float> kf2 = kf, vf2 = vf, ks2 = ks, vs2 = vs;
    std::vector<int8_t> ki2 = ki, vi2 = vi;
    const bool i8 = c.cache == re::DType::i8;
    auto view = [&](bool ref) {
      re::KvCacheView v;
      v.k = i8 ? static_cast<void*>((ref ? ki2 : ki).data()) : static_cast<void*>((ref ? kf2 : kf).data());
      v.v = i8 ? static_cast<void*>((ref ? vi2 : vi).data()) : static_cast<void*>((ref ? vf2 : vf).data());
      v.k_scale = i8 ? (ref ? ks2 : ks).data() : nullptr;
      v.v_scale = i8 ? (ref ? vs2 : vs).data() : nullptr;
      v.dtype = c.cache, v.num_kv_heads = c.kv_heads, v.head_dim = c.dim, v.slots = c.batch, v.s_max = c.s_max;
      return v;
    };
    std::vector<int32_t> past(c.batch), q_lens(c.batch), kv_lens(c.batch);
    for (int b = 0; b < c.batch; ++b) {
      past[b] = (7 * b + 3) % (c.s_max - c.s_q);
      q_lens[b] = std::max(1, c.s_q - b % 2);
      kv_lens[b] = past[b] + q_lens[b];
    }
    // Earlier tokens, then the new ones, appended by both sides.
    const std::vector<float> k_old = randn(size_t(c.batch) * c.s_max * c.kv_heads * c.dim),
                             v_old = randn(k_old.size());
    const std::vector<float> k_new = randn(size_t(c.batch) * c.s_q * c.kv_heads * c.dim), v_new = randn(k_new.size());
    std::vector<int32_t> zeros(c.batch, 0);
    re::Status sa, sb;
    for (bool ref : {false, true}) {
      re::KvAppendParams ap;
      ap.k_new = k_old.data(), ap.v_new = v_old.data(), ap.start_pos = zeros.data(), ap.new_lens = past.data();
      ap.batch = c.batch, ap.s_new = c.s_max, ap.cache = view(ref);
      re::Status s1 = ref ? re::kv_append_reference(ap) : re::kv_append_cpu(ap);
      ap.k_new = k_new.data(), ap.v_new = v_new.data(), ap.start_pos = past.data(), ap.new_lens = q_lens.data();
      ap.s_new = c.s_q;
      re::Status s2 = ref ? re::kv_append_reference(ap) : re::kv_append_cpu(ap);
      (ref ? sb : sa) = s1.ok() ? s2 : s1;
    }
    check(shape(i8 ? "kv_append i8" : "kv_append f32", {c.batch, c.s_q, c.kv_heads, c.dim}), sa, sb,
          i8 ? std::vector<float>(ks.begin(), ks.end()) : kf, i8 ? std::vector<float>(ks2.begin(), ks2.end()) : kf2,
          1e-6);
    const std::vector<float> q = randn(size_t(c.batch) * c.s_q * c.heads * c.dim);
    for (bool causal : {true, false}) {
      std::vector<float> got = poisoned(q.size()), want = poisoned(q.size());
      for (bool ref : {false, true}) {
        re::AttentionParams p;
        p.q = q.data(), p.out = (ref ? want : got).data(), p.q_lens = q_lens.data(), p.kv_lens = kv_lens.data();
        p.batch = c.batch, p.s_q = c.s_q, p.num_heads = c.heads, p.cache = view(ref), p.causal = causal;
        (ref ? sb : sa) = ref ? re::attention_reference(p) : re::attention_cpu(p);
      }
      const std::string name = std::string(i8 ? "attention i8" : "attention f32") + (causal ? "" : " bidirectional");
      check(shape(name.c_str(), {c.batch, c.s_q, c.heads, c.kv_heads, c.dim}), sa, sb, got, want, 2e-5);
    }
  }
}

}  // namespace

int main() {
  for (re::CpuKernels ks :
       {re::CpuKernels::portable, re::CpuKernels::avx2, re::CpuKernels::avx512vnni, re::CpuKernels::amx}) {
    if (!re::cpu_kernels_supported(ks)) continue;
    if (!re::set_cpu_kernels(ks).ok()) return 2;
    linear_cases();
    qlinear_cases();
    qgemm_cases();
    elementwise_cases();
    attention_cases();
  }
  std::printf("%d cases, %d failed\n", g_cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}
