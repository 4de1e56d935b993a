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

/* Installs the ProcessUtility hook that steps workers aside for database DDL. */
extern void apikeys_install_utility_hook(void);

/* Sets the latch of every running worker (the counter table is full). */
extern void apikeys_wake_workers(void);

extern PGDLLEXPORT void apikeys_launcher_main(Datum arg);
extern PGDLLEXPORT void apikeys_worker_main(Datum arg);

#endif							/* APIKEYS_WORKER_H */
