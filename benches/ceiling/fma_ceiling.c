/*
 * The machine's single-precision FMA ceiling, to state each workload of
 * docs/PERFORMANCE.md as a fraction of what the cores can do.
 *
 * A register-only loop: CHAINS independent accumulators (enough to hide the FMA latency
 * of current x86 cores: 4 cycles x 2 ports = 8 in flight; 12 leaves margin), each updated
 * by one fused multiply-add per iteration, on every thread at once. The vector width is
 * chosen at run time: AVX-512 (16 lanes) where the CPU has it, else AVX2 + FMA (8 lanes);
 * "avx2" as the third argument forces the narrower one on an AVX-512 machine. FLOPs are
 * counted as 2 per lane per FMA; the best of 3 repetitions is reported (the ceiling, not
 * an average under noise).
 *
 *   gcc -O3 -pthread benches/ceiling/fma_ceiling.c -o /tmp/fma_ceiling
 *   /tmp/fma_ceiling 1          # threads
 *   /tmp/fma_ceiling 2
 *   /tmp/fma_ceiling 2 avx2
 *
 * C rather than Rust: the AVX-512 intrinsics need Rust 1.89, above the crate's MSRV, and
 * gcc is on every machine this project runs on.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHAINS 12
#define ITERATIONS 200000000L

static int use_avx512;

__attribute__((target("avx512f"))) static float fma_avx512(long n, float seed) {
    __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    __m512 acc[CHAINS];
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps(seed + i);
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    float total = 0;
    for (int i = 0; i < CHAINS; i++) total += _mm512_reduce_add_ps(acc[i]);
    return total;
}

__attribute__((target("avx2,fma"))) static float fma_avx2(long n, float seed) {
    __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    __m256 acc[CHAINS];
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_ps(seed + i);
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    float out[8], total = 0;
    for (int i = 0; i < CHAINS; i++) {
        _mm256_storeu_ps(out, acc[i]);
        for (int j = 0; j < 8; j++) total += out[j];
    }
    return total;
}

static void *worker(void *arg) {
    float *slot = arg;
    *slot = use_avx512 ? fma_avx512(ITERATIONS, *slot) : fma_avx2(ITERATIONS, *slot);
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: %s [threads 1..256] [avx2]\n", argv[0]);
        return 2;
    }
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f");
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    use_avx512 = has512 && !(argc > 2 && strcmp(argv[2], "avx2") == 0);
    if (!use_avx512 && !has2) {
        fprintf(stderr, "this CPU has neither AVX-512F nor AVX2 + FMA\n");
        return 1;
    }
    int lanes = use_avx512 ? 16 : 8;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        pthread_t ids[256];
        float slots[256];
        double start = now();
        for (int t = 0; t < threads; t++) {
            slots[t] = 1.0f + t * 1e-3f;
            pthread_create(&ids[t], NULL, worker, &slots[t]);
        }
        float checksum = 0;
        for (int t = 0; t < threads; t++) {
            pthread_join(ids[t], NULL);
            checksum += slots[t];
        }
        double seconds = now() - start;
        double gflops = 2.0 * lanes * CHAINS * (double)ITERATIONS * threads / seconds / 1e9;
        if (gflops > best) best = gflops;
        /* Printing the checksum keeps the loop from being optimised away. */
        fprintf(stderr, "%.3f s, checksum %.3f\n", seconds, checksum);
    }
    printf("%s, %d thread(s), %d chains of %d lanes: %.1f GFLOP/s (f32 FMA, best of 3)\n",
           use_avx512 ? "AVX-512" : "AVX2", threads, CHAINS, lanes, best);
    return 0;
}
