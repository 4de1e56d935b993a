/*
 * apikeys.c
 *		Module initialisation: _PG_init, GUCs, the preload check.
 *
 * The library must be listed in shared_preload_libraries, because usage
 * counters live in shared memory that only the postmaster can set aside.
 * When it is instead loaded on first use, _PG_init still defines the GUCs
 * (so SET works) but every SQL function refuses with 55000 and a hint.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "apikeys.h"
#include "keyformat.h"

PG_MODULE_MAGIC;

char	   *apikeys_default_prefix = NULL;

/* Set in the postmaster by _PG_init and inherited by every backend. */
static bool apikeys_preloaded = false;

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

	MarkGUCPrefixReserved("apikeys");

	if (!process_shared_preload_libraries_in_progress)
		return;

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
