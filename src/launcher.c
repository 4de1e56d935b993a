/*
 * launcher.c
 *		The launcher: starts, adopts and forgets the per-database workers.
 *
 * The launcher (one, started with the server) connects to no database.
 * Every LAUNCHER_SCAN_MS, and whenever it is woken, it reads pg_database and
 * starts a worker for each database it has not yet looked at, each one whose
 * CREATE EXTENSION apikeys just committed, and each one whose worker stopped
 * without finding the extension gone.  A worker records its verdict in its
 * slot: a worker that finds no extension, or sees DROP EXTENSION, says so
 * and exits, and is not restarted until the next CREATE EXTENSION.  A
 * launcher that restarts adopts the workers still running (their slots
 * carry their pids) instead of starting others.  A paused database (ddl.c)
 * gets no worker.  Counters are forgotten only for a database gone from
 * pg_database (or left invalid by an interrupted DROP DATABASE); one closed
 * to connections keeps its worker, which connects regardless.
 *
 * The launcher and the workers also run on a hot standby, from the moment
 * it accepts connections: there the workers ship usage to the primary.
 *
 * The launcher exits 1 when stopped, so that the postmaster restarts it;
 * it ignores cancel requests.
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "credits.h"
#include "launcher.h"
#include "slots.h"
#include "usage.h"

#define LAUNCHER_SCAN_MS		5000

void
apikeys_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "apikeys");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "apikeys_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "apikeys launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "apikeys launcher");
	RegisterBackgroundWorker(&worker);
}

/* What the launcher remembers about one database. */
typedef struct KnownDatabase
{
	Oid			dbid;			/* hash key */
	bool		seen;			/* in pg_database at the last scan */
	int			verdict;		/* what its workers found: VERDICT_* */
	TimestampTz next_start;		/* no restart before this */
	BackgroundWorkerHandle *handle;
} KnownDatabase;

/* Starts the worker of db; false if no background worker slot was free. */
static bool
start_worker(KnownDatabase *db, const char *dbname)
{
	BackgroundWorker worker;
	MemoryContext old;
	bool		registered;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "apikeys");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "apikeys_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "apikeys worker for database %s", dbname);
	snprintf(worker.bgw_type, BGW_MAXLEN, "apikeys worker");
	worker.bgw_main_arg = ObjectIdGetDatum(db->dbid);
	worker.bgw_notify_pid = MyProcPid;

	db->next_start = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RESTART_DELAY_MS);
	/* the handle is palloc'd: it must outlive the scan's transaction */
	old = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&worker, &db->handle);
	MemoryContextSwitchTo(old);
	if (!registered)
	{
		db->handle = NULL;
		return false;
	}
	return true;
}

/*
 * One look at pg_database: start, restart and forget workers as needed.
 * Sets *next_wakeup when a restart is waiting for its delay to pass.
 *
 * A worker is running if this launcher's handle says so or, for a worker
 * started by an earlier launcher, if its slot has a pid: such workers are
 * adopted, never duplicated.  A database that accepts no connections keeps
 * its counters and its worker (which connects anyway); only a database
 * gone from pg_database, or left invalid by an interrupted DROP DATABASE,
 * has its counters forgotten.
 */
