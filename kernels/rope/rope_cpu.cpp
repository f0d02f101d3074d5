// rope fast CPU path: the thread pool over tokens, fp32; cos/sin computed once per (token, frequency) and
// shared by every head (see rsvlm_edge/rope.h).
#include <cmath>
#include <vector>

#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/rope.h"

namespace rsvlm_edge {

Status rope_cpu(const RopeParams& p) {
  Status st = rope_validate(p, /*cuda=*/false);
  if (!st.ok() || p.tokens == 0) return st;
  const int d = p.head_dim, half = d / 2;
  const int threads = host::threads_for(p.tokens * int64_t(p.num_heads + p.num_kv_heads) * d);
  // inv_freq (D/2), then per thread cos (D/2) and sin (D/2): allocated before the parallel region.
  std::vector<float> buf;
  st = host::alloc_scratch(buf, int64_t(half) * (1 + 2 * int64_t(threads)), 1, "rope");
  if (!st.ok()) return st;
  float* inv_freq = buf.data();
  for (int i = 0; i < half; ++i) inv_freq[i] = 1.f / std::pow(p.theta, float(2 * i) / float(d));
  float* q = static_cast<float*>(p.q);  // (T, H, D)
  float* k = static_cast<float*>(p.k);  // (T, H_kv, D) or nullptr
  host::parallel_chunks(p.tokens, 8, threads, [&](int64_t t0, int64_t t1, int worker) {
    float* cs = buf.data() + int64_t(half) * (1 + 2 * int64_t(worker));
    float* sn = cs + half;
    for (int64_t t = t0; t < t1; ++t) {
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
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
