// qlinear: argument checks shared by every implementation, the activation quantisation every
// implementation uses (its one definition), and the CUDA stub of CPU-only builds.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/qlinear.h"

namespace rsvlm_edge {

Status qlinear_validate(const QLinearParams& p, bool cuda) {
  const std::string dims = "M=" + std::to_string(p.m) + ", N=" + std::to_string(p.n) + ", K=" + std::to_string(p.k);
  if (p.m < 0 || p.n < 0 || p.k <= 0) return Status::Invalid("qlinear: needs M >= 0, N >= 0 and K >= 1, got " + dims);
  if (p.format != QWeight::i8 && p.format != QWeight::i4)
    return Status::Invalid("qlinear: weight format must be i8 or i4, got " + std::to_string(int(p.format)));
  if (p.format == QWeight::i4 && p.k % 2 != 0)
    return Status::Invalid("qlinear: int4 weights pack two inputs per byte and need an even K, got K=" +
                           std::to_string(p.k));
  if (p.groups < 1 || p.k % p.groups != 0)
    return Status::Invalid("qlinear: K=" + std::to_string(p.k) + " must split into G=" + std::to_string(p.groups) +
                           " equal weight-scale groups");
  if (p.groups > 1 && (p.k / p.groups) % kQActBlock != 0)
    return Status::Invalid("qlinear: a weight-scale group of " + std::to_string(p.k / p.groups) +
                           " inputs is neither the whole row nor a multiple of " + std::to_string(kQActBlock));
  const bool work = p.m > 0 && p.n > 0;
  if (work && (p.x == nullptr || p.w == nullptr || p.w_scale == nullptr || p.out == nullptr))
    return Status::Invalid("qlinear: x, w, w_scale and out must be given");
  return host::check_activation_dtype("qlinear", p.act_dtype, cuda);
}

float quantize_activation_block(const float* x, int len, int8_t* xq) {
  float amax = 0.f;
  bool finite = true;
  for (int i = 0; i < len; ++i) {
    const float v = x[i];
    finite = finite && std::isfinite(v);
    amax = std::max(amax, std::fabs(v));
  }
  if (!finite) {  // NaN out, as the float computation would give; no float -> int conversion of a NaN
    std::fill(xq, xq + len, int8_t(0));
    return std::numeric_limits<float>::quiet_NaN();
  }
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  for (int i = 0; i < len; ++i)
    xq[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(x[i] * inv))));
  return amax / 127.f;
}

void quantize_activations(const float* x, int k, int8_t* xq, float* sx) {
  for (int b = 0, k0 = 0; k0 < k; ++b, k0 += kQActBlock)
    sx[b] = quantize_activation_block(x + k0, std::min(kQActBlock, k - k0), xq + k0);
}

RSVLM_NO_CUDA_LAUNCHER(qlinear, QLinearParams)

}  // namespace rsvlm_edge
