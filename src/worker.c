/*
 * worker.c
 *		The launcher and the per-database workers: flush usage counters,
 *		expire keys, apply usage retention.
 *
 * The launcher (one, started with the server) connects to no database.
 * Every LAUNCHER_SCAN_MS, and whenever it is woken, it reads pg_database and
 * starts a worker for each database it has not yet looked at, each one whose
 * CREATE EXTENSION apikeys just committed, and each one whose worker stopped
 * without finding the extension gone.  A worker records its verdict in its
 * slot: a worker that finds no extension, or sees DROP EXTENSION, says so
 * and exits, and is not restarted until the next CREATE EXTENSION.  A
 * launcher that restarts adopts the workers still running (their slots
 * carry their pids) instead of starting others.  Counters are forgotten
 * only for a database gone from pg_database (or left invalid by an
 * interrupted DROP DATABASE); one closed to connections keeps its worker,
 * which connects regardless.
 *
 * Database DDL pauses a database's worker through worker_pause and
 * worker_resume (ddl.c says when): a paused database gets no worker.
 *
 * Shared state: one slot per database the launcher or a backend has
 * something to say about, protected by the tranche's second LWLock.  Slots
 * carry the worker's pid and latch, the pause count, the "extension wanted"
 * message, the worker's verdict (extension or none), and flush request/done
 * generations.  The launcher exits 1 when stopped, so that the postmaster
 * restarts it; workers are restarted by the launcher.  A cancel
 * (pg_cancel_backend) never ends either: the launcher ignores it, and a
 * worker abandons the pass it interrupts, as for any ERROR.
 *
 * Each pass (flush, expiry, retention) runs in its own transaction; an
 * ERROR is logged, the transaction aborted and the next pass runs.
 */
#include "postgres.h"

#include <signal.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "lookup.h"
#include "usage.h"
#include "worker.h"

#define LAUNCHER_SCAN_MS		5000
#define RESTART_DELAY_MS		1000
#define PAUSE_WAIT_MS			10000
#define FLUSH_WAIT_MS			30000
#define RETENTION_EVERY_USECS	(USECS_PER_DAY)

int			apikeys_flush_interval = 10000;
int			apikeys_expiry_interval = 60;
int			apikeys_usage_retention_days = 400;

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
} WorkerSlot;

typedef struct WorkerShared
{
	LWLock	   *lock;
	Latch	   *launcher_latch;
	ConditionVariable flushed;	/* broadcast after each flush */
	int			nslots;
	WorkerSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} WorkerShared;

/* What a worker found in its database. */
#define VERDICT_UNKNOWN			0
#define VERDICT_EXTENSION		1
#define VERDICT_NO_EXTENSION	2

static WorkerShared *ws = NULL;

PG_FUNCTION_INFO_V1(apikeys_flush_usage);

static int
slot_count(void)
{
	return 2 * max_worker_processes + 8;
}

Size
worker_shmem_size(void)
{
	return add_size(offsetof(WorkerShared, slots),
					mul_size(slot_count(), sizeof(WorkerSlot)));
}

/* Called from the shmem_startup_hook, under AddinShmemInitLock. */
void
worker_shmem_startup(void)
{
	bool		found;

	ws = ShmemInitStruct("apikeys workers", worker_shmem_size(), &found);
	if (!found)
	{
		memset(ws, 0, worker_shmem_size());
		ws->lock = &(GetNamedLWLockTranche("apikeys"))[1].lock;
		ConditionVariableInit(&ws->flushed);
		ws->nslots = slot_count();
	}
}

