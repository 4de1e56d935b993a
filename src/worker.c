/*
 * worker.c
 *		The per-database worker: flushes usage counters, expires keys,
 *		applies usage retention.
 *
 * On a hot standby it only ships usage to the primary (ship.c), every
 * flush_interval; after promotion it first settles the last batch it
 * shipped, then works as on any primary.
 *
 * Started by the launcher, one per database where the extension exists,
 * connected to it (even when it accepts no connections).  On its latch it
 * runs three passes, each in its own transaction: every flush_interval (or
 * at once when flush_usage() asks, or a backend waits for room in the
 * counter table) a flush; every expiry_interval an expiry pass; once a day
 * retention.  An ERROR is logged, the transaction aborted, and the next
 * pass runs; a cancel (pg_cancel_backend) aborts only the pass it
 * interrupts.  SIGTERM ends the worker between passes.
 *
 * The worker owns its slot while it runs (pid and latch set, cleared at
 * exit) and reports there what it found: the extension, or none (it then
 * forgets the dropped table's counters and exits).  Flushes commit with
 * synchronous_commit = local, so a flush is durable before usage_settle
 * subtracts what it wrote.
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/message.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procsignal.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "credits.h"
#include "guc.h"
#include "lookup.h"
#include "ratelimit.h"
#include "ship.h"
#include "slots.h"
#include "usage.h"
#include "worker.h"

#define RETENTION_EVERY_USECS	(USECS_PER_DAY)
/* How long the flush a leaving worker makes may wait for a lock. */
#define FINAL_FLUSH_LOCK_TIMEOUT	"1s"

static WorkerSlot *my_slot = NULL;

/* True while a pass runs: SIGTERM then interrupts it (see worker_sigterm). */
static volatile sig_atomic_t in_pass = false;
static Oid	my_keys_relid = InvalidOid;
static bool extension_gone = false;
static char *my_dbname = NULL;

/*
 * One flush: what was read from shared memory, and what SQL did with it.
 * It must outlive the flush's transaction (usage_settle runs after commit),
 * so it lives in the loop's memory context.
 */
typedef struct FlushState
{
	TransactionId xid;			/* the flush's transaction */
	int			n;				/* counters read */
	UsageDelta *deltas;
	bool	   *matched;		/* deltas[i]'s key exists */
	bool	   *last_used_done;	/* deltas[i]'s last use recorded */
} FlushState;

/* Lives for one loop iteration: what a flush must keep past its transaction. */
static MemoryContext loop_cxt = NULL;

/*
 * SIGTERM: between passes, ask the loop to finish (it flushes once more and
 * leaves); during a pass, also end the pass at its next interrupt check,
 * as PostgreSQL's die() does, so that a pass waiting on a lock cannot hold
 * up a shutdown or DDL that needs the worker gone.
 */
