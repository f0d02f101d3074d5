// Example: the fused patch embedding through the public C++ API, checked against the naive reference.
//
// Builds a small random batch (B=2 images of 20x28 pixels, patch 4 -> a 5x7 grid, D=24), runs
// rsvlm_edge::patch_embed_cpu with a bias and ln_pre, recomputes every token with
// rsvlm_edge::patch_embed_reference (the library's plain loops, fp64, which follow open_clip:
// normalise -> conv1 -> cat class -> + pos -> LayerNorm) on the same parameters, and exits non-zero if
// any value differs by more than 1e-4. Also interpolates the 5x5+1 position embedding of a square model
// to 7x7+1 and checks that the class row passes through and grid corners are preserved (align_corners).
#include "rsvlm_edge/kernels.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

// Prints the message of a failed launcher call; true when it failed.
bool failed(const char* launcher, const rsvlm_edge::Status& s) {
  if (s.ok()) return false;
  std::fprintf(stderr, "%s failed: %s\n", launcher, s.message.c_str());
  return true;
}

int check_patch_embed() {
  const int64_t B = 2, H = 20, W = 28, P = 4, D = 24;
  const int64_t Gh = H / P, Gw = W / P, N = Gh * Gw, T = N + 1, K = 3 * P * P;
  std::mt19937 rng(0);
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto randn = [&](size_t n, float scale) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng) * scale;
    return v;
  };
  std::vector<uint8_t> images(static_cast<size_t>(B * H * W * 3));
  for (uint8_t& x : images) x = static_cast<uint8_t>(byte(rng));
  std::vector<float> weight = randn(D * K, 0.05f), bias = randn(D, 0.1f), cls = randn(D, 0.5f),
                     pos = randn(T * D, 0.5f), gamma = randn(D, 0.2f), beta = randn(D, 0.2f);
  for (float& g : gamma) g += 1.f;
  std::vector<float> out(static_cast<size_t>(B * T * D), NAN), ref(out.size(), NAN);  // poisoned

  rsvlm_edge::PatchEmbedParams p;
  p.images = images.data();
  p.weight = weight.data();
  p.bias = bias.data();
  p.class_emb = cls.data();
  p.pos_emb = pos.data();
  p.ln_gamma = gamma.data();
  p.ln_beta = beta.data();
  p.out = out.data();
  const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  for (int c = 0; c < 3; ++c) {
    p.mean[c] = mean[c];
    p.std[c] = stdv[c];
  }
  p.batch = B;
  p.height = H;
  p.width = W;
  p.patch = P;
  p.dim = D;
  p.dtype = rsvlm_edge::DType::f32;
  rsvlm_edge::PatchEmbedParams p_ref = p;  // the same call, written to `ref`
  p_ref.out = ref.data();
  if (failed("patch_embed_cpu", rsvlm_edge::patch_embed_cpu(p)) ||
      failed("patch_embed_reference", rsvlm_edge::patch_embed_reference(p_ref)))
    return 1;

  double max_err = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t d = 0; d < D; ++d) {
        const size_t i = static_cast<size_t>((b * T + t) * D + d);
        const double err = std::fabs(double(out[i]) - double(ref[i]));
        if (!(err <= 1e-4)) {  // also catches NaN left from the poison
          std::fprintf(stderr, "patch_embed mismatch at b=%lld t=%lld d=%lld: got %.6f want %.6f\n",
                       static_cast<long long>(b), static_cast<long long>(t), static_cast<long long>(d), out[i], ref[i]);
          return 1;
        }
        max_err = std::fmax(max_err, err);
      }
    }
  }
  std::printf("patch_embed_cpu: B=%lld %lldx%lld P=%lld D=%lld -> (%lld, %lld, %lld), max |err| = %.2e: OK\n",
              static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(W),
              static_cast<long long>(P), static_cast<long long>(D), static_cast<long long>(B),
              static_cast<long long>(T), static_cast<long long>(D), max_err);
  return 0;
}

int check_pos_interp() {
  const int64_t G = 5, G2 = 7, D = 3;
  std::vector<float> pos(static_cast<size_t>((1 + G * G) * D)), out(static_cast<size_t>((1 + G2 * G2) * D), NAN);
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = std::sin(0.37f * static_cast<float>(i));
  rsvlm_edge::PosEmbedInterpParams p;
  p.pos = pos.data();
  p.out = out.data();
  p.grid = G;
  p.new_grid = G2;
  p.dim = D;
  if (failed("interpolate_pos_embed_cpu", rsvlm_edge::interpolate_pos_embed_cpu(p))) return 1;
  // align_corners=True maps grid corners onto grid corners exactly; row 0 is the class token.
  const int64_t corners[4][2] = {{0, 0}, {0, G - 1}, {G - 1, 0}, {G - 1, G - 1}};
  const int64_t corners2[4][2] = {{0, 0}, {0, G2 - 1}, {G2 - 1, 0}, {G2 - 1, G2 - 1}};
  for (int64_t d = 0; d < D; ++d) {
    if (out[d] != pos[d]) {
      std::fprintf(stderr, "interpolate_pos_embed: class token changed\n");
      return 1;
    }
    for (int i = 0; i < 4; ++i) {
      const float a = pos[(1 + corners[i][0] * G + corners[i][1]) * D + d];
      const float b = out[(1 + corners2[i][0] * G2 + corners2[i][1]) * D + d];
      if (!(std::fabs(a - b) <= 1e-6f)) {
        std::fprintf(stderr, "interpolate_pos_embed: corner %d moved: %f -> %f\n", i, a, b);
        return 1;
      }
    }
  }
  for (float v : out)
    if (!std::isfinite(v)) {
      std::fprintf(stderr, "interpolate_pos_embed: output not fully written\n");
      return 1;
    }
  std::printf("interpolate_pos_embed_cpu: (1+%lld^2, %lld) -> (1+%lld^2, %lld): OK\n", static_cast<long long>(G),
              static_cast<long long>(D), static_cast<long long>(G2), static_cast<long long>(D));
  return 0;
}

}  // namespace

int main() {
  std::printf("rsvlm_edge %s (CUDA kernels: %s)\n", rsvlm_edge::version(),
              rsvlm_edge::built_with_cuda() ? "yes" : "no");
  return check_patch_embed() | check_pos_interp();
}