/* The slot of dbid, created if asked and possible; NULL otherwise (lock held). */
static WorkerSlot *
slot_find(Oid dbid, bool create)
{
	WorkerSlot *free_slot = NULL;

	for (int i = 0; i < ws->nslots; i++)
	{
		if (ws->slots[i].dbid == dbid)
			return &ws->slots[i];
		if (free_slot == NULL && ws->slots[i].dbid == InvalidOid)
			free_slot = &ws->slots[i];
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
static void
slot_release_if_idle(WorkerSlot *slot)
{
	if (slot->pid == 0 && slot->pausers == 0 && !slot->wanted &&
		slot->verdict == VERDICT_UNKNOWN &&
		slot->flush_requested == slot->flush_done)
		slot->dbid = InvalidOid;
}

static void
wake_launcher(void)
{
	Latch	   *latch;

	LWLockAcquire(ws->lock, LW_SHARED);
	latch = ws->launcher_latch;
	LWLockRelease(ws->lock);
	if (latch)
		SetLatch(latch);
}

void
apikeys_wake_workers(void)
{
	if (ws == NULL)
		return;
	LWLockAcquire(ws->lock, LW_SHARED);
	for (int i = 0; i < ws->nslots; i++)
		if (ws->slots[i].latch)
			SetLatch(ws->slots[i].latch);
	LWLockRelease(ws->lock);
}

/* Milliseconds from now until t, at least 0. */
static long
ms_until(TimestampTz t, TimestampTz now)
{
	return t <= now ? 0 : (long) ((t - now) / 1000);
}

/* ----------------------------------------------------------------------
 * Launcher
 * ----------------------------------------------------------------------
 */

void
apikeys_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
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
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
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

		LWLockAcquire(ws->lock, LW_EXCLUSIVE);
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
		LWLockRelease(ws->lock);

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
		/* a fresh CREATE EXTENSION starts at once; other starts are spaced out */
		if (wanted || now >= db->next_start)
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
		LWLockAcquire(ws->lock, LW_EXCLUSIVE);
		{
			WorkerSlot *slot = slot_find(db->dbid, false);

			if (slot && slot->pid == 0 && slot->pausers == 0)
				slot->dbid = InvalidOid;
		}
		LWLockRelease(ws->lock);
		usage_forget(db->dbid, InvalidOid);
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

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	ws->launcher_latch = MyLatch;
	LWLockRelease(ws->lock);

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

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	ws->launcher_latch = NULL;
	LWLockRelease(ws->lock);

	/*
	 * Exit 1, so that a launcher stopped by pg_terminate_backend comes back
	 * after bgw_restart_time; at server shutdown nothing is restarted anyway.
	 */
	proc_exit(1);
}

/* ----------------------------------------------------------------------
 * Per-database worker
 * ----------------------------------------------------------------------
 */

static WorkerSlot *my_slot = NULL;
static Oid	my_keys_relid = InvalidOid;
static bool extension_gone = false;

/* The flush in progress: what was read from shared memory and what SQL did with it. */
static UsageDelta *flush_deltas;
static bool *flush_matched;
static bool *flush_last_used_done;
static int	flush_n;
static TransactionId flush_xid;

/* Lives for one loop iteration: what a flush must keep past its transaction. */
static MemoryContext loop_cxt = NULL;

static void
worker_detach(int code, Datum arg)
{
	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	my_slot->pid = 0;
	my_slot->latch = NULL;
	LWLockRelease(ws->lock);
	ConditionVariableBroadcast(&ws->flushed);
	/* a launcher that did not start this worker is not told by the postmaster */
	wake_launcher();
}

/* Adds the flushed counters to apikeys.usage and last_used_at (SPI connected). */
static void
flush_body(void)
{
	Datum	   *ids;
	Datum	   *days;
	Datum	   *calls;
	Datum	   *rejected;
	Datum	   *last_used;
	bool	   *last_used_nulls;
	int			dims[1];
	int			lbs[1] = {1};
	Oid			argtypes[5] = {TEXTARRAYOID, DATEARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
							   TIMESTAMPTZARRAYOID};
	Datum		args[5];

	MemoryContext spi_cxt;

	flush_n = 0;
	flush_matched = flush_last_used_done = NULL;
	if (!usage_pending(MyDatabaseId))
		return;

	/*
	 * The counters record this transaction's id until the flush is settled.
	 * What usage_settle reads after commit must outlive SPI's context.
	 */
	flush_xid = GetTopTransactionId();
	spi_cxt = MemoryContextSwitchTo(loop_cxt);
	flush_deltas = usage_collect(MyDatabaseId, my_keys_relid, flush_xid, &flush_n);
	flush_matched = palloc0(sizeof(bool) * Max(flush_n, 1));
	flush_last_used_done = palloc0(sizeof(bool) * Max(flush_n, 1));
	MemoryContextSwitchTo(spi_cxt);
	if (flush_n == 0)
		return;

	ids = palloc(sizeof(Datum) * flush_n);
	days = palloc(sizeof(Datum) * flush_n);
	calls = palloc(sizeof(Datum) * flush_n);
	rejected = palloc(sizeof(Datum) * flush_n);
	last_used = palloc(sizeof(Datum) * flush_n);
	last_used_nulls = palloc(sizeof(bool) * flush_n);
	for (int i = 0; i < flush_n; i++)
	{
		ids[i] = CStringGetTextDatum(flush_deltas[i].key_id);
		days[i] = DateADTGetDatum(flush_deltas[i].day);
		calls[i] = Int64GetDatum(flush_deltas[i].calls);
		rejected[i] = Int64GetDatum(flush_deltas[i].rejected);
		last_used[i] = TimestampTzGetDatum(flush_deltas[i].last_used);
		last_used_nulls[i] = (flush_deltas[i].last_used == 0);
	}
	dims[0] = flush_n;
	args[0] = PointerGetDatum(construct_array(ids, flush_n, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(days, flush_n, DATEOID, sizeof(DateADT), true, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(calls, flush_n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_array(rejected, flush_n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[4] = PointerGetDatum(construct_md_array(last_used, last_used_nulls, 1, dims, lbs,
												 TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));

	/*
	 * Counts of keys this snapshot cannot see are left out (and kept for a
	 * retry).  last_used_at moves only when it is more than a minute
	 * behind, so a busy key costs one row update a minute, not one a flush;
	 * it is set only on rows nobody has locked, so a flush never waits for a
	 * user's transaction (a locked row is retried).
	 */
	if (SPI_execute_with_args(
							  "WITH d AS ("
							  " SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
							  "  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5))"
							  "  WITH ORDINALITY AS d(key_id, day, calls, rejected, last_used, i)"
							  " WHERE EXISTS (SELECT FROM apikeys.keys k"
							  "               WHERE k.id OPERATOR(pg_catalog.=) d.key_id)),"
							  " ins AS ("
							  " INSERT INTO apikeys.usage AS u (key_id, day, calls, rejected)"
							  " SELECT d.key_id, d.day, d.calls, d.rejected FROM d"
							  " WHERE d.calls OPERATOR(pg_catalog.>) 0 OR d.rejected OPERATOR(pg_catalog.>) 0"
							  " ON CONFLICT (key_id, day) DO UPDATE"
							  " SET calls = u.calls OPERATOR(pg_catalog.+) excluded.calls,"
							  "     rejected = u.rejected OPERATOR(pg_catalog.+) excluded.rejected),"
							  " stale AS ("
							  " SELECT m.key_id, m.last_used"
							  " FROM (SELECT d.key_id, pg_catalog.max(d.last_used) AS last_used FROM d"
							  "       WHERE d.last_used IS NOT NULL GROUP BY d.key_id) m"
							  " JOIN apikeys.keys k ON k.id OPERATOR(pg_catalog.=) m.key_id"
							  " WHERE k.last_used_at IS NULL"
							  "    OR k.last_used_at OPERATOR(pg_catalog.<)"
							  "       (m.last_used OPERATOR(pg_catalog.-) interval '1 minute')),"
							  " lockable AS ("
							  " SELECT k.id FROM apikeys.keys k"
							  " WHERE k.id OPERATOR(pg_catalog.=) ANY (SELECT s.key_id FROM stale s)"
							  " FOR NO KEY UPDATE OF k SKIP LOCKED),"
							  " upd AS ("
							  " UPDATE apikeys.keys k"
							  " SET last_used_at = GREATEST(k.last_used_at, s.last_used)"
							  " FROM stale s"
							  " WHERE k.id OPERATOR(pg_catalog.=) s.key_id"
							  "   AND k.id OPERATOR(pg_catalog.=) ANY (SELECT l.id FROM lockable l)"
							  " RETURNING k.id)"
							  " SELECT d.i, d.last_used IS NULL"
							  "        OR NOT d.key_id OPERATOR(pg_catalog.=) ANY (SELECT s.key_id FROM stale s)"
							  "        OR d.key_id OPERATOR(pg_catalog.=) ANY (SELECT upd.id FROM upd)"
							  " FROM d",
							  5, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not flush api key usage");

	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		i = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													SPI_tuptable->tupdesc, 1, &isnull));
		bool		done = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 2, &isnull));

		flush_matched[i - 1] = true;
		flush_last_used_done[i - 1] = done;
	}
}

/* Marks keys past expires_at as expired, audits and announces them (SPI connected). */
static void
expiry_body(void)
{
	if (SPI_execute("WITH due AS ("
					" SELECT k.id FROM apikeys.keys k"
					" WHERE k.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
					"   AND k.expired_at IS NULL AND k.revoked_at IS NULL"
					" FOR NO KEY UPDATE SKIP LOCKED),"
					" e AS ("
					" UPDATE apikeys.keys k SET expired_at = pg_catalog.now()"
					" FROM due WHERE k.id OPERATOR(pg_catalog.=) due.id"
					" RETURNING k.id, k.owner, k.name, k.expires_at),"
					" a AS ("
					" INSERT INTO apikeys.audit (key_id, owner, event, detail)"
					" SELECT e.id, e.owner, 'expired',"
					"  pg_catalog.jsonb_build_object('name', e.name, 'expires_at', e.expires_at)"
					" FROM e)"
					" SELECT pg_catalog.pg_notify('apikeys_expired', e.id) FROM e",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not expire api keys");
}

/* Deletes usage rows older than apikeys.usage_retention_days (SPI connected). */
static void
retention_body(void)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(apikeys_usage_retention_days)};

	if (SPI_execute_with_args("DELETE FROM apikeys.usage u"
							  " WHERE u.day OPERATOR(pg_catalog.<)"
							  "  (pg_catalog.timezone('UTC', pg_catalog.now())::pg_catalog.date"
							  "   OPERATOR(pg_catalog.-) $1)",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not apply usage retention");
}

/*
 * Runs body in a transaction with SPI, unless the extension is gone (then
 * sets extension_gone).  An ERROR is logged and the transaction aborted;
 * returns whether the transaction committed.
 */
static bool
run_pass(const char *name, void (*body) (void))
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool committed = false;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, name);

		if (!OidIsValid(get_extension_oid("apikeys", true)))
			extension_gone = true;
		else
		{
			my_keys_relid = apikeys_keys_relid();
			if (my_slot->verdict != VERDICT_EXTENSION)
			{
				LWLockAcquire(ws->lock, LW_EXCLUSIVE);
				my_slot->verdict = VERDICT_EXTENSION;
				LWLockRelease(ws->lock);
			}
			SPI_connect();
			body();
			SPI_finish();
		}

		PopActiveSnapshot();
		CommitTransactionCommand();
		committed = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();

	MemoryContextSwitchTo(cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return committed;
}

/* One flush: write what the counters hold, then subtract what was written. */
static void
flush(void)
{
	uint64		requested;

	LWLockAcquire(ws->lock, LW_SHARED);
	requested = my_slot->flush_requested;
	LWLockRelease(ws->lock);

	flush_n = 0;
	if (run_pass("apikeys: flush usage", flush_body) && !extension_gone)
	{
		if (flush_n > 0)
			usage_settle(MyDatabaseId, my_keys_relid, flush_xid, flush_deltas,
						 flush_matched, flush_last_used_done, flush_n);
		LWLockAcquire(ws->lock, LW_EXCLUSIVE);
		my_slot->flush_done = requested;
		LWLockRelease(ws->lock);
		ConditionVariableBroadcast(&ws->flushed);
	}
}

void
apikeys_worker_main(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	TimestampTz next_flush;
	TimestampTz next_expiry;
	TimestampTz next_retention;
	bool		paused;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	/* ALTER DATABASE ... ALLOW_CONNECTIONS false does not stop the bookkeeping */
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, BGWORKER_BYPASS_ALLOWCONN);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	/*
	 * A flush subtracts its counts from shared memory once it has committed:
	 * that commit must be durable, whatever synchronous_commit says ("local":
	 * never wait for a standby, which could stall every validation).
	 */
	SetConfigOption("synchronous_commit", "local", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname("apikeys worker");

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	my_slot = slot_find(dbid, true);
	paused = (my_slot == NULL || my_slot->pausers > 0 ||
			  (my_slot->pid != 0 && my_slot->pid != MyProcPid));
	if (!paused)
	{
		my_slot->pid = MyProcPid;
		my_slot->latch = MyLatch;
		my_slot->wanted = false;
		my_slot->verdict = VERDICT_UNKNOWN;
	}
	LWLockRelease(ws->lock);
	if (paused)
		proc_exit(0);
	before_shmem_exit(worker_detach, (Datum) 0);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "apikeys worker loop",
									 ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(loop_cxt);

	next_flush = next_expiry = next_retention = GetCurrentTimestamp();
	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		uint64		requested;
		uint64		done;
		long		timeout;

		MemoryContextReset(loop_cxt);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		LWLockAcquire(ws->lock, LW_SHARED);
		requested = my_slot->flush_requested;
		done = my_slot->flush_done;
		LWLockRelease(ws->lock);

		now = GetCurrentTimestamp();
		if (now >= next_flush || requested != done || usage_pressure())
		{
			flush();
			next_flush = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 apikeys_flush_interval);
		}
		if (!extension_gone && now >= next_expiry)
		{
			run_pass("apikeys: expire keys", expiry_body);
			next_expiry = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  apikeys_expiry_interval * 1000L);
		}
		if (!extension_gone && now >= next_retention)
		{
			run_pass("apikeys: usage retention", retention_body);
			next_retention = GetCurrentTimestamp() + RETENTION_EVERY_USECS;
		}
		if (extension_gone)
			break;

		now = GetCurrentTimestamp();
		timeout = Min(ms_until(next_flush, now), ms_until(next_expiry, now));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);

		/*
		 * A cancel (pg_cancel_backend) aborts the pass it interrupts, inside
		 * run_pass; one that arrives between passes has nothing to cancel.
		 * Raising it here, outside any PG_TRY, would end the worker.
		 */
		QueryCancelPending = false;
	}

	if (extension_gone)
	{
		/* DROP EXTENSION: the counters of the dropped tables are void */
		if (OidIsValid(my_keys_relid))
			usage_forget(MyDatabaseId, my_keys_relid);
		LWLockAcquire(ws->lock, LW_EXCLUSIVE);
		my_slot->verdict = VERDICT_NO_EXTENSION;
		LWLockRelease(ws->lock);
		wake_launcher();
	}
	proc_exit(0);
}

