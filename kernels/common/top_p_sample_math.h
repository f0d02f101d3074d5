// Host helpers shared by the reference and the fast CPU path of top_p_sample (rsvlm_edge/top_p_sample.h):
// numpy's argmax and the softmax of one row at a temperature, in fp64.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace rsvlm_edge {
namespace sampling {

// numpy.argmax of one row: the first NaN if there is one, else the first maximum.
inline int64_t argmax_row(const float* x, int v) {
  int64_t best = 0;
  for (int i = 0; i < v; ++i) {
    if (std::isnan(x[i])) return i;
    if (x[i] > x[best]) best = i;
  }
  return best;
}

// p[i] = softmax(x / temperature)[i] in fp64 (x / T, minus the max, exp, over the sum, as numpy does it);
// false when a value is not finite (logits / T overflowed, a NaN or +inf logit, every logit -inf): the
// caller then takes argmax_row.
inline bool softmax_row(const float* x, int v, double temperature, double* p) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < v; ++i) {
    const double z = double(x[i]) / temperature;
    if (std::isnan(z)) return false;
    mx = z > mx ? z : mx;
  }
  if (!std::isfinite(mx)) return false;
  double sum = 0.0;
  for (int i = 0; i < v; ++i) {
    p[i] = std::exp(double(x[i]) / temperature - mx);
    sum += p[i];
  }
  if (!(sum > 0.0) || !std::isfinite(sum)) return false;
  for (int i = 0; i < v; ++i) p[i] /= sum;
  return true;
}

// Position of the draw within a sorted prefix: keep found from the prefix sums `cum` (cum[j] = p of the
// first j + 1 sorted tokens), then the first j < keep with cum[j] / cum[keep - 1] > u. `have`: how many
// prefix sums are known; returns -1 when they do not settle it yet (more of the order is needed).
inline int64_t draw_in_prefix(const double* cum, int64_t have, int64_t v, double top_p, double total_all,
                              double u) {
  int64_t keep = -1;
  if (top_p >= 1.0) {
    keep = v;
  } else {
    for (int64_t j = 0; j < have; ++j)
      if (cum[j] >= top_p) {
        keep = j + 1;
        break;
      }
    if (keep < 0) return have == v ? draw_in_prefix(cum, have, v, 1.0, cum[v - 1], u) : -1;
  }
  const double total = keep == v && have == v ? cum[v - 1] : keep == v ? total_all : cum[keep - 1];
  const int64_t limit = keep < have ? keep : have;
  for (int64_t j = 0; j < limit; ++j)
    if (cum[j] / total > u) return j;
  return keep <= have ? keep - 1 : -1;
}

}  // namespace sampling
}  // namespace rsvlm_edge
