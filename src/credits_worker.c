/*
 * credits_worker.c
 *		The worker's side of credits: leases, refills and reconciliation
 *		(serve), settlement of spent credits, per-key spend and the return
 *		of idle pools (settle).  Each runs inside one worker transaction:
 *		what it takes from shared memory is an operation of that
 *		transaction (credits.c), finished at commit and undone at abort.
 *		The SQL side is apikeys._credit_serve() and apikeys._credit_settle().
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "credits_internal.h"
#include "guc.h"
#include "lookup.h"

/* A pool unused this long is handed back to its row (and sooner when the table is full). */
#define IDLE_RETURN_USECS		(60 * USECS_PER_SEC)

/* Growing arrays of datums, one per SQL argument. */
typedef struct Column
{
	Datum	   *values;
	int			n;
	int			max;
} Column;

static void
column_add(Column *c, Datum d)
{
	if (c->n == c->max)
	{
		c->max = Max(16, c->max * 2);
		c->values = c->values ? repalloc(c->values, sizeof(Datum) * c->max)
			: palloc(sizeof(Datum) * c->max);
	}
	c->values[c->n++] = d;
}

static Datum
column_array(Column *c, Oid type)
{
	int16		typlen;
	bool		byval;
	char		align;

	get_typlenbyvalalign(type, &typlen, &byval, &align);
	return PointerGetDatum(construct_array(c->values, c->n, type, typlen, byval, align));
}

