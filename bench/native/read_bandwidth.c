/* Independent multi-threaded memory read bandwidth: every thread sums its slice of a buffer far
 * larger than the last-level cache with 256-bit loads (4 independent accumulators), repeated; the
 * best of the repetitions is reported in GB/s (1e9 bytes/s). Built by bench/bench_bandwidth.py with
 * the system C compiler: gcc -O2 -fopenmp [-mavx2]. Usage: read_bandwidth MiB REPEATS */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
  const int repeats = argc > 2 ? atoi(argv[2]) : 10;
  const size_t bytes = mib << 20, n = bytes / sizeof(double);
  double* buf = aligned_alloc(64, bytes);
  if (!buf) { fprintf(stderr, "cannot allocate %zu MiB\n", mib); return 2; }
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = (double)(i & 1023);  /* first touch by the reading thread */
  double best = 1e30, sink = 0;
  for (int rep = 0; rep < repeats; ++rep) {
    const double t0 = now();
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (size_t c = 0; c < n / 4096; ++c) {
      const double* p = buf + c * 4096;
#if defined(__AVX2__)
      __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
      for (int i = 0; i < 4096; i += 16) {
        a0 = _mm256_add_pd(a0, _mm256_load_pd(p + i));
        a1 = _mm256_add_pd(a1, _mm256_load_pd(p + i + 4));
        a2 = _mm256_add_pd(a2, _mm256_load_pd(p + i + 8));
        a3 = _mm256_add_pd(a3, _mm256_load_pd(p + i + 12));
      }
      double s[4];
      _mm256_storeu_pd(s, _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
      total += s[0] + s[1] + s[2] + s[3];
#else
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int i = 0; i < 4096; i += 4) { s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]; }
      total += s0 + s1 + s2 + s3;
#endif
    }
    const double dt = now() - t0;
    sink += total;
    if (dt < best) best = dt;
  }
  printf("{\"bytes\": %zu, \"threads\": %d, \"best_s\": %.6f, \"gb_per_s\": %.2f, \"checksum\": %.1f}\n", bytes,
         omp_get_max_threads(), best, (double)(n / 4096 * 4096) * sizeof(double) / best / 1e9, sink);
  free(buf);
  return 0;
}