static void
launcher_scan(HTAB *known, TimestampTz *next_wakeup)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	HASH_SEQ_STATUS seq;
	KnownDatabase *db;
	TimestampTz now = GetCurrentTimestamp();
	bool		no_room = false;
	Oid		   *counted;
	int			ncounted;
	bool		pressure = usage_pressure();

	/*
	 * Which databases have counters, read before the catalog snapshot: a
	 * database on this list that the snapshot does not show is gone.
	 */
	counted = usage_databases(&ncounted);

	hash_seq_init(&seq, known);
	while ((db = hash_seq_search(&seq)) != NULL)
		db->seen = false;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database form = (Form_pg_database) GETSTRUCT(tuple);
		bool		found;
		bool		running = false;
		bool		paused = false;
		bool		wanted = false;
		bool		has_counts = false;
		pid_t		slot_pid = 0;
		WorkerSlot *slot;

		if (form->datconnlimit == DATCONNLIMIT_INVALID_DB)
			continue;

		db = hash_search(known, &form->oid, HASH_ENTER, &found);
		if (!found)
		{
			db->verdict = VERDICT_UNKNOWN;
			db->next_start = 0;
			db->handle = NULL;
		}
		db->seen = true;

		if (db->handle)
		{
			pid_t		pid;

			running = (GetBackgroundWorkerPid(db->handle, &pid) != BGWH_STOPPED);
			if (!running)
			{
				pfree(db->handle);
				db->handle = NULL;
			}
		}

		LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
		slot = slot_find(db->dbid, false);
		if (slot)
		{
			slot_pid = slot->pid;
			paused = slot->pausers > 0;
			wanted = slot->wanted;
			/* learn what the worker found; a stopped worker's slot is then free */
			if (slot->verdict != VERDICT_UNKNOWN)
				db->verdict = slot->verdict;
			if (!running && slot_pid == 0)
			{
				slot->verdict = VERDICT_UNKNOWN;
				slot_release_if_idle(slot);
			}
		}
		LWLockRelease(slots_shared->lock);

		/* a worker an earlier launcher started: adopt it */
		if (slot_pid != 0)
			running = true;
		if (running || paused || no_room)
			continue;
		/* not started: no extension here (until the next CREATE EXTENSION) */
		if (!wanted && db->verdict == VERDICT_NO_EXTENSION)
			continue;
		for (int i = 0; i < ncounted && !has_counts; i++)
			has_counts = (counted[i] == db->dbid);
		/* closed to connections: a worker only where there is work for one */
		if (!form->datallowconn && !wanted && !has_counts &&
			db->verdict != VERDICT_EXTENSION)
			continue;
		/*
		 * A fresh CREATE EXTENSION starts at once, and so does a database
		 * with counts while validations wait for room; other starts are
		 * spaced out.
		 */
		if (wanted || now >= db->next_start || (has_counts && pressure))
			no_room = !start_worker(db, NameStr(form->datname));
		else if (*next_wakeup == 0 || db->next_start < *next_wakeup)
			*next_wakeup = db->next_start;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();

	if (no_room)
		ereport(LOG,
				(errmsg("apikeys launcher could not start a worker: no background worker slot is free"),
				 errhint("Raise max_worker_processes: apikeys needs one worker per database that has the extension, plus the launcher.")));

	/* databases that are gone: forget their workers, slots and counters */
	hash_seq_init(&seq, known);
	while ((db = hash_seq_search(&seq)) != NULL)
	{
		if (db->seen)
			continue;
		if (db->handle)
			pfree(db->handle);
		LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
		{
			WorkerSlot *slot = slot_find(db->dbid, false);

			if (slot && slot->pid == 0 && slot->pausers == 0)
				slot->dbid = InvalidOid;
		}
		LWLockRelease(slots_shared->lock);
		usage_forget(db->dbid, InvalidOid);
		credits_forget(db->dbid, InvalidOid);
		hash_search(known, &db->dbid, HASH_REMOVE, NULL);
	}
	for (int i = 0; i < ncounted; i++)
	{
		db = hash_search(known, &counted[i], HASH_FIND, NULL);
		if (db == NULL || !db->seen)
			usage_forget(counted[i], InvalidOid);
	}
	pfree(counted);
}

void
apikeys_launcher_main(Datum arg)
{
	HASHCTL		info;
	HTAB	   *known;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	/* a cancel has nothing to cancel here, and must not end the launcher */
	pqsignal(SIGINT, SIG_IGN);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	info.keysize = sizeof(Oid);
	info.entrysize = sizeof(KnownDatabase);
	known = hash_create("apikeys known databases", 64, &info, HASH_ELEM | HASH_BLOBS);

	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
	slots_shared->launcher_latch = MyLatch;
	LWLockRelease(slots_shared->lock);

	while (!ShutdownRequestPending)
	{
		TimestampTz next_wakeup = 0;
		long		timeout = LAUNCHER_SCAN_MS;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		launcher_scan(known, &next_wakeup);
		if (next_wakeup != 0)
			timeout = Max(Min(timeout, ms_until(next_wakeup, GetCurrentTimestamp())), 10);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
	slots_shared->launcher_latch = NULL;
	LWLockRelease(slots_shared->lock);

	/*
	 * Exit 1, so that a launcher stopped by pg_terminate_backend comes back
	 * after bgw_restart_time; at server shutdown nothing is restarted anyway.
	 */
	proc_exit(1);
}

