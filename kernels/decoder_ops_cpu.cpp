// CPU (OpenMP, fp32) decoder ops: the runtime's CPU path and the reference for decoder_ops.cu.
// linear_cpu lives in linear_cpu.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_math.h"
#include "decoder_ops.h"

namespace rsvlm_edge {
namespace {

Status check_act(DType t, bool cuda) {
  if (cuda && t != DType::f16 && t != DType::bf16)
    return Status::Invalid(std::string("CUDA decoder ops take float16 or bfloat16 activations, got ") + dtype_name(t));
  if (!cuda && t != DType::f32)
    return Status::Invalid(std::string("CPU decoder ops take float32 activations, got ") + dtype_name(t));
  return Status::Ok();
}

}  // namespace

Status rms_norm_validate(const RmsNormParams& p, bool cuda) {
  if (p.x == nullptr || p.weight == nullptr || p.out == nullptr) return Status::Invalid("x, weight and out must be given");
  if (p.rows < 0 || p.dim <= 0) return Status::Invalid("rms_norm needs T >= 0 and D >= 1");
  if (!(p.eps >= 0.f)) return Status::Invalid("rms_norm eps must be >= 0");
  return check_act(p.dtype, cuda);
}

Status rope_validate(const RopeParams& p, bool cuda) {
  if (p.q == nullptr || p.positions == nullptr) return Status::Invalid("q and positions must be given");
  if (p.tokens < 0 || p.num_heads <= 0 || (p.k != nullptr && p.num_kv_heads <= 0))
    return Status::Invalid("rope needs T >= 0 and at least one head");
  if (p.head_dim <= 0 || p.head_dim % 2 != 0)
    return Status::Invalid("rope needs an even head_dim, got " + std::to_string(p.head_dim));
  if (!(p.theta > 0.f)) return Status::Invalid("rope theta must be > 0");
  return check_act(p.dtype, cuda);
}

Status swiglu_validate(const SwiGluParams& p, bool cuda) {
  if (p.gate == nullptr || p.up == nullptr || p.out == nullptr) return Status::Invalid("gate, up and out must be given");
  if (p.n < 0) return Status::Invalid("swiglu needs n >= 0");
  return check_act(p.dtype, cuda);
}

Status linear_validate(const LinearParams& p, bool cuda) {
  if (p.x == nullptr || p.w == nullptr || p.out == nullptr) return Status::Invalid("x, w and out must be given");
  if (p.m < 0 || p.n <= 0 || p.k <= 0) return Status::Invalid("linear needs M >= 0, N >= 1, K >= 1");
  if (cuda && p.w_dtype != DType::i8 && p.w_dtype != p.act_dtype)
    return Status::Invalid(std::string("CUDA linear takes int8 weights or weights in the activation dtype ") +
                           dtype_name(p.act_dtype) + ", got " + dtype_name(p.w_dtype));
  if (!cuda && p.w_dtype != DType::f32 && p.w_dtype != DType::f16 && p.w_dtype != DType::i8)
    return Status::Invalid(std::string("CPU linear takes float32, float16 or int8 weights, got ") + dtype_name(p.w_dtype));
  if (p.w_dtype == DType::i8 && p.w_scale == nullptr)
    return Status::Invalid("int8 weights need w_scale (N) float32");
  return check_act(p.act_dtype, cuda);
}

Status rms_norm_cpu(const RmsNormParams& p) {
  Status st = rms_norm_validate(p, false);
  if (!st.ok()) return st;
  const float* x = static_cast<const float*>(p.x);
  const float* w = static_cast<const float*>(p.weight);
  float* out = static_cast<float*>(p.out);
  const int d = p.dim;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* xr = x + r * d;
    const float inv = 1.f / std::sqrt(cpu::dot(xr, xr, d) / float(d) + p.eps);
    float* o = out + r * d;
    for (int i = 0; i < d; ++i) o[i] = xr[i] * inv * w[i];
  }
  return Status::Ok();
}

Status rope_cpu(const RopeParams& p) {
  Status st = rope_validate(p, false);
  if (!st.ok()) return st;
  const int d = p.head_dim, half = d / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) inv_freq[i] = 1.f / std::pow(p.theta, float(2 * i) / float(d));
  float* q = static_cast<float*>(p.q);
  float* k = static_cast<float*>(p.k);
#pragma omp parallel
  {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.tokens; ++t) {
      const float pos = float(p.positions[t]);
      for (int i = 0; i < half; ++i) {
        const float a = pos * inv_freq[i];
        cs[i] = std::cos(a);
        sn[i] = std::sin(a);
      }
      auto rotate = [&](float* base, int heads) {
        for (int h = 0; h < heads; ++h) {
          float* x = base + (t * heads + h) * d;
          for (int i = 0; i < half; ++i) {
            const float x1 = x[i], x2 = x[i + half];
            x[i] = x1 * cs[i] - x2 * sn[i];
            x[i + half] = x2 * cs[i] + x1 * sn[i];
          }
        }
      };
      rotate(q, p.num_heads);
      if (k) rotate(k, p.num_kv_heads);
    }
  }
  return Status::Ok();
}

Status swiglu_cpu(const SwiGluParams& p) {
  Status st = swiglu_validate(p, false);
  if (!st.ok()) return st;
  const float* g = static_cast<const float*>(p.gate);
  const float* u = static_cast<const float*>(p.up);
  float* out = static_cast<float*>(p.out);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n; ++i) out[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  return Status::Ok();
}

Status quantize_weight_int8_cpu(const float* w, int n, int k, int8_t* q, float* scale) {
  if (w == nullptr || q == nullptr || scale == nullptr || n <= 0 || k <= 0)
    return Status::Invalid("quantize_weight_int8 needs a non-empty (N, K) weight");
#pragma omp parallel for schedule(static)
  for (int r = 0; r < n; ++r) {
    const float* row = w + int64_t(r) * k;
    float amax = 0.f;
    for (int i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int i = 0; i < k; ++i)
      q[int64_t(r) * k + i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(row[i] * inv))));
    scale[r] = amax / 127.f;
  }
  return Status::Ok();
}

#ifndef RSVLM_WITH_CUDA
namespace {
Status no_cuda(const char* op) {
  return Status::NotCompiled(std::string(op) + ": this build of rsvlm_edge has no CUDA kernels (built without "
                             "CUDA); rebuild with nvcc available (RSVLM_CUDA=ON) or pass CPU arrays");
}
}  // namespace
Status rms_norm_cuda(const RmsNormParams&, void*) { return no_cuda("rms_norm"); }
Status rope_cuda(const RopeParams&, void*) { return no_cuda("rope"); }
Status swiglu_cuda(const SwiGluParams&, void*) { return no_cuda("swiglu"); }
Status linear_cuda(const LinearParams&, void*) { return no_cuda("linear"); }
#endif

}  // namespace rsvlm_edge
