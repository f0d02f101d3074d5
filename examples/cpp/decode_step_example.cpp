// Example: greedy decoding with a LLaMA-family decoder from C++ alone (rsvlm_edge::CpuDecodeStep), as flight
// software would embed it, checked against the library's naive reference kernels.
//
// Builds a small random decoder (V=61, C=64, I=128, 2 layers, 4 query heads over 2 KV heads of D=16) with w8
// weights (rsvlm_edge::quantize_weight_int8_cpu: int8 rows, one fp32 scale each) and an fp32 KV cache, then
// for a batch of 2 sequences feeds a 6-token prompt one position at a time and then 8 greedy tokens back
// (9 generated per sequence), every step one CpuDecodeStep::run. The same steps are recomputed with the *_reference launchers (naive
// loops, fp64 accumulation) on a cache of their own; the example exits non-zero when a step's logits differ
// by more than 1 % of their range, or a greedy token differs. Also shows one refusal: a position past the
// KV cache is StatusCode::kCapacityExceeded and writes nothing.
#include "rsvlm_edge/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

namespace {

using rsvlm_edge::Status;

constexpr int V = 61, C = 64, I = 128, L = 2, H = 4, HKV = 2, D = 16, S_MAX = 32, B = 2;
constexpr int QD = H * D, KVD = HKV * D;

bool failed(const char* what, const Status& s) {
  if (s.ok()) return false;
  std::fprintf(stderr, "%s failed: %s\n", what, s.message.c_str());
  return true;
}

struct W8 {  // one linear layer: int8 (N, K) + per-row scales (N, 1)
  std::vector<int8_t> q;
  std::vector<float> scale;
  int n = 0, k = 0;
};

struct Layer {
  std::vector<float> input_norm, post_norm;
  W8 qkv, o, gate_up, down;  // q/k/v rows in one matrix, gate/up rows in one matrix
};

struct Model {
  std::vector<float> embed, final_norm;  // (V, C), (C)
  std::vector<Layer> layers;
  W8 lm_head;
};

W8 random_w8(int n, int k, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f / std::sqrt(float(k)));
  std::vector<float> w(size_t(n) * k);
  for (float& x : w) x = normal(rng);
  W8 out{std::vector<int8_t>(w.size()), std::vector<float>(size_t(n)), n, k};
  if (failed("quantize_weight_int8_cpu", rsvlm_edge::quantize_weight_int8_cpu(w.data(), n, k, out.q.data(), out.scale.data())))
    std::exit(1);
  return out;
}

Model random_model() {
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto norm_weight = [&] {
    std::vector<float> v(C);
    for (float& x : v) x = 1.f + 0.1f * normal(rng);
    return v;
  };
  Model m;
  m.embed.resize(size_t(V) * C);
  for (float& x : m.embed) x = normal(rng);
  m.final_norm = norm_weight();
  for (int l = 0; l < L; ++l)
    m.layers.push_back(Layer{norm_weight(), norm_weight(), random_w8(QD + 2 * KVD, C, rng), random_w8(C, QD, rng),
                             random_w8(2 * I, C, rng), random_w8(C, I, rng)});
  m.lm_head = random_w8(V, C, rng);
  return m;
}

rsvlm_edge::CpuLinearWeights view(const W8& w) {
  rsvlm_edge::CpuLinearWeights v;
  v.w = w.q.data();
  v.dtype = rsvlm_edge::DType::i8;
  v.scale = w.scale.data();
  v.groups = 1;
  v.n = w.n;
  v.k = w.k;
  return v;
}

struct Cache {  // per layer (B, H_kv, S_max, D) for K and V
  std::vector<float> k = std::vector<float>(size_t(L) * B * HKV * S_MAX * D);
  std::vector<float> v = std::vector<float>(size_t(L) * B * HKV * S_MAX * D);
  rsvlm_edge::KvCacheView layer(int l) {
    rsvlm_edge::KvCacheView c;
    const size_t off = size_t(l) * B * HKV * S_MAX * D;
    c.k = k.data() + off;
    c.v = v.data() + off;
    c.num_kv_heads = HKV;
    c.head_dim = D;
    c.slots = B;
    c.s_max = S_MAX;
    return c;
  }
};

