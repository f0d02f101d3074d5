// Public C++ API of the rsvlm_edge kernels: one include for every op's Params struct and launchers.
// No torch, no pybind11, no CUDA headers: CUDA streams are passed as `void*` (a cudaStream_t,
// nullptr = legacy default stream) and all CUDA pointers must be on the current device.
//
//   #include <rsvlm_edge/kernels.h>
//   rsvlm_edge::PatchEmbedParams p;  ... fill pointers and sizes ...
//   rsvlm_edge::Status s = rsvlm_edge::patch_embed_cpu(p);
//   if (!s.ok()) std::cerr << s.message << "\n";
//
// Link against the CMake target `rsvlm_edge` (librsvlm_edge). Every launcher returns a Status and
// never throws; a CUDA launcher in a build without CUDA returns StatusCode::kNotCompiled.
#pragma once

#include "rsvlm_edge/device.h"
#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"
#include "rsvlm_edge/version.h"

// Fused patch embedding (uint8 HWC -> tokens, + class/pos, + ln_pre) and load-time pos-embedding
// interpolation: PatchEmbedParams, patch_embed_cpu, patch_embed_cuda, PosEmbedInterpParams,
// interpolate_pos_embed_cpu.
#include "patch_embed.h"

// KV-cache attention (append, prefill + decode, GQA, contiguous / paged / int8 caches, split-KV on CUDA).
#include "kv_attention.h"

// LLaMA decoder ops: RMSNorm, RoPE (rotate-half), SwiGLU, dense (CPU: fp32 or fp16 weights) and
// weight-only INT8 linear; CpuKernels (the CPU linear's avx2 / portable micro-kernels).
#include "decoder_ops.h"
