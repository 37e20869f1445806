/* Run n independent tasks on POSIX threads (no OpenMP runtime).
 *
 * clstm_run_tasks(n, task, ctx) calls task(ctx, k) for k = 0 .. n-1 and
 * returns when all have finished. The calling thread and up to n - 1
 * helpers of a pool claim the tasks in order, one at a time, so a helper
 * that the OS does not schedule promptly (its core busy with another
 * process, or parked) loses its tasks to the threads that are running
 * instead of holding the call up: the call is never slower than running the
 * tasks serially by more than the cost of posting them (measured with a
 * busy loop on the other core: a 2-thread ts-small forward that joined its
 * helper took 1.13-1.44 ms median, 0.90-0.94 ms claiming, 0.84 ms on one
 * thread). Which thread runs a task never changes its result. Without
 * pthreads (Windows builds) every task runs serially on the calling thread.
 *
 * The helpers are kept for the process, not started per call: starting a
 * thread took 24-29 us on the 2-core VM of benchmarks/RESULTS.md, a tenth of
 * a 2-thread batch-1 forward (0.2-0.3 ms), and a 2-thread call of empty
 * tasks cost 15-30 us against ~3 us with the pool. A helper spins ~100 us
 * after its last task, so back-to-back calls find it running, then parks on
 * a condition variable (no CPU while idle). At fork the child starts with
 * no helpers (pthread_atfork); at exit the parked helpers simply end with
 * the process.
 *
 * Returns the number of tasks that ran on helper threads.
 */
#ifndef CLSTM_THREADS_H
#define CLSTM_THREADS_H

#include <stdlib.h>
#include <string.h>

/* A counter for tests, which threads may bump at once. */
static inline void clstm_count(long long *counter)
{
#if defined(__GNUC__) || defined(__clang__)
    __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
#else
    ++*counter;
#endif
}

typedef void (*clstm_task_fn)(void *ctx, Py_ssize_t k);

/* OpenBLAS's limit for the calling thread (openblas_set_num_threads_local,
 * OpenBLAS >= 0.3.27), where clstm._parallel found one and handed it over
 * (_scan.set_blas_thread_limiter); NULL otherwise. With it, a plan's call
 * holds its own thread at one BLAS thread for the call (clstm_blas_hold,
 * clstm_blas_release) and the pool's helpers, which run only clstm's
 * tasks, for good: the same limit as clstm._parallel.blas_single_threaded
 * sets from Python, without its ~3 us a call (3 % of a batch-1 training
 * step). Set once, before any call that reads it. */
typedef int (*clstm_blas_limit_fn)(int);
static clstm_blas_limit_fn clstm_blas_limiter = NULL;

/* Hold this thread's BLAS calls at one thread; returns what to restore. */
static inline int clstm_blas_hold(void)
{
    return clstm_blas_limiter != NULL ? clstm_blas_limiter(1) : 0;
}

static inline void clstm_blas_release(int saved)
{
    if (clstm_blas_limiter != NULL)
        clstm_blas_limiter(saved);
}

/* Every task on the calling thread (no threads, or none to be had). */
static Py_ssize_t clstm_run_serially(Py_ssize_t n, clstm_task_fn task, void *ctx)
{
    Py_ssize_t k;
    for (k = 0; k < n; k++)
        task(ctx, k);
    return 0;
}

#if !defined(_WIN32) && (defined(__unix__) || defined(__APPLE__))
#include <pthread.h>
#include <sched.h>
#include <time.h>
#define CLSTM_HAVE_THREADS 1

/* State of one call, shared by the caller and the helpers that take part
 * in it, freed by the last to leave. */
typedef struct clstm_tasks {
    pthread_mutex_t lock;
    pthread_cond_t all_done;
    clstm_task_fn task;
    void *ctx;
    Py_ssize_t n, next, done, on_helpers;
    int refs;
    struct clstm_tasks *link;      /* the pool's list of calls */
} clstm_tasks;

static int clstm_claim(clstm_tasks *ts, Py_ssize_t *k)
{
    int got;
    pthread_mutex_lock(&ts->lock);
    got = ts->next < ts->n;
    if (got)
        *k = ts->next++;
    pthread_mutex_unlock(&ts->lock);
    return got;
}

