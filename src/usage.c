/*
 * usage.c
 *		Usage counters in shared memory, so that validation never writes a row.
 *
 * One fixed-size hash table, sized by apikeys.max_tracked_keys, holds a
 * counter entry per (database, keys table, UTC day, key id): valid calls,
 * rejected calls and the last valid use.  The keys table's OID is part of
 * the key so that counts of a dropped and re-created extension never mix.
 *
 * Locking protocol (lock = the "apikeys" tranche's first LWLock):
 *	- To bump an existing entry: lock shared, find it, bump its atomics.
 *	- To insert an entry: lock exclusive.  When the table holds
 *	  max_tracked_keys entries, evict drained entries (below) in the same
 *	  critical section; only if none is drained, release, wake the workers,
 *	  and sleep on the 'room' condition variable until a flush has drained
 *	  some.  The count is never dropped.
 *	- To read counters for a flush, subtract what a flush wrote, or remove
 *	  entries: lock exclusive.  flushed_last_used, creator_xid and the flush
 *	  mark are written only under the exclusive lock (usage_pending reads
 *	  them under the shared one).
 *
 * Eviction has one rule: an entry is drained when it holds nothing a flush
 * still has to write (no calls, no rejections, no newer last use, no flush
 * mark), and a drained entry may be removed whenever room is needed,
 * whatever its day.  The inserting backend does it, a batch at a time, so a
 * table full of flushed entries never makes anyone wait for a worker; a
 * validation waits only when every entry holds unflushed counts, that is
 * when more distinct key-days than max_tracked_keys were counted since the
 * last flush, and then until the next flush drains some.  Workers also
 * remove drained entries of past days as they go.
 *
 * A key validated in the transaction that created it is not yet visible to
 * a flush.  Its counts stay in the backend (pending_add) until that
 * transaction ends: at commit (or PREPARE) they enter the table marked with
 * the transaction (creator_xid), which keeps them while it may still
 * commit; at abort they are void.  So an open transaction never holds room
 * in the table.
 *
 * Exactly once: a flush marks each entry with its transaction id and the
 * amounts it is writing; after commit it subtracts them and clears the mark.
 * If the flushing worker dies, or the server stops, between its commit and
 * that subtraction, the mark survives (in memory, or in the dump below) and
 * the next flush subtracts the amounts once the commit log says the xid
 * committed, or just clears the mark if it aborted.
 *
 * Durability: usage_dump.c saves the table at a clean shutdown and restores
 * it at start.  After a crash the counts since the last flush are lost.
 *
 * On a hot standby nothing is counted: no worker can write there.
 */
#include "postgres.h"

#include <unistd.h>

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "guc.h"
#include "slots.h"
#include "usage.h"
#include "usage_internal.h"

/* A backend that waited for room this recently means the table is full. */
#define PRESSURE_USECS			(5 * USECS_PER_SEC)
/* How long a backend waits for room before checking the table again. */
#define ROOM_WAIT_MS			1000

UsageShared *usage_shared = NULL;
HTAB	   *usage_hash = NULL;

Size
usage_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(UsageShared)),
					hash_estimate_size(apikeys_max_tracked_keys, sizeof(UsageEntry)));
}

/* Called from the shmem_startup_hook, under AddinShmemInitLock. */
void
usage_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	usage_shared = ShmemInitStruct("apikeys usage", sizeof(UsageShared), &found);
	if (!found)
	{
		usage_shared->lock = apikeys_lock(APIKEYS_LOCK_USAGE);
		ConditionVariableInit(&usage_shared->room);
		pg_atomic_init_u64(&usage_shared->last_wait, 0);
	}

	info.keysize = sizeof(UsageKey);
	info.entrysize = sizeof(UsageEntry);
	usage_hash = ShmemInitHash("apikeys usage counters",
							   apikeys_max_tracked_keys, apikeys_max_tracked_keys,
							   &info, HASH_ELEM | HASH_BLOBS);

	/* the postmaster restores the last shutdown's counters and dumps at exit */
	if (!IsUnderPostmaster)
		usage_dump_setup(!found);
}

