/*
 * create.c
 *		Minting a key: apikey_create, and apikeys._create_key for rotation.
 *
 * Runs as SECURITY DEFINER with a pinned search_path and writes through
 * SPI, so the key row and its audit event commit or roll back together.
 * The plaintext key exists only in this backend's memory and in the
 * returned row: it is never passed to SPI, logged or put in a message.
 *
 * One C entry point per SQL signature: apikey_create_0_2 (the public
 * 7-argument function) and apikeys_create_key (8 arguments, the last the
 * predecessor's id).  apikey_create is the symbol 0.1's script bound both
 * signatures to; it stays, for databases not yet updated to 0.2.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "keyformat.h"
#include "lookup.h"
#include "scopes.h"

PG_FUNCTION_INFO_V1(apikey_create);
PG_FUNCTION_INFO_V1(apikey_create_0_2);
PG_FUNCTION_INFO_V1(apikeys_create_key);

#define MAX_NAME_CHARS		200
#define MAX_LIFETIME_DAYS	365
/* Stores the key row and its "created" audit event (0.2: through apikeys._audit). */
#define STORE_KEY_COLUMNS \
	"WITH k AS (" \
	" INSERT INTO apikeys.keys (id, owner, name, prefix, last4, digest," \
	"  scope, ip_restrictions, metadata, lifetime_days, expires_at," \
	"  created_at, rotated_from)" \
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)" \
	" RETURNING *)"
#define CREATED_DETAIL \
	"pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(" \
	" 'name', k.name, 'scope', k.scope, 'prefix', k.prefix," \
	" 'expires_at', k.expires_at, 'ip_restrictions', k.ip_restrictions," \
	" 'rotated_from', k.rotated_from))"
#define STORE_KEY \
	STORE_KEY_COLUMNS \
	" SELECT apikeys._audit('created', k.id, k.owner, " CREATED_DETAIL ", k.created_at)" \
	" FROM k"
#define STORE_KEY_0_1 \
	STORE_KEY_COLUMNS \
	" INSERT INTO apikeys.audit (at, key_id, owner, event, detail)" \
	" SELECT k.created_at, k.id, k.owner, 'created', " CREATED_DETAIL \
	" FROM k"
#define CREATE_WARNING \
	"Store this key now: it is shown only once and cannot be recovered."

/* ----------------------------------------------------------------------
 * apikey_create
 * ----------------------------------------------------------------------
 */

/* Raises 22023 naming argname. */
static void
invalid_argument(const char *argname, const char *problem, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s %s", argname, problem),
			 detail ? errdetail("%s", detail) : 0));
}

/* Argument argno as text: not NULL, not blank, at most MAX_NAME_CHARS characters. */
static text *
required_name(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	text	   *t;
	const char *s;
	int			len;
	bool		blank = true;

	if (PG_ARGISNULL(argno))
		invalid_argument(argname, "must not be null or empty", NULL);
	t = PG_GETARG_TEXT_PP(argno);
	s = VARDATA_ANY(t);
	len = VARSIZE_ANY_EXHDR(t);
	for (int i = 0; i < len && blank; i++)
		blank = (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r');
	if (blank)
		invalid_argument(argname, "must not be null or empty", NULL);
	if (pg_mbstrlen_with_len(s, len) > MAX_NAME_CHARS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most %d characters long", argname, MAX_NAME_CHARS),
				 errdetail("The %s given is %d characters long.", argname,
						   pg_mbstrlen_with_len(s, len))));
	return t;
}

/* The ip_restrictions argument as a one-dimensional cidr[] without NULLs. */
static ArrayType *
ip_restrictions_arg(FunctionCallInfo fcinfo, int argno)
{
	ArrayType  *arr;

	if (PG_ARGISNULL(argno))
		return construct_empty_array(CIDROID);
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(arr) > 1)
		invalid_argument("ip_restrictions", "must be a one-dimensional array", NULL);
	if (array_contains_nulls(arr))
		invalid_argument("ip_restrictions", "must not contain null elements", NULL);
	return arr;
}

