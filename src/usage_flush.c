/*
 * usage_flush.c
 *		The workers' side of the counter table: what a flush reads, how it
 *		settles what it wrote, and forgetting the counters of dropped
 *		databases and extensions.  The locking protocol and the eviction
 *		rule are in usage.c's header.
 *
 * Exactly once: a flush marks each entry with its transaction id and the
 * amounts it is writing (usage_collect); after commit it subtracts them and
 * clears the mark (usage_settle).  If the flushing worker dies, or the
 * server stops, between its commit and that subtraction, the mark survives
 * (in memory, or in the shutdown dump) and the next usage_collect subtracts
 * the amounts once the commit log says the xid committed, or just clears
 * the mark if it aborted.  The xid is WAL-logged before any mark is set
 * (worker.c), so recovery never gives it to another transaction.
 */
#include "postgres.h"

#include "access/transam.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "usage.h"
#include "usage_internal.h"

/* Subtracts an in-progress flush's amounts from entry (exclusive lock held). */
static void
entry_subtract_flushed(UsageEntry *entry)
{
	pg_atomic_fetch_sub_u64(&entry->calls, entry->flushing_calls);
	pg_atomic_fetch_sub_u64(&entry->rejected, entry->flushing_rejected);
}

/* Forgets entry's flush or batch mark (exclusive lock held). */
static void
entry_clear_flush(UsageEntry *entry)
{
	entry->flush_xid = InvalidTransactionId;
	entry->ship_batch = 0;
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

/* Copies entry's key into delta (its amounts are the caller's). */
static void
entry_to_delta(UsageEntry *entry, UsageDelta *delta)
{
	memcpy(delta->key_id, entry->key.key_id, APIKEY_ID_LEN);
	delta->key_id[APIKEY_ID_LEN] = '\0';
	delta->day = entry->key.day;
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
				 (!usage_entry_is_drained(entry) ||
				  TransactionIdIsValid(entry->flush_xid) ||
				  entry->key.day < today));
	if (found)
		hash_seq_term(&seq);
	LWLockRelease(usage_shared->lock);
	return found;
}

/*
 * Puts what entry holds into *delta and records the amounts taken as its
 * flushing amounts (exclusive lock held); the caller sets the mark.  False
 * if it holds nothing: then a drained past day's entry is removed.
 */
static bool
entry_take(UsageEntry *entry, DateADT today, UsageDelta *delta, bool *removed)
{
	/* one flush writes at most 2^32-1 calls of an entry; the rest waits */
	uint64		calls = Min(pg_atomic_read_u64(&entry->calls), PG_UINT32_MAX);
	uint64		rejected = Min(pg_atomic_read_u64(&entry->rejected), PG_UINT32_MAX);
	TimestampTz last_used = (TimestampTz) pg_atomic_read_u64(&entry->last_used);

	if (calls == 0 && rejected == 0 && last_used <= entry->flushed_last_used)
	{
		/* drained: a past day's entry goes, today's stays for reuse */
		if (entry->key.day < today)
		{
			usage_entry_remove(entry);
			*removed = true;
		}
		return false;
	}
	entry_to_delta(entry, delta);
	delta->calls = (int64) calls;
	delta->rejected = (int64) rejected;
	delta->last_used = last_used > entry->flushed_last_used ? last_used : 0;
	entry->flushing_calls = (uint32) calls;
	entry->flushing_rejected = (uint32) rejected;
	return true;
}

/*
 * Takes up to max of dbid's counters into deltas, marking each with xid (a
 * flush) or batch (a standby's new batch); on the way removes the counters
 * of a dropped extension and drained entries of past days (exclusive lock
 * held).  Returns how many it took.
 */
static int
take_counters(Oid dbid, Oid keys_relid, TransactionId xid, uint64 batch, int max,
			  UsageDelta *deltas, bool *removed)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	int			count = 0;
	DateADT		today = (DateADT) (GetCurrentTimestamp() / USECS_PER_DAY);

	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry->key.dbid != dbid)
			continue;
		if (entry->key.keys_relid != keys_relid)
		{
			/* counts of a dropped instance of the extension */
			usage_entry_remove(entry);
			*removed = true;
			continue;
		}
		/* a standby's batch not yet confirmed: the worker resolves it first */
		if (entry->ship_batch != 0)
			continue;
		/* a flush mark left by a flush that did not finish (on a standby: by
		 * this server's time as a primary) */
		if (!entry_settle_leftover(entry, xid))
			continue;
		if (entry_take(entry, today, &deltas[count], removed))
		{
			entry->flush_xid = xid;
			entry->ship_batch = batch;
			if (++count == max)
			{
				hash_seq_term(&seq);
				break;
			}
		}
	}
	return count;
}

