/*
 * usage.h
 *		Shared-memory usage counters: bumped by validation, drained by the
 *		per-database worker's flush.
 */
#ifndef APIKEYS_USAGE_H
#define APIKEYS_USAGE_H

#include "datatype/timestamp.h"
#include "utils/date.h"
#include "utils/uuid.h"

#include "keyformat.h"

/* One counter row as the flush sees it. */
typedef struct UsageDelta
{
	char		key_id[APIKEY_ID_LEN + 1];
	DateADT		day;
	int64		calls;
	int64		rejected;
	TimestampTz last_used;		/* 0 if nothing new to record */
} UsageDelta;

extern Size usage_shmem_size(void);
extern void usage_shmem_startup(void);

/*
 * Counts one validation of key_id (a text datum of the key's public id) in
 * this database.  valid says whether it passed; now is the validation time;
 * creator is the key's creating transaction if this transaction is it (the
 * key is not yet visible to a flush: the count waits in this backend until
 * the transaction ends), else InvalidTransactionId.  When the table is full
 * it evicts flushed entries, and waits for a flush only when every entry
 * holds unflushed counts; a count is never dropped.
 */
extern void usage_count(Oid keys_relid, Datum key_id, bool valid, TimestampTz now,
						TransactionId creator);

/* True if database dbid has counts to write or entries to clear (a flush has work). */
extern bool usage_pending(Oid dbid);

/*
 * Flush support, for the worker of database dbid whose keys table is
 * keys_relid, in transaction xid.  usage_collect returns the non-zero
 * counters (palloc'd, *n of them), marks them as being flushed by xid, and
 * discards counters left by an earlier instance of the extension.  After
 * the flush commits, usage_settle subtracts what was written; matched[i]
 * says whether deltas[i] belonged to an existing key, and last_used_done[i]
 * whether its last_used was recorded.  A flush that never got settled (its
 * worker died, or the server stopped, between commit and settle) is settled
 * by the next usage_collect once its xid is known to have committed.
 */
extern UsageDelta *usage_collect(Oid dbid, Oid keys_relid, TransactionId xid, int *n);
extern void usage_settle(Oid dbid, Oid keys_relid, TransactionId xid,
						 const UsageDelta *deltas, const bool *matched,
						 const bool *last_used_done, int n);

/*
 * A hot standby's shipping (ship.c).  usage_ship_collect returns the batch
 * to send for database dbid: the unconfirmed batch again, exactly as it
 * was, if there is one; else a new batch number (*batch) marking up to max
 * entries' counts (max 0: only an unconfirmed batch, else none, *batch 0).  Once the primary has applied it (or had already),
 * usage_ship_settle subtracts it, as usage_settle does for a flush.
 * usage_ship_unmark forgets dbid's batch marks without subtracting (the
 * batch was never applied anywhere).
 */
extern UsageDelta *usage_ship_collect(Oid dbid, Oid keys_relid, int max, uint64 *batch,
									  int *n);
extern void usage_ship_settle(Oid dbid, Oid keys_relid, uint64 batch,
							  const UsageDelta *deltas, const bool *matched,
							  const bool *last_used_done, int n);
extern void usage_ship_unmark(Oid dbid);

/*
 * This server's source id as a standby (usage_source: the current one;
 * usage_batch_source: the one batch was sent as), and the counts it dropped
 * as one.  usage_new_source replaces the source for batches numbered from
 * now on (it was found to be shared).  usage_wake_waiters wakes the
 * validations waiting for room (a standby's ship failed: they drop their
 * counts now).
 */
extern pg_uuid_t usage_source(void);
extern pg_uuid_t usage_batch_source(uint64 batch);
extern void usage_new_source(void);
extern void usage_random_source(pg_uuid_t *source);
extern uint64 usage_dropped(void);
extern void usage_wake_waiters(void);

/* What dbid's counters hold that no flush or batch has written yet. */
extern void usage_pending_counts(Oid dbid, int *keys, int64 *calls, int64 *rejected);

/* What the primary did with a standby's batch (usage_apply.c). */
typedef enum BatchOutcome
{
	BATCH_APPLIED,
	BATCH_DUPLICATE,			/* applied before: its answer was lost */
	BATCH_CONFLICT				/* another server sends under this source id */
} BatchOutcome;

extern const char *const batch_outcome_names[];

/*
 * usage_apply.c: adds n counters to apikeys.usage and last_used_at (SPI
 * connected, in the flush's transaction); matched[i] says whether
 * deltas[i]'s key exists, last_used_done[i] whether its last use was
 * recorded.  usage_apply_batch does it for a standby's batch, unless that
 * batch was applied before, and says what it did.
 */
extern void usage_apply(const UsageDelta *deltas, int n, bool *matched, bool *last_used_done);
extern BatchOutcome usage_apply_batch(const pg_uuid_t *source, const char *standby,
									  uint64 batch, const UsageDelta *deltas, int n,
									  bool *matched, bool *last_used_done);

/* Removes the counters of a dropped database, or of one dropped keys table. */
extern void usage_forget(Oid dbid, Oid keys_relid);

/*
 * Removes the counters of dbid whose keys table no longer exists (in a
 * transaction, in database dbid): the extension was dropped while no
 * worker ran.  Entries of a transaction still in progress are kept.
 */
extern void usage_forget_orphans(Oid dbid);

/* The databases that have counters, palloc'd, *n of them. */
extern Oid *usage_databases(int *n);

/* True if the table is full and a backend is waiting for room. */
extern bool usage_pressure(void);

#endif							/* APIKEYS_USAGE_H */
