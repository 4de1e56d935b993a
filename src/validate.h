/*
 * validate.h
 *		The validation decision shared by apikey_validate and the HTTP
 *		pre-request: which outcome a key gets, with the call counted.
 */
#ifndef APIKEYS_VALIDATE_H
#define APIKEYS_VALIDATE_H

#include "fmgr.h"
#include "access/tupdesc.h"

#include "lookup.h"

/* Outcome codes, in the order the checks run. */
typedef enum Outcome
{
	OUTCOME_VALID,
	OUTCOME_MALFORMED,
	OUTCOME_NOT_FOUND,
	OUTCOME_REVOKED,
	OUTCOME_EXPIRED,
	OUTCOME_IP_NOT_ALLOWED,
	OUTCOME_INSUFFICIENT_SCOPE,
	OUTCOME_INSUFFICIENT_CREDITS	/* apikey_charge only */
} Outcome;

extern const char *const outcome_codes[];

/* How to learn the client's address when the key has an allowlist. */
typedef enum AddressSource
{
	ADDRESS_GIVEN,				/* the address passed in (NULL: unknown) */
	ADDRESS_GIVEN_OR_CONNECTION /* the address passed in, else inet_client_addr() */
} AddressSource;

/*
 * Checks key (NULL counts as malformed) for permission (NULL: none) from
 * address addr (NULL: see source).  Fills *row when the key exists, and
 * counts the call of every existing key in the usage counters.
 */
extern Outcome apikey_check(text *key, text *permission, Datum *addr,
							AddressSource source, KeyRow *row);

/* apikey_check without the count: the caller counts with apikey_count. */
extern Outcome apikey_decide(text *key, text *permission, Datum *addr,
							 AddressSource source, KeyRow *row);
/* Counts one call of the existing key row, valid or rejected. */
extern void apikey_count(const KeyRow *row, bool valid);

/*
 * The blessed descriptor of a C function's composite result, kept per
 * backend for the function OID it was built for (each execution of a
 * prepared statement gets a new FmgrInfo; a re-created extension has new
 * OIDs).  One static cache per function.
 */
typedef struct ResultDescCache
{
	Oid			fn_oid;
	TupleDesc	tupdesc;
} ResultDescCache;

extern TupleDesc cached_result_tupdesc(FunctionCallInfo fcinfo, ResultDescCache *cache);

/* Number of columns of the validation record. */
#define VALIDATION_NATTS	8
/* Fills the validation record's columns (row NULL: unknown key); returns their number. */
extern int	validation_values(Outcome outcome, const KeyRow *row, Datum *values, bool *nulls);

#endif							/* APIKEYS_VALIDATE_H */
