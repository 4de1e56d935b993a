/*
 * credits.c
 *		Credits in shared memory: charges reserve without writing a row,
 *		belong to their transaction, and never overdraw.
 *
 * The table apikeys.credit_pools holds one row per owner's balance and per
 * key's quota of a credit: `available` (spendable, not leased) and `leased`
 * (moved to this server's shared memory).  The worker leases: in one
 * committed transaction it tops the pool's free part up to
 * apikeys.credit_lease credits (or, for a busy pool, to what it spends in
 * LEASE_HORIZON_USECS, at most LEASE_MAX_FACTOR leases) from available to
 * leased, and only then adds them to the pool's entry here.
 * Charges take from the entry; the worker's flush settles what committed
 * charges spent (leased minus spent) and writes apikeys.credit_usage.  So
 * the owner's balance is available + the entry's available, every spent
 * credit left the row before it could be spent (a crash never gives one
 * back), and a crash can cost the owner at most the unspent part of one
 * lease per pool (credit_lease, or 0.1 s of a busy pool's spending): the worker writes it off, audited, when it first meets
 * the pool again (an entry it has not yet reconciled: `synced` false).
 * A clean shutdown saves the entries (credits_dump.c), so a clean restart
 * loses nothing.
 *
 * One fixed-size hash table, sized by apikeys.max_credit_pools, holds pool
 * entries and spend counters (per key, UTC day and balance pool).
 *
 * Locking protocol (lock = the tranche's APIKEYS_LOCK_CREDITS LWLock):
 *	- Find an entry, and read or change its numbers: lock shared, then the
 *	  entry's spinlock.  Every number of an entry changes only under its
 *	  spinlock, by charges and by the commit or abort of an operation.
 *	- Insert or remove an entry: lock exclusive.  An entry is removed only
 *	  when idle (credit_entry_is_idle): nothing reserved, owed or wanted
 *	  (a charge waiting on a removed pool finds it again, re-created).  A full table makes the charge wake the worker (which
 *	  hands idle pools back to their rows) and wait for room.
 *	- No LWLock is held while waiting, and no lock of this module is held
 *	  while a row lock is awaited.
 *
 * A charge belongs to its transaction: credits_charge moves cost from
 * available to reserved at once, so no one else can spend it; commit moves
 * it to spent, abort (of the transaction or of the subtransaction that
 * charged) back to available.  PREPARE TRANSACTION is refused while a
 * charge or credit change is in flight: its end would come in another
 * process.  A charge that finds too little waits only for the worker (a
 * lease or a refill), or for other transactions' reservations or recalls
 * to end when it holds none itself (and never for its own), so waits
 * never form a cycle; that wait honours lock_timeout.
 *
 * Quotas refill by reset: a new generation of the row (quota_set, refill)
 * voids what was left of the old lease; reservations of the old
 * generation, when they end, neither return nor settle into the new one.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "credits_internal.h"
#include "guc.h"
#include "slots.h"

/* A busy pool's lease covers this much of its spending, up to this many leases. */
#define LEASE_HORIZON_USECS		(USECS_PER_SEC / 10)
#define LEASE_MAX_FACTOR		100

/* How long a charge waits for the worker before it gives up with an error. */
#define WORKER_WAIT_MS			10000
/* How often a waiting charge looks again (a broadcast wakes it sooner). */
#define RECHECK_MS				100

CreditShared *credits_shared = NULL;
HTAB	   *credits_hash = NULL;

/* ----------------------------------------------------------------------
 * Shared memory
 * ----------------------------------------------------------------------
 */

Size
credits_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(CreditShared)),
					hash_estimate_size(apikeys_max_credit_pools, sizeof(CreditEntry)));
}