/* Fills out with n uniformly random base62 characters. */
static void
random_base62(char *out, size_t n)
{
	uint8		bytes[64];

	for (;;)
	{
		if (!pg_strong_random(bytes, sizeof(bytes)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random bytes for an api key")));
		if (base62_from_random(bytes, sizeof(bytes), out, n, NULL) >= 0)
			break;
	}
	explicit_bzero(bytes, sizeof(bytes));
}

/*
 * The statement sql, prepared on first use and kept for the backend's life
 * (the plan cache re-plans it after DDL, including DROP/CREATE EXTENSION).
 */
static SPIPlanPtr
saved_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	prepared = SPI_prepare(sql, nargs, argtypes);

		if (prepared == NULL || SPI_keepplan(prepared) != 0)
			elog(ERROR, "could not prepare \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		*plan = prepared;
	}
	return *plan;
}

/*
 * Mints a key from the arguments (owner, name, scope, ip_restrictions,
 * expires_in_days, prefix, metadata [, rotated_from]) and returns its
 * apikeys.new_key row.  rotated_from (argument 8, when with_predecessor)
 * is how apikey_rotate links the successor to the key it replaces.
 * schema_0_1 says the caller is a function of 0.1's script, whose schema
 * has no apikeys._audit.
 */
static Datum
create_key(FunctionCallInfo fcinfo, bool with_predecessor, bool schema_0_1)
{
	text	   *owner;
	text	   *name;
	Datum		scope;
	ArrayType  *ips;
	bool		never_expires = PG_ARGISNULL(4);
	int32		lifetime_days = never_expires ? 0 : PG_GETARG_INT32(4);
	const char *prefix;
	Jsonb	   *metadata;
	bool		has_predecessor = with_predecessor && !PG_ARGISNULL(7);
	char		random_chars[APIKEY_RANDOM_CHARS];
	char		key[APIKEY_MAX_LEN + 1];
	size_t		keylen;
	char		id[APIKEY_ID_LEN + 1];
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	bytea	   *digest_datum;
	TimestampTz created_at = GetCurrentTimestamp();
	TimestampTz expires_at = 0;
	TupleDesc	tupdesc;
	Datum		values[9];
	bool		nulls[9] = {false};

	apikeys_require_preload();

	owner = required_name(fcinfo, 0, "owner");
	name = required_name(fcinfo, 1, "name");
	if (PG_ARGISNULL(2) || VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(2)) == 0)
		invalid_argument("scope", "must not be null or empty", NULL);
	scope = PG_GETARG_DATUM(2);
	ips = ip_restrictions_arg(fcinfo, 3);
	if (!never_expires && (lifetime_days < 1 || lifetime_days > MAX_LIFETIME_DAYS))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("expires_in_days must be between 1 and %d, or NULL for a key that never expires",
						MAX_LIFETIME_DAYS),
				 errdetail("The value given was %d.", lifetime_days)));

	if (PG_ARGISNULL(5))
		prefix = apikeys_default_prefix;
	else
	{
		text	   *p = PG_GETARG_TEXT_PP(5);

		if (!apikey_prefix_is_valid(VARDATA_ANY(p), VARSIZE_ANY_EXHDR(p)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid key prefix"),
					 errdetail("A key prefix is 1 to %d characters of a-z, 0-9 and underscore.",
							   APIKEY_PREFIX_MAX)));
		prefix = text_to_cstring(p);
	}

	if (PG_ARGISNULL(6))
		metadata = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	else
	{
		metadata = PG_GETARG_JSONB_P(6);
		if (!JB_ROOT_IS_OBJECT(metadata) || JB_ROOT_IS_SCALAR(metadata))
			invalid_argument("metadata", "must be a JSON object", NULL);
	}

	if (!never_expires)
		expires_at = created_at + (TimestampTz) lifetime_days * USECS_PER_DAY;

	/* mint: the key, its digest and a public id */
	random_base62(random_chars, APIKEY_RANDOM_CHARS);
	keylen = apikey_assemble(prefix, strlen(prefix), random_chars, key);
	explicit_bzero(random_chars, sizeof(random_chars));
	apikey_digest(key, keylen, digest);
	digest_datum = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	SET_VARSIZE(digest_datum, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	memcpy(VARDATA(digest_datum), digest, PG_SHA256_DIGEST_LENGTH);
	memcpy(id, APIKEY_ID_TAG, strlen(APIKEY_ID_TAG));
	random_base62(id + strlen(APIKEY_ID_TAG), APIKEY_ID_RANDOM_CHARS);
	id[APIKEY_ID_LEN] = '\0';

	/* store the row and its audit event in one statement */
	SPI_connect();
	scope_require_exists(scope);
	{
		Oid			argtypes[13] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
									BYTEAOID, TEXTOID, CIDRARRAYOID, JSONBOID,
									INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID};
		Datum		args[13];
		char		argnulls[13];
		static SPIPlanPtr plans[2] = {NULL, NULL};

		memset(argnulls, ' ', sizeof(argnulls));
		args[0] = CStringGetTextDatum(id);
		args[1] = PointerGetDatum(owner);
		args[2] = PointerGetDatum(name);
		args[3] = CStringGetTextDatum(prefix);
		args[4] = PointerGetDatum(cstring_to_text_with_len(key + keylen - 4, 4));
		args[5] = PointerGetDatum(digest_datum);
		args[6] = scope;
		args[7] = PointerGetDatum(ips);
		args[8] = JsonbPGetDatum(metadata);
		args[9] = Int32GetDatum(lifetime_days);
		args[10] = TimestampTzGetDatum(expires_at);
		args[11] = TimestampTzGetDatum(created_at);
		args[12] = has_predecessor ? PG_GETARG_DATUM(7) : (Datum) 0;
		if (never_expires)
			argnulls[9] = argnulls[10] = 'n';
		if (!has_predecessor)
			argnulls[12] = 'n';

		/* 0.2 audits through apikeys._audit; a 0.1 schema has no such function */
		saved_plan(&plans[schema_0_1],
				   schema_0_1 ? STORE_KEY_0_1 : STORE_KEY,
				   13, argtypes);
		if (SPI_execute_plan(plans[schema_0_1], args, argnulls, false, 0) !=
			(schema_0_1 ? SPI_OK_INSERT : SPI_OK_SELECT))
			elog(ERROR, "could not store the new api key");
	}
	SPI_finish();

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = CStringGetTextDatum(id);
	values[1] = PointerGetDatum(name);
	values[2] = CStringGetTextDatum(prefix);
	values[3] = PointerGetDatum(cstring_to_text_with_len(key, keylen));
	values[4] = scope;
	values[5] = PointerGetDatum(ips);
	values[6] = TimestampTzGetDatum(expires_at);
	nulls[6] = never_expires;
	values[7] = TimestampTzGetDatum(created_at);
	values[8] = CStringGetTextDatum(CREATE_WARNING);
	explicit_bzero(key, sizeof(key));

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}

/* apikeys.apikey_create(owner, name, scope, ip_restrictions, expires_in_days, prefix, metadata) */
Datum
apikey_create_0_2(PG_FUNCTION_ARGS)
{
	return create_key(fcinfo, false, false);
}

/* apikeys._create_key(owner, ..., metadata, rotated_from) */
Datum
apikeys_create_key(PG_FUNCTION_ARGS)
{
	return create_key(fcinfo, true, false);
}

/* 0.1's symbol for both signatures above; used until ALTER EXTENSION UPDATE. */
Datum
apikey_create(PG_FUNCTION_ARGS)
{
	return create_key(fcinfo, PG_NARGS() > 7, true);
}
