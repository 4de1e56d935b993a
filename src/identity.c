/*
 * identity.c
 *		Which key authenticated the current transaction, for the HTTP API.
 *
 * apikeys._authenticate() is what apikeys_api.pre_request calls at the start
 * of each PostgREST request (one transaction per request).  It validates the
 * key from the request headers, raising PT401 or PT403 when it fails, and
 * when it passes remembers the key's id, owner and scope in this backend's
 * memory.  The HTTP endpoints act on that owner only.
 *
 * The identity cannot be forged from SQL: it lives in C variables, not in a
 * setting or a table, so set_config() and friends cannot touch it; only a
 * successful _authenticate sets it, and it is cleared when the transaction
 * ends, and when the subtransaction that set it aborts.
 *
 * The client address comes from X-Forwarded-For: with apikeys.trusted_proxies
 * = N, the N-th entry from the right is the one the outermost trusted proxy
 * saw; entries further left were written by the client and are never used.
 */
#include "postgres.h"

#include <sys/socket.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/inet.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "credits.h"
#include "identity.h"
#include "scopes.h"
#include "validate.h"

#define ERRCODE_PT401	MAKE_SQLSTATE('P','T','4','0','1')
#define ERRCODE_PT402	MAKE_SQLSTATE('P','T','4','0','2')
#define ERRCODE_PT403	MAKE_SQLSTATE('P','T','4','0','3')
#define ERRCODE_PGRST	MAKE_SQLSTATE('P','G','R','S','T')

/* True while this module raises a PGRST refusal (429), for the log hook. */
static bool refusing = false;


typedef struct Identity
{
	bool		set;
	SubTransactionId subxact;	/* the subtransaction that set it */
	char	   *key_id;
	char	   *owner;
	char	   *scope;
} Identity;

static Identity identity;
static bool callbacks_registered = false;

PG_FUNCTION_INFO_V1(apikeys_authenticate);
PG_FUNCTION_INFO_V1(apikeys_authenticate_charge);

static Datum authenticate(FunctionCallInfo fcinfo, text *credit, int64 cost);
PG_FUNCTION_INFO_V1(apikeys_auth_key_id);
PG_FUNCTION_INFO_V1(apikeys_auth_owner);
PG_FUNCTION_INFO_V1(apikeys_auth_scope);
PG_FUNCTION_INFO_V1(apikeys_auth_has_permission);
PG_FUNCTION_INFO_V1(apikeys_url_path_decode);

static emit_log_hook_type prev_emit_log_hook = NULL;

static void
identity_clear(void)
{
	if (identity.key_id)
		pfree(identity.key_id);
	if (identity.owner)
		pfree(identity.owner);
	if (identity.scope)
		pfree(identity.scope);
	memset(&identity, 0, sizeof(identity));
}

static void
identity_xact_callback(XactEvent event, void *arg)
{
	if (identity.set)
		identity_clear();
}

static void
identity_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	if (identity.set && event == SUBXACT_EVENT_ABORT_SUB && identity.subxact == mySubid)
		identity_clear();
	else if (identity.set && event == SUBXACT_EVENT_COMMIT_SUB && identity.subxact == mySubid)
		identity.subxact = parentSubid;
}

/* Remembers the authenticated key until the end of the transaction. */
static void
identity_set(const KeyRow *row)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(identity_xact_callback, NULL);
		RegisterSubXactCallback(identity_subxact_callback, NULL);
		callbacks_registered = true;
	}
	identity_clear();
	identity.key_id = MemoryContextStrdup(TopMemoryContext, TextDatumGetCString(row->id));
	identity.owner = MemoryContextStrdup(TopMemoryContext, TextDatumGetCString(row->owner));
	identity.scope = MemoryContextStrdup(TopMemoryContext, TextDatumGetCString(row->scope));
	identity.subxact = GetCurrentSubTransactionId();
	identity.set = true;
}

/* Parses one address; false if it is not an IPv4 or IPv6 address. */
static bool
parse_address(const char *s, Datum *out)
{
	inet	   *addr = palloc0(sizeof(inet));
	int			bits;

	ip_family(addr) = strchr(s, ':') ? PGSQL_AF_INET6 : PGSQL_AF_INET;
	bits = pg_inet_net_pton(ip_family(addr), s, ip_addr(addr), -1);
	if (bits < 0 || bits > ip_maxbits(addr))
		return false;
	ip_bits(addr) = bits;
	SET_INET_VARSIZE(addr);
	*out = InetPGetDatum(addr);
	return true;
}

/*
 * The client address from an X-Forwarded-For value: the trusted_proxies-th
 * entry from the right.  False if there is no such entry or it is not an
 * address (the client is then unknown).
 */
