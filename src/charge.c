/*
 * charge.c
 *		apikey_charge: a validation that also takes credits, and the SQL
 *		helpers through which the credit functions and the worker tell the
 *		shared-memory pools (credits.c) what their transactions did.
 *
 * The charge path writes no row: it validates (validate.c), finds the ids
 * of the owner's balance and the key's quota of the credit through a
 * per-backend cache, and reserves in shared memory.  The cache maps
 * (owner, credit) and (key id, credit) to a pool id, or to "none"; a row
 * trigger on apikeys.credit_pools invalidates it when pools appear or
 * disappear, and a relcache callback empties it.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "credits_internal.h"
#include "guc.h"
#include "lookup.h"
#include "usage.h"
#include "validate.h"

PG_FUNCTION_INFO_V1(apikey_charge);
PG_FUNCTION_INFO_V1(apikeys_credit_recall);
PG_FUNCTION_INFO_V1(apikeys_credit_apply);
PG_FUNCTION_INFO_V1(apikeys_credit_live);

/* ----------------------------------------------------------------------
 * Pool ids, cached per backend
 * ----------------------------------------------------------------------
 */

typedef struct PoolCacheKey
{
	uint64		hash;			/* of kind, name and credit */
	char		kind;			/* 'b' balance of owner name, 'q' quota of key id name */
} PoolCacheKey;

typedef struct PoolCacheEntry
{
	PoolCacheKey key;
	char	   *name;			/* to tell a hash collision: then no caching */
	char	   *credit;
	int64		pool;			/* 0: no such pool */
} PoolCacheEntry;

static HTAB *pool_cache = NULL;
static MemoryContext pool_cxt = NULL;
static bool pool_cache_stale = true;
static Oid	pools_relid = InvalidOid;
static SPIPlanPtr plans[3];	/* balance, quota, every pool */
#define BULK_POOLS			10000
static bool pools_read = false;		/* the bulk read was tried since the reset */
static bool pools_complete = false; /* the cache holds every pool: a miss is none */

static void
pools_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == pools_relid)
		pool_cache_stale = true;
}

static void
pool_cache_reset(void)
{
	HASHCTL		info;

	if (pool_cxt == NULL)
	{
		CacheRegisterRelcacheCallback(pools_invalidate, (Datum) 0);
		pool_cxt = AllocSetContextCreate(TopMemoryContext, "apikeys pool cache",
										 ALLOCSET_DEFAULT_SIZES);
	}
	else
		MemoryContextReset(pool_cxt);
	info.keysize = sizeof(PoolCacheKey);
	info.entrysize = sizeof(PoolCacheEntry);
	info.hcxt = pool_cxt;
	pool_cache = hash_create("apikeys pool cache", 256, &info,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	pools_relid = get_relname_relid("credit_pools", get_namespace_oid("apikeys", false));
	for (int i = 0; i < 3; i++)
	{
		if (plans[i])
			SPI_freeplan(plans[i]);
		plans[i] = NULL;
	}
	pools_read = pools_complete = false;
	pool_cache_stale = false;
}

/*
 * Looks one pool up in apikeys.credit_pools; 0 if there is none.  As the
 * table's owner (owner_query_run), only on a cache miss: EXECUTE on
 * apikey_charge is the only gate, as for apikey_validate.
 */
static int64
pool_lookup(bool quota, text *name, text *credit)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {PointerGetDatum(name), PointerGetDatum(credit)};
	int64		pool = 0;
	OwnerQuery	q;

	owner_query_run(pools_relid, &plans[quota ? 1 : 0],
				 quota ?
				 "SELECT p.id FROM apikeys.credit_pools p"
				 " WHERE p.key_id OPERATOR(pg_catalog.=) $1"
				 "   AND p.credit OPERATOR(pg_catalog.=) $2" :
				 "SELECT p.id FROM apikeys.credit_pools p"
				 " WHERE p.owner OPERATOR(pg_catalog.=) $1"
				 "   AND p.credit OPERATOR(pg_catalog.=) $2"
				 "   AND p.key_id IS NULL",
				 2, argtypes, args, 1, &q);
	if (SPI_processed == 1)
	{
		bool		isnull;

		pool = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	}
	owner_query_end(&q);
	return pool;
}