void
credits_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	credits_shared = ShmemInitStruct("apikeys credits", sizeof(CreditShared), &found);
	if (!found)
	{
		credits_shared->lock = apikeys_lock(APIKEYS_LOCK_CREDITS);
		ConditionVariableInit(&credits_shared->changed);
		pg_atomic_init_u64(&credits_shared->pressure, 0);
		pg_atomic_init_u32(&credits_shared->waiting, 0);
	}
	info.keysize = sizeof(CreditKey);
	info.entrysize = sizeof(CreditEntry);
	credits_hash = ShmemInitHash("apikeys credit pools",
								 apikeys_max_credit_pools, apikeys_max_credit_pools,
								 &info, HASH_ELEM | HASH_BLOBS);
	if (!IsUnderPostmaster)
		credits_dump_setup(!found);
}

void
credit_entry_init(CreditEntry *e)
{
	SpinLockInit(&e->mutex);
	e->available = e->reserved = e->spent = e->settling = e->recalling = 0;
	e->leased = e->table_available = 0;
	e->generation = 0;
	e->period_end = 0;
	e->is_quota = false;
	e->synced = false;
	e->refill_wanted = false;
	e->want = 0;
	e->last_used = 0;
	e->consumed = 0;
	e->granted_at = 0;
	e->rate = 0;
}

/* ----------------------------------------------------------------------
 * Amounts
 * ----------------------------------------------------------------------
 */