/* ----------------------------------------------------------------------
 * What database DDL and the SQL functions ask of the workers (ddl.c)
 * ----------------------------------------------------------------------
 */

/* At commit of CREATE EXTENSION: asks the launcher for dbid's worker now. */
void
worker_request_start(Oid dbid)
{
	WorkerSlot *slot;

	if (ws == NULL)
		return;
	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	slot = slot_find(dbid, true);
	if (slot)
		slot->wanted = true;
	LWLockRelease(ws->lock);
	wake_launcher();
}

/* Sets the latch of dbid's worker, if it runs (it then looks at its database). */
void
worker_wake(Oid dbid)
{
	WorkerSlot *slot;
	Latch	   *latch = NULL;

	if (ws == NULL)
		return;
	LWLockAcquire(ws->lock, LW_SHARED);
	slot = slot_find(dbid, false);
	if (slot)
		latch = slot->latch;
	LWLockRelease(ws->lock);
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

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	slot = slot_find(dbid, true);
	if (slot)
		slot->pausers++;
	LWLockRelease(ws->lock);
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

	for (;;)
	{
		WorkerSlot *slot;
		pid_t		pid = 0;

		LWLockAcquire(ws->lock, LW_SHARED);
		slot = slot_find(dbid, false);
		if (slot)
			pid = slot->pid;
		LWLockRelease(ws->lock);
		if (pid == 0 || GetCurrentTimestamp() >= deadline)
			break;
		(void) kill(pid, SIGTERM);
		pg_usleep(10000L);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Undoes one worker_pause: the launcher restarts the worker as for a killed one. */
void
worker_resume(Oid dbid)
{
	WorkerSlot *slot;

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	slot = slot_find(dbid, false);
	if (slot && slot->pausers > 0)
	{
		slot->pausers--;
		slot_release_if_idle(slot);
	}
	LWLockRelease(ws->lock);
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

	apikeys_require_preload();

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	slot = slot_find(MyDatabaseId, true);
	if (slot == NULL)
	{
		LWLockRelease(ws->lock);
		PG_RETURN_BOOL(false);
	}
	target = ++slot->flush_requested;
	LWLockRelease(ws->lock);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), FLUSH_WAIT_MS);
	ConditionVariablePrepareToSleep(&ws->flushed);
	while (GetCurrentTimestamp() < deadline)
	{
		Latch	   *latch;

		LWLockAcquire(ws->lock, LW_SHARED);
		done = (slot->dbid == MyDatabaseId && slot->flush_done >= target);
		latch = slot->latch;
		LWLockRelease(ws->lock);
		if (done)
			break;
		if (latch)
			SetLatch(latch);
		(void) ConditionVariableTimedSleep(&ws->flushed, 100, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	PG_RETURN_BOOL(done);
}