static void clstm_finish(clstm_tasks *ts, int helper)
{
    pthread_mutex_lock(&ts->lock);
    ts->done++;
    ts->on_helpers += helper;
    if (ts->done == ts->n)
        pthread_cond_signal(&ts->all_done);
    pthread_mutex_unlock(&ts->lock);
}

static void clstm_leave(clstm_tasks *ts)
{
    int last;
    pthread_mutex_lock(&ts->lock);
    last = --ts->refs == 0;
    pthread_mutex_unlock(&ts->lock);
    if (last) {
        pthread_mutex_destroy(&ts->lock);
        pthread_cond_destroy(&ts->all_done);
        free(ts);
    }
}

/* The pool: helper threads started on first need and kept for the process
 * (a fork's child starts with none). `calls` lists the calls in progress;
 * `posted` counts the calls ever posted, so that a helper parks only if
 * nothing was posted since it last looked (no wake-up is lost). */
#define CLSTM_POOL_MAX 64
#define CLSTM_POOL_SPIN_US 100.0

static pthread_mutex_t clstm_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t clstm_pool_wake = PTHREAD_COND_INITIALIZER;
static clstm_tasks *clstm_pool_calls;
static unsigned long clstm_pool_posted;
static int clstm_pool_threads, clstm_pool_parked, clstm_pool_forks_handled;

static void clstm_pool_prepare_fork(void) { pthread_mutex_lock(&clstm_pool_lock); }
static void clstm_pool_after_fork_parent(void) { pthread_mutex_unlock(&clstm_pool_lock); }

static void clstm_pool_after_fork_child(void)
{
    /* the child has only the forking thread: no helpers, parked or busy,
     * and no other thread's calls */
    pthread_cond_t fresh = PTHREAD_COND_INITIALIZER;
    clstm_pool_wake = fresh;
    clstm_pool_calls = NULL;
    clstm_pool_threads = clstm_pool_parked = 0;
    pthread_mutex_unlock(&clstm_pool_lock);
}

static double clstm_now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

/* Under the pool lock: a call with tasks left (its reference taken). */
static clstm_tasks *clstm_pool_take(void)
{
    clstm_tasks *ts;
    for (ts = clstm_pool_calls; ts != NULL; ts = ts->link) {
        pthread_mutex_lock(&ts->lock);
        if (ts->next < ts->n) {
            ts->refs++;
            pthread_mutex_unlock(&ts->lock);
            return ts;
        }
        pthread_mutex_unlock(&ts->lock);
    }
    return NULL;
}

static void *clstm_pool_main(void *arg)
{
    clstm_tasks *ts;
    unsigned long seen;
    Py_ssize_t k;
    double until;
    long spins;
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&clstm_pool_lock);
        ts = clstm_pool_take();
        seen = clstm_pool_posted;
        pthread_mutex_unlock(&clstm_pool_lock);
        if (ts != NULL) {
            clstm_blas_hold();           /* (a helper's limit: never restored) */
            while (clstm_claim(ts, &k)) {
                ts->task(ts->ctx, k);
                clstm_finish(ts, 1);
            }
            clstm_leave(ts);
            continue;
        }
        /* idle: watch for a call a while (back-to-back calls find the
         * helper running), then park */
        until = clstm_now_us() + CLSTM_POOL_SPIN_US;
        for (spins = 0; __atomic_load_n(&clstm_pool_posted, __ATOMIC_RELAXED) == seen; spins++) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            if ((spins & 63) == 63 && clstm_now_us() > until)
                break;
        }
        pthread_mutex_lock(&clstm_pool_lock);
        while (clstm_pool_posted == seen) {
            clstm_pool_parked++;
            pthread_cond_wait(&clstm_pool_wake, &clstm_pool_lock);
            clstm_pool_parked--;
        }
        pthread_mutex_unlock(&clstm_pool_lock);
    }
    return NULL;
}

/* Post a call that wants `helpers` helpers: wake parked ones, start missing
 * ones (the pool grows to the largest call's need, at most CLSTM_POOL_MAX). */
