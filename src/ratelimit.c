/*
 * ratelimit.c
 *		Rate limits in shared memory: exact sliding windows, all or nothing.
 *
 * A limit (a row of apikeys.ratelimits: max requests per `per`, on a key or
 * on an owner, whose limit all its keys share) has one state here: the
 * counts of requests that passed, in RL_BUCKETS + 1 sub-buckets of
 * g = ceil(per / RL_BUCKETS) each, the newest holding the current time.
 *
 * The bound.  A request at time t, in sub-bucket k = floor(t / g), passes
 * only if the sum of sub-buckets k - RL_BUCKETS .. k is below max.  Those
 * sub-buckets cover [(k - RL_BUCKETS) g, t], which contains [t - per, t]
 * because RL_BUCKETS * g >= per.  Take any window W = [s, s + per] and the
 * last request that passed in it, at t: every earlier passed request in W
 * lies in [s, t], inside [t - per, t], so it was counted, and fewer than max
 * were; so at most max requests pass in W.  The price: a request can be
 * refused while the true count over [t - per, t] is below max, by the
 * requests of at most one sub-bucket (per / RL_BUCKETS) that have already
 * left the exact window.  A fixed window (2 x max across a boundary) or a
 * token bucket (max + 1 in some windows) would not keep the bound.
 *
 * ratelimit_reset is when the most constrained limit next admits a request
 * (refused) or when its oldest counted request leaves (passed): the end of
 * the sub-bucket that must drop out, so Retry-After never promises room
 * too early.
 *
 * All or nothing.  The states of a request (the key's limits and its
 * owner's) are checked and consumed together under their partitions'
 * locks, taken in ascending order: either every one is counted or none.
 * apikey_charge first peeks (nothing counted), reserves its credits, and
 * only then counts: a request refused for credits counts nothing.
 *
 * Locking protocol: a partitioned hash table with RL_PARTITIONS LWLocks of
 * tranche "apikeys ratelimits"; a state is read and changed only under its
 * partition's lock, exclusive.  No global lock on the hot path.  A purge
 * (the worker, each flush) takes every partition lock in order.
 *
 * A full table.  apikeys.max_ratelimit_states bounds the states; a limit
 * without room for its state is not counted for that request (the limit is
 * looser, never stricter, until the worker's next purge frees the states of
 * windows that have passed; a purge loses nothing).  Nothing waits.
 *
 * Limits come from a per-backend cache of apikeys.ratelimits by key id,
 * emptied by the table's invalidation trigger, so a change takes effect at
 * the next call in every session (the table is read with the latest
 * snapshot, also inside a REPEATABLE READ transaction).  A changed max
 * applies to the counts already in the window.  A changed `per` keeps the
 * count: everything counted moves into the current sub-bucket of the new
 * window, which keeps each request counted at least as long as it really
 * is inside any window of the new length (stricter, never looser).
 * Limits are per server: a hot standby counts its own requests.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "common/hashfn.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "guc.h"
#include "keyformat.h"
#include "ratelimit.h"
#include "slots.h"

#define RL_BUCKETS			10
#define RL_SLOTS			(RL_BUCKETS + 1)
#define RL_PARTITIONS		16
#define RL_TRANCHE			"apikeys ratelimits"

typedef struct RateKey
{
	Oid			dbid;
	Oid			keys_relid;
	int64		limit_id;
} RateKey;

typedef struct RateState
{
	RateKey		key;			/* hash key: must be first */
	int64		per_usecs;		/* the window the counts are kept for */
	int64		newest;			/* sub-bucket number of counts[newest % RL_SLOTS] */
	uint32		counts[RL_SLOTS];
} RateState;

typedef struct RateShared
{
	pg_atomic_uint64 pressure;	/* when a validation last found the table full */
} RateShared;

static RateShared *rate_shared = NULL;
static HTAB *rate_hash = NULL;
static LWLockPadded *rate_locks = NULL;

