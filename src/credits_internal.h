/*
 * credits_internal.h
 *		The credit table's layout and its transactional operations, shared
 *		by credits.c (the table, charges, commit and abort), credits_worker.c
 *		(leases and settlement) and credits_dump.c (clean restarts).  Other
 *		modules use credits.h.  The protocol is in credits.c.
 */
#ifndef APIKEYS_CREDITS_INTERNAL_H
#define APIKEYS_CREDITS_INTERNAL_H

#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/hsearch.h"

#include "credits.h"

/*
 * One entry is either a pool (a row of apikeys.credit_pools: an owner's
 * balance or a key's quota; day 0, no key id) or a spend counter (what
 * key_id spent of the balance pool `pool` on `day`, for
 * apikeys.credit_usage).  keys_relid names the extension instance.
 */
typedef struct CreditKey
{
	Oid			dbid;
	Oid			keys_relid;
	int64		pool;
	DateADT		day;
	char		key_id[APIKEY_ID_LEN];	/* zeroes for a pool; not NUL-terminated */
} CreditKey;

typedef struct CreditEntry
{
	CreditKey	key;			/* hash key: must be first */
	slock_t		mutex;			/* protects everything below */
	int64		available;		/* leased, free to reserve */
	int64		reserved;		/* reserved by open transactions */
	int64		spent;			/* committed, not yet settled to the table */
	int64		settling;		/* being settled by the worker's open flush */
	int64		recalling;		/* being handed back to the table */
	/* pools only: the row as of the last commit that changed it */
	int64		leased;			/* credit_pools.leased */
	int64		table_available;	/* credit_pools.available */
	int32		generation;		/* credit_pools.generation (a quota reset bumps it) */
	TimestampTz period_end;		/* quota: when its refill is due (0: never) */
	bool		is_quota;
	bool		synced;			/* reconciled with its row by the worker */
	bool		refill_wanted;	/* a charge saw period_end pass */
	int64		want;			/* units a charge waits for (0: none) */
	int64		consumed;		/* reserved since the last lease (its rate) */
	TimestampTz granted_at;		/* when the last lease arrived */
	int64		rate;			/* units per second reserved during the lease before */
	TimestampTz last_used;
} CreditEntry;

typedef struct CreditShared
{
	LWLock	   *lock;
	ConditionVariable changed;	/* broadcast when a waiter may proceed */
	pg_atomic_uint64 pressure;	/* when a backend last found the table full */
	pg_atomic_uint32 waiting;	/* backends sleeping on changed */
} CreditShared;

extern CreditShared *credits_shared;
extern HTAB *credits_hash;

/* A pool's key. */
static inline CreditKey
credit_pool_key(Oid dbid, Oid keys_relid, int64 pool)
{
	CreditKey	key;

	memset(&key, 0, sizeof(key));
	key.dbid = dbid;
	key.keys_relid = keys_relid;
	key.pool = pool;
	return key;
}

static inline bool
credit_key_is_pool(const CreditKey *key)
{
	return key->day == 0 && key->key_id[0] == '\0';
}

/* True if nothing of the entry is in flight or owed to the table. */
static inline bool
credit_entry_is_idle(const CreditEntry *e)
{
	return e->reserved == 0 && e->spent == 0 && e->settling == 0 &&
		e->recalling == 0 && e->want == 0 && !e->refill_wanted;
}

/* Initialises a new entry (exclusive lock held, or the postmaster alone). */
extern void credit_entry_init(CreditEntry *e);

/*
 * Transactional operations on entries, undone if the (sub)transaction that
 * registers them aborts.  Settle and recall act on shared memory at once
 * (what they move can no longer be spent) and finish at commit; apply acts
 * only at commit.
 */
/* Moves the entry's spent to settling; returns the amount (lock held). */
extern int64 credit_op_settle(CreditEntry *e);
/* Takes the pool's available for handing back to the table; returns it. */
extern int64 credit_op_recall(CreditEntry *e);
/* Removes the pool at commit if it is still idle then (after a recall). */
extern void credit_op_remove(const CreditKey *key);
/*
 * At commit, sets the pool's mirror of its row (available, leased,
 * generation, period end), adds granted units to what charges can take,
 * and with reset first voids what is left of an earlier generation.
 */
extern void credit_op_apply(const CreditKey *key, int64 table_available, int64 leased,
							int32 generation, TimestampTz period_end, bool is_quota,
							bool reset, int64 granted, bool synced);

/* Undoes this transaction's settle, recall and removal of the pool now (its row was locked). */
extern void credit_op_cancel(const CreditKey *key);
/* True if this transaction has changed the pool's row (its mirror lags until commit). */
extern bool credit_op_pending(const CreditKey *key);

/* Registers the shutdown dump and restores the last one (postmaster, at startup). */
extern void credits_dump_setup(bool restore);

#endif							/* APIKEYS_CREDITS_INTERNAL_H */
