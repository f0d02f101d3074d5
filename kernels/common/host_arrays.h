// The float32 host arrays of an op's Params, as the op's two host launchers (the fast CPU path and
// the naive reference) read them: one view per op, shared by <op>_cpu.cpp and <op>_ref.cpp. Build it
// after <op>_validate(p, /*cuda=*/false) has passed (which checked the dtype is float32).
#pragma once

#include "rsvlm_edge/gelu.h"
#include "rsvlm_edge/layer_norm.h"
#include "rsvlm_edge/rms_norm.h"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {
namespace host {

struct RmsNormArrays {
  float* x;             // (T, D); updated in place when add is given
  const float* add;     // (T, D) or nullptr
  const float* weight;  // (D)
  float* out;           // (T, D), may alias x (without add)

  explicit RmsNormArrays(const RmsNormParams& p)
      : x(static_cast<float*>(p.x)),
        add(static_cast<const float*>(p.add)),
        weight(static_cast<const float*>(p.weight)),
        out(static_cast<float*>(p.out)) {}
};

struct LayerNormArrays {
  float* x;            // (M, D); updated in place when add is given
  const float* add;    // (M, D) or nullptr
  const float* gamma;  // (D)
  const float* beta;   // (D) or nullptr
  float* out;          // (M, D)

  explicit LayerNormArrays(const LayerNormParams& p)
      : x(static_cast<float*>(p.x)),
        add(static_cast<const float*>(p.add)),
        gamma(static_cast<const float*>(p.gamma)),
        beta(static_cast<const float*>(p.beta)),
        out(static_cast<float*>(p.out)) {}
};

struct GeluArrays {
  float* x;  // (M * N), in place

  explicit GeluArrays(const GeluParams& p) : x(static_cast<float*>(p.x)) {}
};

struct SwiGluArrays {
  const float* gate;  // (n)
  const float* up;    // (n)
  float* out;         // (n), may alias gate or up

  explicit SwiGluArrays(const SwiGluParams& p)
      : gate(static_cast<const float*>(p.gate)), up(static_cast<const float*>(p.up)), out(static_cast<float*>(p.out)) {}
};

}  // namespace host
}  // namespace rsvlm_edge