static bool
forwarded_client(const char *header, int trusted, Datum *out)
{
	char	   *copy;
	char	   *entries[64];
	int			n = 0;
	char	   *entry;
	char	   *save;

	if (header == NULL || trusted < 1)
		return false;
	copy = pstrdup(header);
	for (entry = strtok_r(copy, ",", &save); entry != NULL; entry = strtok_r(NULL, ",", &save))
	{
		if (n == lengthof(entries))
			memmove(entries, entries + 1, sizeof(entries[0]) * --n);	/* keep the rightmost */
		entries[n++] = entry;
	}
	if (trusted > n)
		return false;
	entry = entries[n - trusted];
	while (*entry == ' ' || *entry == '\t')
		entry++;
	for (char *end = entry + strlen(entry); end > entry && (end[-1] == ' ' || end[-1] == '\t');)
		*--end = '\0';
	return *entry != '\0' && parse_address(entry, out);
}

/*
 * apikeys._authenticate(key, permission, forwarded_for): validates the
 * request's key; PT401/PT403 on failure, else remembers it for this
 * transaction.  apikeys._authenticate_charge(key, permission,
 * forwarded_for, credit, cost) also charges cost of credit (PT402 when
 * credits run out), given back if the request's transaction rolls back.
 */
Datum
apikeys_authenticate(PG_FUNCTION_ARGS)
{
	return authenticate(fcinfo, NULL, 0);
}

Datum
apikeys_authenticate_charge(PG_FUNCTION_ARGS)
{
	text	   *credit;

	if (PG_ARGISNULL(3) || PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("credit and cost must not be null")));
	credit = PG_GETARG_TEXT_PP(3);
	return authenticate(fcinfo, credit, credit_units(PG_GETARG_NUMERIC(4), "cost", false));
}

/* Whole seconds from now until t, rounded up, at least 0. */
static long
seconds_until(TimestampTz t)
{
	TimestampTz now = GetCurrentTimestamp();

	return t <= now ? 0 : (long) ((t - now + USECS_PER_SEC - 1) / USECS_PER_SEC);
}

/* The IETF draft's RateLimit-* fields of the most constrained limit, as JSON members. */
static char *
rate_fields(const RateInfo *rate)
{
	return psprintf("{\"RateLimit-Limit\":\"%d\"},{\"RateLimit-Remaining\":\"%d\"},"
					"{\"RateLimit-Reset\":\"%ld\"}",
					rate->limit, rate->remaining, seconds_until(rate->reset));
}

/* Adds the RateLimit-* headers to PostgREST's response (response.headers, this transaction). */
static void
set_rate_headers(const RateInfo *rate)
{
	(void) set_config_option("response.headers", psprintf("[%s]", rate_fields(rate)),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * 429 through PostgREST: SQLSTATE PGRST with the response as JSON, with
 * Retry-After and the RateLimit-* headers.  Kept out of the log like
 * PT401/PT403 (refusing marks it for the log hook).
 */
static void
raise_rate_limited(const RateInfo *rate)
{
	long		retry = Max(seconds_until(rate->reset), 1);

	refusing = true;
	ereport(ERROR,
			(errcode(ERRCODE_PGRST),
			 errmsg("{\"code\":\"rate_limited\",\"message\":\"too many requests\","
					"\"details\":\"A rate limit of %d requests allows no more now.\","
					"\"hint\":\"Retry after %ld seconds.\"}", rate->limit, retry),
			 errdetail("{\"status\":429,\"headers\":{\"Retry-After\":\"%ld\","
					   "\"RateLimit-Limit\":\"%d\",\"RateLimit-Remaining\":\"0\","
					   "\"RateLimit-Reset\":\"%ld\"}}",
					   retry, rate->limit, retry)));
}

static Datum
authenticate(FunctionCallInfo fcinfo, text *credit, int64 cost)
{
	text	   *key = PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0);
	text	   *permission = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	Datum		addr;
	bool		known;
	KeyRow		row;
	Outcome		outcome;
	int64		remaining = 0;
	RateInfo	rate;

	apikeys_require_preload();
	if (identity.set)
		identity_clear();
	refusing = false;

	if (key == NULL || VARSIZE_ANY_EXHDR(key) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PT401),
				 errmsg("missing api key"),
				 errhint("Send the key in the X-API-Key header.")));

	known = forwarded_client(PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2)),
							 apikeys_trusted_proxies, &addr);
	outcome = apikey_decide(key, permission, known ? &addr : NULL, ADDRESS_GIVEN, &row);
	if (credit != NULL)
		outcome = charge_limited(outcome, &row, credit, cost, &rate, &remaining);
	else
		outcome = apikey_limit(outcome, &row, &rate);
	if (outcome != OUTCOME_MALFORMED && outcome != OUTCOME_NOT_FOUND)
		apikey_count(&row, outcome == OUTCOME_VALID);
	if (rate.limited && outcome == OUTCOME_VALID)
		set_rate_headers(&rate);

	switch (outcome)
	{
		case OUTCOME_VALID:
			identity_set(&row);
			break;
		case OUTCOME_RATE_LIMITED:
			raise_rate_limited(&rate);
			break;
		case OUTCOME_INSUFFICIENT_CREDITS:
			ereport(ERROR,
					(errcode(ERRCODE_PT402),
					 errmsg("not enough %s", text_to_cstring(credit)),
					 errdetail("This request costs %s; %s is left.",
							   numeric_normalize(credit_numeric(cost)),
							   numeric_normalize(credit_numeric(remaining))),
					 errhint("Add credits to the account, or wait for the key's quota to refill.")));
			break;
		case OUTCOME_MALFORMED:
			ereport(ERROR, (errcode(ERRCODE_PT401), errmsg("malformed api key")));
			break;
		case OUTCOME_NOT_FOUND:
			ereport(ERROR, (errcode(ERRCODE_PT401), errmsg("unknown api key")));
			break;
		case OUTCOME_REVOKED:
			ereport(ERROR, (errcode(ERRCODE_PT401), errmsg("api key has been revoked")));
			break;
		case OUTCOME_EXPIRED:
			ereport(ERROR, (errcode(ERRCODE_PT401), errmsg("api key has expired")));
			break;
		case OUTCOME_IP_NOT_ALLOWED:
			ereport(ERROR,
					(errcode(ERRCODE_PT403),
					 errmsg("api key is not allowed from this address"),
					 known ? errdetail("The request came from %s.",
									   DatumGetCString(DirectFunctionCall1(inet_out, addr)))
					 : errdetail("The client address is unknown.")));
			break;
		case OUTCOME_INSUFFICIENT_SCOPE:
			ereport(ERROR,
					(errcode(ERRCODE_PT403),
					 errmsg("api key lacks permission \"%s\"", text_to_cstring(permission)),
					 errdetail("Its scope \"%s\" does not grant it.",
							   TextDatumGetCString(row.scope))));
			break;
	}
	PG_RETURN_VOID();
}

