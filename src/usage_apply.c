/*
 * usage_apply.c
 *		What a flush writes, and the primary's side of a standby's batch.
 *
 * One statement adds counters to apikeys.usage and moves last_used_at: the
 * worker's flush runs it on the primary (worker.c), and so does
 * apikeys._usage_ship(), which a hot standby's worker calls over libpq
 * (ship.c) with a batch of its counters.
 *
 * Exactly once across the network: a standby names itself by a random
 * source id and numbers its batches; it sends a batch again, unchanged,
 * until it has the primary's answer, and numbers the next one higher.
 * apikeys.standby_batches holds, per source, the last batch applied, and
 * is updated in the transaction that applies the batch: a batch numbered
 * at or below it was applied before, and is answered without applying it
 * again.  The source row is locked first, so two sessions of one standby
 * (one of them a dying connection's backend) apply one after the other.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "usage.h"

PG_FUNCTION_INFO_V1(apikeys_usage_ship);

const char *const batch_outcome_names[] = {"applied", "duplicate", "conflict"};

/*
 * Counts of keys the snapshot cannot see are left out (and kept for a
 * retry).  last_used_at moves only when it is more than a minute behind,
 * so a busy key costs one row update a minute, not one a flush; it is set
 * only on rows nobody has locked, so a flush never waits for a user's
 * transaction (a locked row is retried); never later than now (a
 * standby's clock may be ahead).  Returns, for each counter found, its
 * ordinal and whether its last use was recorded.
 */
static const char usage_apply_sql[] =
"WITH d AS ("
" SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
"  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5))"
"  WITH ORDINALITY AS d(key_id, day, calls, rejected, last_used, i)"
" WHERE EXISTS (SELECT FROM apikeys.keys k"
"               WHERE k.id OPERATOR(pg_catalog.=) d.key_id)),"
" ins AS ("
" INSERT INTO apikeys.usage AS u (key_id, day, calls, rejected)"
" SELECT d.key_id, d.day, d.calls, d.rejected FROM d"
" WHERE d.calls OPERATOR(pg_catalog.>) 0 OR d.rejected OPERATOR(pg_catalog.>) 0"
" ON CONFLICT (key_id, day) DO UPDATE"
" SET calls = u.calls OPERATOR(pg_catalog.+) excluded.calls,"
"     rejected = u.rejected OPERATOR(pg_catalog.+) excluded.rejected),"
" stale AS ("
" SELECT m.key_id, m.last_used"
" FROM (SELECT d.key_id,"
"        LEAST(pg_catalog.max(d.last_used), pg_catalog.now()) AS last_used FROM d"
"       WHERE d.last_used IS NOT NULL GROUP BY d.key_id) m"
" JOIN apikeys.keys k ON k.id OPERATOR(pg_catalog.=) m.key_id"
" WHERE k.last_used_at IS NULL"
"    OR k.last_used_at OPERATOR(pg_catalog.<)"
"       (m.last_used OPERATOR(pg_catalog.-) interval '1 minute')),"
" lockable AS ("
" SELECT k.id FROM apikeys.keys k"
" WHERE k.id OPERATOR(pg_catalog.=) ANY (SELECT s.key_id FROM stale s)"
" FOR NO KEY UPDATE OF k SKIP LOCKED),"
" upd AS ("
" UPDATE apikeys.keys k"
" SET last_used_at = GREATEST(k.last_used_at, s.last_used)"
" FROM stale s"
" WHERE k.id OPERATOR(pg_catalog.=) s.key_id"
"   AND k.id OPERATOR(pg_catalog.=) ANY (SELECT l.id FROM lockable l)"
" RETURNING k.id)"
" SELECT d.i, d.last_used IS NULL"
"        OR NOT d.key_id OPERATOR(pg_catalog.=) ANY (SELECT s.key_id FROM stale s)"
"        OR d.key_id OPERATOR(pg_catalog.=) ANY (SELECT upd.id FROM upd)"
" FROM d";

/*
 * Adds the counters given as five arrays (key ids, days, calls, rejected,
 * last uses, n of each) to apikeys.usage and last_used_at (SPI connected).
 * Sets matched[i] for each counter whose key exists, and last_used_done[i]
 * if its last use was recorded (or there was none).
 */
static void
apply_arrays(Datum *arrays, int n, bool *matched, bool *last_used_done)
{
	Oid			argtypes[5] = {TEXTARRAYOID, DATEARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
							   TIMESTAMPTZARRAYOID};

	memset(matched, 0, sizeof(bool) * n);
	memset(last_used_done, 0, sizeof(bool) * n);
	if (SPI_execute_with_args(usage_apply_sql, 5, argtypes, arrays, NULL, false, 0)
		!= SPI_OK_SELECT)
		elog(ERROR, "could not add api key usage");

	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		i = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													SPI_tuptable->tupdesc, 1, &isnull));

		if (i < 1 || i > n)
			elog(ERROR, "unexpected counter ordinal " INT64_FORMAT, i);
		matched[i - 1] = true;
		last_used_done[i - 1] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r],
														   SPI_tuptable->tupdesc, 2,
														   &isnull));
	}
}