static void clstm_pool_post(clstm_tasks *ts, Py_ssize_t helpers)
{
    pthread_attr_t attr;
    pthread_t thread;
    int start, wake;
    if (helpers > CLSTM_POOL_MAX)
        helpers = CLSTM_POOL_MAX;
    pthread_mutex_lock(&clstm_pool_lock);
    if (!clstm_pool_forks_handled)
        clstm_pool_forks_handled = pthread_atfork(clstm_pool_prepare_fork,
                                                  clstm_pool_after_fork_parent,
                                                  clstm_pool_after_fork_child) == 0;
    ts->link = clstm_pool_calls;
    clstm_pool_calls = ts;
    __atomic_store_n(&clstm_pool_posted, clstm_pool_posted + 1, __ATOMIC_RELAXED);
    for (wake = 0; wake < helpers && wake < clstm_pool_parked; wake++)
        pthread_cond_signal(&clstm_pool_wake);
    start = (int)helpers - clstm_pool_threads;
    if (!clstm_pool_forks_handled)
        start = 0;          /* (without fork handlers, no thread that outlives a call) */
    if (start > 0)
        clstm_pool_threads += start;
    pthread_mutex_unlock(&clstm_pool_lock);
    if (start <= 0)
        return;
    if (pthread_attr_init(&attr) != 0) {
        pthread_mutex_lock(&clstm_pool_lock);
        clstm_pool_threads -= start;
        pthread_mutex_unlock(&clstm_pool_lock);
        return;
    }
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (; start > 0; start--)
        if (pthread_create(&thread, &attr, clstm_pool_main, NULL) != 0)
            break;
    pthread_attr_destroy(&attr);
    if (start > 0) {               /* none to be had: their share runs on the others */
        pthread_mutex_lock(&clstm_pool_lock);
        clstm_pool_threads -= start;
        pthread_mutex_unlock(&clstm_pool_lock);
    }
}

static void clstm_pool_unlink(clstm_tasks *ts)
{
    clstm_tasks **p;
    pthread_mutex_lock(&clstm_pool_lock);
    for (p = &clstm_pool_calls; *p != NULL; p = &(*p)->link)
        if (*p == ts) {
            *p = ts->link;
            break;
        }
    pthread_mutex_unlock(&clstm_pool_lock);
}

static Py_ssize_t clstm_run_tasks(Py_ssize_t n, clstm_task_fn task, void *ctx)
{
    Py_ssize_t k, on_helpers;
    clstm_tasks *ts;
    if (n <= 1)
        return clstm_run_serially(n, task, ctx);
    ts = (clstm_tasks *)malloc(sizeof(clstm_tasks));
    if (ts == NULL || pthread_mutex_init(&ts->lock, NULL) != 0) {
        free(ts);
        return clstm_run_serially(n, task, ctx);
    }
    if (pthread_cond_init(&ts->all_done, NULL) != 0) {
        pthread_mutex_destroy(&ts->lock);
        free(ts);
        return clstm_run_serially(n, task, ctx);
    }
    ts->task = task;
    ts->ctx = ctx;
    ts->n = n;
    ts->next = ts->done = ts->on_helpers = 0;
    ts->refs = 1;
    ts->link = NULL;
    clstm_pool_post(ts, n - 1);
    while (clstm_claim(ts, &k)) {
        task(ctx, k);
        clstm_finish(ts, 0);
    }
    clstm_pool_unlink(ts);         /* every task claimed: helpers need not see it */
    pthread_mutex_lock(&ts->lock);
    while (ts->done < ts->n)
        pthread_cond_wait(&ts->all_done, &ts->lock);
    on_helpers = ts->on_helpers;
    pthread_mutex_unlock(&ts->lock);
    clstm_leave(ts);
    return on_helpers;
}