int64
credit_units(Numeric amount, const char *argname, bool allow_negative)
{
	Datum		scaled;
	int64		units;

	if (numeric_is_nan(amount) || numeric_is_inf(amount))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a finite number", argname)));
	if (DatumGetBool(DirectFunctionCall2(numeric_gt,
										 DirectFunctionCall1(numeric_abs, NumericGetDatum(amount)),
										 NumericGetDatum(int64_to_numeric(CREDIT_MAX)))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is out of range", argname),
				 errdetail("An amount of credits is at most %lld.", (long long) CREDIT_MAX)));
	scaled = DirectFunctionCall2(numeric_mul, NumericGetDatum(amount),
								 NumericGetDatum(int64_to_numeric(CREDIT_SCALE)));
	if (!DatumGetBool(DirectFunctionCall2(numeric_eq, scaled,
										  DirectFunctionCall2(numeric_trunc, scaled,
															  Int32GetDatum(0)))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must have at most 4 decimal places", argname)));
	units = DatumGetInt64(DirectFunctionCall1(numeric_int8, scaled));
	if (units < 0 && !allow_negative)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", argname)));
	return units;
}

Numeric
credit_numeric(int64 units)
{
	Datum		exact;
	int64		u = units;
	int			scale = 4;

	/* the fewest decimals that show the amount exactly, and at least one */
	while (scale > 1 && u % 10 == 0)
	{
		u /= 10;
		scale--;
	}
	exact = DirectFunctionCall2(numeric_div, NumericGetDatum(int64_to_numeric(units)),
								NumericGetDatum(int64_to_numeric(CREDIT_SCALE)));
	return DatumGetNumeric(DirectFunctionCall2(numeric_round, exact, Int32GetDatum(scale)));
}

/* ----------------------------------------------------------------------
 * Operations tied to the transaction
 * ----------------------------------------------------------------------
 */

typedef enum OpKind
{
	OP_RESERVE,					/* a charge: reserved -> spent, or back */
	OP_SETTLE,					/* a flush: settling -> gone from leased, or back */
	OP_RECALL,					/* recalling -> the row, or back */
	OP_APPLY,					/* at commit: the row's new state, a lease */
	OP_REMOVE					/* at commit: remove if idle */
} OpKind;

typedef struct CreditOp
{
	OpKind		kind;
	SubTransactionId subid;
	CreditKey	key;
	int64		amount;
	int32		generation;		/* the pool's generation when the op began */
	/* OP_APPLY */
	int64		table_available;
	int64		leased;
	TimestampTz period_end;
	bool		is_quota;
	bool		reset;
	bool		synced;
} CreditOp;

static CreditOp *ops = NULL;
static int	nops = 0;
static int	last_charge_start = -1;	/* ops of the last charge: [start, nops) */
static int	maxops = 0;

static bool op_finish(CreditOp *op, bool commit);

static CreditOp *
op_new(OpKind kind, const CreditKey *key)
{
	CreditOp   *op;

	if (nops == maxops)
	{
		maxops = Max(16, maxops * 2);
		ops = ops == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(CreditOp) * maxops) :
			repalloc(ops, sizeof(CreditOp) * maxops);
	}
	op = &ops[nops++];
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->key = *key;
	op->subid = GetCurrentSubTransactionId();
	return op;
}

int64
credit_op_settle(CreditEntry *e)
{
	CreditOp   *op = op_new(OP_SETTLE, &e->key);

	SpinLockAcquire(&e->mutex);
	op->amount = e->spent;
	op->generation = e->generation;
	e->settling += e->spent;
	e->spent = 0;
	SpinLockRelease(&e->mutex);
	return op->amount;
}

int64
credit_op_recall(CreditEntry *e)
{
	CreditOp   *op = op_new(OP_RECALL, &e->key);

	SpinLockAcquire(&e->mutex);
	op->amount = e->available;
	op->generation = e->generation;
	e->recalling += e->available;
	e->available = 0;
	SpinLockRelease(&e->mutex);
	return op->amount;
}

void
credit_op_remove(const CreditKey *key)
{
	(void) op_new(OP_REMOVE, key);
}

void
credit_op_apply(const CreditKey *key, int64 table_available, int64 leased,
				int32 generation, TimestampTz period_end, bool is_quota,
				bool reset, int64 granted, bool synced)
{
	CreditOp   *op = op_new(OP_APPLY, key);

	op->table_available = table_available;
	op->leased = leased;
	op->generation = generation;
	op->period_end = period_end;
	op->is_quota = is_quota;
	op->reset = reset;
	op->amount = granted;
	op->synced = synced;
}

void
credit_op_cancel(const CreditKey *key)
{
	int			kept = 0;

	LWLockAcquire(credits_shared->lock, LW_SHARED);
	for (int i = 0; i < nops; i++)
	{
		if (memcmp(&ops[i].key, key, sizeof(CreditKey)) == 0 &&
			(ops[i].kind == OP_SETTLE || ops[i].kind == OP_RECALL || ops[i].kind == OP_REMOVE))
		{
			(void) op_finish(&ops[i], false);
			continue;
		}
		ops[kept++] = ops[i];
	}
	LWLockRelease(credits_shared->lock);
	nops = kept;
	last_charge_start = -1;
}

void
credits_undo_last_charge(void)
{
	if (last_charge_start < 0 || last_charge_start > nops)
		return;
	LWLockAcquire(credits_shared->lock, LW_SHARED);
	for (int i = last_charge_start; i < nops; i++)
		(void) op_finish(&ops[i], false);
	LWLockRelease(credits_shared->lock);
	nops = last_charge_start;
	last_charge_start = -1;
	if (pg_atomic_read_u32(&credits_shared->waiting) > 0)
		ConditionVariableBroadcast(&credits_shared->changed);
}

/* True if this transaction holds a reservation (others may wait for it). */
static bool
holds_reservation(void)
{
	for (int i = 0; i < nops; i++)
		if (ops[i].kind == OP_RESERVE)
			return true;
	return false;
}

bool
credit_op_pending(const CreditKey *key)
{
	for (int i = 0; i < nops; i++)
		if ((ops[i].kind == OP_APPLY || ops[i].kind == OP_RECALL) &&
			memcmp(&ops[i].key, key, sizeof(CreditKey)) == 0)
			return true;
	return false;
}

/* Finishes op: commit says how (lock held, exclusive if removal may happen). */
static bool
op_finish(CreditOp *op, bool commit)
{
	CreditEntry *e = hash_search(credits_hash, &op->key, HASH_FIND, NULL);
	bool		wake = false;
	bool		remove = false;

	if (e == NULL)
		return false;
	SpinLockAcquire(&e->mutex);
	switch (op->kind)
	{
		case OP_RESERVE:
			e->reserved -= op->amount;
			if (!credit_key_is_pool(&e->key))
				e->spent += commit ? op->amount : 0;
			else if (e->generation == op->generation)
			{
				if (commit)
					e->spent += op->amount;
				else
					e->available += op->amount;
			}
			wake = true;
			break;
		case OP_SETTLE:
			e->settling -= op->amount;
			if (!credit_key_is_pool(&e->key))
			{
				if (!commit)
					e->spent += op->amount;
				remove = commit && credit_entry_is_idle(e);
			}
			else if (e->generation == op->generation)
			{
				if (commit)
					e->leased -= op->amount;
				else
					e->spent += op->amount;
			}
			break;
		case OP_RECALL:
			e->recalling -= op->amount;
			if (e->generation == op->generation)
			{
				if (commit)
				{
					e->leased -= op->amount;
					e->table_available += op->amount;
				}
				else
					e->available += op->amount;
			}
			wake = !commit;
			break;
		case OP_APPLY:
			if (!commit)
				break;
			if (op->reset)
			{
				e->available = 0;
				e->spent = 0;
			}
			e->generation = op->generation;
			e->available += op->amount;
			if (op->amount > 0)
			{
				/* a lease: the pool's rate over the last one sizes the next */
				TimestampTz at = GetCurrentTimestamp();

				if (e->granted_at != 0 && at > e->granted_at)
					e->rate = (int64) ((double) e->consumed * USECS_PER_SEC / (at - e->granted_at));
				e->consumed = 0;
				e->granted_at = at;
			}
			e->table_available = op->table_available;
			e->leased = op->leased;
			e->period_end = op->period_end;
			e->is_quota = op->is_quota;
			if (op->synced)
			{
				e->synced = true;
				e->want = 0;
				e->refill_wanted = false;
			}
			wake = true;
			break;
		case OP_REMOVE:
			remove = commit && e->synced && credit_entry_is_idle(e) && e->available == 0;
			break;
	}
	SpinLockRelease(&e->mutex);
	if (remove)
		hash_search(credits_hash, &op->key, HASH_REMOVE, NULL);
	return wake;
}

/* Finishes the ops of subtransaction subid (all when subid is invalid). */
static void
ops_finish(bool commit, SubTransactionId subid)
{
	bool		removal = false;
	bool		wake = false;
	int			kept = 0;

	if (nops == 0 || credits_hash == NULL)
	{
		nops = 0;
		last_charge_start = -1;
		return;
	}
	for (int i = 0; i < nops; i++)
		if (ops[i].kind == OP_REMOVE || ops[i].kind == OP_SETTLE)
			removal = true;
	LWLockAcquire(credits_shared->lock, removal ? LW_EXCLUSIVE : LW_SHARED);
	for (int i = 0; i < nops; i++)
	{
		if (subid != InvalidSubTransactionId && ops[i].subid != subid)
		{
			ops[kept++] = ops[i];
			continue;
		}
		wake |= op_finish(&ops[i], commit);
	}
	LWLockRelease(credits_shared->lock);
	nops = kept;
	last_charge_start = -1;
	if (wake && pg_atomic_read_u32(&credits_shared->waiting) > 0)
		ConditionVariableBroadcast(&credits_shared->changed);
}

static void
credits_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (nops > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that charged or changed credits"),
						 errdetail("A charge belongs to the session's transaction; PREPARE TRANSACTION would end it in another one."),
						 errhint("Commit the charge in an ordinary transaction.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			ops_finish(true, InvalidSubTransactionId);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			ops_finish(false, InvalidSubTransactionId);
			break;
		default:
			break;
	}
}

static void
credits_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (nops == 0)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (int i = 0; i < nops; i++)
			if (ops[i].subid == mySubid)
				ops[i].subid = parentSubid;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
		ops_finish(false, mySubid);
}