/* ----------------------------------------------------------------------
 * Shared memory
 * ----------------------------------------------------------------------
 */

Size
ratelimit_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(RateShared)),
					hash_estimate_size(apikeys_max_ratelimit_states, sizeof(RateState)));
}

void
ratelimit_shmem_request(void)
{
	RequestNamedLWLockTranche(RL_TRANCHE, RL_PARTITIONS);
}

void
ratelimit_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	rate_shared = ShmemInitStruct("apikeys ratelimits", sizeof(RateShared), &found);
	if (!found)
		pg_atomic_init_u64(&rate_shared->pressure, 0);
	rate_locks = GetNamedLWLockTranche(RL_TRANCHE);
	info.keysize = sizeof(RateKey);
	info.entrysize = sizeof(RateState);
	info.num_partitions = RL_PARTITIONS;
	rate_hash = ShmemInitHash("apikeys ratelimit states",
							  apikeys_max_ratelimit_states, apikeys_max_ratelimit_states,
							  &info, HASH_ELEM | HASH_BLOBS | HASH_PARTITION);
}

bool
ratelimit_pressure(void)
{
	return rate_shared != NULL &&
		GetCurrentTimestamp() - (TimestampTz) pg_atomic_read_u64(&rate_shared->pressure) <
		5 * USECS_PER_SEC;
}

/* ----------------------------------------------------------------------
 * The limits of a key, cached per backend
 * ----------------------------------------------------------------------
 */

typedef struct LimitDef
{
	int64		id;
	int32		max;
	int64		per_usecs;
} LimitDef;

typedef struct KeyLimits
{
	char		key_id[APIKEY_ID_LEN + 1];	/* hash key */
	int			n;
	LimitDef   *defs;
} KeyLimits;

/* An owner's limits, in the bulk maps (hash collisions fall back to SPI). */
typedef struct OwnerLimits
{
	uint64		hash;			/* hash key: of the owner */
	char	   *owner;
	int			n;
	LimitDef   *defs;
} OwnerLimits;

/*
 * The cache: a key's limits and its owner's, by key id.  A miss is served
 * from the bulk maps (every row of apikeys.ratelimits, read once per
 * invalidation while the table has at most BULK_LIMITS rows), else by an
 * SPI lookup: a key without limits costs a hash probe either way, not a
 * query per key and connection.
 */
#define BULK_LIMITS			10000
#define BULK_UNREAD			0
#define BULK_READ			1
#define BULK_TOO_MANY		2

static HTAB *limit_cache = NULL;
static HTAB *bulk_keys = NULL;		/* KeyLimits of key limits only */
static HTAB *bulk_owners = NULL;	/* OwnerLimits */
static int	bulk_state = BULK_UNREAD;
static MemoryContext limit_cxt = NULL;
static bool limit_cache_stale = true;
static Oid	limits_relid = InvalidOid;
static SPIPlanPtr limits_plan = NULL;
static SPIPlanPtr bulk_plan = NULL;

static void
limits_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == limits_relid)
		limit_cache_stale = true;
}

