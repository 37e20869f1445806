/* Run n independent tasks on short-lived POSIX threads (no OpenMP runtime).
 *
 * clstm_run_tasks(n, task, ctx) calls task(ctx, k) for k = 0 .. n-1 and
 * returns when all have finished. It starts n - 1 helper threads; the
 * calling thread and the helpers claim the tasks in order, one at a time, so
 * a helper that the OS does not schedule promptly (its core busy with
 * another process) loses its tasks to the threads that are running instead
 * of holding the call up: the call is never slower than running the tasks
 * serially by more than the cost of starting the threads (measured with a
 * busy loop on the other core: a 2-thread ts-small forward that joined its
 * helper took 1.13-1.44 ms median, 0.90-0.94 ms claiming, 0.84 ms on one
 * thread). Helpers are detached; one that starts after the call returned
 * finds nothing to claim and exits without touching `ctx`. Which thread runs
 * a task never changes its result. Without pthreads (Windows builds) every
 * task runs serially on the calling thread.
 *
 * Threads are created per call rather than kept in a pool: creating one
 * costs ~10-30 us on Linux, well under the work that makes a split worth it
 * (see MIN_WORK_PER_THREAD in clstm/_rnn.py), and there is then nothing to
 * leak, to wake, or to deadlock at fork or interpreter exit.
 *
 * Returns the number of tasks that ran on helper threads.
 */
#ifndef CLSTM_THREADS_H
#define CLSTM_THREADS_H

#include <stdlib.h>

typedef void (*clstm_task_fn)(void *ctx, Py_ssize_t k);

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
#define CLSTM_HAVE_THREADS 1

/* State shared by the caller and its helpers, freed by the last to leave. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t all_done;
    clstm_task_fn task;
    void *ctx;
    Py_ssize_t n, next, done, on_helpers;
    int refs;
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

static void *clstm_helper_main(void *arg)
{
    clstm_tasks *ts = (clstm_tasks *)arg;
    Py_ssize_t k;
    while (clstm_claim(ts, &k)) {
        ts->task(ts->ctx, k);
        clstm_finish(ts, 1);
    }
    clstm_leave(ts);
    return NULL;
}

static Py_ssize_t clstm_run_tasks(Py_ssize_t n, clstm_task_fn task, void *ctx)
{
    Py_ssize_t k, on_helpers;
    pthread_attr_t attr;
    pthread_t thread;
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
    if (pthread_attr_init(&attr) == 0) {
        if (pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0) {
            for (k = 1; k < n; k++) {
                pthread_mutex_lock(&ts->lock);
                ts->refs++;
                pthread_mutex_unlock(&ts->lock);
                if (pthread_create(&thread, &attr, clstm_helper_main, ts) != 0) {
                    pthread_mutex_lock(&ts->lock);
                    ts->refs--;               /* no thread: its tasks run here */
                    pthread_mutex_unlock(&ts->lock);
                    break;
                }
            }
        }
        pthread_attr_destroy(&attr);
    }
    while (clstm_claim(ts, &k)) {
        task(ctx, k);
        clstm_finish(ts, 0);
    }
    pthread_mutex_lock(&ts->lock);
    while (ts->done < ts->n)
        pthread_cond_wait(&ts->all_done, &ts->lock);
    on_helpers = ts->on_helpers;
    pthread_mutex_unlock(&ts->lock);
    clstm_leave(ts);
    return on_helpers;
}

#else
#define CLSTM_HAVE_THREADS 0

static Py_ssize_t clstm_run_tasks(Py_ssize_t n, clstm_task_fn task, void *ctx)
{
    return clstm_run_serially(n, task, ctx);
}
#endif

#endif /* CLSTM_THREADS_H */