/* The five arrays apply_arrays takes, built from n deltas. */
static void
deltas_to_arrays(const UsageDelta *deltas, int n, Datum *arrays)
{
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *days = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *calls = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *rejected = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *last_used = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *last_used_nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		ids[i] = CStringGetTextDatum(deltas[i].key_id);
		days[i] = DateADTGetDatum(deltas[i].day);
		calls[i] = Int64GetDatum(deltas[i].calls);
		rejected[i] = Int64GetDatum(deltas[i].rejected);
		last_used[i] = TimestampTzGetDatum(deltas[i].last_used);
		last_used_nulls[i] = (deltas[i].last_used == 0);
	}
	arrays[0] = PointerGetDatum(construct_array(ids, n, TEXTOID, -1, false, TYPALIGN_INT));
	arrays[1] = PointerGetDatum(construct_array(days, n, DATEOID, sizeof(DateADT), true,
												TYPALIGN_INT));
	arrays[2] = PointerGetDatum(construct_array(calls, n, INT8OID, 8, FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	arrays[3] = PointerGetDatum(construct_array(rejected, n, INT8OID, 8, FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	arrays[4] = PointerGetDatum(construct_md_array(last_used, last_used_nulls, 1, dims, lbs,
												   TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL,
												   TYPALIGN_DOUBLE));
}

void
usage_apply(const UsageDelta *deltas, int n, bool *matched, bool *last_used_done)
{
	Datum		arrays[5];

	deltas_to_arrays(deltas, n, arrays);
	apply_arrays(arrays, n, matched, last_used_done);
}

/* The sum of an int8 array's elements whose counter was matched. */
static int64
sum_matched(Datum array, const bool *matched, int n)
{
	Datum	   *elems;
	int			nelems;
	int64		sum = 0;

	deconstruct_array(DatumGetArrayTypeP(array), INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, NULL, &nelems);
	for (int i = 0; i < n; i++)
		if (matched[i])
			sum += DatumGetInt64(elems[i]);
	return sum;
}

/*
 * Applies batch number batch of source (named standby), given as five
 * arrays of n counters, unless it was applied before (SPI connected, in the
 * transaction that must record it).  A batch numbered above the source's
 * last is applied; the last one again is a duplicate (its answer was
 * lost); a lower one is a conflict: another server sends under this source
 * id (a standby's batch numbers carry random low bits, so that two servers
 * with one source id give their batches different numbers).  A batch not
 * applied now counts as
 * matched everywhere with no last use recorded, so that the standby
 * subtracts a duplicate and sends its last uses again.
 */
static BatchOutcome
apply_batch(Datum source, Datum standby, int64 batch, Datum *arrays, int n,
			bool *matched, bool *last_used_done)
{
	Oid			lock_types[2] = {UUIDOID, TEXTOID};
	Datum		lock_args[2] = {source, standby};
	Oid			done_types[4] = {UUIDOID, INT8OID, INT8OID, INT8OID};
	Datum		done_args[4];
	bool		isnull;
	int64		last;
	BatchOutcome outcome;

	/* the source's row, locked: one batch of a standby at a time */
	if (SPI_execute_with_args("INSERT INTO apikeys.standby_batches AS b (source, standby)"
							  " VALUES ($1, $2) ON CONFLICT (source) DO UPDATE"
							  " SET standby = excluded.standby"
							  " RETURNING b.last_batch",
							  2, lock_types, lock_args, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not record a standby's batch");
	last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									   &isnull));

	if (batch <= last)
	{
		outcome = (batch == last) ? BATCH_DUPLICATE : BATCH_CONFLICT;
		if (SPI_execute_with_args(outcome == BATCH_DUPLICATE ?
								  "UPDATE apikeys.standby_batches"
								  " SET duplicates = duplicates OPERATOR(pg_catalog.+) 1"
								  " WHERE source OPERATOR(pg_catalog.=) $1" :
								  "UPDATE apikeys.standby_batches"
								  " SET conflicts = conflicts OPERATOR(pg_catalog.+) 1"
								  " WHERE source OPERATOR(pg_catalog.=) $1",
								  1, lock_types, lock_args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not record a standby's batch");
		for (int i = 0; i < n; i++)
		{
			matched[i] = true;
			last_used_done[i] = false;
		}
		return outcome;
	}

	apply_arrays(arrays, n, matched, last_used_done);

	/* what was applied, for the source's row */
	done_args[0] = source;
	done_args[1] = Int64GetDatum(batch);
	done_args[2] = Int64GetDatum(sum_matched(arrays[2], matched, n));
	done_args[3] = Int64GetDatum(sum_matched(arrays[3], matched, n));
	if (SPI_execute_with_args("UPDATE apikeys.standby_batches"
							  " SET last_batch = $2,"
							  "     batches = batches OPERATOR(pg_catalog.+) 1,"
							  "     calls = calls OPERATOR(pg_catalog.+) $3,"
							  "     rejected = rejected OPERATOR(pg_catalog.+) $4,"
							  "     last_batch_at = pg_catalog.now()"
							  " WHERE source OPERATOR(pg_catalog.=) $1",
							  4, done_types, done_args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record a standby's batch");
	return BATCH_APPLIED;
}

BatchOutcome
usage_apply_batch(const pg_uuid_t *source, const char *standby, uint64 batch,
				  const UsageDelta *deltas, int n, bool *matched, bool *last_used_done)
{
	Datum		arrays[5];
	pg_uuid_t  *src = palloc(sizeof(pg_uuid_t));

	*src = *source;
	deltas_to_arrays(deltas, n, arrays);
	return apply_batch(UUIDPGetDatum(src), CStringGetTextDatum(standby), (int64) batch,
					   arrays, n, matched, last_used_done);
}

/* Checks that arr is a one-dimensional array of n elements, nulls only if allowed. */
static void
check_array(ArrayType *arr, const char *argname, int n, bool nulls_ok)
{
	int			len = ARR_NDIM(arr) == 0 ? 0 : ARR_DIMS(arr)[0];

	if (ARR_NDIM(arr) > 1 || len != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array of %d elements", argname, n)));
	if (!nulls_ok && array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not contain nulls", argname)));
}

/*
 * Checks that an int8 array (no nulls) holds counts a standby sends: from 0
 * to 2^32-1 each (what one flush of an entry takes), so that no batch can
 * make the usage table's sums overflow and stop every flush.
 */
static void
check_counts(ArrayType *arr, const char *argname)
{
	Datum	   *elems;
	int			nelems;

	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, NULL, &nelems);
	for (int i = 0; i < nelems; i++)
		if (DatumGetInt64(elems[i]) < 0 || DatumGetInt64(elems[i]) > (int64) PG_UINT32_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must hold counts from 0 to %u", argname, PG_UINT32_MAX)));
}

/* Checks that days and last uses are finite (infinity would stay for good). */
static void
check_finite(ArrayType *days, ArrayType *last_used)
{
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;

	deconstruct_array(days, DATEOID, sizeof(DateADT), true, TYPALIGN_INT, &elems, NULL, &nelems);
	for (int i = 0; i < nelems; i++)
		if (DATE_NOT_FINITE(DatumGetDateADT(elems[i])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("days must be finite")));
	deconstruct_array(last_used, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems,
					  &nulls, &nelems);
	for (int i = 0; i < nelems; i++)
		if (!nulls[i] && TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(elems[i])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("last_used must be finite")));
}

/*
 * apikeys._usage_ship(source, standby, batch, key_ids, days, calls,
 * rejected, last_used): a standby's batch, applied once.  Returns, for
 * each counter whose key exists, what became of the batch ('applied',
 * 'duplicate' or 'conflict': see apply_batch), its ordinal and whether its
 * last use was recorded.
 */
Datum
apikeys_usage_ship(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		batch = PG_GETARG_INT64(2);
	ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(3);
	Datum		arrays[5];
	int			n;
	bool	   *matched;
	bool	   *last_used_done;
	BatchOutcome outcome;

	if (batch < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch must be positive")));
	n = ARR_NDIM(ids) == 0 ? 0 : ARR_DIMS(ids)[0];
	check_array(ids, "key_ids", n, false);
	check_array(PG_GETARG_ARRAYTYPE_P(4), "days", n, false);
	check_array(PG_GETARG_ARRAYTYPE_P(5), "calls", n, false);
	check_array(PG_GETARG_ARRAYTYPE_P(6), "rejected", n, false);
	check_array(PG_GETARG_ARRAYTYPE_P(7), "last_used", n, true);
	check_counts(PG_GETARG_ARRAYTYPE_P(5), "calls");
	check_counts(PG_GETARG_ARRAYTYPE_P(6), "rejected");
	check_finite(PG_GETARG_ARRAYTYPE_P(4), PG_GETARG_ARRAYTYPE_P(7));
	for (int a = 0; a < 5; a++)
		arrays[a] = PG_GETARG_DATUM(3 + a);

	InitMaterializedSRF(fcinfo, 0);
	matched = palloc(sizeof(bool) * Max(n, 1));
	last_used_done = palloc(sizeof(bool) * Max(n, 1));

	SPI_connect();
	outcome = apply_batch(PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), batch, arrays, n,
						  matched, last_used_done);
	SPI_finish();

	for (int i = 0; i < n; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		if (!matched[i])
			continue;
		values[0] = CStringGetTextDatum(batch_outcome_names[outcome]);
		values[1] = Int32GetDatum(i + 1);
		values[2] = BoolGetDatum(last_used_done[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
