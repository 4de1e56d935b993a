/*
 * usage_internal.h
 *		The counter table's layout, shared by usage.c (counting),
 *		usage_flush.c (what the workers read and settle) and usage_dump.c
 *		(saving it across a clean restart).  Nothing else includes this:
 *		other modules use usage.h.  The locking protocol is in usage.c.
 */
#ifndef APIKEYS_USAGE_INTERNAL_H
#define APIKEYS_USAGE_INTERNAL_H

#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "utils/date.h"
#include "access/transam.h"
#include "datatype/timestamp.h"
#include "utils/hsearch.h"
#include "utils/uuid.h"

#include "keyformat.h"

typedef struct UsageKey
{
	Oid			dbid;
	Oid			keys_relid;
	DateADT		day;
	char		key_id[APIKEY_ID_LEN];	/* not NUL-terminated */
} UsageKey;

typedef struct UsageEntry
{
	UsageKey	key;			/* hash key: must be first */
	pg_atomic_uint64 calls;		/* valid calls not yet flushed */
	pg_atomic_uint64 rejected;	/* rejected calls not yet flushed */
	pg_atomic_uint64 last_used; /* latest valid call (TimestampTz) */
	TimestampTz flushed_last_used;	/* last_used already written */
	TransactionId creator_xid;	/* the key's creating transaction, when that
								 * was still in progress at first count */
	TransactionId flush_xid;	/* flush in progress or unsettled, or invalid */
	uint64		ship_batch;		/* a standby's batch in flight or unconfirmed,
								 * or 0; it then holds the flushing amounts */
	uint32		flushing_calls; /* what that flush (or batch) is writing */
	uint32		flushing_rejected;
} UsageEntry;

typedef struct UsageShared
{
	LWLock	   *lock;
	ConditionVariable room;		/* broadcast when entries are removed */
	pg_atomic_uint64 last_wait; /* when a backend last waited for room */
	/*
	 * A standby's shipping (ship.c): who it is to the primary (random at
	 * first start, kept by the dump), and its next batch number.  Batches
	 * numbered from source_from on go as source, earlier ones as
	 * prev_source: a source found to be shared (a copied data directory) is
	 * replaced, but a batch already sent keeps the one it was sent as.
	 * Written under the exclusive lock.
	 */
	pg_uuid_t	source;
	pg_uuid_t	prev_source;
	uint64		source_from;	/* a batch number */
	pg_atomic_uint64 next_batch;	/* a sequence: see BATCH_RANDOM_BITS */
	pg_atomic_uint64 dropped;	/* counts a standby could not keep (table full) */
} UsageShared;

extern UsageShared *usage_shared;
extern HTAB *usage_hash;

/* True if entry holds nothing a flush still has to write: it may be evicted. */
static inline bool
usage_entry_is_drained(UsageEntry *entry)
{
	return pg_atomic_read_u64(&entry->calls) == 0 &&
		pg_atomic_read_u64(&entry->rejected) == 0 &&
		(TimestampTz) pg_atomic_read_u64(&entry->last_used) <= entry->flushed_last_used &&
		!TransactionIdIsValid(entry->flush_xid) && entry->ship_batch == 0;
}

/* Removes entry, possibly during a hash_seq_search (exclusive lock held). */
static inline void
usage_entry_remove(UsageEntry *entry)
{
	hash_search(usage_hash, &entry->key, HASH_REMOVE, NULL);
}


/* Sets up a new entry's counters (exclusive lock held, or the postmaster alone). */
extern void usage_entry_init(UsageEntry *entry);

/*
 * A batch's number is the next of a sequence, shifted left by this many
 * bits, which are random: two servers with one source id (a copied data
 * directory) give their batches different numbers, so the primary tells a
 * batch sent again from another server's (usage_apply.c).
 */
#define BATCH_RANDOM_BITS		16

/* How long after a backend last waited for room the table counts as full. */
#define PRESSURE_USECS			(5 * USECS_PER_SEC)

/* Registers the shutdown dump and restores the last one (postmaster, at startup). */
extern void usage_dump_setup(bool restore);

#endif							/* APIKEYS_USAGE_INTERNAL_H */
