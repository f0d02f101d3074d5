// The CPU kernels' thread pool, as seen from outside (kernels/common/thread_pool.h runs the loops).
// Thread count: OMP_NUM_THREADS, else the CPUs this process may use. Wait policy between loops:
// RSVLM_EDGE_THREAD_WAIT = auto (default) | spin | passive, read once when the pool starts:
//   auto     spin up to 200 us between loops while the OS rarely preempts this process's threads,
//            sleep at once (futex) while other tasks compete for the CPUs
//   spin     always spin up to 200 us first (a dedicated machine)
//   passive  always sleep at once
#pragma once

namespace rsvlm_edge {

enum class ThreadWait { auto_detect, spin, passive };

struct ThreadPoolState {
  ThreadWait policy;  // RSVLM_EDGE_THREAD_WAIT
  bool spinning;      // whether idle workers spin now (auto: the latest measurement)
  int workers;        // pool threads started so far, beside the calling thread
};

ThreadPoolState thread_pool_state();
const char* thread_wait_name(ThreadWait w);  // "auto", "spin" or "passive"

}  // namespace rsvlm_edge