static HTAB *
key_map(const char *name)
{
	HASHCTL		info;

	info.keysize = APIKEY_ID_LEN + 1;
	info.entrysize = sizeof(KeyLimits);
	info.hcxt = limit_cxt;
	return hash_create(name, 256, &info, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

static void
limit_cache_reset(void)
{
	HASHCTL		info;
	Oid			nsp;

	if (limit_cxt == NULL)
	{
		CacheRegisterRelcacheCallback(limits_invalidate, (Datum) 0);
		limit_cxt = AllocSetContextCreate(TopMemoryContext, "apikeys limit cache",
										  ALLOCSET_DEFAULT_SIZES);
	}
	else
		MemoryContextReset(limit_cxt);
	limit_cache = key_map("apikeys limit cache");
	bulk_keys = key_map("apikeys key limits");
	info.keysize = sizeof(uint64);
	info.entrysize = sizeof(OwnerLimits);
	info.hcxt = limit_cxt;
	bulk_owners = hash_create("apikeys owner limits", 64, &info,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	bulk_state = BULK_UNREAD;
	nsp = get_namespace_oid("apikeys", true);
	/* a database still on 0.1's schema has no limits */
	limits_relid = OidIsValid(nsp) ? get_relname_relid("ratelimits", nsp) : InvalidOid;
	if (limits_plan)
		SPI_freeplan(limits_plan);
	if (bulk_plan)
		SPI_freeplan(bulk_plan);
	limits_plan = bulk_plan = NULL;
	limit_cache_stale = false;
}

/* One limit from SPI_tuptable row i, columns from col (id, max, per in µs). */
static LimitDef
limit_at(uint64 i, int col)
{
	bool		isnull;
	HeapTuple	tup = SPI_tuptable->vals[i];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	LimitDef	d;

	d.id = DatumGetInt64(SPI_getbinval(tup, desc, col, &isnull));
	d.max = DatumGetInt32(SPI_getbinval(tup, desc, col + 1, &isnull));
	d.per_usecs = DatumGetInt64(SPI_getbinval(tup, desc, col + 2, &isnull));
	/* the table's CHECK keeps per within 1 s .. 1 day; never trust less */
	d.per_usecs = Max(USECS_PER_SEC, Min(USECS_PER_DAY, d.per_usecs));
	return d;
}

static void
append_def(LimitDef **defs, int *n, LimitDef d)
{
	*defs = *defs == NULL ? MemoryContextAlloc(limit_cxt, sizeof(LimitDef)) :
		repalloc(*defs, sizeof(LimitDef) * (*n + 1));
	(*defs)[(*n)++] = d;
}

static uint64
owner_hash(const char *owner)
{
	return hash_bytes_extended((const unsigned char *) owner, strlen(owner), 0);
}

#define LIMIT_COLUMNS \
	" r.id, r.max, (pg_catalog.date_part('epoch', r.per)" \
	"  OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8"

/* Reads the whole table into the bulk maps, unless it is too large. */
static void
bulk_read(void)
{
	OwnerQuery	q;

	owner_query_run(limits_relid, &bulk_plan,
				 "SELECT" LIMIT_COLUMNS ", r.key_id, r.owner FROM apikeys.ratelimits r"
				 " ORDER BY r.id LIMIT " CppAsString2(BULK_LIMITS) " + 1",
				 0, NULL, NULL, 0, &q);
	bulk_state = (SPI_processed > BULK_LIMITS) ? BULK_TOO_MANY : BULK_READ;
	for (uint64 i = 0; bulk_state == BULK_READ && i < SPI_processed; i++)
	{
		LimitDef	d = limit_at(i, 1);
		char	   *key_id = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4);
		char	   *owner = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 5);
		bool		found;

		if (key_id != NULL)
		{
			char		id[APIKEY_ID_LEN + 1];
			KeyLimits  *k;

			memset(id, 0, sizeof(id));
			strlcpy(id, key_id, sizeof(id));
			k = hash_search(bulk_keys, id, HASH_ENTER, &found);
			if (!found)
			{
				k->n = 0;
				k->defs = NULL;
			}
			append_def(&k->defs, &k->n, d);
		}
		else if (owner != NULL)
		{
			uint64		h = owner_hash(owner);
			OwnerLimits *o = hash_search(bulk_owners, &h, HASH_ENTER, &found);

			if (!found)
			{
				o->owner = MemoryContextStrdup(limit_cxt, owner);
				o->n = 0;
				o->defs = NULL;
			}
			else if (strcmp(o->owner, owner) != 0)
				bulk_state = BULK_TOO_MANY;	/* a hash collision: per-key lookups */
			append_def(&o->defs, &o->n, d);
		}
	}
	owner_query_end(&q);
}

static int
def_by_id(const void *a, const void *b)
{
	int64		x = ((const LimitDef *) a)->id;
	int64		y = ((const LimitDef *) b)->id;

	return (x > y) - (x < y);
}

/*
 * The limits of key id and owner from the bulk maps, into buf (in id order,
 * as the per-key query gives them); -1 if the maps cannot tell (an owner
 * hash collision).
 */
static int
limits_from_bulk(const char *id, Datum owner, LimitDef *buf)
{
	KeyLimits  *k;
	char	   *o;
	uint64		h;
	OwnerLimits *ol = NULL;
	int			n = 0;

	/* no limits at all (most databases): nothing to look at per call */
	if (hash_get_num_entries(bulk_keys) == 0 && hash_get_num_entries(bulk_owners) == 0)
		return 0;
	k = hash_search(bulk_keys, id, HASH_FIND, NULL);
	if (hash_get_num_entries(bulk_owners) > 0)
	{
		o = TextDatumGetCString(owner);
		h = owner_hash(o);
		ol = hash_search(bulk_owners, &h, HASH_FIND, NULL);
		if (ol != NULL && strcmp(ol->owner, o) != 0)
			return -1;
	}
	for (int i = 0; k != NULL && i < k->n && n < RATELIMIT_MAX_PER_REQUEST; i++)
		buf[n++] = k->defs[i];
	for (int i = 0; ol != NULL && i < ol->n && n < RATELIMIT_MAX_PER_REQUEST; i++)
		buf[n++] = ol->defs[i];
	if (n > 1)
		qsort(buf, n, sizeof(LimitDef), def_by_id);
	return n;
}

/* Reads the limits of key id and owner from the table (up to 64). */
static int
limits_read(Datum id, Datum owner, LimitDef **defs)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {id, owner};
	OwnerQuery	q;
	int			n = 0;

	owner_query_run(limits_relid, &limits_plan,
				 "SELECT" LIMIT_COLUMNS " FROM apikeys.ratelimits r"
				 " WHERE r.key_id OPERATOR(pg_catalog.=) $1"
				 "    OR r.owner OPERATOR(pg_catalog.=) $2"
				 " ORDER BY r.id LIMIT 64",
				 2, argtypes, args, 0, &q);
	*defs = NULL;
	for (uint64 i = 0; i < SPI_processed; i++)
		append_def(defs, &n, limit_at(i, 1));
	owner_query_end(&q);
	return n;
}