void
usage_entry_init(UsageEntry *entry)
{
	pg_atomic_init_u64(&entry->calls, 0);
	pg_atomic_init_u64(&entry->rejected, 0);
	pg_atomic_init_u64(&entry->last_used, 0);
	entry->flushed_last_used = 0;
	entry->creator_xid = InvalidTransactionId;
	entry->flush_xid = InvalidTransactionId;
	entry->flushing_calls = 0;
	entry->flushing_rejected = 0;
}

/* Subtracts an in-progress flush's amounts from entry (exclusive lock held). */
static void
entry_subtract_flushed(UsageEntry *entry)
{
	pg_atomic_fetch_sub_u64(&entry->calls, entry->flushing_calls);
	pg_atomic_fetch_sub_u64(&entry->rejected, entry->flushing_rejected);
}

/* True if entry holds nothing a flush still has to write: it may be evicted. */
static bool
entry_is_drained(UsageEntry *entry)
{
	return pg_atomic_read_u64(&entry->calls) == 0 &&
		pg_atomic_read_u64(&entry->rejected) == 0 &&
		(TimestampTz) pg_atomic_read_u64(&entry->last_used) <= entry->flushed_last_used &&
		!TransactionIdIsValid(entry->flush_xid);
}

/* Removes entry, possibly during a hash_seq_search (exclusive lock held). */
static void
entry_remove(UsageEntry *entry)
{
	hash_search(usage_hash, &entry->key, HASH_REMOVE, NULL);
}

/*
 * Makes room for new entries (exclusive lock held): removes drained entries,
 * every one of a past day and today's until a batch of max_tracked_keys / 16
 * is free.  Returns how many entries were removed.
 */
static int
evict_drained(DateADT today)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	int			batch = Max(1, apikeys_max_tracked_keys / 16);
	int			removed = 0;

	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry_is_drained(entry) && (entry->key.day < today || removed < batch))
		{
			entry_remove(entry);
			removed++;
		}
	}
	return removed;
}

/* Forgets entry's flush mark (exclusive lock held). */
static void
entry_clear_flush(UsageEntry *entry)
{
	entry->flush_xid = InvalidTransactionId;
	entry->flushing_calls = 0;
	entry->flushing_rejected = 0;
}

/*
 * Settles a flush mark left by a flush that did not finish: subtracts its
 * amounts if it committed.  False if that transaction is still running.
 */
static bool
entry_settle_leftover(UsageEntry *entry, TransactionId current)
{
	if (!TransactionIdIsValid(entry->flush_xid) || entry->flush_xid == current)
		return true;
	if (TransactionIdIsInProgress(entry->flush_xid))
		return false;
	if (TransactionIdDidCommit(entry->flush_xid))
		entry_subtract_flushed(entry);
	entry_clear_flush(entry);
	return true;
}

/* Adds calls and rejected, with last valid use last_used (0: none), to entry (any lock mode). */
static void
entry_add(UsageEntry *entry, uint64 calls, uint64 rejected, TimestampTz last_used)
{
	if (calls > 0)
		pg_atomic_fetch_add_u64(&entry->calls, calls);
	if (rejected > 0)
		pg_atomic_fetch_add_u64(&entry->rejected, rejected);
	if (last_used != 0)
	{
		uint64		seen = pg_atomic_read_u64(&entry->last_used);

		while (seen < (uint64) last_used &&
			   !pg_atomic_compare_exchange_u64(&entry->last_used, &seen, (uint64) last_used))
			;
	}
}

/*
 * Adds the counts to the shared entry of key, creating it (creator_xid =
 * creator) if needed.  When the table is full, evicts drained entries;
 * when none is drained, wakes the workers and waits for a flush to drain
 * some.  Never drops the count.
 */