// y (B, N) = x (B, K) W^T on the naive reference.
bool ref_linear(const W8& w, const float* x, float* y) {
  rsvlm_edge::QLinearParams p;
  p.x = x;
  p.w = w.q.data();
  p.w_scale = w.scale.data();
  p.out = y;
  p.m = B;
  p.n = w.n;
  p.k = w.k;
  return !failed("qlinear_reference", rsvlm_edge::qlinear_reference(p));
}

bool ref_norm(const float* x, const float* weight, float* out) {
  rsvlm_edge::RmsNormParams p;
  p.x = const_cast<float*>(x);
  p.weight = weight;
  p.out = out;
  p.rows = B;
  p.dim = C;
  p.eps = 1e-5f;
  return !failed("rms_norm_reference", rsvlm_edge::rms_norm_reference(p));
}

// One decode step of the whole batch on the reference kernels, unfused: what CpuDecodeStep::run computes.
bool reference_step(const Model& m, Cache& cache, std::vector<float> x, const int32_t* pos, float* logits) {
  std::vector<float> h(B * C), qkv(B * (QD + 2 * KVD)), q(B * QD), k(B * KVD), v(B * KVD), attn(B * QD), proj(B * C),
      gu(B * 2 * I), gate(B * I), up(B * I), act(B * I);
  int32_t seq_lens[B];
  for (int b = 0; b < B; ++b) seq_lens[b] = pos[b] + 1;
  for (int l = 0; l < L; ++l) {
    const Layer& ly = m.layers[l];
    if (!ref_norm(x.data(), ly.input_norm.data(), h.data()) || !ref_linear(ly.qkv, h.data(), qkv.data())) return false;
    for (int b = 0; b < B; ++b) {
      std::copy_n(&qkv[b * (QD + 2 * KVD)], QD, &q[b * QD]);
      std::copy_n(&qkv[b * (QD + 2 * KVD) + QD], KVD, &k[b * KVD]);
      std::copy_n(&qkv[b * (QD + 2 * KVD) + QD + KVD], KVD, &v[b * KVD]);
    }
    rsvlm_edge::RopeParams rp;
    rp.q = q.data();
    rp.k = k.data();
    rp.positions = pos;
    rp.tokens = B;
    rp.num_heads = H;
    rp.num_kv_heads = HKV;
    rp.head_dim = D;
    rp.theta = 10000.f;
    if (failed("rope_reference", rsvlm_edge::rope_reference(rp))) return false;
    rsvlm_edge::KvAppendParams ap;
    ap.k_new = k.data();
    ap.v_new = v.data();
    ap.start_pos = pos;
    ap.cache = cache.layer(l);
    ap.batch = B;
    ap.s_new = 1;
    if (failed("kv_append_reference", rsvlm_edge::kv_append_reference(ap))) return false;
    rsvlm_edge::AttentionParams at;
    at.q = q.data();
    at.out = attn.data();
    at.kv_lens = seq_lens;
    at.batch = B;
    at.s_q = 1;
    at.num_heads = H;
    at.cache = cache.layer(l);
    if (failed("attention_reference", rsvlm_edge::attention_reference(at))) return false;
    if (!ref_linear(ly.o, attn.data(), proj.data())) return false;
    for (int i = 0; i < B * C; ++i) x[i] += proj[i];
    if (!ref_norm(x.data(), ly.post_norm.data(), h.data()) || !ref_linear(ly.gate_up, h.data(), gu.data())) return false;
    for (int b = 0; b < B; ++b) {
      std::copy_n(&gu[b * 2 * I], I, &gate[b * I]);
      std::copy_n(&gu[b * 2 * I + I], I, &up[b * I]);
    }
    rsvlm_edge::SwiGluParams sp;
    sp.gate = gate.data();
    sp.up = up.data();
    sp.out = act.data();
    sp.n = B * I;
    if (failed("swiglu_reference", rsvlm_edge::swiglu_reference(sp)) || !ref_linear(ly.down, act.data(), proj.data()))
      return false;
    for (int i = 0; i < B * C; ++i) x[i] += proj[i];
  }
  return ref_norm(x.data(), m.final_norm.data(), h.data()) && ref_linear(m.lm_head, h.data(), logits);
}