/*
 * The limits of the key row and of its owner (n of them, in id order).
 * From the bulk maps no copy is kept (two hash probes a call); answers of
 * the per-key query are cached by key id, at most apikeys.backend_cache_keys
 * of them (the cache starts over when full).
 */
static const LimitDef *
limits_of(const KeyRow *row, int *n)
{
	static LimitDef buf[RATELIMIT_MAX_PER_REQUEST];
	KeyLimits  *entry;
	char		id[APIKEY_ID_LEN + 1];
	text	   *t = DatumGetTextPP(row->id);
	int			len = Min(VARSIZE_ANY_EXHDR(t), APIKEY_ID_LEN);
	LimitDef   *defs;
	int			count;
	bool		found;

	if (limit_cache == NULL || limit_cache_stale)
		limit_cache_reset();
	*n = 0;
	if (!OidIsValid(limits_relid))
		return NULL;
	memset(id, 0, sizeof(id));
	memcpy(id, VARDATA_ANY(t), len);
	if (bulk_state == BULK_UNREAD)
		bulk_read();
	if (bulk_state == BULK_READ && !limit_cache_stale &&
		(count = limits_from_bulk(id, row->owner, buf)) >= 0)
	{
		*n = count;
		return buf;
	}
	entry = hash_search(limit_cache, id, HASH_FIND, NULL);
	if (entry)
	{
		*n = entry->n;
		return entry->defs;
	}
	count = limits_read(row->id, row->owner, &defs);
	*n = Min(count, RATELIMIT_MAX_PER_REQUEST);
	/* changed while we read: use the answer once, cache nothing */
	if (limit_cache_stale)
		return defs;
	if (hash_get_num_entries(limit_cache) >= Max(apikeys_backend_cache_keys, 1))
	{
		hash_destroy(limit_cache);
		limit_cache = key_map("apikeys limit cache");
	}
	entry = hash_search(limit_cache, id, HASH_ENTER, &found);
	entry->n = *n;
	entry->defs = defs;
	return defs;
}

