/*
 * slots.h
 *		The worker slots: what the launcher, the workers and backends tell
 *		each other about each database's worker, in shared memory.
 */
#ifndef APIKEYS_SLOTS_H
#define APIKEYS_SLOTS_H

#include "datatype/timestamp.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

/* What a worker found in its database. */
#define VERDICT_UNKNOWN			0
#define VERDICT_EXTENSION		1
#define VERDICT_NO_EXTENSION	2

/* A worker stopped by its own choice or by a kill is restarted after this. */
#define RESTART_DELAY_MS		1000

/* A standby worker's shipping, as apikey_standby_status() shows it. */
#define SHIP_TEXT_LEN			256
typedef struct ShipStatus
{
	bool		connected;
	uint64		last_batch;		/* last batch the primary confirmed */
	TimestampTz last_shipped_at;
	TimestampTz since;			/* when shipping started (for the lag) */
	uint64		batches;
	uint64		calls;
	uint64		rejected;
	uint64		errors;
	TimestampTz last_error_at;
	char		last_error[SHIP_TEXT_LEN];
	char		target[SHIP_TEXT_LEN];	/* the connection string, without secrets */
} ShipStatus;

/* One database's worker, as everyone sees it.  Protected by slots_shared->lock. */
typedef struct WorkerSlot
{
	Oid			dbid;			/* InvalidOid: free */
	pid_t		pid;			/* running worker, or 0 */
	Latch	   *latch;			/* its latch, or NULL */
	int			pausers;		/* utility commands that need it stopped */
	bool		wanted;			/* CREATE EXTENSION committed: start one */
	int			verdict;		/* what the last worker found: VERDICT_* */
	uint64		flush_requested;	/* generation asked for by flush_usage() */
	uint64		flush_done;		/* generation the worker last completed */
	uint64		flush_failed;	/* generation a standby's ship last failed for */
	ShipStatus	ship;			/* on a hot standby */
} WorkerSlot;

typedef struct WorkerShared
{
	LWLock	   *lock;
	Latch	   *launcher_latch;
	ConditionVariable flushed;	/* broadcast after each flush */
	int			nslots;
	WorkerSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} WorkerShared;

/* NULL unless the library was preloaded. */
extern WorkerShared *slots_shared;

extern Size slots_shmem_size(void);
extern void slots_shmem_startup(void);

/* The slot of dbid, created if asked and possible; NULL otherwise (lock held). */
extern WorkerSlot *slot_find(Oid dbid, bool create);

/* Frees a slot that holds nothing for anyone any more (lock held). */
extern void slot_release_if_idle(WorkerSlot *slot);

/*
 * On a hot standby: true unless dbid's last ship attempt failed (a full
 * counter table then waits for the next ship rather than drop a count).
 */
extern bool slot_ship_ok(Oid dbid);

/* Sets the launcher's latch (it then looks at pg_database and the slots). */
extern void wake_launcher(void);

/* Sets the latch of every running worker and of the launcher (the counter
 * table is full: flush, and start a stopped database's worker at once). */
extern void apikeys_wake_workers(void);

/* What DDL asks of the workers (ddl.c); all do nothing when not preloaded. */
extern void worker_request_start(Oid dbid);
/* Asks for dbid's worker if none runs and none is paused (counts appeared). */
extern void worker_ensure_running(Oid dbid);
extern void worker_wake(Oid dbid);
extern bool worker_pause(Oid dbid);
extern void worker_wait_stopped(Oid dbid);
extern void worker_resume(Oid dbid);

/* Milliseconds from now until t, at least 0. */
static inline long
ms_until(TimestampTz t, TimestampTz now)
{
	return t <= now ? 0 : (long) ((t - now) / 1000);
}

#endif							/* APIKEYS_SLOTS_H */