static PoolCacheKey
pool_key(char kind, const char *n, const char *c)
{
	PoolCacheKey key;

	memset(&key, 0, sizeof(key));
	key.kind = kind;
	key.hash = hash_bytes_extended((const unsigned char *) n, strlen(n),
								   hash_bytes_extended((const unsigned char *) c,
													   strlen(c), 0));
	return key;
}

/* Caches pool for (kind, n, c); false on a hash collision with another name. */
static bool
pool_cache_put(char kind, const char *n, const char *c, int64 pool)
{
	PoolCacheKey key = pool_key(kind, n, c);
	bool		found;
	PoolCacheEntry *entry = hash_search(pool_cache, &key, HASH_ENTER, &found);

	if (found)
		return strcmp(entry->name, n) == 0 && strcmp(entry->credit, c) == 0;
	entry->name = MemoryContextStrdup(pool_cxt, n);
	entry->credit = MemoryContextStrdup(pool_cxt, c);
	entry->pool = pool;
	return true;
}

/*
 * Reads every pool into the cache, once per invalidation, while the table
 * has at most BULK_POOLS rows: then a miss means "no such pool", and a
 * charge of a new owner costs no query.
 */
static void
pools_bulk_read(void)
{
	OwnerQuery	q;
	bool		complete;

	owner_query_run(pools_relid, &plans[2],
				 "SELECT p.id, p.owner, p.credit, p.key_id FROM apikeys.credit_pools p"
				 " LIMIT " CppAsString2(BULK_POOLS) " + 1",
				 0, NULL, NULL, 0, &q);
	pools_read = true;
	complete = (SPI_processed <= BULK_POOLS);
	for (uint64 i = 0; complete && i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *owner = SPI_getvalue(tup, desc, 2);
		char	   *credit = SPI_getvalue(tup, desc, 3);
		char	   *key_id = SPI_getvalue(tup, desc, 4);

		complete = (key_id == NULL) ? pool_cache_put('b', owner, credit, id)
			: pool_cache_put('q', key_id, credit, id);
	}
	owner_query_end(&q);
	pools_complete = complete && !pool_cache_stale;
}

/*
 * The id of the balance pool of (owner, credit) when quota is false, or of
 * the quota pool of (key id, credit) when true; 0 if there is none.
 */
static int64
pool_id(bool quota, text *name, text *credit)
{
	PoolCacheKey key;
	PoolCacheEntry *entry;
	char	   *n = text_to_cstring(name);
	char	   *c = text_to_cstring(credit);
	int64		pool;

	if (pool_cache == NULL || pool_cache_stale)
		pool_cache_reset();
	if (!pools_read)
		pools_bulk_read();

	key = pool_key(quota ? 'q' : 'b', n, c);
	entry = hash_search(pool_cache, &key, HASH_FIND, NULL);
	if (entry && strcmp(entry->name, n) == 0 && strcmp(entry->credit, c) == 0)
		return entry->pool;
	if (entry == NULL && pools_complete && !pool_cache_stale)
		return 0;

	pool = pool_lookup(quota, name, credit);
	/* an invalidation during the lookup, or a collision: do not keep it */
	if (pool_cache_stale || entry != NULL)
		return pool;
	if (hash_get_num_entries(pool_cache) < Max(apikeys_backend_cache_keys, 1))
		(void) pool_cache_put(quota ? 'q' : 'b', n, c, pool);
	return pool;
}

/* 22023 unless credit is a credit name: 1-64 characters of [a-z0-9_]. */
static void
require_credit_name(text *credit)
{
	const char *s = VARDATA_ANY(credit);
	int			len = VARSIZE_ANY_EXHDR(credit);
	bool		ok = (len >= 1 && len <= 64);

	for (int i = 0; ok && i < len; i++)
		ok = ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_');
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid credit name"),
				 errdetail("A credit name is 1 to 64 characters of a-z, 0-9 and _.")));
}

