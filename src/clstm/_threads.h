/* Run n independent tasks on short-lived POSIX threads (no OpenMP runtime).
 *
 * clstm_run_tasks(n, task, ctx) calls task(ctx, k) for k = 0 .. n-1 and
 * returns when all have finished: task 0 on the calling thread, the others
 * on threads created here and joined before returning. A task whose thread
 * cannot be created runs on the calling thread afterwards, so the result
 * never depends on whether threads were available. Without pthreads
 * (Windows builds) every task runs serially on the calling thread.
 *
 * Threads are created per call rather than kept in a pool: creating and
 * joining one costs ~10-30 us on Linux, well under the work that makes a
 * split worth it (see MIN_WORK_PER_THREAD in clstm/_rnn.py), and there is
 * then nothing to leak, to wake, or to deadlock at fork or interpreter exit.
 *
 * Returns the number of tasks that ran on threads of their own.
 */
#ifndef CLSTM_THREADS_H
#define CLSTM_THREADS_H

#include <stdlib.h>

typedef void (*clstm_task_fn)(void *ctx, Py_ssize_t k);

#if !defined(_WIN32) && (defined(__unix__) || defined(__APPLE__))
#include <pthread.h>
#define CLSTM_HAVE_THREADS 1

typedef struct {
    clstm_task_fn task;
    void *ctx;
    Py_ssize_t k;
} clstm_job;

static void *clstm_thread_main(void *arg)
{
    clstm_job *job = (clstm_job *)arg;
    job->task(job->ctx, job->k);
    return NULL;
}

static Py_ssize_t clstm_run_tasks(Py_ssize_t n, clstm_task_fn task, void *ctx)
{
    Py_ssize_t k, n_threads = 0;
    pthread_t *threads;
    clstm_job *jobs;
    char *started;
    if (n <= 1) {
        if (n == 1)
            task(ctx, 0);
        return 0;
    }
    threads = (pthread_t *)malloc((size_t)n * sizeof(pthread_t));
    jobs = (clstm_job *)malloc((size_t)n * sizeof(clstm_job));
    started = (char *)calloc((size_t)n, 1);
    if (threads == NULL || jobs == NULL || started == NULL) {
        free(threads);
        free(jobs);
        free(started);
        for (k = 0; k < n; k++)
            task(ctx, k);
        return 0;
    }
    for (k = 1; k < n; k++) {
        jobs[k].task = task;
        jobs[k].ctx = ctx;
        jobs[k].k = k;
        started[k] = pthread_create(&threads[k], NULL, clstm_thread_main, &jobs[k]) == 0;
        n_threads += started[k];
    }
    task(ctx, 0);
    for (k = 1; k < n; k++) {
        if (started[k])
            pthread_join(threads[k], NULL);
        else
            task(ctx, k);      /* no thread for it: run it here */
    }
    free(threads);
    free(jobs);
    free(started);
    return n_threads;
}

#else
#define CLSTM_HAVE_THREADS 0

static Py_ssize_t clstm_run_tasks(Py_ssize_t n, clstm_task_fn task, void *ctx)
{
    Py_ssize_t k;
    for (k = 0; k < n; k++)
        task(ctx, k);
    return 0;
}
#endif

#endif /* CLSTM_THREADS_H */