void
credits_install_xact_callbacks(void)
{
	RegisterXactCallback(credits_xact_callback, NULL);
	RegisterSubXactCallback(credits_subxact_callback, NULL);
}

/* ----------------------------------------------------------------------
 * Charging
 * ----------------------------------------------------------------------
 */

typedef enum Take
{
	TAKE_DONE,
	TAKE_WAIT_WORKER,			/* a lease, a refill or a reconciliation is due */
	TAKE_WAIT_OTHERS,			/* only reservations of open transactions stand between */
	TAKE_SHORT
} Take;

/* Tries to reserve cost from pool e (lock held shared). */
static Take
take(CreditEntry *e, int64 cost, TimestampTz now)
{
	Take		result;
	int64		lease = (int64) apikeys_credit_lease * CREDIT_SCALE;

	SpinLockAcquire(&e->mutex);
	e->last_used = now;
	if (!e->synced)
	{
		e->want = Max(e->want, Max(cost, 1));
		result = TAKE_WAIT_WORKER;
	}
	else if (e->is_quota && e->period_end != 0 && now >= e->period_end)
	{
		e->refill_wanted = true;
		result = TAKE_WAIT_WORKER;
	}
	else if (e->available >= cost)
	{
		e->available -= cost;
		e->reserved += cost;
		e->consumed += cost;
		result = TAKE_DONE;
		/*
		 * Ask for the next lease before this one runs out: at half of what
		 * the next lease will be.  A busy pool's lease grows to what it
		 * spends in LEASE_HORIZON_USECS (up to LEASE_MAX_FACTOR leases), so
		 * that its charges do not wait for the worker's transactions; that
		 * is also the most a crash can cost it.
		 */
		if (e->table_available > 0 && e->want == 0)
		{
			int64		target = (int64) ((double) e->rate * LEASE_HORIZON_USECS / USECS_PER_SEC);

			target = Max(lease, Min(target, lease * LEASE_MAX_FACTOR));
			/* the worker's next look (PREFETCH_POLL_MS) serves it */
			if (e->available < target / 2)
				e->want = Max(target - e->available, 1);
		}
	}
	else if (e->recalling > 0)
	{
		/* a recall in flight ends with its transaction: credits stay or return */
		result = TAKE_WAIT_OTHERS;
	}
	else if (e->table_available > 0)
	{
		e->want = Max(e->want, cost - e->available);
		result = TAKE_WAIT_WORKER;
	}
	else if (e->reserved > 0 && e->available + e->reserved >= cost)
		result = TAKE_WAIT_OTHERS;
	else
		result = TAKE_SHORT;
	SpinLockRelease(&e->mutex);
	return result;
}

