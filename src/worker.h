/*
 * worker.h
 *		The background launcher and its per-database workers.
 */
#ifndef APIKEYS_WORKER_H
#define APIKEYS_WORKER_H

#include "fmgr.h"

/* GUCs, in milliseconds, seconds and days. */
extern int	apikeys_flush_interval;
extern int	apikeys_expiry_interval;
extern int	apikeys_usage_retention_days;

extern Size worker_shmem_size(void);
extern void worker_shmem_startup(void);

/* Registers the launcher (from _PG_init, while preloading). */
extern void apikeys_register_launcher(void);

/* Installs the hooks of ddl.c: workers step aside for database DDL. */
extern void apikeys_install_ddl_hooks(void);

/* What DDL asks of the workers (ddl.c); all do nothing when not preloaded. */
extern void worker_request_start(Oid dbid);
extern void worker_wake(Oid dbid);
extern bool worker_pause(Oid dbid);
extern void worker_wait_stopped(Oid dbid);
extern void worker_resume(Oid dbid);

/* Sets the latch of every running worker (the counter table is full). */
extern void apikeys_wake_workers(void);

extern PGDLLEXPORT void apikeys_launcher_main(Datum arg);
extern PGDLLEXPORT void apikeys_worker_main(Datum arg);

#endif							/* APIKEYS_WORKER_H */