static void
shared_add(const UsageKey *key, uint64 calls, uint64 rejected,
		   TimestampTz last_used, TransactionId creator)
{
	UsageEntry *entry;
	bool		waited = false;
	bool		created = false;

	/* the common case: the entry exists */
	LWLockAcquire(usage_shared->lock, LW_SHARED);
	entry = hash_search(usage_hash, key, HASH_FIND, NULL);
	if (entry)
	{
		entry_add(entry, calls, rejected, last_used);
		LWLockRelease(usage_shared->lock);
		return;
	}
	LWLockRelease(usage_shared->lock);

	for (;;)
	{
		bool		found;

		LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
		entry = hash_search(usage_hash, key, HASH_FIND, NULL);
		if (entry == NULL &&
			(hash_get_num_entries(usage_hash) < apikeys_max_tracked_keys ||
			 evict_drained(key->day) > 0))
		{
			entry = hash_search(usage_hash, key, HASH_ENTER, &found);
			usage_entry_init(entry);
			entry->creator_xid = creator;
			created = true;
		}
		if (entry)
		{
			entry_add(entry, calls, rejected, last_used);
			LWLockRelease(usage_shared->lock);
			break;
		}
		LWLockRelease(usage_shared->lock);

		/* every entry holds unflushed counts: have the workers flush, and wait */
		if (!waited)
		{
			ConditionVariablePrepareToSleep(&usage_shared->room);
			waited = true;
		}
		pg_atomic_write_u64(&usage_shared->last_wait, (uint64) GetCurrentTimestamp());
		apikeys_wake_workers();
		(void) ConditionVariableTimedSleep(&usage_shared->room, ROOM_WAIT_MS, PG_WAIT_EXTENSION);
	}
	if (waited)
		ConditionVariableCancelSleep();

	/* a database whose counts nobody flushes gets its worker (say, after 2PC) */
	if (created)
		worker_ensure_running(key->dbid);
}

/*
 * Counts of keys created by the current transaction, kept in this backend
 * until it ends: no flush could write them before it commits, so in shared
 * memory they would only hold room that other databases need.
 */
typedef struct PendingCount
{
	UsageKey	key;			/* hash key */
	uint64		calls;
	uint64		rejected;
	TimestampTz last_used;
} PendingCount;

static HTAB *pending = NULL;
static bool pending_callback_registered = false;

/*
 * At commit (or PREPARE), the counts go to shared memory, marked with this
 * transaction: they are kept while it may still commit, and flushed once it
 * has (usage_settle).  At abort they are void, as the keys are.
 */
static void
pending_xact_callback(XactEvent event, void *arg)
{
	HASH_SEQ_STATUS seq;
	PendingCount *pc;

	if (pending == NULL || hash_get_num_entries(pending) == 0)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			hash_seq_init(&seq, pending);
			while ((pc = hash_seq_search(&seq)) != NULL)
				shared_add(&pc->key, pc->calls, pc->rejected, pc->last_used,
						   GetTopTransactionId());
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			hash_destroy(pending);
			pending = NULL;
			break;
		default:
			break;
	}
}

