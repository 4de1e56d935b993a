/*
 * guc.c
 *		The apikeys settings and the preload check.
 *
 * Every GUC variable is defined here, initialised from its default in
 * guc.h, so a default is written once.  The session GUCs (default_prefix,
 * backend_cache_keys) are defined whenever the library loads; the server
 * GUCs only when it is preloaded, since only then can they take effect.
 * The "apikeys." prefix is reserved either way, so a misspelt setting is
 * refused.
 *
 * The library must be in shared_preload_libraries: counters live in shared
 * memory that only the postmaster can set aside.  Loaded on first use
 * instead, every SQL function refuses with 55000 and a hint.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "guc.h"
#include "keyformat.h"

char	   *apikeys_default_prefix = NULL;
int			apikeys_backend_cache_keys = DEFAULT_BACKEND_CACHE_KEYS;
int			apikeys_trusted_proxies = DEFAULT_TRUSTED_PROXIES;
bool		apikeys_log_refusals = DEFAULT_LOG_REFUSALS;
int			apikeys_max_tracked_keys = DEFAULT_MAX_TRACKED_KEYS;
int			apikeys_max_credit_pools = DEFAULT_MAX_CREDIT_POOLS;
int			apikeys_credit_lease = DEFAULT_CREDIT_LEASE;
int			apikeys_max_ratelimit_states = DEFAULT_MAX_RATELIMIT_STATES;
int			apikeys_flush_interval = DEFAULT_FLUSH_INTERVAL_MS;
int			apikeys_expiry_interval = DEFAULT_EXPIRY_INTERVAL_S;
int			apikeys_usage_retention_days = DEFAULT_USAGE_RETENTION_DAYS;
char	   *apikeys_primary_conninfo = NULL;

/* Set in the postmaster by _PG_init and inherited by every backend. */
static bool apikeys_preloaded = false;

PG_FUNCTION_INFO_V1(apikeys_assert_preloaded);

/* Check hook for apikeys.default_prefix: the key prefix rules apply. */
static bool
check_default_prefix(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || !apikey_prefix_is_valid(*newval, strlen(*newval)))
	{
		GUC_check_errdetail("A key prefix is 1 to %d characters of a-z, 0-9 and underscore.",
							APIKEY_PREFIX_MAX);
		return false;
	}
	return true;
}

/* The GUCs that only a preloaded library can honour. */
static void
define_server_gucs(void)
{
	DefineCustomIntVariable("apikeys.max_tracked_keys",
							"Capacity of the shared-memory usage counters (key-days between flushes).",
							"When full, validations wait for a flush instead of losing counts.",
							&apikeys_max_tracked_keys,
							DEFAULT_MAX_TRACKED_KEYS, 100, 10000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.max_credit_pools",
							"Capacity of the shared-memory credit table (balances and quotas in use, and per-key spend counters).",
							"When full, idle pools are handed back to their rows; a charge waits for that, never overdraws.",
							&apikeys_max_credit_pools,
							DEFAULT_MAX_CREDIT_POOLS, 100, 10000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.max_ratelimit_states",
							"Capacity of the shared-memory rate limit windows (one per limit in use).",
							"When full, a limit without a window is not counted (looser, never stricter) until the worker frees windows that have passed.",
							&apikeys_max_ratelimit_states,
							DEFAULT_MAX_RATELIMIT_STATES, 100, 10000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.credit_lease",
							"Credits the worker moves from a balance or quota row to shared memory at a time.",
							"Also the most unspent credits a crash can cost an owner per balance (written off, audited).",
							&apikeys_credit_lease,
							DEFAULT_CREDIT_LEASE, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.flush_interval",
							"Time between flushes of usage counters to apikeys.usage.",
							"Also the most usage a crash can lose.",
							&apikeys_flush_interval,
							DEFAULT_FLUSH_INTERVAL_MS, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.expiry_interval",
							"Time between passes that mark keys past expires_at as expired.",
							"Validation refuses expired keys at once regardless.",
							&apikeys_expiry_interval,
							DEFAULT_EXPIRY_INTERVAL_S, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.trusted_proxies",
							"Number of reverse proxies in front of PostgREST whose X-Forwarded-For entries are trusted.",
							"The client address is the entry this many places from the right; 0 means the address is always unknown.",
							&apikeys_trusted_proxies,
							DEFAULT_TRUSTED_PROXIES, 0, 16,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomStringVariable("apikeys.primary_conninfo",
							   "Connection string a hot standby's worker ships usage counts to.",
							   "Empty: the server's primary_conninfo. dbname is always the worker's own database.",
							   &apikeys_primary_conninfo,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.usage_retention_days",
							"Usage rows older than this many days are deleted.",
							NULL,
							&apikeys_usage_retention_days,
							DEFAULT_USAGE_RETENTION_DAYS, 90, 36500,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
}

void
apikeys_define_gucs(bool preloading)
{
	DefineCustomStringVariable("apikeys.default_prefix",
							   "Prefix of keys created without an explicit prefix.",
							   "1 to 32 characters of a-z, 0-9 and underscore.",
							   &apikeys_default_prefix,
							   DEFAULT_PREFIX,
							   PGC_USERSET,
							   0,
							   check_default_prefix, NULL, NULL);
	DefineCustomIntVariable("apikeys.backend_cache_keys",
							"Keys each backend keeps cached for validation (0 disables the cache).",
							"About 300 bytes per cached key; changes to keys and scopes invalidate it at commit.",
							&apikeys_backend_cache_keys,
							DEFAULT_BACKEND_CACHE_KEYS, 0, 1000000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("apikeys.log_refusals",
							 "Writes refused requests (SQLSTATE PT401 and PT403) to the server log.",
							 "Off by default, so that requests with bad keys cannot fill the log; the line never holds the statement.",
							 &apikeys_log_refusals,
							 DEFAULT_LOG_REFUSALS,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
	if (preloading)
		define_server_gucs();
	MarkGUCPrefixReserved("apikeys");
}

void
apikeys_mark_preloaded(void)
{
	apikeys_preloaded = true;
}

void
apikeys_require_preload(void)
{
	if (!apikeys_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apikeys must be loaded via shared_preload_libraries"),
				 errhint("Add apikeys to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* SQL-callable form of the preload check, for the SQL-language functions. */
Datum
apikeys_assert_preloaded(PG_FUNCTION_ARGS)
{
	apikeys_require_preload();
	PG_RETURN_VOID();
}
