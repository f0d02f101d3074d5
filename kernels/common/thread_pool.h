// The CPU kernels' one persistent thread pool: parallel loops over chunks of an index range, handed
// out dynamically to the calling thread and up to threads - 1 pool workers (created once, on first
// use; never per call).
//
// Why not OpenMP regions: a decode step is ~200 short parallel loops. With OpenMP's passive wait a
// sleeping worker costs a futex wake-up per loop (~60 us on a 2-vCPU VM, where an idle vCPU has
// halted: 10 ms of a 40 ms w8 decode step); with its active wait (spinning) decode collapses 3x when
// other processes share the cores, because spinning threads lose the scheduler's wake-up preference.
// This pool spins only while this process's threads are not being preempted (auto), else sleeps:
//
//   RSVLM_EDGE_THREAD_WAIT=auto     (default) spin up to 200 us between loops while the OS rarely
//                              preempts our threads (involuntary context switches of the process
//                              below 100/s; above 200/s other tasks want the CPUs: sleep on a
//                              futex at once), re-measured every 50 ms
//   RSVLM_EDGE_THREAD_WAIT=spin     always spin up to 200 us before sleeping
//   RSVLM_EDGE_THREAD_WAIT=passive  always sleep at once
//
// The thread count of a loop is the caller's (host::max_threads(): OMP_NUM_THREADS or the CPUs).
// Rules: a body never throws (noexcept: an exception is std::terminate, as in an OpenMP region) and
// never allocates (scratch is allocated before the loop, per worker index). A loop started inside a
// body, or while another thread of the process is running a loop, runs on the calling thread alone.
// After fork() the child starts a fresh pool on first use.
#pragma once

#include <cstdint>
#include <type_traits>

#include "rsvlm_edge/threads.h"

namespace rsvlm_edge {
namespace host {

// body(ctx, begin, end, worker): one chunk [begin, end) of the range, run by worker 0 (the caller)
// .. threads - 1.
using ChunkFn = void (*)(void* ctx, int64_t begin, int64_t end, int worker);

// Runs fn over [0, n) in chunks of `chunk` indices (the last may be shorter; chunk < 1 counts as 1)
// on up to `threads` threads, the caller included; returns when every chunk has run. Chunks go to
// whichever thread asks next, so a thread the OS deschedules delays one chunk, not a share.
void run_chunks(int64_t n, int64_t chunk, int threads, ChunkFn fn, void* ctx) noexcept;

// The same with a callable body(begin, end, worker).
template <typename Body>
void parallel_chunks(int64_t n, int64_t chunk, int threads, Body&& body) noexcept {
  using B = std::remove_reference_t<Body>;
  run_chunks(
      n, chunk, threads,
      [](void* ctx, int64_t begin, int64_t end, int worker) { (*static_cast<B*>(ctx))(begin, end, worker); },
      const_cast<void*>(static_cast<const void*>(&body)));
}

// body(i, worker) for every i in [0, n), in chunks of `chunk`.
template <typename Body>
void parallel_for(int64_t n, int64_t chunk, int threads, Body&& body) noexcept {
  parallel_chunks(n, chunk, threads, [&body](int64_t begin, int64_t end, int worker) {
    for (int64_t i = begin; i < end; ++i) body(i, worker);
  });
}

}  // namespace host
}  // namespace rsvlm_edge