/* Adds one call of a key the current transaction created to the pending counts. */
static void
pending_add(const UsageKey *key, bool valid, TimestampTz now)
{
	PendingCount *pc;
	bool		found;

	if (!pending_callback_registered)
	{
		RegisterXactCallback(pending_xact_callback, NULL);
		pending_callback_registered = true;
	}
	if (pending == NULL)
	{
		HASHCTL		info;

		info.keysize = sizeof(UsageKey);
		info.entrysize = sizeof(PendingCount);
		info.hcxt = TopTransactionContext;
		pending = hash_create("apikeys pending counts", 16, &info,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	pc = hash_search(pending, key, HASH_ENTER, &found);
	if (!found)
	{
		pc->calls = pc->rejected = 0;
		pc->last_used = 0;
	}
	if (valid)
	{
		pc->calls++;
		pc->last_used = Max(pc->last_used, now);
	}
	else
		pc->rejected++;
}

void
usage_count(Oid keys_relid, Datum key_id, bool valid, TimestampTz now,
			TransactionId creator)
{
	UsageKey	key;
	text	   *id = DatumGetTextPP(key_id);

	if (usage_shared == NULL || RecoveryInProgress() ||
		VARSIZE_ANY_EXHDR(id) != APIKEY_ID_LEN)
		return;

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.keys_relid = keys_relid;
	key.day = (DateADT) (now / USECS_PER_DAY);
	memcpy(key.key_id, VARDATA_ANY(id), APIKEY_ID_LEN);

	if (TransactionIdIsValid(creator))
		pending_add(&key, valid, now);
	else
		shared_add(&key, valid ? 1 : 0, valid ? 0 : 1, valid ? now : 0,
				   InvalidTransactionId);
}

bool
usage_pressure(void)
{
	TimestampTz last = (TimestampTz) pg_atomic_read_u64(&usage_shared->last_wait);

	return last != 0 && GetCurrentTimestamp() - last < PRESSURE_USECS;
}

bool
usage_pending(Oid dbid)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	bool		found = false;

	DateADT		today = (DateADT) (GetCurrentTimestamp() / USECS_PER_DAY);

	LWLockAcquire(usage_shared->lock, LW_SHARED);
	hash_seq_init(&seq, usage_hash);
	while (!found && (entry = hash_seq_search(&seq)) != NULL)
		found = (entry->key.dbid == dbid &&
				 (!entry_is_drained(entry) ||
				  TransactionIdIsValid(entry->flush_xid) ||
				  entry->key.day < today));
	if (found)
		hash_seq_term(&seq);
	LWLockRelease(usage_shared->lock);
	return found;
}

UsageDelta *
usage_collect(Oid dbid, Oid keys_relid, TransactionId xid, int *n)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	UsageDelta *deltas;
	int			count = 0;
	bool		removed = false;
	DateADT		today = (DateADT) (GetCurrentTimestamp() / USECS_PER_DAY);

	LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
	deltas = palloc(sizeof(UsageDelta) * Max(hash_get_num_entries(usage_hash), 1));
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		uint64		calls;
		uint64		rejected;
		TimestampTz last_used;

		if (entry->key.dbid != dbid)
			continue;
		if (entry->key.keys_relid != keys_relid)
		{
			/* counts of a dropped instance of the extension */
			entry_remove(entry);
			removed = true;
			continue;
		}
		if (!entry_settle_leftover(entry, xid))
			continue;
		/* one flush writes at most 2^32-1 calls of an entry; the rest waits */
		calls = Min(pg_atomic_read_u64(&entry->calls), PG_UINT32_MAX);
		rejected = Min(pg_atomic_read_u64(&entry->rejected), PG_UINT32_MAX);
		last_used = (TimestampTz) pg_atomic_read_u64(&entry->last_used);
		if (calls == 0 && rejected == 0 && last_used <= entry->flushed_last_used)
		{
			/* drained: a past day's entry goes, today's stays for reuse */
			if (entry->key.day < today)
			{
				entry_remove(entry);
				removed = true;
			}
			continue;
		}
		memcpy(deltas[count].key_id, entry->key.key_id, APIKEY_ID_LEN);
		deltas[count].key_id[APIKEY_ID_LEN] = '\0';
		deltas[count].day = entry->key.day;
		deltas[count].calls = (int64) calls;
		deltas[count].rejected = (int64) rejected;
		deltas[count].last_used = last_used > entry->flushed_last_used ? last_used : 0;
		entry->flush_xid = xid;
		entry->flushing_calls = (uint32) calls;
		entry->flushing_rejected = (uint32) rejected;
		count++;
	}
	LWLockRelease(usage_shared->lock);

	if (removed)
		ConditionVariableBroadcast(&usage_shared->room);
	*n = count;
	return deltas;
}

/*
 * True if the counts of an entry whose key the flush did not find may still
 * find it: its creating transaction is running or has just committed
 * (exclusive lock held).  The first "committed" answer clears creator_xid,
 * so that a key deleted later does not keep its entry forever.
 */
static bool
entry_key_may_appear(UsageEntry *entry)
{
	TransactionId xid = entry->creator_xid;

	if (!TransactionIdIsValid(xid))
		return false;
	if (TransactionIdIsInProgress(xid))
		return true;
	entry->creator_xid = InvalidTransactionId;
	return TransactionIdDidCommit(xid);
}

