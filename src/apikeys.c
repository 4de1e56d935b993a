/*
 * apikeys.c
 *		Module initialisation: _PG_init, GUCs, shared memory hooks, the
 *		preload check.
 *
 * The library must be listed in shared_preload_libraries, because usage
 * counters live in shared memory that only the postmaster can set aside.
 * When it is instead loaded on first use, _PG_init still defines the
 * session GUCs (so SET works) but every SQL function refuses with 55000 and
 * a hint.  Under pg_upgrade (IsBinaryUpgrade) no worker is started.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "apikeys.h"
#include "keyformat.h"
#include "lookup.h"
#include "usage.h"
#include "worker.h"

PG_MODULE_MAGIC;

char	   *apikeys_default_prefix = NULL;

/* Set in the postmaster by _PG_init and inherited by every backend. */
static bool apikeys_preloaded = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

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

/* Reserves shared memory and the two LWLocks (counters, worker slots). */
static void
apikeys_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(add_size(usage_shmem_size(), worker_shmem_size()));
	RequestNamedLWLockTranche("apikeys", 2);
}

/* Attaches to (or creates) the shared state. */
static void
apikeys_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	usage_shmem_startup();
	worker_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

/* The GUCs that only a preloaded library can honour. */
static void
define_server_gucs(void)
{
	DefineCustomIntVariable("apikeys.max_tracked_keys",
							"Capacity of the shared-memory usage counters (key-days between flushes).",
							"When full, validations wait for a flush instead of losing counts.",
							&apikeys_max_tracked_keys,
							100000, 100, 10000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.flush_interval",
							"Time between flushes of usage counters to apikeys.usage.",
							"Also the most usage a crash can lose.",
							&apikeys_flush_interval,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.expiry_interval",
							"Time between passes that mark keys past expires_at as expired.",
							"Validation refuses expired keys at once regardless.",
							&apikeys_expiry_interval,
							60, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.trusted_proxies",
							"Number of reverse proxies in front of PostgREST whose X-Forwarded-For entries are trusted.",
							"The client address is the entry this many places from the right; 0 means the address is always unknown.",
							&apikeys_trusted_proxies,
							1, 0, 16,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.usage_retention_days",
							"Usage rows older than this many days are deleted.",
							NULL,
							&apikeys_usage_retention_days,
							400, 90, 36500,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
}

void
_PG_init(void)
{
	DefineCustomStringVariable("apikeys.default_prefix",
							   "Prefix of keys created without an explicit prefix.",
							   "1 to 32 characters of a-z, 0-9 and underscore.",
							   &apikeys_default_prefix,
							   "ak",
							   PGC_USERSET,
							   0,
							   check_default_prefix, NULL, NULL);
	DefineCustomIntVariable("apikeys.backend_cache_keys",
							"Keys each backend keeps cached for validation (0 disables the cache).",
							"About 300 bytes per cached key; changes to keys and scopes invalidate it at commit.",
							&apikeys_backend_cache_keys,
							16384, 0, 1000000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
	{
		MarkGUCPrefixReserved("apikeys");
		return;
	}

	define_server_gucs();
	MarkGUCPrefixReserved("apikeys");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = apikeys_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = apikeys_shmem_startup;
	apikeys_install_ddl_hooks();
	if (!IsBinaryUpgrade)
		apikeys_register_launcher();

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
