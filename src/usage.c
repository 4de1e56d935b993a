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
 *	  some.  The count is never dropped (on a hot standby it may be: below).
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
 * Exactly once: usage_flush.c marks what a flush writes with its
 * transaction id and settles the mark from the commit log.
 *
 * Durability: usage_dump.c saves the table at a clean shutdown and restores
 * it at start.  After a crash the counts since the last flush are lost.
 *
 * On a hot standby the same table counts, and the standby's worker ships
 * the counts to the primary (ship.c).  There a full table makes a
 * validation wait only while the worker ships successfully, and then for
 * ROOM_WAIT_MS at most; otherwise the count is dropped and reported.
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
		/* a restored dump overrides these (usage_dump.c) */
		usage_random_source(&usage_shared->source);
		usage_shared->prev_source = usage_shared->source;
		usage_shared->source_from = 0;
		pg_atomic_init_u64(&usage_shared->next_batch, 1);
		pg_atomic_init_u64(&usage_shared->dropped, 0);
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
usage_random_source(pg_uuid_t *source)
{
	if (!pg_strong_random(source->data, UUID_LEN))
		ereport(ERROR,
				(errmsg("could not generate a random source id for apikeys")));
	/* a version 4 (random) UUID */
	source->data[6] = (source->data[6] & 0x0f) | 0x40;
	source->data[8] = (source->data[8] & 0x3f) | 0x80;
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
	entry->ship_batch = 0;
	entry->flushing_calls = 0;
	entry->flushing_rejected = 0;
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
		if (usage_entry_is_drained(entry) && (entry->key.day < today || removed < batch))
		{
			usage_entry_remove(entry);
			removed++;
		}
	}
	return removed;
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
 * some.  Never drops the count, except on a hot standby (see above).
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

		/*
		 * A standby's counts leave only over the network: it waits for room
		 * (once, at most ROOM_WAIT_MS) only while its worker ships; with the
		 * primary out of reach, rather than make a validation wait on the
		 * network, the count is dropped, and said so in
		 * apikey_standby_status().
		 */
		if (RecoveryInProgress() && (waited || !slot_ship_ok(key->dbid)))
		{
			pg_atomic_fetch_add_u64(&usage_shared->dropped, calls + rejected);
			pg_atomic_write_u64(&usage_shared->last_wait, (uint64) GetCurrentTimestamp());
			apikeys_wake_workers();
			break;
		}

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

	if (usage_shared == NULL || VARSIZE_ANY_EXHDR(id) != APIKEY_ID_LEN)
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