/* A team splits each step of one scan across threads (batch 1 by units, a
 * training batch of one fixed part by rows; _scan.pyx): the leader, the
 * thread running the scan, publishes each step (a slice function and its
 * context) and runs slice 0; helper k runs slice k. A member starts step s
 * once every other member has finished step s - 1 (each member's progress
 * has a cache line of its own, so a step costs about two cross-core
 * transfers, ~0.13 us here, not the ~10 us of waking a thread); helpers spin
 * between steps, then yield the core after ~2,000 idle checks. A helper that
 * arrives late is let in at the next step; one that never arrives leaves the
 * slices to those that did (the leader alone, at worst): the slices are
 * recounted at every step, and a slice's values never depend on how many
 * there are. A helper claims each slice before it runs it; where a step's
 * slices are shared (long steps: a training step's rows), the leader runs a
 * slice its helper has not claimed by the time the leader waits for it, so a
 * helper that lost its core holds the team up only if it lost it in the
 * middle of a slice. Each step's description goes to one of two slots: slot
 * s % 2 is rewritten for step s + 2 only after every slice of step s has
 * finished. */
typedef void (*clstm_slice_fn)(const void *ctx, Py_ssize_t k, Py_ssize_t n);

/* Start loading n rows of `width` floats (ld apart) into the cache: what
 * the other members wrote in the last step is in their caches, and the
 * loads of a step's first products would otherwise wait for it a line at
 * a time. */
static inline void clstm_prefetch_rows(const float *p, Py_ssize_t n, Py_ssize_t width,
                                       Py_ssize_t ld)
{
    Py_ssize_t r, j;
    for (r = 0; r < n; r++)
        for (j = 0; j < width; j += 16)
            __builtin_prefetch(p + r * ld + j);
}

#define CLSTM_TEAM_MAX 32
#define CLSTM_TEAM_CTX 128     /* bytes of a step's context */

typedef struct {
    long long v;
    char pad[64 - sizeof(long long)];
} clstm_team_line;

typedef struct {
    clstm_slice_fn fn;
    Py_ssize_t n_slices;
    int shared;                /* the leader runs the slices no helper has claimed */
    long long ctx[CLSTM_TEAM_CTX / sizeof(long long)];
} clstm_team_slot;

typedef struct {
    /* progress[m]: steps member m has finished (the leader's: published) */
    clstm_team_line progress[CLSTM_TEAM_MAX];
    /* start[m]: the first step of helper m, -1 until it is let in */
    clstm_team_line start[CLSTM_TEAM_MAX];
    /* taken[m]: the last step whose slice m has been claimed, by helper m
     * or (a step of shared slices) by the leader in its place */
    clstm_team_line taken[CLSTM_TEAM_MAX];
    /* beat[m]: the steps member m has finished inside slices that run many
     * dependent steps each (clstm_team_beat): such a slice waits on its
     * peers' beats, not on published steps; counted across slices */
    clstm_team_line beat[CLSTM_TEAM_MAX];
    clstm_team_line arrived;   /* helpers that came to serve: ids 1, 2, ... */
    clstm_team_line finished;  /* the leader has left: helpers return */
    clstm_team_slot slot[2];
    Py_ssize_t size;           /* members at most */
    Py_ssize_t active;         /* members of the current step (the leader's) */
    long long steps;           /* steps published (the leader's) */
    long long beats;           /* beats handed out to slices (the leader's) */
    /* the leader's probe (clstm_team_step), in clstm_ticks: its steps run
     * alone and its steps with the whole team, counted with their warm-up
     * steps; and whether it runs every step alone from now on */
    unsigned long long alone_ticks, team_ticks;
    int alone_steps, team_steps, solo;
} clstm_team;

/* A team pays only while its members' progress reaches each other quickly:
 * on a VM whose cores' cache-line transfers slow down (for minutes at a time
 * on the 2-core VM of benchmarks/RESULTS.md: a 2-thread batch-1 inference
 * of 200 steps took 156-160 us against 87-94 on one thread, while two
 * processes on the two cores each kept full speed), every step takes longer
 * with the team than alone. So the leader of a team of unshared slices
 * (steps of equal slices too short to take over: batch-1 inference by
 * units) times its first steps alone (no step of theirs published: the
 * helpers not yet let in, or waiting after a shared step before these, an
 * input projection split with them, which finishes first), then its
 * first steps with the helpers that have come (its wait for the others and
 * its own slice), each after CLSTM_TEAM_PROBE_WARM steps untimed; where a step with
 * the team took longer than one alone, it runs the rest of the call alone
 * (the helpers return to the pool; each slice's values never depend on the
 * split, so the bits are the same). (Comparing the team's waits with its own
 * slices alone missed it: the leader's slice reads the other core's half of
 * h, so the slow transfers show in both.) Teams of shared slices (training
 * by rows) are not probed: a ragged backward's first steps have few rows,
 * unevenly split, and a helper off its core loses its rows to the leader
 * there anyway. The next such teams start alone too, 1, 3, 7, ... up to
 * CLSTM_TEAM_BACKOFF_MAX of them after each failed probe, and the first
 * probe that pays ends that. */