UsageDelta *
usage_collect(Oid dbid, Oid keys_relid, TransactionId xid, int *n)
{
	UsageDelta *deltas;
	bool		removed = false;

	LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
	deltas = palloc(sizeof(UsageDelta) * Max(hash_get_num_entries(usage_hash), 1));
	*n = take_counters(dbid, keys_relid, xid, 0, INT_MAX, deltas, &removed);
	LWLockRelease(usage_shared->lock);

	if (removed)
		ConditionVariableBroadcast(&usage_shared->room);
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

/*
 * Settles what a flush (mark xid) or a standby's batch (mark batch) wrote:
 * see usage_settle.
 */
static void
settle(Oid dbid, Oid keys_relid, TransactionId xid, uint64 batch,
	   const UsageDelta *deltas, const bool *matched, const bool *last_used_done, int n)
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
		if (entry == NULL || entry->flush_xid != xid || entry->ship_batch != batch)
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
				usage_entry_remove(entry);
			continue;
		}

		entry->creator_xid = InvalidTransactionId;
		entry_subtract_flushed(entry);
		entry_clear_flush(entry);
		if (last_used_done[i] && deltas[i].last_used > entry->flushed_last_used)
			entry->flushed_last_used = deltas[i].last_used;

		/* today's drained entries stay, so a busy key is not re-inserted every flush */
		if (entry->key.day < today && usage_entry_is_drained(entry))
			usage_entry_remove(entry);
	}
	LWLockRelease(usage_shared->lock);

	/* entries were drained or removed: waiting backends can evict them now */
	ConditionVariableBroadcast(&usage_shared->room);
}

void
usage_settle(Oid dbid, Oid keys_relid, TransactionId xid, const UsageDelta *deltas,
			 const bool *matched, const bool *last_used_done, int n)
{
	settle(dbid, keys_relid, xid, 0, deltas, matched, last_used_done, n);
}

UsageDelta *
usage_ship_collect(Oid dbid, Oid keys_relid, int max, uint64 *batch, int *n)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	UsageDelta *deltas;
	int			count = 0;
	bool		removed = false;
	uint64		unconfirmed = 0;
	uint64		random_bits;

	/* drawn outside the lock */
	if (!pg_strong_random(&random_bits, sizeof(random_bits)))
		random_bits = (uint64) MyProcPid ^ (uint64) GetCurrentTimestamp();

	LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
	/* every entry may be the unconfirmed batch's (max may have been larger) */
	deltas = palloc(sizeof(UsageDelta) * Max(hash_get_num_entries(usage_hash), 1));

	/* a batch that may have reached the primary goes again, exactly as it was */
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry->key.dbid != dbid || entry->key.keys_relid != keys_relid ||
			entry->ship_batch == 0)
			continue;
		unconfirmed = entry->ship_batch;
		entry_to_delta(entry, &deltas[count]);
		deltas[count].calls = entry->flushing_calls;
		deltas[count].rejected = entry->flushing_rejected;
		deltas[count].last_used = 0;
		count++;
	}
	if (unconfirmed != 0 || max == 0)
	{
		LWLockRelease(usage_shared->lock);
		*batch = unconfirmed;
		*n = count;
		return deltas;
	}

	*batch = (pg_atomic_fetch_add_u64(&usage_shared->next_batch, 1) << BATCH_RANDOM_BITS) |
		(random_bits & ((UINT64CONST(1) << BATCH_RANDOM_BITS) - 1));
	*n = take_counters(dbid, keys_relid, InvalidTransactionId, *batch, max, deltas, &removed);
	LWLockRelease(usage_shared->lock);

	if (removed)
		ConditionVariableBroadcast(&usage_shared->room);
	return deltas;
}

void
usage_ship_settle(Oid dbid, Oid keys_relid, uint64 batch, const UsageDelta *deltas,
				  const bool *matched, const bool *last_used_done, int n)
{
	settle(dbid, keys_relid, InvalidTransactionId, batch, deltas, matched,
		   last_used_done, n);
}

void
usage_ship_unmark(Oid dbid)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;

	LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
		if (entry->key.dbid == dbid && entry->ship_batch != 0)
			entry_clear_flush(entry);
	LWLockRelease(usage_shared->lock);
}

pg_uuid_t
usage_source(void)
{
	pg_uuid_t	source;

	LWLockAcquire(usage_shared->lock, LW_SHARED);
	source = usage_shared->source;
	LWLockRelease(usage_shared->lock);
	return source;
}

pg_uuid_t
usage_batch_source(uint64 batch)
{
	pg_uuid_t	source;

	LWLockAcquire(usage_shared->lock, LW_SHARED);
	source = batch >= usage_shared->source_from ? usage_shared->source :
		usage_shared->prev_source;
	LWLockRelease(usage_shared->lock);
	return source;
}

void
usage_new_source(void)
{
	pg_uuid_t	fresh;

	usage_random_source(&fresh);
	LWLockAcquire(usage_shared->lock, LW_EXCLUSIVE);
	usage_shared->prev_source = usage_shared->source;
	usage_shared->source = fresh;
	usage_shared->source_from = pg_atomic_read_u64(&usage_shared->next_batch) << BATCH_RANDOM_BITS;
	LWLockRelease(usage_shared->lock);
}

void
usage_wake_waiters(void)
{
	ConditionVariableBroadcast(&usage_shared->room);
}

uint64
usage_dropped(void)
{
	return pg_atomic_read_u64(&usage_shared->dropped);
}

void
usage_pending_counts(Oid dbid, int *keys, int64 *calls, int64 *rejected)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;

	*keys = 0;
	*calls = *rejected = 0;
	LWLockAcquire(usage_shared->lock, LW_SHARED);
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry->key.dbid != dbid || usage_entry_is_drained(entry))
			continue;
		(*keys)++;
		*calls += (int64) pg_atomic_read_u64(&entry->calls);
		*rejected += (int64) pg_atomic_read_u64(&entry->rejected);
	}
	LWLockRelease(usage_shared->lock);
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
			usage_entry_remove(entry);
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
			usage_entry_remove(entry);
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
