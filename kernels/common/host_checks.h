// Host-side helpers shared by the op folders: activation dtype checks, the kNotCompiled stub of a
// CUDA launcher (RSVLM_NO_CUDA_LAUNCHER), checked sizes and per-worker scratch
// buffers for parallel loops (common/thread_pool.h).
//
// Rule for every CPU launcher: a C++ exception must never escape a parallel loop's body (that is
// std::terminate -> SIGABRT). So nothing inside a body allocates: per-worker scratch is sized with
// overflow-checked arithmetic and allocated *before* the loop with alloc_scratch, which turns a
// failed allocation into a Status.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {
namespace host {

// CPU ops take float32 activations; CUDA ops float16 or bfloat16.
inline Status check_activation_dtype(const char* op, DType t, bool cuda) {
  if (cuda && t != DType::f16 && t != DType::bf16)
    return Status::Invalid(std::string(op) + ": CUDA takes float16 or bfloat16 activations, got " + dtype_name(t));
  if (!cuda && t != DType::f32)
    return Status::Invalid(std::string(op) + ": CPU takes float32 activations, got " + dtype_name(t));
  return Status::Ok();
}

// What a CUDA launcher returns in a build without CUDA.
inline Status no_cuda(const char* op) {
  return Status::NotCompiled(std::string(op) +
                             ": this build of rsvlm_edge has no CUDA kernels (built without CUDA); rebuild with "
                             "nvcc available (RSVLM_CUDA=ON) or pass CPU arrays");
}

// a * b for sizes >= 0, or -1 when it would overflow int64.
inline int64_t checked_mul(int64_t a, int64_t b) {
  if (a < 0 || b < 0) return -1;
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) return -1;
  return a * b;
}

// The byte ranges [a, a + a_bytes) and [b, b + b_bytes) share a byte (false when either is empty).
inline bool overlaps(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  if (a == nullptr || b == nullptr || a_bytes <= 0 || b_bytes <= 0) return false;
  const uintptr_t pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + static_cast<uint64_t>(b_bytes) && pb < pa + static_cast<uint64_t>(a_bytes);
}

// Threads a parallel loop of this process uses: OMP_NUM_THREADS, else the CPUs (1 without OpenMP).
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Smallest amount of work (elements touched) worth a parallel loop. Below it waking a worker costs
// more than it saves, and on a loaded machine a worker that is not scheduled holds its chunk for a
// time slice: decode-sized norms, activations and RoPE run on one thread.
constexpr int64_t kMinParallelWork = int64_t(1) << 15;

// Threads for a parallel loop over `work` elements: 1 below kMinParallelWork, else max_threads().
inline int threads_for(int64_t work) { return work < kMinParallelWork ? 1 : max_threads(); }

// Weight rows per dynamically handed-out GEMV chunk: about 64 KiB of weights (at least 16 rows), so
// a chunk is one sequential stream long enough for the prefetchers and claiming it (one CAS on its
// lane's word, see thread_pool.cpp) costs little next to reading it; small enough that a thread the
// OS deschedules holds back little of the matrix.
inline int64_t gemv_chunk_rows(int64_t row_bytes) {
  constexpr int64_t kChunkBytes = int64_t(64) << 10;
  return row_bytes <= 0 ? 16 : std::max<int64_t>(16, kChunkBytes / row_bytes);
}

// Largest host scratch buffer a launcher allocates (bytes); beyond it the call is refused with a
// Status instead of attempting an allocation the OS may grant lazily and kill us for later.
constexpr int64_t kMaxScratchBytes = int64_t(1) << 34;  // 16 GiB

// Resize `buf` to `threads` x `per_thread` elements before a parallel loop. Returns kOutOfMemory
// (never throws) when the size overflows, exceeds kMaxScratchBytes or the allocation fails.
template <typename T>
Status alloc_scratch(std::vector<T>& buf, int64_t per_thread, int64_t threads, const char* op) {
  const int64_t n = checked_mul(per_thread, threads);
  const int64_t bytes = checked_mul(n, static_cast<int64_t>(sizeof(T)));
  if (n < 0 || bytes < 0 || bytes > kMaxScratchBytes)
    return Status::OutOfMemory(std::string(op) + ": would need a scratch buffer of " + std::to_string(per_thread) +
                               " x " + std::to_string(threads) + " elements, more than the " +
                               std::to_string(kMaxScratchBytes >> 30) + " GiB limit; use smaller inputs");
  try {
    buf.assign(static_cast<size_t>(n), T{});
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory(std::string(op) + ": could not allocate a scratch buffer of " + std::to_string(bytes) +
                               " bytes");
  } catch (const std::length_error&) {
    return Status::OutOfMemory(std::string(op) + ": scratch buffer of " + std::to_string(bytes) +
                               " bytes is too large");
  }
  return Status::Ok();
}

}  // namespace host
}  // namespace rsvlm_edge


// Defines the CUDA launcher `Status <op>_cuda(const Params&, void*)` of a build without CUDA (it
// returns host::no_cuda); expands to nothing when the CUDA kernels are compiled (<op>.cu defines it).
#ifdef RSVLM_WITH_CUDA
#define RSVLM_NO_CUDA_LAUNCHER(op, Params)
#else
#define RSVLM_NO_CUDA_LAUNCHER(op, Params) \
  Status op##_cuda(const Params&, void*) { return host::no_cuda(#op); }
#endif