#define CLSTM_TEAM_PROBE_WARM 2
#define CLSTM_TEAM_PROBE_ALONE 8
#define CLSTM_TEAM_PROBE_STEPS 16
#define CLSTM_TEAM_BACKOFF_MAX 63

static int clstm_team_backoff, clstm_team_skip;   /* (relaxed atomics) */
static int clstm_team_mode;        /* tests: 0 probe, 1 always alone after it, 2 never */
static long long clstm_team_solo_count;            /* calls that went on alone (tests) */

static inline unsigned long long clstm_ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
#endif
}

static void clstm_team_init(clstm_team *team, Py_ssize_t size)
{
    Py_ssize_t m;
    memset(team, 0, sizeof(*team));
    for (m = 0; m < CLSTM_TEAM_MAX; m++)
        team->start[m].v = -1;
    team->size = size < 1 ? 1 : (size > CLSTM_TEAM_MAX ? CLSTM_TEAM_MAX : size);
    team->active = 1;
}

static void clstm_team_sync(clstm_team *team);

/* The leader, before the first step of unshared slices: a call after a
 * failed probe goes alone from the start (every step published before, a
 * shared one, finished first; its helpers return as they come). */
static int clstm_team_skips(clstm_team *team)
{
    const int skip = __atomic_load_n(&clstm_team_skip, __ATOMIC_RELAXED);
    if (skip <= 0 || clstm_team_mode == 2)
        return 0;
    __atomic_store_n(&clstm_team_skip, skip - 1, __ATOMIC_RELAXED);
    clstm_team_sync(team);
    team->solo = 1;
    __atomic_store_n(&team->finished.v, 1, __ATOMIC_RELEASE);
    return 1;
}

static inline void clstm_team_idle(long *spins)
{
    if (++*spins < 2000) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield();
    }
}

/* Wait until counters[m] >= value for the members m in [from, n) other than
 * `self` (what each wrote before raising its counter is visible after). */
static void clstm_team_wait_for(const clstm_team_line *counters, Py_ssize_t from, Py_ssize_t n,
                                Py_ssize_t self, long long value)
{
    Py_ssize_t m;
    long spins = 0;
    for (m = from; m < n; m++)
        if (m != self)
            while (__atomic_load_n(&counters[m].v, __ATOMIC_ACQUIRE) < value)
                clstm_team_idle(&spins);
}

/* Wait until members [1, n) other than `self` have finished `steps` steps. */
static void clstm_team_wait(clstm_team *team, Py_ssize_t n, Py_ssize_t self, long long steps)
{
    clstm_team_wait_for(team->progress, 1, n, self, steps);
}

/* Spins before the leader runs a shared slice its helper has not claimed
 * (a few us: a helper on its core claims a step within ~0.1 us of it being
 * published, so on a quiet machine this never happens). */
#define CLSTM_TEAM_STEAL_SPINS 256

/* The leader: wait until members [1, n) have finished `steps` steps; a
 * slice of step steps - 1 that its helper has not claimed by then (a helper
 * off its core) the leader claims and runs itself, where that step's slices
 * are shared. Only the leader runs other members' slices, and only here. */
