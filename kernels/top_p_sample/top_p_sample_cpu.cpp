// top_p_sample fast CPU path (see rsvlm_edge/top_p_sample.h): the thread pool over rows; per row the fp64
// softmax, then only as much of the order as the draw needs: partial sorts of the first 64, 256, 1024, ...
// tokens (probability descending, ties by index: the stable order) until their prefix sums settle the
// nucleus and the draw, the whole rest sorted at once past V / 8. A peaked distribution (the usual case)
// sorts a few hundred of V tokens, not all of them.
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/top_p_sample.h"
#include "common/top_p_sample_math.h"

namespace rsvlm_edge {

Status top_p_sample_cpu(const TopPSampleParams& p) {
  RSVLM_RETURN_IF_ERROR(top_p_sample_validate(p));
  if (p.batch == 0) return Status::Ok();
  const int threads = std::max(1, std::min(host::max_threads(), p.batch));
  // Per worker: prob (V) and cum (V) doubles, order (V) int64, allocated before the parallel loop.
  std::vector<double> sums;
  std::vector<int64_t> orders;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(sums, 2 * int64_t(p.vocab), threads, "top_p_sample"));
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(orders, int64_t(p.vocab), threads, "top_p_sample"));
  host::parallel_for(p.batch, 1, threads, [&](int64_t b, int worker) {
    double* prob = sums.data() + int64_t(worker) * 2 * p.vocab;
    double* cum = prob + p.vocab;
    int64_t* order = orders.data() + int64_t(worker) * p.vocab;
    const float* logits = p.logits + b * p.vocab;
    if (!(p.temperature > 0.f) || !sampling::softmax_row(logits, p.vocab, double(p.temperature), prob)) {
      p.out[b] = sampling::argmax_row(logits, p.vocab);
      return;
    }
    double total = 0.0;
    for (int i = 0; i < p.vocab; ++i) total += prob[i];
    std::iota(order, order + p.vocab, int64_t(0));
    const auto before = [&](int64_t a, int64_t c) { return prob[a] > prob[c] || (prob[a] == prob[c] && a < c); };
    int64_t sorted = 0;
    double run = 0.0;
    for (int64_t want = std::min<int64_t>(64, p.vocab);; want = std::min<int64_t>(want * 4, p.vocab)) {
      // A heap-based partial sort pays off for a small prefix; past an eighth of the tokens the rest is sorted
      // whole (a flat distribution's nucleus can hold most of them).
      if (want > p.vocab / 8) want = p.vocab;
      if (want == p.vocab)
        std::sort(order + sorted, order + p.vocab, before);
      else
        std::partial_sort(order + sorted, order + want, order + p.vocab, before);
      for (int64_t j = sorted; j < want; ++j) cum[j] = run += prob[order[j]];
      sorted = want;
      const int64_t j = sampling::draw_in_prefix(cum, sorted, p.vocab, double(p.top_p), total, double(p.uniforms[b]));
      if (j >= 0) {
        p.out[b] = order[j];
        return;
      }
    }
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