/* Gives back a reservation made by take in this same call (lock held). */
static void
untake(CreditEntry *e, int64 cost)
{
	SpinLockAcquire(&e->mutex);
	e->available += cost;
	e->reserved -= cost;
	SpinLockRelease(&e->mutex);
}

/* What is left of pool e for charges: the row's available and the lease's. */
static int64
pool_left(CreditEntry *e)
{
	int64		left;

	SpinLockAcquire(&e->mutex);
	left = e->table_available + e->available;
	SpinLockRelease(&e->mutex);
	return left;
}

/*
 * Finds the entries of keys (n of them), creating missing ones; false if
 * the table is full (lock not held on return then).  Returns with the lock
 * held shared otherwise.
 */
static bool
find_entries(const CreditKey *keys, CreditEntry **entries, int n)
{
	bool		missing = false;

	LWLockAcquire(credits_shared->lock, LW_SHARED);
	for (int i = 0; i < n; i++)
	{
		entries[i] = hash_search(credits_hash, &keys[i], HASH_FIND, NULL);
		missing |= (entries[i] == NULL);
	}
	if (!missing)
		return true;
	LWLockRelease(credits_shared->lock);

	LWLockAcquire(credits_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		bool		found;

		if (hash_get_num_entries(credits_hash) >= apikeys_max_credit_pools &&
			hash_search(credits_hash, &keys[i], HASH_FIND, NULL) == NULL)
		{
			LWLockRelease(credits_shared->lock);
			return false;
		}
		entries[i] = hash_search(credits_hash, &keys[i], HASH_ENTER, &found);
		if (!found)
			credit_entry_init(entries[i]);
	}
	LWLockRelease(credits_shared->lock);
	return find_entries(keys, entries, n);
}

