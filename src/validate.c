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
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inet.h"

#include "keyformat.h"
#include "scope_match.h"
#include "usage.h"
#include "validate.h"

const char *const outcome_codes[] = {
	"valid", "malformed", "not_found", "revoked", "expired",
	"ip_not_allowed", "insufficient_scope"
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

Outcome
apikey_check(text *key, text *permission, Datum *addr, AddressSource source,
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

	/* every validation of a known key is counted, valid or rejected */
	usage_count(row->keys_relid, row->id, outcome == OUTCOME_VALID, now, row->creator_xid);
	return outcome;
}