/* ----------------------------------------------------------------------
 * apikey_charge
 * ----------------------------------------------------------------------
 */

/* Charges cost of credit to the valid key row; false when a pool is short. */
static bool
charge_key(const KeyRow *row, text *credit, int64 cost, int64 *remaining)
{
	TimestampTz now = GetCurrentStatementStartTimestamp();
	int64		balance;
	int64		quota;

	balance = pool_id(false, DatumGetTextPP(row->owner), credit);
	quota = pool_id(true, DatumGetTextPP(row->id), credit);
	return credits_charge(row->keys_relid, balance, quota, cost, row->id,
						  (DateADT) (now / USECS_PER_DAY), remaining) == CHARGE_DONE;
}

Outcome
charge_limited(Outcome outcome, const KeyRow *row, text *credit, int64 cost,
			   RateInfo *rate, int64 *remaining)
{

	*remaining = 0;
	require_credit_name(credit);
	if (outcome != OUTCOME_VALID)
		return apikey_limit(outcome, row, rate);
	/* refuse before anything is reserved or counted */
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot charge credits on a hot standby"),
				 errdetail("Balances are kept by the primary server."),
				 errhint("Send requests that charge credits to the primary; apikey_validate works here.")));

	/*
	 * The credits first, then the rate limits: a charge may wait (for a
	 * lease, or for another transaction's reservation), and must not hold a
	 * rate limit count meanwhile; an error while it waits has counted
	 * nothing.  An exhausted limit is seen first (a peek, nothing counted);
	 * one exhausted meanwhile makes the request rate_limited and gives its
	 * reservation back at once.
	 */
	/* an exhausted limit answers at once: no wait for credits, no lease */
	if (!ratelimit_check(row, GetCurrentTimestamp(), rate, false))
		return OUTCOME_RATE_LIMITED;
	if (charge_key(row, credit, cost, remaining))
	{
		outcome = apikey_limit(OUTCOME_VALID, row, rate);
		if (outcome != OUTCOME_VALID)
			credits_undo_last_charge();
		return outcome;
	}
	/* short of credits: rate_limited still comes first, and nothing is counted */
	return ratelimit_check(row, GetCurrentTimestamp(), rate, false) ?
		OUTCOME_INSUFFICIENT_CREDITS : OUTCOME_RATE_LIMITED;
}

/*
 * apikey_charge(key, credit, cost, permission, client_ip) returns
 * apikeys.charge: apikey_validate's columns, then credit, cost, remaining.
 */
Datum
apikey_charge(PG_FUNCTION_ARGS)
{
	static ResultDescCache result_desc;
	KeyRow		row;
	Datum		addr;
	Outcome		outcome;
	text	   *credit;
	int64		cost;
	int64		remaining = 0;
	TupleDesc	tupdesc;
	Datum		values[VALIDATION_NATTS + 3];
	bool		nulls[VALIDATION_NATTS + 3] = {false};
	RateInfo	rate;
	int			nvalid;

	apikeys_require_preload();
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("credit must not be null")));
	credit = PG_GETARG_TEXT_PP(1);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cost must not be null")));
	cost = credit_units(PG_GETARG_NUMERIC(2), "cost", false);

	if (!PG_ARGISNULL(4))
		addr = PG_GETARG_DATUM(4);
	outcome = apikey_decide(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0),
							PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3),
							PG_ARGISNULL(4) ? NULL : &addr,
							ADDRESS_GIVEN_OR_CONNECTION, &row);
	outcome = charge_limited(outcome, &row, credit, cost, &rate, &remaining);
	if (outcome != OUTCOME_MALFORMED && outcome != OUTCOME_NOT_FOUND)
		apikey_count(&row, outcome == OUTCOME_VALID);

	tupdesc = cached_result_tupdesc(fcinfo, &result_desc);
	nvalid = validation_values(outcome, (outcome == OUTCOME_MALFORMED ||
										 outcome == OUTCOME_NOT_FOUND) ? NULL : &row,
							   &rate, VALIDATION_NATTS, values, nulls);
	values[nvalid] = PointerGetDatum(credit);
	values[nvalid + 1] = PG_GETARG_DATUM(2);
	if (outcome == OUTCOME_VALID || outcome == OUTCOME_INSUFFICIENT_CREDITS)
		values[nvalid + 2] = NumericGetDatum(credit_numeric(remaining));
	else
		nulls[nvalid + 2] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* ----------------------------------------------------------------------
 * SQL helpers for the credit functions and the worker
 * ----------------------------------------------------------------------
 */