/* False if this database's extension predates credits (0.1 schema). */
static bool
has_credits(void)
{
	bool		isnull;

	if (SPI_execute("SELECT pg_catalog.to_regclass('apikeys.credit_pools') IS NOT NULL",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not look up apikeys.credit_pools");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

void
credits_serve_body(void *arg)
{
	Oid			keys_relid = apikeys_keys_relid();
	HASH_SEQ_STATUS seq;
	CreditEntry *e;
	Column		ids = {0},
				wants = {0},
				frees = {0},
				synced = {0};
	TimestampTz now = GetCurrentTimestamp();
	Oid			argtypes[5] = {INT8ARRAYOID, NUMERICARRAYOID, NUMERICARRAYOID,
							   BOOLARRAYOID, NUMERICOID};
	Datum		args[5];

	LWLockAcquire(credits_shared->lock, LW_SHARED);
	hash_seq_init(&seq, credits_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		bool		due;
		int64		want;
		int64		free;
		bool		is_synced;

		if (e->key.dbid != MyDatabaseId || e->key.keys_relid != keys_relid ||
			!credit_key_is_pool(&e->key))
			continue;
		SpinLockAcquire(&e->mutex);
		due = (e->want > 0 || e->refill_wanted || !e->synced ||
			   (e->is_quota && e->period_end != 0 && now >= e->period_end));
		want = e->want;
		free = e->available;
		is_synced = e->synced;
		SpinLockRelease(&e->mutex);
		if (!due)
			continue;
		column_add(&ids, Int64GetDatum(e->key.pool));
		column_add(&wants, NumericGetDatum(credit_numeric(want)));
		column_add(&frees, NumericGetDatum(credit_numeric(free)));
		column_add(&synced, BoolGetDatum(is_synced));
	}
	LWLockRelease(credits_shared->lock);
	if (ids.n == 0 || !has_credits())
		return;

	args[0] = column_array(&ids, INT8OID);
	args[1] = column_array(&wants, NUMERICOID);
	args[2] = column_array(&frees, NUMERICOID);
	args[3] = column_array(&synced, BOOLOID);
	args[4] = NumericGetDatum(int64_to_numeric(apikeys_credit_lease));
	if (SPI_execute_with_args("SELECT apikeys._credit_serve($1, $2, $3, $4, $5)",
							  5, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not lease credits");
}

void
credits_settle_body(void *arg)
{
	Oid			keys_relid = apikeys_keys_relid();
	HASH_SEQ_STATUS seq;
	CreditEntry *e;
	Column		p_ids = {0},
				p_gens = {0},
				p_spent = {0};
	Column		s_keys = {0},
				s_days = {0},
				s_pools = {0},
				s_spent = {0};
	Column		r_ids = {0},
				r_gens = {0},
				r_amounts = {0};
	TimestampTz now = GetCurrentTimestamp();
	bool		pressure = credits_pressure();
	Oid			argtypes[10] = {INT8ARRAYOID, INT4ARRAYOID, NUMERICARRAYOID,
								TEXTARRAYOID, DATEARRAYOID, INT8ARRAYOID, NUMERICARRAYOID,
								INT8ARRAYOID, INT4ARRAYOID, NUMERICARRAYOID};
	Datum		args[10];

	if (!has_credits())
		return;

	LWLockAcquire(credits_shared->lock, LW_SHARED);
	hash_seq_init(&seq, credits_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		int64		spent;
		bool		idle;
		bool		stale;
		int32		generation;

		if (e->key.dbid != MyDatabaseId || e->key.keys_relid != keys_relid)
			continue;
		SpinLockAcquire(&e->mutex);
		spent = e->spent;
		idle = credit_entry_is_idle(e) && e->synced;
		stale = pressure || now - e->last_used > IDLE_RETURN_USECS;
		generation = e->generation;
		SpinLockRelease(&e->mutex);

		if (!credit_key_is_pool(&e->key))
		{
			if (spent > 0)
			{
				char		id[APIKEY_ID_LEN + 1];

				memcpy(id, e->key.key_id, APIKEY_ID_LEN);
				id[APIKEY_ID_LEN] = '\0';
				column_add(&s_keys, CStringGetTextDatum(id));
				column_add(&s_days, DateADTGetDatum(e->key.day));
				column_add(&s_pools, Int64GetDatum(e->key.pool));
				column_add(&s_spent, NumericGetDatum(credit_numeric(credit_op_settle(e))));
			}
			else if (e->reserved == 0 && e->settling == 0)
				credit_op_remove(&e->key);
			continue;
		}
		if (spent > 0)
		{
			column_add(&p_ids, Int64GetDatum(e->key.pool));
			column_add(&p_gens, Int32GetDatum(generation));
			column_add(&p_spent, NumericGetDatum(credit_numeric(credit_op_settle(e))));
		}
		else if (idle && stale)
		{
			column_add(&r_ids, Int64GetDatum(e->key.pool));
			column_add(&r_gens, Int32GetDatum(generation));
			column_add(&r_amounts, NumericGetDatum(credit_numeric(credit_op_recall(e))));
			credit_op_remove(&e->key);
		}
	}
	LWLockRelease(credits_shared->lock);
	if (p_ids.n == 0 && s_keys.n == 0 && r_ids.n == 0)
		return;

	args[0] = column_array(&p_ids, INT8OID);
	args[1] = column_array(&p_gens, INT4OID);
	args[2] = column_array(&p_spent, NUMERICOID);
	args[3] = column_array(&s_keys, TEXTOID);
	args[4] = column_array(&s_days, DATEOID);
	args[5] = column_array(&s_pools, INT8OID);
	args[6] = column_array(&s_spent, NUMERICOID);
	args[7] = column_array(&r_ids, INT8OID);
	args[8] = column_array(&r_gens, INT4OID);
	args[9] = column_array(&r_amounts, NUMERICOID);
	/*
	 * A pool row an administrator holds locked (apikey_credit_add in an open
	 * transaction) is skipped, never waited for: its settle and return are
	 * undone at once and retried at the next flush; the others go ahead.
	 */
	if (SPI_execute_with_args("SELECT s FROM apikeys._credit_settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) AS s",
							  10, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not settle credits");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		pool = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull));
		CreditKey	key = credit_pool_key(MyDatabaseId, keys_relid, pool);

		credit_op_cancel(&key);
	}
}
