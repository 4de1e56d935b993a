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
#include "ratelimit.h"

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
	OUTCOME_INSUFFICIENT_CREDITS,	/* apikey_charge only */
	OUTCOME_RATE_LIMITED
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
							AddressSource source, KeyRow *row, RateInfo *rate);

/*
 * apikey_check without the rate limits and the count: the caller applies
 * apikey_limit, then counts with apikey_count.
 */
extern Outcome apikey_decide(text *key, text *permission, Datum *addr,
							 AddressSource source, KeyRow *row);
/*
 * After a valid decision, the rate limits of the key and its owner: all
 * counted, or OUTCOME_RATE_LIMITED and none.  Other outcomes pass through;
 * *rate is filled for known keys.
 */
extern Outcome apikey_limit(Outcome outcome, const KeyRow *row, RateInfo *rate);
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

/* Columns of the validation record: 0.1's, then the rate limit's (0.2). */
#define VALIDATION_NATTS_0_1	8
#define VALIDATION_NATTS	11
/*
 * Fills the validation record's first natts columns (VALIDATION_NATTS, or
 * 0.1's 8 in a database not yet updated); row NULL: unknown key; rate NULL:
 * no limit.  Returns natts.
 */
extern int	validation_values(Outcome outcome, const KeyRow *row, const RateInfo *rate,
							  int natts, Datum *values, bool *nulls);

#endif							/* APIKEYS_VALIDATE_H */