/* ----------------------------------------------------------------------
 * Windows
 * ----------------------------------------------------------------------
 */

static inline int64
bucket_width(int64 per_usecs)
{
	return (per_usecs + RL_BUCKETS - 1) / RL_BUCKETS;
}

/* Moves the state's window to sub-bucket k (never back); returns the current one. */
static int64
advance(RateState *s, int64 k)
{
	if (k <= s->newest)
		return s->newest;
	if (k - s->newest >= RL_SLOTS)
		memset(s->counts, 0, sizeof(s->counts));
	else
		for (int64 j = s->newest + 1; j <= k; j++)
			s->counts[j % RL_SLOTS] = 0;
	s->newest = k;
	return k;
}

static uint32
window_count(const RateState *s)
{
	uint32		sum = 0;

	for (int i = 0; i < RL_SLOTS; i++)
		sum += s->counts[i];
	return sum;
}

/* When the count over the window (now at sub-bucket k) drops to at most target. */
static TimestampTz
when_at_most(const RateState *s, int64 k, int64 g, uint32 count, uint32 target)
{
	uint32		left = count;

	for (int64 j = k - RL_BUCKETS; j <= k; j++)
	{
		left -= s->counts[j % RL_SLOTS];
		if (left <= target)
			return (TimestampTz) ((j + RL_BUCKETS + 1) * g);
	}
	return (TimestampTz) ((k + RL_BUCKETS + 1) * g);
}

static inline int
partition_of(uint32 hashcode)
{
	return hashcode % RL_PARTITIONS;
}

/* Takes (or releases) the partition locks of the hash codes, in ascending order. */
static void
lock_partitions(const uint32 *hashes, int n, bool acquire)
{
	bool		used[RL_PARTITIONS] = {false};

	for (int i = 0; i < n; i++)
		used[partition_of(hashes[i])] = true;
	for (int p = 0; p < RL_PARTITIONS; p++)
		if (used[p])
		{
			if (acquire)
				LWLockAcquire(&rate_locks[p].lock, LW_EXCLUSIVE);
			else
				LWLockRelease(&rate_locks[p].lock);
		}
}