static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	ShutdownRequestPending = true;
	if (in_pass)
	{
		ProcDiePending = true;
		InterruptPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

static void
worker_detach(int code, Datum arg)
{
	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
	my_slot->pid = 0;
	my_slot->latch = NULL;
	LWLockRelease(slots_shared->lock);
	ConditionVariableBroadcast(&slots_shared->flushed);
	/* a launcher that did not start this worker is not told by the postmaster */
	wake_launcher();
}

/* Writes a WAL record that carries the current transaction's id; returns its end. */
static XLogRecPtr
log_flush_xid(void)
{
#if PG_VERSION_NUM >= 170000
	return LogLogicalMessage("apikeys", "", 0, true, false);
#else
	return LogLogicalMessage("apikeys", "", 0, true);
#endif
}

/* Adds the counters to apikeys.usage and last_used_at (SPI connected). */
static void
flush_body(void *arg)
{
	FlushState *fs = (FlushState *) arg;
	MemoryContext spi_cxt;

	fs->n = 0;
	if (!usage_pending(MyDatabaseId))
		return;

	/*
	 * The counters record this transaction's id until the flush is settled,
	 * and an unsettled mark survives a restart (usage_dump.c).  The id must
	 * then never be given to another transaction: a WAL record carrying it,
	 * flushed before any counter is marked, makes recovery move the next
	 * xid past it, whenever the server stops.  (A transactional logical
	 * message is the cheapest such record; decoders see prefix "apikeys".)
	 * What usage_settle reads after commit must outlive SPI's context.
	 */
	fs->xid = GetTopTransactionId();
	XLogFlush(log_flush_xid());
	spi_cxt = MemoryContextSwitchTo(loop_cxt);
	fs->deltas = usage_collect(MyDatabaseId, my_keys_relid, fs->xid, &fs->n);
	fs->matched = palloc0(sizeof(bool) * Max(fs->n, 1));
	fs->last_used_done = palloc0(sizeof(bool) * Max(fs->n, 1));
	MemoryContextSwitchTo(spi_cxt);
	if (fs->n == 0)
		return;

	usage_apply(fs->deltas, fs->n, fs->matched, fs->last_used_done);
}

/*
 * Marks keys past expires_at as expired, audits and announces them (SPI
 * connected): apikeys._expire_due_keys() does it, the one definition of the
 * pass.  A database still on 0.1's schema (library updated, ALTER
 * EXTENSION not yet run) lacks it and gets 0.1's statement.
 */
static void
expiry_body(void *arg)
{
	bool		isnull;
	bool		has_function;

	if (SPI_execute("SELECT pg_catalog.to_regprocedure('apikeys._expire_due_keys()') IS NOT NULL",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not look up apikeys._expire_due_keys()");
	has_function = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	if (has_function)
	{
		if (SPI_execute("SELECT pg_catalog.count(*) FROM apikeys._expire_due_keys()",
						false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not expire api keys");
		return;
	}
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

/* True if schema apikeys has table name (0.1's schema lacks 0.2's tables). */
static bool
has_table(const char *name)
{
	return OidIsValid(get_relname_relid(name, get_namespace_oid("apikeys", false)));
}

/* Deletes usage rows older than apikeys.usage_retention_days (SPI connected). */
static void
retention_body(void *arg)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(apikeys_usage_retention_days)};

	if (SPI_execute_with_args("DELETE FROM apikeys.usage u"
							  " WHERE u.day OPERATOR(pg_catalog.<)"
							  "  (pg_catalog.timezone('UTC', pg_catalog.now())::pg_catalog.date"
							  "   OPERATOR(pg_catalog.-) $1)",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not apply usage retention");
	/* per-key credit spend (a database still on 0.1's schema has none) */
	if (has_table("credit_usage") &&
		SPI_execute_with_args("DELETE FROM apikeys.credit_usage u"
							  " WHERE u.day OPERATOR(pg_catalog.<)"
							  "  (pg_catalog.timezone('UTC', pg_catalog.now())::pg_catalog.date"
							  "   OPERATOR(pg_catalog.-) $1)",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not apply credit usage retention");

	/*
	 * Standbys silent for as long: a batch one of them still holds would be
	 * applied again (docs/standbys.md).
	 */
	if (has_table("standby_batches") &&
		SPI_execute_with_args("DELETE FROM apikeys.standby_batches b"
							  " WHERE COALESCE(b.last_batch_at, b.first_batch_at)"
							  "  OPERATOR(pg_catalog.<) (pg_catalog.now()"
							  "   OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => $1))",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not apply standby batch retention");
}

/*
 * Runs body in a transaction with SPI, unless the extension is gone (then
 * sets extension_gone).  An ERROR is logged and the transaction aborted;
 * returns whether the transaction committed.
 */
static bool
run_pass(const char *name, void (*body) (void *), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool committed = false;

	PG_TRY();
	{
		in_pass = true;
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, name);

		if (!OidIsValid(get_extension_oid("apikeys", true)))
		{
			/* also counters of an extension dropped while no worker ran */
			extension_gone = true;
			usage_forget_orphans(MyDatabaseId);
		}
		else
		{
			my_keys_relid = apikeys_keys_relid();
			if (my_slot->verdict != VERDICT_EXTENSION)
			{
				LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
				my_slot->verdict = VERDICT_EXTENSION;
				LWLockRelease(slots_shared->lock);
			}
			SPI_connect();
			body(arg);
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

	in_pass = false;
	MemoryContextSwitchTo(cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return committed;
}

/* One flush: write what the counters hold, then subtract what was written. */
static void
flush(void)
{
	uint64		requested;
	FlushState	fs = {0};

	LWLockAcquire(slots_shared->lock, LW_SHARED);
	requested = my_slot->flush_requested;
	LWLockRelease(slots_shared->lock);

	if (run_pass("apikeys: flush usage", flush_body, &fs) && !extension_gone)
	{
		/* what committed charges spent, in its own transaction */
		run_pass("apikeys: settle credits", credits_settle_body, NULL);
		/* rate limit windows that have passed hold nothing */
		ratelimit_purge();
		if (fs.n > 0)
			usage_settle(MyDatabaseId, my_keys_relid, fs.xid, fs.deltas,
						 fs.matched, fs.last_used_done, fs.n);
		LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
		my_slot->flush_done = requested;
		LWLockRelease(slots_shared->lock);
		ConditionVariableBroadcast(&slots_shared->flushed);
	}
}

/* Nothing but run_pass's look at the extension (and its keys table). */
static void
check_body(void *arg)
{
}

/*
 * On a hot standby: ship the counters to the primary.  Returns whether
 * that worked; a flush_usage() waiting gets true or false accordingly.
 */
static bool
ship(void)
{
	uint64		requested;
	bool		ok;

	LWLockAcquire(slots_shared->lock, LW_SHARED);
	requested = my_slot->flush_requested;
	LWLockRelease(slots_shared->lock);

	/* DROP EXTENSION replays here too: then the counts are void */
	if (!run_pass("apikeys: look up the extension", check_body, NULL) || extension_gone)
		return false;
	ratelimit_purge();
	ok = ship_usage(my_keys_relid, my_dbname);
	/* a flush_usage() waiting is told either way */
	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
	if (ok)
		my_slot->flush_done = requested;
	else
		my_slot->flush_failed = requested;
	LWLockRelease(slots_shared->lock);
	ConditionVariableBroadcast(&slots_shared->flushed);
	return ok;
}

/* After promotion: apply a batch the old primary never confirmed (ship.h). */
static void
resolve_body(void *arg)
{
	ShipResolve *rs = (ShipResolve *) arg;

	rs->keys_relid = my_keys_relid;
	ship_resolve_body(rs);
}

/* True once no batch of this server's time as a standby is left unconfirmed. */
static bool
resolve_batch(void)
{
	ShipResolve rs = {0};

	rs.cxt = loop_cxt;
	if (!run_pass("apikeys: apply the standby's last batch", resolve_body, &rs))
		return false;
	if (!extension_gone)
		ship_resolve_settle(&rs);
	return true;
}

void
apikeys_worker_main(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	TimestampTz next_flush;
	TimestampTz next_expiry;
	TimestampTz next_retention;
	bool		paused;
	bool		was_standby = false;
	/* a clean stop as a standby may have left a batch in the dump */
	bool		resolve_pending = true;
	bool		last_ship_ok = true;
	uint64		ship_attempted = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
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

	LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
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
	LWLockRelease(slots_shared->lock);
	if (paused)
		proc_exit(0);
	before_shmem_exit(worker_detach, (Datum) 0);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "apikeys worker loop",
									 ALLOCSET_DEFAULT_SIZES);
	StartTransactionCommand();
	my_dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dbid));
	CommitTransactionCommand();
	MemoryContextSwitchTo(loop_cxt);

	next_flush = next_expiry = next_retention = GetCurrentTimestamp();
	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		uint64		requested;
		uint64		done;
		long		timeout;
		bool		has_pools = false;

		MemoryContextReset(loop_cxt);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		LWLockAcquire(slots_shared->lock, LW_SHARED);
		requested = my_slot->flush_requested;
		done = my_slot->flush_done;
		LWLockRelease(slots_shared->lock);

		/*
		 * A hot standby ships its counts to the primary, every flush
		 * interval, or at once when asked (but after a failure not before
		 * the interval has passed); it writes nothing itself.
		 */
		if (RecoveryInProgress())
		{
			if (!was_standby)
				ship_init(my_slot);
			was_standby = resolve_pending = true;
			now = GetCurrentTimestamp();
			if (now >= next_flush ||
				(last_ship_ok && (requested != ship_attempted || usage_pressure())))
			{
				ship_attempted = requested;
				last_ship_ok = ship();
				next_flush = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 apikeys_flush_interval);
			}
			if (extension_gone)
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 ms_until(next_flush, GetCurrentTimestamp()), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			QueryCancelPending = false;
			/*
			 * Replaying DROP DATABASE (or a tablespace move) waits for every
			 * process in the database to leave: such a recovery conflict
			 * ends this worker here (FATAL), as it would any session.
			 */
			CHECK_FOR_INTERRUPTS();
			continue;
		}
		/* promoted (or started from a standby's dump): the last batch first */
		if (resolve_pending && !extension_gone)
		{
			ship_disconnect();
			resolve_pending = !resolve_batch();
		}

		/* charges waiting for a lease or a refill come first */
		if (!extension_gone && credits_wanted(MyDatabaseId, &has_pools))
		{
			run_pass("apikeys: lease credits", credits_serve_body, NULL);
			/* a full credit table: hand idle pools back now */
			if (credits_pressure())
				run_pass("apikeys: settle credits", credits_settle_body, NULL);
		}
		if (ratelimit_pressure())
			ratelimit_purge();

		now = GetCurrentTimestamp();
		if (now >= next_flush || requested != done || usage_pressure())
		{
			flush();
			next_flush = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 apikeys_flush_interval);
		}
		if (!extension_gone && now >= next_expiry)
		{
			run_pass("apikeys: expire keys", expiry_body, NULL);
			next_expiry = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  apikeys_expiry_interval * 1000L);
		}
		if (!extension_gone && now >= next_retention)
		{
			run_pass("apikeys: usage retention", retention_body, NULL);
			next_retention = GetCurrentTimestamp() + RETENTION_EVERY_USECS;
		}
		if (extension_gone)
			break;

		now = GetCurrentTimestamp();
		timeout = Min(ms_until(next_flush, now), ms_until(next_expiry, now));
		/* leases asked for ahead are served in batches, every few ms */
		if (has_pools)
			timeout = Min(timeout, PREFETCH_POLL_MS);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);

		/*
		 * A cancel (pg_cancel_backend) aborts the pass it interrupts, inside
		 * run_pass; one that arrives between passes has nothing to cancel.
		 * Raising it here, outside any PG_TRY, would end the worker.  But a
		 * ProcSignalBarrier (DROP DATABASE, SET TABLESPACE wait for every
		 * process to absorb one) is absorbed at once, not at the next pass.
		 */
		QueryCancelPending = false;
		if (ProcSignalBarrierPending)
			ProcessProcSignalBarrier();
	}

	/*
	 * Asked to leave (shutdown, DDL pause, pg_terminate_backend): flush once
	 * more, so that this database's counts do not wait for the next worker,
	 * without waiting long for a lock (a second SIGTERM also ends it).
	 */
	if (ShutdownRequestPending && !extension_gone && !RecoveryInProgress())
	{
		SetConfigOption("lock_timeout", FINAL_FLUSH_LOCK_TIMEOUT, PGC_SUSET, PGC_S_OVERRIDE);
		flush();
	}

	if (extension_gone)
	{
		/* DROP EXTENSION: the counters of the dropped tables are void */
		if (OidIsValid(my_keys_relid))
		{
			usage_forget(MyDatabaseId, my_keys_relid);
			credits_forget(MyDatabaseId, my_keys_relid);
		}
		LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE);
		my_slot->verdict = VERDICT_NO_EXTENSION;
		LWLockRelease(slots_shared->lock);
		wake_launcher();
	}
	proc_exit(0);
}