ChargeResult
credits_charge(Oid keys_relid, int64 balance_pool, int64 quota_pool, int64 cost,
			   Datum key_id, DateADT day, int64 *remaining)
{
	CreditKey	keys[3];
	CreditEntry *entries[3];
	int			n = 0;
	int			spend_at;
	CreditEntry *bal;
	CreditEntry *quota;
	volatile TimestampTz started = 0;
	volatile TimestampTz others_since = 0;
	text	   *id = DatumGetTextPP(key_id);
	ChargeResult result;

	*remaining = 0;
	if (balance_pool == 0)
		return CHARGE_INSUFFICIENT;

	keys[n++] = credit_pool_key(MyDatabaseId, keys_relid, balance_pool);
	if (quota_pool != 0)
		keys[n++] = credit_pool_key(MyDatabaseId, keys_relid, quota_pool);
	spend_at = n;
	keys[n] = credit_pool_key(MyDatabaseId, keys_relid, balance_pool);
	keys[n].day = day;
	memcpy(keys[n].key_id, VARDATA_ANY(id), Min(VARSIZE_ANY_EXHDR(id), APIKEY_ID_LEN));
	n++;

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		Take		tq = TAKE_DONE;
		Take		tb = TAKE_DONE;
		Take		worst;

		CHECK_FOR_INTERRUPTS();
		if (!find_entries(keys, entries, n))
		{
			/* full: the worker hands idle pools back to their rows */
			pg_atomic_write_u64(&credits_shared->pressure, (uint64) now);
			worker_wake(MyDatabaseId);
			worst = TAKE_WAIT_WORKER;
		}
		else
		{
			bal = entries[0];
			quota = (quota_pool != 0) ? entries[1] : NULL;
			if (quota)
				tq = take(quota, cost, now);
			if (tq == TAKE_DONE)
			{
				tb = take(bal, cost, now);
				if (tb != TAKE_DONE && quota)
					untake(quota, cost);
			}
			if (tq == TAKE_DONE && tb == TAKE_DONE)
			{
				CreditOp   *op;
				CreditEntry *spend = entries[spend_at];

				SpinLockAcquire(&spend->mutex);
				spend->reserved += cost;
				spend->last_used = now;
				SpinLockRelease(&spend->mutex);

				*remaining = pool_left(bal);
				if (quota)
					*remaining = Min(*remaining, pool_left(quota));
				last_charge_start = nops;
				for (int i = 0; i < n; i++)
				{
					op = op_new(OP_RESERVE, &keys[i]);
					op->amount = cost;
					SpinLockAcquire(&entries[i]->mutex);
					op->generation = entries[i]->generation;
					SpinLockRelease(&entries[i]->mutex);
				}
				LWLockRelease(credits_shared->lock);
				result = CHARGE_DONE;
				break;
			}
			worst = (tq != TAKE_DONE) ? tq : tb;
			/* never wait while holding what others may wait for, nor on oneself */
			if (worst == TAKE_WAIT_OTHERS &&
				(holds_reservation() || credit_op_pending(&keys[0]) ||
				 (quota_pool != 0 && credit_op_pending(&keys[1]))))
				worst = TAKE_SHORT;
			if (worst == TAKE_SHORT)
			{
				*remaining = pool_left(bal);
				if (quota)
					*remaining = Min(*remaining, pool_left(quota));
				LWLockRelease(credits_shared->lock);
				result = CHARGE_INSUFFICIENT;
				break;
			}
			LWLockRelease(credits_shared->lock);
		}

		/* wait: for the worker, or for other transactions' reservations */
		if (worst == TAKE_WAIT_OTHERS)
		{
			if (others_since == 0)
				others_since = now;
			else if (LockTimeout > 0 &&
					 TimestampDifferenceExceeds(others_since, now, LockTimeout))
			{
				ConditionVariableCancelSleep();
				ereport(ERROR,
						(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						 errmsg("could not reserve credits within lock_timeout"),
						 errdetail("The last credits are reserved by other transactions still in progress.")));
			}
		}
		else if (worst == TAKE_WAIT_WORKER)
		{
			if (started == 0)
				started = now;
			else if (TimestampDifferenceExceeds(started, now, WORKER_WAIT_MS))
			{
				ConditionVariableCancelSleep();
				ereport(ERROR,
						(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						 errmsg("could not reserve credits: the apikeys worker of this database did not answer within %d seconds",
								WORKER_WAIT_MS / 1000),
						 errhint("Check that the apikeys worker runs (pg_stat_activity, application_name \"apikeys worker\").")));
			}
			worker_ensure_running(MyDatabaseId);
			worker_wake(MyDatabaseId);
		}
		pg_atomic_fetch_add_u32(&credits_shared->waiting, 1);
		PG_TRY();
		{
			(void) ConditionVariableTimedSleep(&credits_shared->changed, RECHECK_MS,
											   PG_WAIT_EXTENSION);
		}
		PG_FINALLY();
		{
			pg_atomic_fetch_sub_u32(&credits_shared->waiting, 1);
		}
		PG_END_TRY();
	}
	ConditionVariableCancelSleep();
	return result;
}

