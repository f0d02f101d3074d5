// The rotation of rope.h on the device, shared by the rope kernel and kv_append's fused rotation so
// that both compute it with the same arithmetic: pair i of a head of dimension D at position `pos`,
// the frequency and the angle rounded to fp32 as HF transformers computes them.
#pragma once

#include <cstdint>

namespace rsvlm_edge {
namespace cuda {

// cos and sin of pos / theta^(2i / D).
__device__ __forceinline__ void rope_cos_sin(int i, int head_dim, float theta, int32_t pos, float* c, float* s) {
  const float inv_freq = 1.f / powf(theta, float(2 * i) / float(head_dim));
  const float a = float(pos) * inv_freq;
  *c = cosf(a);
  *s = sinf(a);
}

// The rotated pair (x[i], x[i + D/2]) = (x1, x2): first x1 c - x2 s, second x2 c + x1 s.
__device__ __forceinline__ float rope_first(float x1, float x2, float c, float s) { return x1 * c - x2 * s; }
__device__ __forceinline__ float rope_second(float x1, float x2, float c, float s) { return x2 * c + x1 * s; }

}  // namespace cuda
}  // namespace rsvlm_edge
