// rope naive reference: plain loops (see rsvlm_edge/rope.h). The frequency and the angle are fp32
// products exactly as in HF transformers (they are part of the model's definition); cos, sin and the
// rotation are computed in fp64.
#include <cmath>

#include "rsvlm_edge/rope.h"

namespace rsvlm_edge {

namespace {

void rotate_reference(float* x,  // (T, heads, D), in place
                      const int32_t* positions, int64_t tokens, int heads, int d, float theta) {
  const int half = d / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * d;
      for (int i = 0; i < half; ++i) {
        const float inv_freq = 1.f / std::pow(theta, float(2 * i) / float(d));
        const float a = float(positions[t]) * inv_freq;
        const double c = std::cos(double(a)), s = std::sin(double(a));
        const double x1 = v[i], x2 = v[i + half];
        v[i] = float(x1 * c - x2 * s);
        v[i + half] = float(x2 * c + x1 * s);
      }
    }
  }
}

}  // namespace

Status rope_reference(const RopeParams& p) {
  Status st = rope_validate(p, /*cuda=*/false);
  if (!st.ok()) return st;
  rotate_reference(static_cast<float*>(p.q), p.positions, p.tokens, p.num_heads, p.head_dim, p.theta);
  if (p.k) rotate_reference(static_cast<float*>(p.k), p.positions, p.tokens, p.num_kv_heads, p.head_dim, p.theta);
  return Status::Ok();
}

}  // namespace rsvlm_edge