static void clstm_team_lead(clstm_team *team, Py_ssize_t n, long long steps)
{
    Py_ssize_t m;
    const clstm_team_slot *slot = &team->slot[(steps - 1) & 1];
    for (m = 1; m < n; m++) {
        long spins = 0;
        while (__atomic_load_n(&team->progress[m].v, __ATOMIC_ACQUIRE) < steps) {
            long long unclaimed = steps - 2;
            if (steps > 0 && slot->shared && spins >= CLSTM_TEAM_STEAL_SPINS
                    && __atomic_load_n(&team->taken[m].v, __ATOMIC_RELAXED) == unclaimed
                    && __atomic_compare_exchange_n(&team->taken[m].v, &unclaimed, steps - 1,
                                                   0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
                slot->fn(slot->ctx, m, slot->n_slices);
                __atomic_store_n(&team->progress[m].v, steps, __ATOMIC_RELEASE);
                break;
            }
            clstm_team_idle(&spins);
        }
    }
}

/* The leader: every member has finished every published step (before it
 * reads what the others wrote). */
static void clstm_team_sync(clstm_team *team)
{
    if (team != NULL)
        clstm_team_lead(team, team->active, team->steps);
}

/* The leader, after its probe: go on alone where the team did not pay
 * (see CLSTM_TEAM_PROBE_STEPS): every published step finished first, then
 * the helpers let go. */
static void clstm_team_judge(clstm_team *team)
{
    int backoff;
    const int alone = clstm_team_mode == 1 || (clstm_team_mode == 0
        && team->team_ticks * CLSTM_TEAM_PROBE_ALONE
           > team->alone_ticks * CLSTM_TEAM_PROBE_STEPS);
    if (!alone) {
        __atomic_store_n(&clstm_team_backoff, 0, __ATOMIC_RELAXED);
        return;
    }
    clstm_team_sync(team);
    __atomic_store_n(&team->finished.v, 1, __ATOMIC_RELEASE);
    team->solo = 1;
    backoff = __atomic_load_n(&clstm_team_backoff, __ATOMIC_RELAXED);
    backoff = 2 * backoff + 1 > CLSTM_TEAM_BACKOFF_MAX ? CLSTM_TEAM_BACKOFF_MAX : 2 * backoff + 1;
    __atomic_store_n(&clstm_team_backoff, backoff, __ATOMIC_RELAXED);
    __atomic_store_n(&clstm_team_skip, backoff, __ATOMIC_RELAXED);
    clstm_count(&clstm_team_solo_count);
}

/* Tests: the probe's verdict (0: measured, 1: alone after it, 2: never
 * alone), with no call pending alone; returns the previous mode. */
static int clstm_team_set_mode(int mode)
{
    const int previous = clstm_team_mode;
    clstm_team_mode = mode;
    __atomic_store_n(&clstm_team_backoff, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&clstm_team_skip, 0, __ATOMIC_RELAXED);
    return previous;
}

static long long clstm_team_solo_calls(void)
{
    return __atomic_load_n(&clstm_team_solo_count, __ATOMIC_RELAXED);
}

/* The leader: one step, fn(ctx, k, n) for the n members' slices (ctx:
 * `size` <= CLSTM_TEAM_CTX bytes, copied); returns after its own slice 0.
 * `shared`: a helper that has not claimed its slice when the leader next
 * waits for it (one that lost its core) has it run by the leader instead,
 * so it holds the step up only if it loses its core in the middle of its
 * slice; unshared slices (steps too short to take over) always wait for
 * their helper. Without a team, the whole step: fn(ctx, 0, 1). */
static void clstm_team_step(clstm_team *team, clstm_slice_fn fn, const void *ctx, size_t size,
                            int shared)
{
    long long s;
    clstm_team_slot *slot;
    Py_ssize_t m, arrived;
    if (team == NULL) {
        fn(ctx, 0, 1);
        return;
    }
    if (team->solo || (!shared && team->alone_steps == 0 && team->team_steps == 0
                       && clstm_team_skips(team))) {
        fn(ctx, 0, 1);
        return;
    }
    if (!shared && team->team_steps == 0
            && team->alone_steps < CLSTM_TEAM_PROBE_WARM + CLSTM_TEAM_PROBE_ALONE) {
        /* the probe's steps alone: none published (a shared step before
         * them, an input projection, is: finished first, as these steps
         * read what it wrote; its helpers then wait for the next) */
        unsigned long long t0;
        if (team->alone_steps == 0)
            clstm_team_sync(team);
        t0 = clstm_ticks();
        fn(ctx, 0, 1);
        if (team->alone_steps++ >= CLSTM_TEAM_PROBE_WARM)
            team->alone_ticks += clstm_ticks() - t0;
        return;
    }
    s = team->steps;
    arrived = (Py_ssize_t)__atomic_load_n(&team->arrived.v, __ATOMIC_ACQUIRE);
    if (arrived > team->size - 1)
        arrived = team->size - 1;
    while (team->active <= arrived) {          /* let the new helpers in */
        m = team->active++;
        __atomic_store_n(&team->progress[m].v, s, __ATOMIC_RELAXED);
        __atomic_store_n(&team->taken[m].v, s - 1, __ATOMIC_RELAXED);
        __atomic_store_n(&team->start[m].v, s, __ATOMIC_RELEASE);
    }
    slot = &team->slot[s & 1];
    slot->fn = fn;
    slot->n_slices = team->active;
    slot->shared = shared;
    memcpy(slot->ctx, ctx, size);
    team->steps = s + 1;
    __atomic_store_n(&team->progress[0].v, s + 1, __ATOMIC_RELEASE);
    if (!shared && team->active > 1
            && team->team_steps < CLSTM_TEAM_PROBE_WARM + CLSTM_TEAM_PROBE_STEPS) {
        /* the probe's steps with the team (the helpers that have come): the
         * wait for the others' last step, then our slice */
        const unsigned long long t0 = clstm_ticks();
        clstm_team_lead(team, team->active, s);
        fn(slot->ctx, 0, team->active);
        if (team->team_steps++ >= CLSTM_TEAM_PROBE_WARM)
            team->team_ticks += clstm_ticks() - t0;
        if (team->team_steps == CLSTM_TEAM_PROBE_WARM + CLSTM_TEAM_PROBE_STEPS)
            clstm_team_judge(team);
        return;
    }
    clstm_team_lead(team, team->active, s);
    fn(slot->ctx, 0, team->active);
}

/* The leader: whether every helper has come to serve, so that the next
 * step is split across the whole team (until then a step has the members
 * that have arrived). */
static inline int clstm_team_complete(clstm_team *team)
{
    return team != NULL
        && __atomic_load_n(&team->arrived.v, __ATOMIC_ACQUIRE) >= team->size - 1;
}

/* The leader, before a long first step that its members should share (an
 * input projection that each member's later steps read in part): wait up to
 * `us` microseconds for the helpers to come (they are let in at that step),
 * not longer: a helper off its core leaves its share to the leader. */
static void clstm_team_gather(clstm_team *team, double us)
{
    long spins = 0;
    double until;
    if (team == NULL || team->solo || clstm_team_complete(team))
        return;
    until = clstm_now_us() + us;
    while (!clstm_team_complete(team)) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if ((++spins & 63) == 0 && clstm_now_us() > until)
            return;
    }
}