int argmax(const float* row) { return int(std::max_element(row, row + V) - row); }

}  // namespace

int main() {
  std::printf("rsvlm_edge %s\n", rsvlm_edge::version());
  const Model m = random_model();
  Cache cache, ref_cache;
  std::vector<rsvlm_edge::CpuDecoderLayer> layers(L);
  for (int l = 0; l < L; ++l) {
    layers[l].input_norm = m.layers[l].input_norm.data();
    layers[l].post_norm = m.layers[l].post_norm.data();
    layers[l].qkv = view(m.layers[l].qkv);
    layers[l].o = view(m.layers[l].o);
    layers[l].gate_up = view(m.layers[l].gate_up);
    layers[l].down = view(m.layers[l].down);
    layers[l].cache = cache.layer(l);
  }
  rsvlm_edge::DecoderShape shape{V, C, I, L, H, HKV, D, 1e-5f, 10000.f};
  std::unique_ptr<rsvlm_edge::CpuDecodeStep> step;
  if (failed("CpuDecodeStep::create",
             rsvlm_edge::CpuDecodeStep::create(shape, B, layers, m.final_norm.data(), view(m.lm_head), false, &step)))
    return 1;

  // The C++ step has no prefill of its own: a prompt goes in one position per step (the Python decoder prefills).
  const int prompt[B][6] = {{3, 17, 5, 42, 8, 11}, {60, 2, 33, 33, 7, 19}};
  std::vector<int> generated[B];
  int tokens[B] = {prompt[0][0], prompt[1][0]};
  std::vector<float> x(B * C), logits(B * V), ref_logits(B * V);
  for (int t = 0; t < 6 + 8; ++t) {
    int32_t pos[B] = {t, t};
    for (int b = 0; b < B; ++b) std::copy_n(&m.embed[size_t(tokens[b]) * C], C, &x[b * C]);
    const std::vector<float> embedded = x;
    if (failed("CpuDecodeStep::run", step->run(x.data(), pos, B, logits.data()))) return 1;
    if (!reference_step(m, ref_cache, embedded, pos, ref_logits.data())) return 1;
    float range = 0.f, diff = 0.f;
    for (int i = 0; i < B * V; ++i) {
      range = std::max(range, std::fabs(ref_logits[i]));
      diff = std::max(diff, std::fabs(logits[i] - ref_logits[i]));
    }
    if (!(diff <= 0.01f * range)) {
      std::fprintf(stderr, "step %d: logits differ from the reference by %g (range %g)\n", t, diff, range);
      return 1;
    }
    for (int b = 0; b < B; ++b) {
      const int next = argmax(&logits[b * V]);
      if (next != argmax(&ref_logits[b * V])) {
        std::fprintf(stderr, "step %d: greedy token of sequence %d differs from the reference\n", t, b);
        return 1;
      }
      tokens[b] = t + 1 < 6 ? prompt[b][t + 1] : next;
      if (t >= 5) generated[b].push_back(next);
    }
  }
  for (int b = 0; b < B; ++b) {
    std::printf("sequence %d generated:", b);
    for (int id : generated[b]) std::printf(" %d", id);
    std::printf("\n");
  }
  std::printf("CpuDecodeStep: 14 steps x batch %d match the reference kernels: OK\n", B);

  // A position past the cache is refused before anything is written.
  const std::vector<float> before = logits;
  const int32_t past[B] = {S_MAX, 0};
  const Status s = step->run(x.data(), past, B, logits.data());
  if (s.code != rsvlm_edge::StatusCode::kCapacityExceeded || logits != before) {
    std::fprintf(stderr, "a position past the KV cache was not refused cleanly\n");
    return 1;
  }
  std::printf("refused: %s\n", s.message.c_str());
  return 0;
}