bool
ratelimit_check(const KeyRow *row, TimestampTz now, RateInfo *info, bool consume)
{
	const LimitDef *defs;
	int			n;
	RateKey		keys[RATELIMIT_MAX_PER_REQUEST];
	uint32		hashes[RATELIMIT_MAX_PER_REQUEST] = {0};
	RateState  *states[RATELIMIT_MAX_PER_REQUEST];
	int64		current[RATELIMIT_MAX_PER_REQUEST];
	uint32		counts[RATELIMIT_MAX_PER_REQUEST];
	bool		passed = true;
	bool		full = false;
	bool		tracked = false;

	memset(info, 0, sizeof(*info));
	if (rate_hash == NULL)
		return true;
	defs = limits_of(row, &n);
	if (n == 0)
		return true;
	n = Min(n, RATELIMIT_MAX_PER_REQUEST);

	for (int i = 0; i < n; i++)
	{
		memset(&keys[i], 0, sizeof(RateKey));
		keys[i].dbid = MyDatabaseId;
		keys[i].keys_relid = row->keys_relid;
		keys[i].limit_id = defs[i].id;
		hashes[i] = get_hash_value(rate_hash, &keys[i]);
	}

	lock_partitions(hashes, n, true);
	for (int i = 0; i < n; i++)
	{
		int64		g = bucket_width(defs[i].per_usecs);
		bool		found;

		states[i] = hash_search_with_hash_value(rate_hash, &keys[i], hashes[i],
												HASH_FIND, NULL);
		if (states[i] == NULL)
		{
			if (hash_get_num_entries(rate_hash) < apikeys_max_ratelimit_states)
				states[i] = hash_search_with_hash_value(rate_hash, &keys[i], hashes[i],
														HASH_ENTER_NULL, &found);
			if (states[i] == NULL)
			{
				/* no room: this limit goes uncounted for this request */
				full = true;
				continue;
			}
			states[i]->per_usecs = defs[i].per_usecs;
			states[i]->newest = now / g;
			memset(states[i]->counts, 0, sizeof(states[i]->counts));
		}
		else if (states[i]->per_usecs != defs[i].per_usecs)
		{
			/* per changed: keep what was counted, now, in the new window */
			int64		old_g = bucket_width(states[i]->per_usecs);
			uint32		kept;

			(void) advance(states[i], now / old_g);
			kept = window_count(states[i]);
			memset(states[i]->counts, 0, sizeof(states[i]->counts));
			states[i]->per_usecs = defs[i].per_usecs;
			states[i]->newest = now / g;
			states[i]->counts[states[i]->newest % RL_SLOTS] = kept;
		}
		current[i] = advance(states[i], now / g);
		counts[i] = window_count(states[i]);
		tracked = true;
		if (counts[i] >= (uint32) defs[i].max)
		{
			TimestampTz reset = when_at_most(states[i], current[i], g, counts[i],
											 (uint32) defs[i].max - 1);

			/* the latest reset among the exhausted limits: all must have room */
			if (passed || reset > info->reset)
			{
				info->limit = defs[i].max;
				info->remaining = 0;
				info->reset = reset;
			}
			passed = false;
		}
	}

	if (passed)
	{
		bool		first = true;
		int			used = consume ? 1 : 0;

		for (int i = 0; i < n; i++)
		{
			int64		g = bucket_width(defs[i].per_usecs);
			int32		remaining;

			if (states[i] == NULL)
				continue;
			if (consume)
				states[i]->counts[current[i] % RL_SLOTS]++;
			remaining = defs[i].max - (int32) counts[i] - used;
			if (first || remaining < info->remaining)
			{
				info->limit = defs[i].max;
				info->remaining = remaining;
				info->reset = when_at_most(states[i], current[i], g, counts[i] + used,
											Max(counts[i] + used, 1) - 1);
				first = false;
			}
		}
	}
	lock_partitions(hashes, n, false);

	/* with no window to count in (a full table), the key shows no limit */
	info->limited = tracked;
	if (full)
	{
		/* the worker purges passed windows at once */
		pg_atomic_write_u64(&rate_shared->pressure, (uint64) GetCurrentTimestamp());
		worker_wake(MyDatabaseId);
	}
	return passed;
}

void
ratelimit_purge(void)
{
	HASH_SEQ_STATUS seq;
	RateState  *s;
	TimestampTz now = GetCurrentTimestamp();

	if (rate_hash == NULL)
		return;
	for (int p = 0; p < RL_PARTITIONS; p++)
		LWLockAcquire(&rate_locks[p].lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, rate_hash);
	while ((s = hash_seq_search(&seq)) != NULL)
	{
		/* every sub-bucket has left the window: the state holds nothing */
		if (now / bucket_width(s->per_usecs) - s->newest > RL_BUCKETS)
			hash_search(rate_hash, &s->key, HASH_REMOVE, NULL);
	}
	for (int p = RL_PARTITIONS - 1; p >= 0; p--)
		LWLockRelease(&rate_locks[p].lock);
}