/* The leader: whether its probe is over (CLSTM_TEAM_PROBE_STEPS: it goes on
 * alone, or with the team) and every helper has come, so that slices that
 * run many steps each (clstm_team_take_beats) may follow. */
static inline int clstm_team_probed(clstm_team *team)
{
    return team != NULL && (team->solo || (clstm_team_complete(team)
        && team->team_steps >= CLSTM_TEAM_PROBE_WARM + CLSTM_TEAM_PROBE_STEPS));
}

/* The leader, before publishing a slice of `count` dependent steps: the
 * first beat of that slice (its members' step i is beat first + i). */
static inline long long clstm_team_take_beats(clstm_team *team, long long count)
{
    const long long first = team->beats;
    team->beats += count;
    return first;
}

/* Member k of n: wait until the other members have finished beat b - 1
 * (step b - first of the slice), then read what they wrote in it. */
static inline void clstm_team_await(clstm_team *team, Py_ssize_t k, Py_ssize_t n, long long b)
{
    clstm_team_wait_for(team->beat, 0, n, k, b);
}

/* Member k has finished beat b (what it wrote in it is visible after). */
static inline void clstm_team_beat(clstm_team *team, Py_ssize_t k, long long b)
{
    __atomic_store_n(&team->beat[k].v, b + 1, __ATOMIC_RELEASE);
}