/* The authenticated key's id, owner or scope; NULL outside an authenticated transaction. */
Datum
apikeys_auth_key_id(PG_FUNCTION_ARGS)
{
	if (!identity.set)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(identity.key_id));
}

Datum
apikeys_auth_owner(PG_FUNCTION_ARGS)
{
	if (!identity.set)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(identity.owner));
}

Datum
apikeys_auth_scope(PG_FUNCTION_ARGS)
{
	if (!identity.set)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(identity.scope));
}

/*
 * apikeys._auth_has_permission(permission): true if the transaction is
 * authenticated and its key's scope grants permission.  The HTTP functions
 * check their own permission with it, whatever route reached them.
 */
Datum
apikeys_auth_has_permission(PG_FUNCTION_ARGS)
{
	if (!identity.set || PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(scope_grants(CStringGetTextDatum(identity.scope), PG_GETARG_TEXT_PP(0)));
}

/*
 * emit_log_hook: a refused request (SQLSTATE PT401 or PT403, which PostgREST
 * answers with 401 and 403) is not written to the server log unless
 * apikeys.log_refusals is on, so that anyone with a garbage key cannot fill
 * the disk; when it is on, the statement is left out of the log line, so
 * that a key given as a literal never reaches the log.
 */
static void
refusal_log_hook(ErrorData *edata)
{
	if (edata->elevel == ERROR &&
		(edata->sqlerrcode == ERRCODE_PT401 || edata->sqlerrcode == ERRCODE_PT402 ||
		 edata->sqlerrcode == ERRCODE_PT403 ||
		 (edata->sqlerrcode == ERRCODE_PGRST && refusing)))
	{
		if (!apikeys_log_refusals)
			edata->output_to_server = false;
		edata->hide_stmt = true;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
identity_install_log_hook(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = refusal_log_hook;
}

/* The value of hex digit c, or -1. */
static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * apikeys._url_path_decode(path): the path with %XX escapes decoded, as
 * PostgREST decodes it before it picks the table or function; NULL if an
 * escape is malformed, or the result is not valid in the database encoding
 * or holds a NUL.  Routes are matched against what PostgREST will serve.
 */
Datum
apikeys_url_path_decode(PG_FUNCTION_ARGS)
{
	text	   *in = PG_GETARG_TEXT_PP(0);
	const char *s = VARDATA_ANY(in);
	int			len = VARSIZE_ANY_EXHDR(in);
	char	   *out = palloc(len + 1);
	int			n = 0;

	for (int i = 0; i < len; i++)
	{
		if (s[i] == '%')
		{
			int			hi = (i + 2 < len) ? hex_value(s[i + 1]) : -1;
			int			lo = (i + 2 < len) ? hex_value(s[i + 2]) : -1;

			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				PG_RETURN_NULL();
			out[n++] = (char) (hi * 16 + lo);
			i += 2;
		}
		else
			out[n++] = s[i];
	}
	out[n] = '\0';
	if (!pg_verifymbstr(out, n, true))
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out, n));
}
