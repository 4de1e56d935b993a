/*
 * validate.c
 *		The validation decision: format, existence, revoked, expired, IP,
 *		permission, in that order, and the usage count of the call.
 *
 * Pure decision over what lookup.c returns; writes nothing but the
 * shared-memory counter (usage.c).  Expiry is judged by expires_at against
 * the statement's start time, whether or not the worker has marked the key.
 */
#include "postgres.h"

#include "access/xact.h"
#include "funcapi.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inet.h"
#include "utils/timestamp.h"

#include "keyformat.h"
#include "guc.h"
#include "scopes.h"
#include "usage.h"
#include "validate.h"

PG_FUNCTION_INFO_V1(apikey_validate);

const char *const outcome_codes[] = {
	"valid", "malformed", "not_found", "revoked", "expired",
	"ip_not_allowed", "insufficient_scope", "insufficient_credits", "rate_limited"
};

/* The connection's client address; false over a Unix socket. */
static bool
connection_address(Datum *addr)
{
	LOCAL_FCINFO(inner, 0);
	Datum		d;

	InitFunctionCallInfoData(*inner, NULL, 0, InvalidOid, NULL, NULL);
	d = inet_client_addr(inner);
	if (inner->isnull)
		return false;
	*addr = d;
	return true;
}

/* True if addr falls inside one of the networks. */
static bool
address_allowed(Datum addr, ArrayType *networks)
{
	Datum	   *elems;
	int			n;

	deconstruct_array(networks, CIDROID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
	for (int i = 0; i < n; i++)
		if (DatumGetBool(DirectFunctionCall2(network_subeq, addr, elems[i])))
			return true;
	return false;
}

Outcome
apikey_check(text *key, text *permission, Datum *addr, AddressSource source,
			 KeyRow *row, RateInfo *rate)
{
	Outcome		outcome = apikey_limit(apikey_decide(key, permission, addr, source, row),
									   row, rate);

	/* every validation of a known key is counted, valid or rejected */
	if (outcome != OUTCOME_MALFORMED && outcome != OUTCOME_NOT_FOUND)
		apikey_count(row, outcome == OUTCOME_VALID);
	return outcome;
}

Outcome
apikey_limit(Outcome outcome, const KeyRow *row, RateInfo *rate)
{
	memset(rate, 0, sizeof(*rate));
	if (outcome != OUTCOME_VALID)
		return outcome;
	return ratelimit_check(row, GetCurrentTimestamp(), rate, true) ?
		OUTCOME_VALID : OUTCOME_RATE_LIMITED;
}

void
apikey_count(const KeyRow *row, bool valid)
{
	usage_count(row->keys_relid, row->id, valid, GetCurrentStatementStartTimestamp(),
				row->creator_xid);
}

Outcome
apikey_decide(text *key, text *permission, Datum *addr, AddressSource source,
			  KeyRow *row)
{
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	TimestampTz now;
	Outcome		outcome;

	if (key == NULL || !apikey_parse(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), NULL))
		return OUTCOME_MALFORMED;

	apikey_digest(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), digest);
	if (!apikey_lookup(digest, row))
		return OUTCOME_NOT_FOUND;

	now = GetCurrentStatementStartTimestamp();
	if (row->revoked)
		outcome = OUTCOME_REVOKED;
	else if (row->has_expiry && row->expires_at <= now)
		outcome = OUTCOME_EXPIRED;
	else if (row->ip_restrictions != NULL &&
			 ArrayGetNItems(ARR_NDIM(row->ip_restrictions), ARR_DIMS(row->ip_restrictions)) > 0)
	{
		Datum		client;
		bool		known = (addr != NULL);

		if (known)
			client = *addr;
		else if (source == ADDRESS_GIVEN_OR_CONNECTION)
			known = connection_address(&client);
		outcome = (known && address_allowed(client, row->ip_restrictions)) ?
			OUTCOME_VALID : OUTCOME_IP_NOT_ALLOWED;
	}
	else
		outcome = OUTCOME_VALID;

	if (outcome == OUTCOME_VALID && permission != NULL &&
		!scope_grants(row->scope, permission))
		outcome = OUTCOME_INSUFFICIENT_SCOPE;
	return outcome;
}

/* ----------------------------------------------------------------------
 * apikey_validate
 * ----------------------------------------------------------------------
 */

TupleDesc
cached_result_tupdesc(FunctionCallInfo fcinfo, ResultDescCache *cache)
{
	TupleDesc	tupdesc;
	MemoryContext old;

	if (cache->tupdesc != NULL && cache->fn_oid == fcinfo->flinfo->fn_oid)
		return cache->tupdesc;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	old = MemoryContextSwitchTo(TopMemoryContext);
	tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
	MemoryContextSwitchTo(old);
	if (cache->tupdesc != NULL)
		FreeTupleDesc(cache->tupdesc);
	cache->tupdesc = tupdesc;
	cache->fn_oid = fcinfo->flinfo->fn_oid;
	return tupdesc;
}

int
validation_values(Outcome outcome, const KeyRow *row, const RateInfo *rate, int natts,
				  Datum *values, bool *nulls)
{
	for (int i = 0; i < natts; i++)
		nulls[i] = false;
	values[0] = BoolGetDatum(outcome == OUTCOME_VALID);
	values[1] = CStringGetTextDatum(outcome_codes[outcome]);
	if (row == NULL)
	{
		for (int i = 2; i < 8; i++)
			nulls[i] = true;
	}
	else
	{
		values[2] = row->id;
		values[3] = row->owner;
		values[4] = row->name;
		values[5] = row->scope;
		values[6] = TimestampTzGetDatum(row->expires_at);
		nulls[6] = !row->has_expiry;
		values[7] = JsonbPGetDatum(row->metadata);
		nulls[7] = (row->metadata == NULL);
	}
	if (natts > VALIDATION_NATTS_0_1)
	{
		if (rate != NULL && rate->limited)
		{
			values[8] = Int32GetDatum(rate->limit);
			values[9] = Int32GetDatum(rate->remaining);
			values[10] = TimestampTzGetDatum(rate->reset);
		}
		else
			nulls[8] = nulls[9] = nulls[10] = true;
	}
	return natts;
}

/* Forms the apikeys.validation row for outcome, with the key's details if known. */
static Datum
validation_result(FunctionCallInfo fcinfo, Outcome outcome, const KeyRow *row,
				  const RateInfo *rate)
{
	static ResultDescCache cache;
	TupleDesc	tupdesc = cached_result_tupdesc(fcinfo, &cache);
	Datum		values[VALIDATION_NATTS];
	bool		nulls[VALIDATION_NATTS];

	validation_values(outcome, row, rate, Min(tupdesc->natts, VALIDATION_NATTS),
					  values, nulls);
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/*
 * apikey_validate(key, permission, client_ip) returns apikeys.validation
 *
 * Never raises for a bad key: every key gets an outcome row.
 */
Datum
apikey_validate(PG_FUNCTION_ARGS)
{
	KeyRow		row;
	Datum		addr;
	Outcome		outcome;
	RateInfo	rate;

	apikeys_require_preload();

	if (!PG_ARGISNULL(2))
		addr = PG_GETARG_DATUM(2);
	outcome = apikey_check(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0),
						   PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
						   PG_ARGISNULL(2) ? NULL : &addr,
						   ADDRESS_GIVEN_OR_CONNECTION, &row, &rate);
	PG_RETURN_DATUM(validation_result(fcinfo, outcome,
									  (outcome == OUTCOME_MALFORMED ||
									   outcome == OUTCOME_NOT_FOUND) ? NULL : &row,
									  &rate));
}
