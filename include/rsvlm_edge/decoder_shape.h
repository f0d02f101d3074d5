// Public C++ API: the sizes of a LLaMA-family decoder, shared by the whole-step decoders (CudaDecoder in
// rsvlm_edge/cuda_decoder.h, CpuDecodeStep in rsvlm_edge/cpu_decoder.h).
#pragma once

#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct DecoderShape {
  int vocab_size = 0;         // V
  int hidden_size = 0;        // C
  int intermediate_size = 0;  // I
  int num_layers = 0;         // L
  int num_heads = 0;          // H
  int num_kv_heads = 0;       // H_kv (H % H_kv == 0)
  int head_dim = 0;           // D, even (CUDA: 64, 80, 96 or 128, the attention kernel's head dims)
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.f;
};

Status decoder_shape_validate(const DecoderShape& s);

}  // namespace rsvlm_edge
