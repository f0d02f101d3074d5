// The CPU kernels' thread pool (see thread_pool.h for the contract and the wait policy).
//
// One loop at a time (run_mutex_). A loop of C chunks on T threads is cut into T lanes of contiguous
// chunks, lane t = chunks [t C / T, (t + 1) C / T): each thread first claims the chunks of its own lane
// in order, so it streams one contiguous range (two threads reading interleaved 64 KiB pieces of one
// range got 38 GB/s where two contiguous halves got 52 on the dev VM), then steals what is left of the
// other lanes, so a thread the OS deschedules holds back one chunk, not its share. Every word a late
// worker might touch is tagged with the loop's generation g (24 bits), so it can never act on
// another loop:
//   join_      = g | threads | next slot   a worker takes a slot (its worker index and own lane) with one
//                                          CAS; slots >= threads are refused
//   lanes_[t]  = g | end | next chunk      a chunk is claimed with one CAS that also checks next < end;
//                                          the loop's fields (fn_, ctx_, n_, chunk_) are read only after a
//                                          successful claim, and loop g cannot end while a claimed chunk
//                                          runs (nor while any lane of it has chunks left)
//   done_                                  chunks finished (each thread adds its count when it finds no
//                                          chunk left); the caller waits for done_ == chunks
// Workers wait for generation_ to change: spinning first when the policy says so, then on a futex.
#include "common/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#endif

namespace rsvlm_edge {
namespace host {
namespace {

constexpr int64_t kSpinMicros = 200;          // longest spin between loops before sleeping
constexpr int64_t kPolicyRecheckNanos = 50'000'000;  // auto: re-read the preemption count every 50 ms
// auto: above this many preemptions of our threads per second, sleep at once; below kQuiet, spin
// again. Measured on a 2-vCPU VM decoding with 2 threads: 28-35/s idle, 1,000-4,900/s with two or
// more busy processes beside it.
constexpr double kPreemptedPerSecond = 200;
constexpr double kQuietPerSecond = 100;
constexpr int kMaxWorkers = 255;              // threads beyond the caller
constexpr int64_t kMaxChunks = (int64_t(1) << 20) - 1;  // a lane word holds 20-bit chunk indices and ends

thread_local bool t_in_pool = false;  // a pool worker, or a caller inside run_chunks: nested loops run inline

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield");
#endif
}

inline int64_t now_ns() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

// Sleep while *word == expected (returns at once when it differs; may return spuriously).
inline void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
#else
  if (word->load(std::memory_order_acquire) == expected) std::this_thread::sleep_for(std::chrono::microseconds(20));
#endif
}

inline void futex_wake_all(std::atomic<uint32_t>* word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#else
  (void)word;
#endif
}

ThreadWait read_policy() {
  const char* e = std::getenv("RSVLM_EDGE_THREAD_WAIT");
  if (e != nullptr && std::strcmp(e, "spin") == 0) return ThreadWait::spin;
  if (e != nullptr && std::strcmp(e, "passive") == 0) return ThreadWait::passive;
  return ThreadWait::auto_detect;  // unset or anything else (the Python package rejects other values)
}

// Involuntary context switches of this process so far (every thread), or -1 if unknown: the OS
// took a CPU from one of our threads because another task was waiting for it.
int64_t involuntary_switches() {
  rusage u{};
  return getrusage(RUSAGE_SELF, &u) == 0 ? int64_t(u.ru_nivcsw) : -1;
}

// Lane word: generation (24 bits) | end (20) | next (20).
inline uint64_t pack_lane(uint32_t gen, uint32_t end, uint32_t next) {
  return (uint64_t(gen & 0xFFFFFFu) << 40) | (uint64_t(end) << 20) | next;
}
inline uint32_t lane_gen(uint64_t w) { return uint32_t(w >> 40); }
inline uint32_t lane_end(uint64_t w) { return uint32_t(w >> 20) & 0xFFFFFu; }
inline uint32_t lane_next(uint64_t w) { return uint32_t(w) & 0xFFFFFu; }
inline uint64_t pack_join(uint32_t gen, uint32_t threads, uint32_t slot) {
  return (uint64_t(gen) << 32) | (uint64_t(threads) << 16) | slot;
}

class Pool {
 public:
  Pool() : policy_(read_policy()) {
    spin_.store(policy_ != ThreadWait::passive, std::memory_order_relaxed);
  }