/* The leader has run its last step: wait for the others, let them go. */
static void clstm_team_leave(clstm_team *team)
{
    clstm_team_sync(team);
    __atomic_store_n(&team->finished.v, 1, __ATOMIC_RELEASE);
}

/* A helper: wait to be let in, then run its slice of every step. */
static void clstm_team_serve(clstm_team *team)
{
    long spins = 0;
    long long t;
    clstm_team_slot *slot;
    Py_ssize_t id = (Py_ssize_t)__atomic_add_fetch(&team->arrived.v, 1, __ATOMIC_ACQ_REL);
    if (id >= team->size)
        return;
    while ((t = __atomic_load_n(&team->start[id].v, __ATOMIC_ACQUIRE)) < 0) {
        if (__atomic_load_n(&team->finished.v, __ATOMIC_ACQUIRE))
            return;
        clstm_team_idle(&spins);
    }
    for (;; t++) {
        spins = 0;
        while (__atomic_load_n(&team->progress[0].v, __ATOMIC_ACQUIRE) <= t) {
            /* the leader syncs before it leaves: no step of ours is pending */
            if (__atomic_load_n(&team->finished.v, __ATOMIC_ACQUIRE))
                return;
            clstm_team_idle(&spins);
        }
        /* claim the slice first: one the leader has taken is skipped (its
         * slot may hold a later step by now); one we claim keeps its slot
         * until we are done */
        {
            long long previous = t - 1;
            if (!__atomic_compare_exchange_n(&team->taken[id].v, &previous, t, 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                continue;
        }
        /* our previous slice, if the leader took it, may still be running */
        while (__atomic_load_n(&team->progress[id].v, __ATOMIC_ACQUIRE) < t)
            clstm_team_idle(&spins);
        slot = &team->slot[t & 1];
        clstm_team_wait(team, slot->n_slices, id, t);
        slot->fn(slot->ctx, id, slot->n_slices);
        __atomic_store_n(&team->progress[id].v, t + 1, __ATOMIC_RELEASE);
    }
}

#else
#define CLSTM_HAVE_THREADS 0

static Py_ssize_t clstm_run_tasks(Py_ssize_t n, clstm_task_fn task, void *ctx)
{
    return clstm_run_serially(n, task, ctx);
}

/* No threads: a team of one, the leader (see above). */
typedef void (*clstm_slice_fn)(const void *ctx, Py_ssize_t k, Py_ssize_t n);

static inline void clstm_prefetch_rows(const float *p, Py_ssize_t n, Py_ssize_t width,
                                       Py_ssize_t ld)
{
    (void)p; (void)n; (void)width; (void)ld;
}

#define CLSTM_TEAM_MAX 1

typedef struct {
    int unused;
} clstm_team;

static void clstm_team_init(clstm_team *team, Py_ssize_t size) { (void)size; team->unused = 0; }
static void clstm_team_sync(clstm_team *team) { (void)team; }
static int clstm_team_set_mode(int mode) { (void)mode; return 0; }
static long long clstm_team_solo_calls(void) { return 0; }
static inline int clstm_team_complete(clstm_team *team) { (void)team; return 0; }
static inline int clstm_team_probed(clstm_team *team) { (void)team; return 0; }
static inline long long clstm_team_take_beats(clstm_team *team, long long count)
{
    (void)team; (void)count; return 0;
}
static inline void clstm_team_await(clstm_team *team, Py_ssize_t k, Py_ssize_t n, long long b)
{
    (void)team; (void)k; (void)n; (void)b;
}
static inline void clstm_team_beat(clstm_team *team, Py_ssize_t k, long long b)
{
    (void)team; (void)k; (void)b;
}

static void clstm_team_step(clstm_team *team, clstm_slice_fn fn, const void *ctx, size_t size,
                            int shared)
{
    (void)team;
    (void)size;
    (void)shared;
    fn(ctx, 0, 1);
}

static void clstm_team_leave(clstm_team *team) { (void)team; }
static void clstm_team_gather(clstm_team *team, double us) { (void)team; (void)us; }
static void clstm_team_serve(clstm_team *team) { (void)team; }
#endif

#endif /* CLSTM_THREADS_H */
