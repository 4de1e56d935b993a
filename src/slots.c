/*
 * slots.c
 *		The worker slots in shared memory, and what backends ask of the
 *		workers through them: start, wake, pause, resume, flush now.
 *
 * One slot per database the launcher or a backend has something to say
 * about, all under one LWLock (the tranche's APIKEYS_LOCK_SLOTS).  A slot
 * carries the worker's pid and latch, the pause count, the "extension
 * wanted" message, the worker's verdict (extension or none), and the flush
 * request/done generations that flush_usage() waits on.  A slot is freed
 * only when it holds nothing for anyone: no worker, no pause, no request
 * to start, no verdict and no flush request outstanding.
 *
 * There are 2 * max_worker_processes + 8 slots: a database without a free
 * slot cannot be paused or flushed on request (its worker still runs).
 */
#include "postgres.h"

#include <signal.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "pgstat.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "guc.h"
#include "slots.h"

/* How long DDL waits for a worker to stop, and flush_usage() for a flush. */
#define PAUSE_WAIT_MS			10000
#define FLUSH_WAIT_MS			30000

WorkerShared *slots_shared = NULL;

PG_FUNCTION_INFO_V1(apikeys_flush_usage);

static int
slot_count(void)
{
	return 2 * max_worker_processes + 8;
}

Size
slots_shmem_size(void)
{
	return add_size(offsetof(WorkerShared, slots),
					mul_size(slot_count(), sizeof(WorkerSlot)));
}

/* Called from the shmem_startup_hook, under AddinShmemInitLock. */
void
slots_shmem_startup(void)
{
	bool		found;

	slots_shared = ShmemInitStruct("apikeys workers", slots_shmem_size(), &found);
	if (!found)
	{
		memset(slots_shared, 0, slots_shmem_size());
		slots_shared->lock = apikeys_lock(APIKEYS_LOCK_SLOTS);
		ConditionVariableInit(&slots_shared->flushed);
		slots_shared->nslots = slot_count();
	}
}

WorkerSlot *
slot_find(Oid dbid, bool create)
{
	WorkerSlot *free_slot = NULL;

	for (int i = 0; i < slots_shared->nslots; i++)
	{
		if (slots_shared->slots[i].dbid == dbid)
			return &slots_shared->slots[i];
		if (free_slot == NULL && slots_shared->slots[i].dbid == InvalidOid)
			free_slot = &slots_shared->slots[i];
	}
	if (create && free_slot)
	{
		memset(free_slot, 0, sizeof(WorkerSlot));
		free_slot->dbid = dbid;
		return free_slot;
	}
	return NULL;
}

/*
 * Frees a slot that holds nothing for anyone any more (lock held).  A slot
 * with a flush request outstanding stays: flush_usage() is watching it, and
 * the next worker must see the request.
 */
void
slot_release_if_idle(WorkerSlot *slot)
{
	if (slot->pid == 0 && slot->pausers == 0 && !slot->wanted &&
		slot->verdict == VERDICT_UNKNOWN &&
		slot->flush_requested == slot->flush_done)
		slot->dbid = InvalidOid;
}

void
wake_launcher(void)
{
	Latch	   *latch;

	LWLockAcquire(slots_shared->lock, LW_SHARED);
	latch = slots_shared->launcher_latch;
	LWLockRelease(slots_shared->lock);
	if (latch)
		SetLatch(latch);
}

void
apikeys_wake_workers(void)
{
	if (slots_shared == NULL)
		return;
	LWLockAcquire(slots_shared->lock, LW_SHARED);
	for (int i = 0; i < slots_shared->nslots; i++)
		if (slots_shared->slots[i].latch)
			SetLatch(slots_shared->slots[i].latch);
	if (slots_shared->launcher_latch)
		SetLatch(slots_shared->launcher_latch);
	LWLockRelease(slots_shared->lock);
}

bool
slot_ship_ok(Oid dbid)
{
	WorkerSlot *slot;
	bool		ok = true;

	if (slots_shared == NULL)
		return false;
	LWLockAcquire(slots_shared->lock, LW_SHARED);
	slot = slot_find(dbid, false);
	if (slot && slot->ship.errors > 0 && slot->ship.last_error_at >= slot->ship.last_shipped_at)
		ok = false;
	LWLockRelease(slots_shared->lock);
	return ok;
}

