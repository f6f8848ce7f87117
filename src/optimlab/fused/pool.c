/* Threads for the fused kernels (static code, not generated).
 *
 * optimlab_pool_run(fn, ctx, n, threads) runs fn(ctx, c) for the n chunks c of a step.
 *
 * Built with OpenMP against torch's libgomp (the usual case): a parallel region, i.e.
 * torch's own thread team, which is usually still spinning from the last torch op, so
 * nothing competes for the cores. Each thread owns a contiguous run of chunks (one
 * stream through memory per core, as a static split) and then takes chunks from the
 * others, so a thread the OS has preempted delays the step by at most its current chunk.
 * (Switching to separate pthreads when a region's barrier had to wait was tried: those
 * then compete with torch's spinning team for the cores, and were 10-25% slower.)
 *
 * Without OpenMP: pthread helpers. The caller starts on the chunks at once, helpers join
 * when they get a CPU, and the caller only ever waits for chunks a helper has actually
 * claimed; a helper that wakes up late finds nothing to do. One 64-bit word holds
 * (generation 16 bits | chunk count 24 | next chunk 24); a chunk is claimed by
 * compare-and-swap on it, so a claim can only succeed for the job still running, and the
 * job (fn, ctx) is only read after a successful claim, when the caller cannot yet have
 * moved on to the next job.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

typedef void (*chunk_fn)(void *ctx, int64_t chunk);

#define NCH_BITS 24
#define IDX_MASK ((UINT64_C(1) << NCH_BITS) - 1)
#define GEN(w) ((w) >> (2 * NCH_BITS))
#define NCH(w) (((w) >> NCH_BITS) & IDX_MASK)
#define IDX(w) ((w) & IDX_MASK)
#define MAX_THREADS 256
#define SPINS 4000

static struct {
    _Atomic uint64_t word;
    _Atomic int64_t done;
    _Atomic int joined;
    int limit;
    chunk_fn fn;
    void *ctx;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;
    int nworkers;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t grow_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t run_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claim and run chunks of job `gen` until none is left; returns how many were run. */
static int64_t work(uint64_t gen) {
    int64_t ran = 0;
    uint64_t w = atomic_load_explicit(&P.word, memory_order_acquire);
    for (;;) {
        if (GEN(w) != gen || IDX(w) >= NCH(w)) return ran;
        if (!atomic_compare_exchange_weak_explicit(&P.word, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        P.fn(P.ctx, (int64_t)IDX(w));
        ++ran;
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
        w = atomic_load_explicit(&P.word, memory_order_acquire);
    }
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until a job newer than `seen` is posted, at most `ns` nanoseconds. */
static uint64_t spin_for_job(uint64_t seen, int64_t ns) {
    uint64_t w = atomic_load_explicit(&P.word, memory_order_acquire);
    const int64_t end = now_ns() + ns;
    for (int i = 0; GEN(w) == seen; ++i) {
        relax();
        if ((i & 63) == 63 && now_ns() > end) break;
        w = atomic_load_explicit(&P.word, memory_order_acquire);
    }
    return w;
}

static void *worker(void *arg) {
    uint64_t seen = (uint64_t)(uintptr_t)arg;
    for (;;) {
        uint64_t w = spin_for_job(seen, 50000);
        if (GEN(w) == seen) {
            pthread_mutex_lock(&P.mu);
            P.sleepers++;
            while (GEN(atomic_load(&P.word)) == seen) pthread_cond_wait(&P.cv, &P.mu);
            P.sleepers--;
            pthread_mutex_unlock(&P.mu);
            w = atomic_load_explicit(&P.word, memory_order_acquire);
        }
        seen = GEN(w);
        if (atomic_fetch_add_explicit(&P.joined, 1, memory_order_relaxed) < P.limit) work(seen);
    }
    return NULL;
}

static void after_fork_child(void) {
    /* the helpers do not exist in the child: start over (the caller alone does all chunks) */
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.cv, NULL);
    pthread_mutex_init(&grow_mu, NULL);
    pthread_mutex_init(&run_mu, NULL);
    P.sleepers = 0;
    P.nworkers = 0;
}

static void grow(int helpers) {
    static int registered = 0;
    pthread_mutex_lock(&grow_mu);
    if (!registered) {
        pthread_atfork(NULL, NULL, after_fork_child);
        registered = 1;
    }
    while (P.nworkers < helpers && P.nworkers < MAX_THREADS) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        uint64_t gen = GEN(atomic_load(&P.word));
        if (pthread_create(&t, &attr, worker, (void *)(uintptr_t)gen) != 0) break;
        pthread_attr_destroy(&attr);
        P.nworkers++;
    }
    pthread_mutex_unlock(&grow_mu);
}

#ifdef _OPENMP
#include <omp.h>

static void run_omp(chunk_fn fn, void *ctx, int64_t nchunks, int nthreads) {
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    _Atomic int64_t next[MAX_THREADS];
    int64_t end[MAX_THREADS];
    for (int k = 0; k < nthreads; ++k) {
        atomic_init(&next[k], nchunks * k / nthreads);
        end[k] = nchunks * (k + 1) / nthreads;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        const int me = omp_get_thread_num();  /* a smaller team than asked: runs are still all done */
        for (int i = 0; i < nthreads; ++i) {
            const int k = (me + i) % nthreads;
            for (;;) {
                const int64_t c = atomic_fetch_add_explicit(&next[k], 1, memory_order_relaxed);
                if (c >= end[k]) break;
                fn(ctx, c);
            }
        }
    }
}
#endif

/* Run fn(ctx, c) for c in [0, nchunks) on the caller and up to nthreads - 1 others. */
void optimlab_pool_run(chunk_fn fn, void *ctx, int64_t nchunks, int nthreads) {
#ifdef _OPENMP
    if (nthreads > 1 && nchunks > 1 && !omp_in_parallel()) {
        run_omp(fn, ctx, nchunks, nthreads);
        return;
    }
#endif
    /* serial when asked to, or while another thread of the process runs a job */
    if (nthreads <= 1 || nchunks <= 1 || nchunks > (int64_t)IDX_MASK || pthread_mutex_trylock(&run_mu)) {
        for (int64_t c = 0; c < nchunks; ++c) fn(ctx, c);
        return;
    }
    if (P.nworkers < nthreads - 1) grow(nthreads - 1);
    P.fn = fn;
    P.ctx = ctx;
    P.limit = nthreads - 1;
    atomic_store_explicit(&P.joined, 0, memory_order_relaxed);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    uint64_t gen = (GEN(atomic_load(&P.word)) + 1) & 0xffff;
    atomic_store_explicit(&P.word, (gen << (2 * NCH_BITS)) | ((uint64_t)nchunks << NCH_BITS),
                          memory_order_seq_cst);
    pthread_mutex_lock(&P.mu);
    if (P.sleepers) pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    work(gen);
    for (int i = 0; atomic_load_explicit(&P.done, memory_order_acquire) < nchunks; ++i) {
        if (i < SPINS) relax(); else sched_yield();
    }
    pthread_mutex_unlock(&run_mu);
}
