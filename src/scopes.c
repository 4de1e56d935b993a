/*
 * scopes.c
 *		What a scope grants: the permission rules in one place.
 *
 * A scope is a row of apikeys.scopes, a name and an array of permission
 * patterns; scope_match.c (pure C) decides whether one pattern grants one
 * permission, and lookup.c reads (and caches) a scope's patterns.  Here:
 * whether a scope grants a permission (validation), whether one scope
 * covers another (minting keys over HTTP), and the check that a scope
 * exists (creating keys).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "keyformat.h"
#include "lookup.h"
#include "scope_match.h"
#include "scopes.h"

PG_FUNCTION_INFO_V1(apikeys_scope_covers);

bool
scope_grants(Datum scope, text *permission)
{
	ArrayType  *patterns = scope_permissions(scope);
	Datum	   *elems;
	bool	   *elemnulls;
	int			n;

	if (patterns == NULL)
		return false;
	deconstruct_array(patterns, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elemnulls, &n);
	for (int i = 0; i < n; i++)
	{
		text	   *pattern;

		if (elemnulls[i])
			continue;
		pattern = DatumGetTextPP(elems[i]);
		if (scope_pattern_grants(VARDATA_ANY(pattern), VARSIZE_ANY_EXHDR(pattern),
								 VARDATA_ANY(permission), VARSIZE_ANY_EXHDR(permission)))
			return true;
	}
	return false;
}

/*
 * apikeys._scope_covers(granting, target): true if scope granting grants
 * every permission of scope target (NULL if target does not exist).
 */
Datum
apikeys_scope_covers(PG_FUNCTION_ARGS)
{
	ArrayType  *wanted = scope_permissions(PG_GETARG_DATUM(1));
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (wanted == NULL)
		PG_RETURN_NULL();
	deconstruct_array(wanted, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i] && !scope_grants(PG_GETARG_DATUM(0), DatumGetTextPP(elems[i])))
			PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(true);
}

/* Raises 22023 for an unknown scope, listing the valid ones (SPI connected). */
void
scope_require_exists(Datum scope)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {scope};
	char	   *valid = NULL;
	char	   *name;

	/* the lock keeps the scope from being deleted before this key commits */
	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT FROM apikeys.scopes s"
						   " WHERE s.name OPERATOR(pg_catalog.=) $1 FOR KEY SHARE",
						   1, argtypes);
		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the scope lookup: %s",
				 SPI_result_code_string(SPI_result));
	}
	if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up scope");
	if (SPI_processed > 0)
		return;

	if (SPI_execute("SELECT pg_catalog.string_agg(s.name, ', ' ORDER BY s.name)"
					" FROM apikeys.scopes s", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		valid = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

	/* name the scope, unless it is too long or could be a key given by mistake */
	name = TextDatumGetCString(scope);
	if (strlen(name) > 64 || apikey_may_be_key(name))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown scope (valid scopes: %s)", valid ? valid : "none"),
				 errdetail("The scope given is not shown: it is too long or looks like an api key."),
				 errhint("Add a scope with INSERT INTO apikeys.scopes (name, permissions).")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown scope \"%s\" (valid scopes: %s)", name, valid ? valid : "none"),
			 errhint("Add a scope with INSERT INTO apikeys.scopes (name, permissions).")));
}