/* At commit of CREATE EXTENSION: asks the launcher for dbid's worker now. */
void
worker_request_start(Oid dbid)
{
	WorkerSlot *slot;

	if (slots_shared == NULL)
		return;
	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
	slot = slot_find(dbid, true);
	if (slot)
		slot->wanted = true;
	LWLockRelease(slots_shared->lock);
	wake_launcher();
}

void
worker_ensure_running(Oid dbid)
{
	WorkerSlot *slot;
	bool		missing;

	if (slots_shared == NULL)
		return;
	LWLockAcquire(slots_shared->lock, LW_SHARED);
	slot = slot_find(dbid, false);
	missing = (slot == NULL || (slot->pid == 0 && slot->pausers == 0 && !slot->wanted));
	LWLockRelease(slots_shared->lock);
	if (missing)
		worker_request_start(dbid);
}

/* Sets the latch of dbid's worker, if it runs (it then looks at its database). */
void
worker_wake(Oid dbid)
{
	WorkerSlot *slot;
	Latch	   *latch = NULL;

	if (slots_shared == NULL)
		return;
	LWLockAcquire(slots_shared->lock, LW_SHARED);
	slot = slot_find(dbid, false);
	if (slot)
		latch = slot->latch;
	LWLockRelease(slots_shared->lock);
	if (latch)
		SetLatch(latch);
}

/*
 * Keeps dbid's worker from being started until worker_resume; false if no
 * slot was free (nothing to undo then).  Does not wait: see
 * worker_wait_stopped.
 */
bool
worker_pause(Oid dbid)
{
	WorkerSlot *slot;

	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
	slot = slot_find(dbid, true);
	if (slot)
		slot->pausers++;
	LWLockRelease(slots_shared->lock);
	return slot != NULL;
}

/*
 * Stops dbid's worker (which must be paused) and waits for it to leave, up
 * to PAUSE_WAIT_MS.  Interruptible: the caller must resume on error.
 */
void
worker_wait_stopped(Oid dbid)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   PAUSE_WAIT_MS);
	pid_t		signalled = 0;

	for (;;)
	{
		WorkerSlot *slot;
		pid_t		pid = 0;

		LWLockAcquire(slots_shared->lock, LW_SHARED);
		slot = slot_find(dbid, false);
		if (slot)
			pid = slot->pid;
		LWLockRelease(slots_shared->lock);
		if (pid == 0 || GetCurrentTimestamp() >= deadline)
			break;
		/* once: a second SIGTERM would cut short the worker's last flush */
		if (pid != signalled)
		{
			(void) kill(pid, SIGTERM);
			signalled = pid;
		}
		pg_usleep(10000L);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Undoes one worker_pause: the launcher restarts the worker as for a killed one. */
void
worker_resume(Oid dbid)
{
	WorkerSlot *slot;

	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
	slot = slot_find(dbid, false);
	if (slot && slot->pausers > 0)
	{
		slot->pausers--;
		slot_release_if_idle(slot);
	}
	LWLockRelease(slots_shared->lock);
	wake_launcher();
}

/*
 * apikeys.flush_usage(): has this database's worker flush now and waits for
 * it (up to FLUSH_WAIT_MS).  True when the flush completed.
 */
Datum
apikeys_flush_usage(PG_FUNCTION_ARGS)
{
	WorkerSlot *slot;
	uint64		target;
	TimestampTz deadline;
	bool		done = false;
	bool		failed = false;

	apikeys_require_preload();

	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
	slot = slot_find(MyDatabaseId, true);
	if (slot == NULL)
	{
		LWLockRelease(slots_shared->lock);
		PG_RETURN_BOOL(false);
	}
	target = ++slot->flush_requested;
	/* no worker (say, CREATE EXTENSION committed by COMMIT PREPARED): ask for one */
	if (slot->pid == 0 && slot->pausers == 0)
		slot->wanted = true;
	LWLockRelease(slots_shared->lock);
	wake_launcher();

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), FLUSH_WAIT_MS);
	ConditionVariablePrepareToSleep(&slots_shared->flushed);
	while (GetCurrentTimestamp() < deadline)
	{
		Latch	   *latch;

		LWLockAcquire(slots_shared->lock, LW_SHARED);
		done = (slot->dbid == MyDatabaseId && slot->flush_done >= target);
		failed = (slot->dbid == MyDatabaseId && slot->flush_failed >= target);
		latch = slot->latch;
		LWLockRelease(slots_shared->lock);
		if (done || failed)
			break;
		if (latch)
			SetLatch(latch);
		(void) ConditionVariableTimedSleep(&slots_shared->flushed, 100, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	PG_RETURN_BOOL(done);
}