void
usage_settle(Oid dbid, Oid keys_relid, TransactionId xid, const UsageDelta *deltas,
			 const bool *matched, const bool *last_used_done, int n)
{
	DateADT		today = (DateADT) (GetCurrentTimestamp() / USECS_PER_DAY);

	LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		UsageKey	key;
		UsageEntry *entry;

		memset(&key, 0, sizeof(key));
		key.dbid = dbid;
		key.keys_relid = keys_relid;
		key.day = deltas[i].day;
		memcpy(key.key_id, deltas[i].key_id, APIKEY_ID_LEN);
		entry = hash_search(usage_hash, &key, HASH_FIND, NULL);
		if (entry == NULL || entry->flush_xid != xid)
			continue;

		if (!matched[i])
		{
			/*
			 * No such key in the flush's snapshot: its creating transaction
			 * is still open, or rolled back, or the row was deleted.  Keep
			 * the counts while it may still commit; otherwise they are void.
			 */
			entry_clear_flush(entry);
			if (!entry_key_may_appear(entry))
				entry_remove(entry);
			continue;
		}

		entry->creator_xid = InvalidTransactionId;
		entry_subtract_flushed(entry);
		entry_clear_flush(entry);
		if (last_used_done[i] && deltas[i].last_used > entry->flushed_last_used)
			entry->flushed_last_used = deltas[i].last_used;

		/* today's drained entries stay, so a busy key is not re-inserted every flush */
		if (entry->key.day < today && entry_is_drained(entry))
			entry_remove(entry);
	}
	LWLockRelease(usage_shared->lock);

	/* entries were drained or removed: waiting backends can evict them now */
	ConditionVariableBroadcast(&usage_shared->room);
}

void
usage_forget(Oid dbid, Oid keys_relid)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	bool		removed = false;

	LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry->key.dbid == dbid &&
			(keys_relid == InvalidOid || entry->key.keys_relid == keys_relid))
		{
			entry_remove(entry);
			removed = true;
		}
	}
	LWLockRelease(usage_shared->lock);
	if (removed)
		ConditionVariableBroadcast(&usage_shared->room);
}

void
usage_forget_orphans(Oid dbid)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	Oid		   *relids;
	int			nrel = 0;
	int			ngone = 0;

	/* the keys tables this database's counters name */
	LWLockAcquire(usage_shared->lock, LW_SHARED);
	relids = palloc(sizeof(Oid) * Max(hash_get_num_entries(usage_hash), 1));
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		bool		seen = false;

		if (entry->key.dbid != dbid)
			continue;
		for (int i = 0; i < nrel && !seen; i++)
			seen = (relids[i] == entry->key.keys_relid);
		if (!seen)
			relids[nrel++] = entry->key.keys_relid;
	}
	LWLockRelease(usage_shared->lock);

	/* keep those that still exist: relids[0 .. ngone) are the gone ones */
	for (int i = 0; i < nrel; i++)
		if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relids[i])))
			relids[ngone++] = relids[i];
	if (ngone == 0)
		return;

	LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		bool		gone = false;

		if (entry->key.dbid != dbid ||
			(TransactionIdIsValid(entry->creator_xid) &&
			 TransactionIdIsInProgress(entry->creator_xid)))
			continue;
		for (int i = 0; i < ngone && !gone; i++)
			gone = (relids[i] == entry->key.keys_relid);
		if (gone)
			entry_remove(entry);
	}
	LWLockRelease(usage_shared->lock);
	ConditionVariableBroadcast(&usage_shared->room);
}

Oid *
usage_databases(int *n)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	Oid		   *dbs;
	int			count = 0;

	LWLockAcquire(usage_shared->lock, LW_SHARED);
	dbs = palloc(sizeof(Oid) * Max(hash_get_num_entries(usage_hash), 1));
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		bool		seen = false;

		for (int i = 0; i < count && !seen; i++)
			seen = (dbs[i] == entry->key.dbid);
		if (!seen)
			dbs[count++] = entry->key.dbid;
	}
	LWLockRelease(usage_shared->lock);
	*n = count;
	return dbs;
}
