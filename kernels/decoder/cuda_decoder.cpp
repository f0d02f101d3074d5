// CudaDecoder pieces every build has: the shape check, and (in a build without CUDA) the stubs that
// answer kNotCompiled. The CUDA implementation is cuda_decoder.cu.
#include <string>

#include "rsvlm_edge/cuda_decoder.h"

namespace rsvlm_edge {

Status decoder_shape_validate(const DecoderShape& s) {
  auto positive = [](const char* what, int v) -> Status {
    if (v < 1) return Status::Invalid(std::string("decoder ") + what + " must be >= 1, got " + std::to_string(v));
    return Status::Ok();
  };
  for (auto [what, v] : {std::pair{"vocab_size", s.vocab_size}, {"hidden_size", s.hidden_size},
                         {"intermediate_size", s.intermediate_size}, {"num_layers", s.num_layers},
                         {"num_heads", s.num_heads}, {"num_kv_heads", s.num_kv_heads}, {"head_dim", s.head_dim}}) {
    Status st = positive(what, v);
    if (!st.ok()) return st;
  }
  if (s.num_heads % s.num_kv_heads != 0)
    return Status::Invalid("decoder num_heads " + std::to_string(s.num_heads) + " is not a multiple of num_kv_heads " +
                           std::to_string(s.num_kv_heads));
  if (s.head_dim % 2 != 0) return Status::Invalid("decoder head_dim must be even (RoPE), got " + std::to_string(s.head_dim));
  if (!(s.rms_norm_eps >= 0.f)) return Status::Invalid("decoder rms_norm_eps must be >= 0");
  if (!(s.rope_theta > 0.f)) return Status::Invalid("decoder rope_theta must be > 0");
  // Largest products the kernels index with int: rows of one linear, elements of one table row set.
  if (int64_t(s.num_heads) * s.head_dim > (1 << 20) || int64_t(s.num_kv_heads) * s.head_dim > (1 << 20) ||
      s.hidden_size > (1 << 20) || s.intermediate_size > (1 << 22) || s.vocab_size > (1 << 24))
    return Status::Invalid("decoder sizes are beyond what the CUDA kernels index");
  return Status::Ok();
}

#ifndef RSVLM_WITH_CUDA
struct CudaDecoder::Impl {};

Status CudaDecoder::create(const DecoderShape&, int, int, std::unique_ptr<CudaDecoder>*, DType, int64_t) {
  return Status::NotCompiled("this build of rsvlm_edge has no CUDA kernels (rebuild with RSVLM_CUDA=ON)");
}
CudaDecoder::~CudaDecoder() = default;
int CudaDecoder::device_count() { return 0; }
Status CudaDecoder::set_tensor(const std::string&, const void*, DType, const std::vector<int64_t>&) {
  return Status::NotCompiled("no CUDA in this build");
}
Status CudaDecoder::check_complete() const { return Status::NotCompiled("no CUDA in this build"); }
Status CudaDecoder::prefill(const float*, const int64_t*, int, int, float*) {
  return Status::NotCompiled("no CUDA in this build");
}
Status CudaDecoder::decode(const int64_t*, int, float*, int64_t*) { return Status::NotCompiled("no CUDA in this build"); }
Status CudaDecoder::decode_sample(const int64_t*, int, float, float, const float*, int64_t*) {
  return Status::NotCompiled("no CUDA in this build");
}
Status CudaDecoder::run_step(const int64_t*, int) { return Status::NotCompiled("no CUDA in this build"); }
int64_t CudaDecoder::step_weight_bytes() const { return 0; }
#endif

}  // namespace rsvlm_edge
