// Stress of the CPU thread pool (kernels/common/thread_pool.cpp), built by tests/test_thread_pool.py
// with -fsanitize=thread: thousands of loops of odd sizes, chunks and thread counts (every index must
// run exactly once, on a worker below the loop's thread count), pauses that let the workers fall
// asleep, and two calling threads at once (one of them then runs its loops alone). Exit 0 = clean.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "common/thread_pool.h"

using rsvlm_edge::host::parallel_chunks;
using rsvlm_edge::host::parallel_for;

namespace {

std::atomic<long> g_bad{0};

void loops(int count, int seed) {
  for (int rep = 0; rep < count; ++rep) {
    const int n = 1 + (rep * 7 + seed) % 97, chunk = 1 + rep % 5, threads = 1 + rep % 4;
    std::vector<int> hits(static_cast<size_t>(n), 0);
    parallel_chunks(n, chunk, threads, [&](int64_t begin, int64_t end, int worker) {
      if (worker < 0 || worker >= threads) g_bad.fetch_add(1);
      for (int64_t i = begin; i < end; ++i) ++hits[static_cast<size_t>(i)];
    });
    for (int h : hits) g_bad.fetch_add(h != 1);
    if (rep % 250 == 0) std::this_thread::sleep_for(std::chrono::microseconds(400));  // workers sleep
  }
}

}  // namespace

int main() {
  loops(3000, 0);
  std::thread other(loops, 600, 1);
  loops(600, 2);
  other.join();
  std::vector<int> nested(64, 0);  // a loop inside a body runs inline on that thread
  parallel_for(8, 1, 2, [&](int64_t i, int) {
    parallel_for(8, 1, 2, [&](int64_t j, int) { ++nested[static_cast<size_t>(i * 8 + j)]; });
  });
  for (int h : nested) g_bad.fetch_add(h != 1);
  std::printf("thread_pool_stress: %ld bad\n", g_bad.load());
  return g_bad.load() == 0 ? 0 : 1;
}
