// patch_embed: argument checks shared by every implementation, and the CUDA stub of CPU-only builds.
#include <cmath>
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/patch_embed.h"
#include "rsvlm_edge/qgemm.h"

namespace rsvlm_edge {

Status patch_embed_validate(const PatchEmbedParams& p, bool cuda) {
  const std::string op = "patch_embed: ";
  if (p.batch < 0) return Status::Invalid(op + "batch must be >= 0, got " + std::to_string(p.batch));
  if (p.patch < 1) return Status::Invalid(op + "patch size must be >= 1, got " + std::to_string(p.patch));
  if (p.dim < 1) return Status::Invalid(op + "embedding dim must be >= 1, got " + std::to_string(p.dim));
  if (p.patch > (int64_t(1) << 20) || p.dim > (int64_t(1) << 30))
    return Status::Invalid(op + "patch size " + std::to_string(p.patch) + " or embedding dim " + std::to_string(p.dim) +
                           " is too large");
  if (p.height < p.patch || p.width < p.patch || p.height % p.patch != 0 || p.width % p.patch != 0)
    return Status::Invalid(op + "image size " + std::to_string(p.height) + "x" + std::to_string(p.width) +
                           " is not a positive multiple of the patch size " + std::to_string(p.patch) +
                           "; resize the images to the model resolution first");
  if ((p.weight == nullptr) == (p.packed_weight == nullptr))
    return Status::Invalid(op + "give exactly one of weight and packed_weight");
  if (p.packed_weight != nullptr) {
    if (cuda || p.dtype != DType::f32)
      return Status::Invalid(op + "a packed int8 conv weight runs on the CPU with float32 tensors only");
    int n = 0, k = 0;
    if (Status s = qgemm_packed_shape(p.packed_weight, p.packed_bytes, &n, &k); !s.ok())
      return Status::Invalid(op + "packed_weight: " + s.message);
    if (n != p.dim || k != 3 * p.patch * p.patch)
      return Status::Invalid(op + "packed_weight holds a (" + std::to_string(n) + ", " + std::to_string(k) +
                             ") weight, the conv needs (D, 3*P*P) = (" + std::to_string(p.dim) + ", " +
                             std::to_string(3 * p.patch * p.patch) + ")");
  }
  if (p.batch > 0 && (!p.images || !p.class_emb || !p.pos_emb || !p.out))
    return Status::Invalid(op + "images, class_emb, pos_emb and out must all be non-null");
  if ((p.ln_gamma == nullptr) != (p.ln_beta == nullptr))
    return Status::Invalid(op + "ln_gamma and ln_beta must be given together (or neither)");
  for (int c = 0; c < 3; ++c)
    if (!(p.std[c] != 0.f) || !std::isfinite(p.std[c]) || !std::isfinite(p.mean[c]))
      return Status::Invalid(op + "mean/std must be finite and std non-zero (channel " + std::to_string(c) + ")");
  if (!(p.eps > 0.f)) return Status::Invalid(op + "eps must be > 0");
  const bool dtype_ok =
      cuda ? (p.dtype == DType::f32 || p.dtype == DType::f16 || p.dtype == DType::bf16) : p.dtype == DType::f32;
  if (!dtype_ok)
    return Status::Invalid(op + "dtype " + dtype_name(p.dtype) + " is not supported on " +
                           (cuda ? "CUDA (use float32, float16 or bfloat16)" : "CPU (use float32)"));
  return Status::Ok();
}

RSVLM_NO_CUDA_LAUNCHER(patch_embed, PatchEmbedParams)

}  // namespace rsvlm_edge