/* ----------------------------------------------------------------------
 * The worker's view
 * ----------------------------------------------------------------------
 */

bool
credits_pressure(void)
{
	return credits_shared != NULL &&
		GetCurrentTimestamp() - (TimestampTz) pg_atomic_read_u64(&credits_shared->pressure) <
		5 * USECS_PER_SEC;
}

bool
credits_wanted(Oid dbid, bool *has_pools)
{
	HASH_SEQ_STATUS seq;
	CreditEntry *e;
	bool		wanted = false;
	TimestampTz now = GetCurrentTimestamp();

	*has_pools = false;
	if (credits_hash == NULL)
		return false;
	if (credits_pressure())
		return true;
	LWLockAcquire(credits_shared->lock, LW_SHARED);
	hash_seq_init(&seq, credits_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dbid != dbid || !credit_key_is_pool(&e->key))
			continue;
		*has_pools = true;
		SpinLockAcquire(&e->mutex);
		wanted = (e->want > 0 || e->refill_wanted || !e->synced ||
				  (e->is_quota && e->period_end != 0 && now >= e->period_end));
		SpinLockRelease(&e->mutex);
		if (wanted)
		{
			hash_seq_term(&seq);
			break;
		}
	}
	LWLockRelease(credits_shared->lock);
	return wanted;
}

void
credits_forget(Oid dbid, Oid keys_relid)
{
	HASH_SEQ_STATUS seq;
	CreditEntry *e;

	if (credits_hash == NULL)
		return;
	LWLockAcquire(credits_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, credits_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.dbid == dbid &&
			(!OidIsValid(keys_relid) || e->key.keys_relid == keys_relid))
			hash_search(credits_hash, &e->key, HASH_REMOVE, NULL);
	LWLockRelease(credits_shared->lock);
	ConditionVariableBroadcast(&credits_shared->changed);
}
