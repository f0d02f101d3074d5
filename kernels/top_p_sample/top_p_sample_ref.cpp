// top_p_sample naive reference (see rsvlm_edge/top_p_sample.h): per row, the fp64 softmax, a stable sort of
// every token by probability, the prefix sums, then the nucleus and the draw. Single thread.
#include <algorithm>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include "common/host_checks.h"
#include "rsvlm_edge/top_p_sample.h"
#include "common/top_p_sample_math.h"

namespace rsvlm_edge {

Status top_p_sample_reference(const TopPSampleParams& p) {
  RSVLM_RETURN_IF_ERROR(top_p_sample_validate(p));
  std::vector<double> prob, cum;
  std::vector<int64_t> order;
  try {
    prob.resize(size_t(p.vocab));
    cum.resize(size_t(p.vocab));
    order.resize(size_t(p.vocab));
  } catch (const std::bad_alloc&) {
    return Status::Invalid("top_p_sample_reference: out of memory for " + std::to_string(p.vocab) + " tokens");
  }
  for (int b = 0; b < p.batch; ++b) {
    const float* logits = p.logits + int64_t(b) * p.vocab;
    if (!(p.temperature > 0.f) || !sampling::softmax_row(logits, p.vocab, double(p.temperature), prob.data())) {
      p.out[b] = sampling::argmax_row(logits, p.vocab);
      continue;
    }
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return prob[a] > prob[c]; });
    double run = 0.0;
    for (int j = 0; j < p.vocab; ++j) cum[j] = run += prob[order[j]];
    const int64_t j = sampling::draw_in_prefix(cum.data(), p.vocab, p.vocab, double(p.top_p), run, double(p.uniforms[b]));
    p.out[b] = order[j];
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
