// rope: argument checks shared by every implementation, and the CUDA stub of CPU-only builds.
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/rope.h"

namespace rsvlm_edge {

Status rope_validate(const RopeParams& p, bool cuda) {
  if (p.tokens < 0 || p.num_heads <= 0 || (p.k != nullptr && p.num_kv_heads <= 0))
    return Status::Invalid("rope: needs T >= 0 and at least one head, got T=" + std::to_string(p.tokens) +
                           ", H=" + std::to_string(p.num_heads) + ", H_kv=" + std::to_string(p.num_kv_heads));
  if (p.head_dim <= 0 || p.head_dim % 2 != 0)
    return Status::Invalid("rope: needs an even head_dim >= 2, got " + std::to_string(p.head_dim));
  if (p.tokens > 0 && (p.q == nullptr || p.positions == nullptr))
    return Status::Invalid("rope: q and positions must be given");
  if (!(p.theta > 0.f)) return Status::Invalid("rope: theta must be > 0");
  return host::check_activation_dtype("rope", p.dtype, cuda);
}

RSVLM_NO_CUDA_LAUNCHER(rope, RopeParams)

}  // namespace rsvlm_edge