  // false when the pool is busy with another thread's loop (the caller then runs it alone).
  bool run(int64_t n, int64_t chunk, int threads, ChunkFn fn, void* ctx) {
    std::unique_lock<std::mutex> lock(run_mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    update_policy();
    threads = std::min(threads, 1 + start_workers(threads - 1));
    const int64_t chunks = (n + chunk - 1) / chunk;
    if (threads <= 1 || chunks <= 1) return false;

    const uint32_t g = ++gen_ & 0xFFFFFFu;
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    chunk_ = chunk;
    chunks_ = uint32_t(chunks);
    done_.store(0, std::memory_order_relaxed);
    for (int t = 0; t < threads; ++t)
      lanes_[t].word.store(pack_lane(g, uint32_t(chunks * (t + 1) / threads), uint32_t(chunks * t / threads)),
                           std::memory_order_release);
    join_.store(pack_join(g, uint32_t(threads), 1), std::memory_order_release);
    generation_.store(g, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&generation_);

    drain(g, 0, threads);
    wait_done(uint32_t(chunks));
    return true;
  }

  int workers() const { return n_workers_.load(std::memory_order_relaxed); }
  ThreadWait policy() const { return policy_; }
  bool spinning() const { return spin_.load(std::memory_order_relaxed); }

 private:
  // Starts workers up to `wanted` (<= kMaxWorkers); returns how many exist. Under run_mutex_.
  int start_workers(int wanted) {
    wanted = std::min(wanted, kMaxWorkers);
    while (int(threads_.size()) < wanted) {
      try {
        threads_.emplace_back(&Pool::worker_main, this, generation_.load(std::memory_order_acquire));
      } catch (const std::system_error&) {
        break;  // no more threads (RLIMIT_NPROC, memory): run with those we have
      } catch (const std::bad_alloc&) {
        break;
      }
      n_workers_.store(int(threads_.size()), std::memory_order_relaxed);
    }
    return int(threads_.size());
  }

  // auto: spin while this process's threads are (almost) never preempted. On a machine with idle
  // CPUs a thread runs until it blocks; when other tasks want the CPUs the scheduler preempts ours
  // every few ms, sleeping or spinning alike, so the rate stays high while the contention lasts.
  void update_policy() {
    if (policy_ != ThreadWait::auto_detect) return;
    const int64_t now = now_ns();
    if (now < next_check_ns_) return;
    const int64_t switches = involuntary_switches();
    if (switches < 0) {  // unknown: sleep at once (the wait that never hurts other tasks)
      spin_.store(false, std::memory_order_relaxed);
      return;
    }
    if (last_check_ns_ > 0) {
      const double per_second = double(switches - last_switches_) * 1e9 / double(now - last_check_ns_);
      if (per_second > kPreemptedPerSecond) spin_.store(false, std::memory_order_relaxed);
      else if (per_second < kQuietPerSecond) spin_.store(true, std::memory_order_relaxed);
    }
    last_check_ns_ = now;
    last_switches_ = switches;
    next_check_ns_ = now + kPolicyRecheckNanos;
  }

  // Claims a chunk of lane t of loop g: its index, or -1 when the lane has none left (or g is over).
  int64_t claim(int t, uint32_t g) {
    std::atomic<uint64_t>& lane = lanes_[t].word;
    uint64_t w = lane.load(std::memory_order_acquire);
    for (;;) {
      if (lane_gen(w) != g || lane_next(w) >= lane_end(w)) return -1;
      if (lane.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        return lane_next(w);
    }
  }

  // Runs chunks of loop g (its own lane `slot` first, then the other lanes of the loop's `threads`)
  // until none are left, then counts them into done_ at once (one contended write per thread and
  // loop). Loop g cannot end while this thread holds uncounted chunks, so its fields stay valid.
  void drain(uint32_t g, int slot, int threads) {
    uint32_t ran = 0;
    for (int i = 0; i < threads; ++i) {
      const int t = (slot + i) % threads;
      for (int64_t index; (index = claim(t, g)) >= 0; ++ran) {
        const int64_t begin = index * chunk_;
        fn_(ctx_, begin, std::min(n_, begin + chunk_), slot);
      }
    }
    if (ran == 0) return;
    const uint32_t chunks = chunks_;  // read before counting: once counted, the loop may end
    if (done_.fetch_add(ran, std::memory_order_seq_cst) + ran == chunks &&
        caller_sleeping_.load(std::memory_order_seq_cst) != 0)
      futex_wake_all(&done_);
  }

  // When the policy spins now: true as soon as ready() holds, false after kSpinMicros without it.
  template <typename Ready>
  bool spin_until(Ready ready) const {
    if (!spin_.load(std::memory_order_relaxed)) return false;
    const int64_t deadline = now_ns() + kSpinMicros * 1000;
    for (int i = 0;; ++i) {
      if (ready()) return true;
      cpu_relax();
      if ((i & 63) == 63 && now_ns() > deadline) return false;
    }
  }

  void wait_done(uint32_t chunks) {
    if (spin_until([&] { return done_.load(std::memory_order_acquire) == chunks; })) return;
    for (;;) {
      caller_sleeping_.store(1, std::memory_order_seq_cst);
      const uint32_t d = done_.load(std::memory_order_seq_cst);
      if (d == chunks) break;
      futex_wait(&done_, d);
    }
    caller_sleeping_.store(0, std::memory_order_relaxed);
  }

  uint32_t wait_generation(uint32_t seen) {
    uint32_t g;
    if (spin_until([&] { return (g = generation_.load(std::memory_order_acquire)) != seen; })) return g;
    for (;;) {
      if ((g = generation_.load(std::memory_order_acquire)) != seen) return g;
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (generation_.load(std::memory_order_seq_cst) == seen) futex_wait(&generation_, seen);
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }

  void worker_main(uint32_t seen) {
    t_in_pool = true;
    for (;;) {
      const uint32_t g = wait_generation(seen);
      seen = g;
      uint64_t j = join_.load(std::memory_order_acquire);
      for (;;) {
        const uint32_t slot = uint32_t(j & 0xFFFF), threads = uint32_t((j >> 16) & 0xFFFF);
        if (uint32_t(j >> 32) != g || slot >= threads) break;
        if (join_.compare_exchange_weak(j, j + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
          drain(g, int(slot), int(threads));
          break;
        }
      }
    }
  }

  const ThreadWait policy_;
  std::mutex run_mutex_;
  std::vector<std::thread> threads_;  // never joined: the pool lives until the process ends
  std::atomic<int> n_workers_{0};
  uint32_t gen_ = 0;            // the caller's count of loops (under run_mutex_)
  int64_t next_check_ns_ = 0, last_check_ns_ = 0, last_switches_ = 0;  // auto policy (under run_mutex_)
  // The current loop; written under run_mutex_ before its lanes are published, read after a claim
  // (or by the caller).
  ChunkFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  uint32_t chunks_ = 0;
  std::atomic<uint64_t> join_{0};
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int> caller_sleeping_{0};
  std::atomic<bool> spin_{false};
  // The words chunks write, each on its own cache line.
  struct alignas(64) Lane {
    std::atomic<uint64_t> word{pack_lane(0, 0, 0)};
  };
  Lane lanes_[kMaxWorkers + 1];
  alignas(64) std::atomic<uint32_t> done_{0};
  char pad_[60];
};

std::atomic<Pool*> g_pool{nullptr};

void forget_pool_in_child() {
  g_pool.store(nullptr, std::memory_order_relaxed);  // its workers did not survive fork(); leak it
}

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  static std::once_flag atfork_once;
  std::call_once(atfork_once, [] { pthread_atfork(nullptr, nullptr, forget_pool_in_child); });
  Pool* fresh = new Pool();  // never deleted: workers may be asleep in it at exit
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread won (no workers were started in it)
  return *p;
}

void run_inline(int64_t n, int64_t chunk, ChunkFn fn, void* ctx) {
  for (int64_t begin = 0; begin < n; begin += chunk) fn(ctx, begin, std::min(n, begin + chunk), 0);
}

}  // namespace

void run_chunks(int64_t n, int64_t chunk, int threads, ChunkFn fn, void* ctx) noexcept {
  if (n <= 0) return;
  chunk = std::max<int64_t>(chunk, 1);
  chunk = std::max<int64_t>(chunk, (n + kMaxChunks - 1) / kMaxChunks);  // chunk indices fit 20 bits
  if (threads <= 1 || n <= chunk || t_in_pool) {
    run_inline(n, chunk, fn, ctx);
    return;
  }
  t_in_pool = true;
  const bool ran = pool().run(n, chunk, threads, fn, ctx);
  t_in_pool = false;
  if (!ran) run_inline(n, chunk, fn, ctx);
}

}  // namespace host

ThreadPoolState thread_pool_state() {
  host::Pool& p = host::pool();
  return ThreadPoolState{p.policy(), p.spinning(), p.workers()};
}

const char* thread_wait_name(ThreadWait w) {
  switch (w) {
    case ThreadWait::spin:
      return "spin";
    case ThreadWait::passive:
      return "passive";
    default:
      return "auto";
  }
}

}  // namespace rsvlm_edge
