/* Independent multi-threaded memory read bandwidth: every thread sums its slice of a buffer far
 * larger than the last-level cache with 256-bit loads (4 independent accumulators), repeated; the
 * best of the repetitions and of three ways of reading is reported in GB/s (1e9 bytes/s):
 *   plain        loads only (the hardware prefetchers alone)
 *   prefetch-t0  plus a software prefetch of each 64-byte line 4 KiB ahead into L1
 *   prefetch-t1  plus a software prefetch 6 KiB ahead into L2 (what our GEMV rows do)
 * The buffer is asked for transparent huge pages (madvise MADV_HUGEPAGE, 2 MiB-aligned), as the runtime
 * places decoder weights (rsvlm_edge/backends/host_memory.py): measured on a 2-vCPU AMX Xeon, huge pages
 * read 10-15 % faster than 4 KiB pages, and software prefetch another 10 %, so a ceiling read without
 * them would flatter every engine measured against it. Built by bench/bench_decoder_cpu.py with the
 * system C compiler: gcc -O2 -fopenmp [-mavx2]. Usage: read_bandwidth MiB REPEATS */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

enum { PLAIN, PREFETCH_T0, PREFETCH_T1, N_WAYS };
static const char* const WAY_NAMES[N_WAYS] = {"plain", "prefetch-t0", "prefetch-t1"};

/* The sum of one 32 KiB chunk (4096 doubles) read `way`. */
static double chunk_sum(const double* p, int way) {
#if defined(__AVX2__)
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  for (int i = 0; i < 4096; i += 16) {
    if (way == PREFETCH_T0) {
      _mm_prefetch((const char*)(p + i) + 4096, _MM_HINT_T0);
      _mm_prefetch((const char*)(p + i) + 4096 + 64, _MM_HINT_T0);
    } else if (way == PREFETCH_T1) {
      _mm_prefetch((const char*)(p + i) + 6144, _MM_HINT_T1);
      _mm_prefetch((const char*)(p + i) + 6144 + 64, _MM_HINT_T1);
    }
    a0 = _mm256_add_pd(a0, _mm256_load_pd(p + i));
    a1 = _mm256_add_pd(a1, _mm256_load_pd(p + i + 4));
    a2 = _mm256_add_pd(a2, _mm256_load_pd(p + i + 8));
    a3 = _mm256_add_pd(a3, _mm256_load_pd(p + i + 12));
  }
  double s[4];
  _mm256_storeu_pd(s, _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
  return s[0] + s[1] + s[2] + s[3];
#else
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int i = 0; i < 4096; i += 4) {
    if (way != PLAIN && i % 8 == 0) __builtin_prefetch((const char*)(p + i) + (way == PREFETCH_T0 ? 4096 : 6144), 0,
                                                       way == PREFETCH_T0 ? 3 : 2);
    s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
  }
  return s0 + s1 + s2 + s3;
#endif
}

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
  const int repeats = argc > 2 ? atoi(argv[2]) : 10;
  const size_t huge = (size_t)2 << 20;
  const size_t bytes = (mib << 20) / huge * huge, n = bytes / sizeof(double);
  if (bytes == 0 || repeats < 1) { fprintf(stderr, "usage: read_bandwidth MiB(>=2) REPEATS(>=1)\n"); return 2; }
  double* buf = aligned_alloc(huge, bytes);
  if (!buf) { fprintf(stderr, "cannot allocate %zu MiB\n", mib); return 2; }
#if defined(MADV_HUGEPAGE)
  madvise(buf, bytes, MADV_HUGEPAGE); /* best effort: plain pages where the kernel has no THP */
#endif
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = (double)(i & 1023);  /* first touch by the reading thread */
  double best[N_WAYS], sink = 0;
  for (int way = 0; way < N_WAYS; ++way) {
    best[way] = 1e30;
    for (int rep = 0; rep < repeats; ++rep) {
      const double t0 = now();
      double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
      for (size_t c = 0; c < n / 4096; ++c) total += chunk_sum(buf + c * 4096, way);
      const double dt = now() - t0;
      sink += total;
      if (dt < best[way]) best[way] = dt;
    }
  }
  const double read = (double)(n / 4096 * 4096) * sizeof(double);
  int top = 0;
  for (int way = 1; way < N_WAYS; ++way)
    if (best[way] < best[top]) top = way;
  printf("{\"bytes\": %zu, \"threads\": %d, \"best_s\": %.6f, \"gb_per_s\": %.2f, \"best_way\": \"%s\", \"ways_gb_per_s\": {",
         bytes, omp_get_max_threads(), best[top], read / best[top] / 1e9, WAY_NAMES[top]);
  for (int way = 0; way < N_WAYS; ++way) printf("%s\"%s\": %.2f", way ? ", " : "", WAY_NAMES[way], read / best[way] / 1e9);
  printf("}, \"checksum\": %.1f}\n", sink);
  free(buf);
  return 0;
}