static CreditKey
pool_key_arg(FunctionCallInfo fcinfo)
{
	apikeys_require_preload();
	return credit_pool_key(MyDatabaseId, apikeys_keys_relid(), PG_GETARG_INT64(0));
}

/*
 * apikeys._credit_recall(pool bigint) returns numeric: takes what the pool's
 * lease has free, to be added back to its row by the caller in the same
 * transaction (the caller holds the row lock).  Undone if that aborts.
 */
Datum
apikeys_credit_recall(PG_FUNCTION_ARGS)
{
	CreditKey	key = pool_key_arg(fcinfo);
	CreditEntry *e;
	int64		amount = 0;

	LWLockAcquire(credits_shared->lock, LW_SHARED);
	e = hash_search(credits_hash, &key, HASH_FIND, NULL);
	if (e != NULL)
		amount = credit_op_recall(e);
	LWLockRelease(credits_shared->lock);
	PG_RETURN_NUMERIC(credit_numeric(amount));
}

/*
 * apikeys._credit_apply(pool, available, leased, generation, period_end,
 * is_quota, reset, granted, synced): at commit, the pool's entry takes the
 * row's new state; see credit_op_apply.
 */
Datum
apikeys_credit_apply(PG_FUNCTION_ARGS)
{
	CreditKey	key = pool_key_arg(fcinfo);

	credit_op_apply(&key,
					credit_units(PG_GETARG_NUMERIC(1), "available", false),
					credit_units(PG_GETARG_NUMERIC(2), "leased", false),
					PG_GETARG_INT32(3),
					PG_ARGISNULL(4) ? 0 : PG_GETARG_TIMESTAMPTZ(4),
					PG_GETARG_BOOL(5), PG_GETARG_BOOL(6),
					credit_units(PG_GETARG_NUMERIC(7), "granted", false),
					PG_GETARG_BOOL(8));
	PG_RETURN_VOID();
}

/*
 * apikeys._credit_live(pool bigint, row_available numeric) returns numeric:
 * what the pool holds for charges: the row's available (as this server
 * last committed it, or row_available before the worker has reconciled
 * the pool) and its lease's free part, including a part another
 * transaction is recalling to the row (it is the pool's either way).
 */
Datum
apikeys_credit_live(PG_FUNCTION_ARGS)
{
	CreditKey	key = pool_key_arg(fcinfo);
	CreditEntry *e;
	int64		live = credit_units(PG_GETARG_NUMERIC(1), "row_available", false);
	bool		own_change = credit_op_pending(&key);

	LWLockAcquire(credits_shared->lock, LW_SHARED);
	e = hash_search(credits_hash, &key, HASH_FIND, NULL);
	if (e != NULL)
	{
		SpinLockAcquire(&e->mutex);
		if (e->synced && !own_change)
			live = e->table_available;
		live += e->available;
		/* another transaction's recall in flight: still this pool's, until it commits */
		if (!own_change)
			live += e->recalling;
		SpinLockRelease(&e->mutex);
	}
	LWLockRelease(credits_shared->lock);
	PG_RETURN_NUMERIC(credit_numeric(live));
}
