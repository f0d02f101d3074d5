// Public C++ API of the rsvlm_edge kernels: one include for every op's Params struct and launchers.
// No torch, no pybind11, no CUDA headers: CUDA streams are passed as `void*` (a cudaStream_t,
// nullptr = legacy default stream) and all CUDA pointers must be on the current device.
//
//   #include "rsvlm_edge/kernels.h"
//   rsvlm_edge::PatchEmbedParams p;  ... fill pointers and sizes ...
//   rsvlm_edge::Status s = rsvlm_edge::patch_embed_cpu(p);
//   if (!s.ok()) std::cerr << s.message << "\n";
//
// Link against the CMake target `rsvlm_edge` (librsvlm_edge); its only public include directory is
// include/, and every header is included as "rsvlm_edge/<name>.h". Every launcher returns a Status
// and never throws; a CUDA launcher in a build without CUDA returns StatusCode::kNotCompiled.
//
// Every op <op> has, findable by name: include/rsvlm_edge/<op>.h (Params, <op>_validate,
// <op>_reference, <op>_cpu, <op>_cuda), kernels/<op>/{<op>_ref.cpp, <op>_cpu.cpp, <op>.cu, <op>.cpp
// (validation + the no-CUDA stubs)}, csrc/bind_<op>.cpp and tests/test_kernels_<op>.py.
#pragma once

#include "rsvlm_edge/device.h"
#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"
#include "rsvlm_edge/version.h"

// Fused patch embedding (uint8 HWC -> tokens, + class/pos, + ln_pre) and load-time pos-embedding
// interpolation.
#include "rsvlm_edge/patch_embed.h"

// KV-cache attention (append, prefill + decode, GQA, contiguous / paged / int8 caches, split-KV on CUDA).
#include "rsvlm_edge/kv_attention.h"

// CLIP ViT ops: LayerNorm with a fused residual add, GELU (erf / tanh / QuickGELU).
#include "rsvlm_edge/gelu.h"
#include "rsvlm_edge/layer_norm.h"

// LLaMA decoder ops.
#include "rsvlm_edge/linear.h"
#include "rsvlm_edge/qlinear.h"
#include "rsvlm_edge/rms_norm.h"
#include "rsvlm_edge/rope.h"
#include "rsvlm_edge/swiglu.h"

// Nucleus (top-p) sampling of the next token from logits, with the draws given.
#include "rsvlm_edge/top_p_sample.h"

// W8A8 GEMM of encoders (CLIP ViT towers) over weights packed once (CPU only).
#include "rsvlm_edge/qgemm.h"
#include "rsvlm_edge/cpu_decoder.h"
