/*
 * lookup.h
 *		The validation hot path's data access: hashing a key and finding its
 *		row by digest, and a scope's permission patterns by name.
 */
#ifndef APIKEYS_LOOKUP_H
#define APIKEYS_LOOKUP_H

#include "common/sha2.h"
#include "executor/spi.h"
#include "datatype/timestamp.h"
#include "utils/array.h"
#include "utils/jsonb.h"

/* What validation needs of one row of apikeys.keys, copied out of the buffer. */
typedef struct KeyRow
{
	Oid			keys_relid;		/* the table it came from */
	Datum		id;				/* text */
	Datum		owner;			/* text */
	Datum		name;			/* text */
	Datum		scope;			/* text */
	ArrayType  *ip_restrictions;	/* cidr[], possibly empty */
	Jsonb	   *metadata;
	bool		has_expiry;
	TimestampTz expires_at;
	bool		revoked;
	TransactionId creator_xid;	/* the row's inserting (sub)transaction if it
								 * is the current transaction's, else invalid */
} KeyRow;

/* SHA-256 of len bytes of key into digest. */
extern void apikey_digest(const char *key, size_t len,
						  uint8 digest[PG_SHA256_DIGEST_LENGTH]);

/*
 * Finds the key with this digest as of the latest committed state (and the
 * current transaction's own changes); false if none.  The row's datums stay
 * valid until the next call.
 */
extern bool apikey_lookup(const uint8 digest[PG_SHA256_DIGEST_LENGTH], KeyRow *row);

/* OID of apikeys.keys in this database (errors if the extension is missing). */
extern Oid	apikeys_keys_relid(void);

/* The permission patterns of scope (text datum) as a text[]; NULL if no such scope.
 * Valid until the next apikey_lookup. */
extern ArrayType *scope_permissions(Datum scope);

/*
 * A query on one of the extension's tables run as the table's owner, as a
 * SECURITY DEFINER function would, for functions whose only gate is
 * EXECUTE (apikey_validate, apikey_charge); with the latest snapshot, so
 * that a change committed during a REPEATABLE READ transaction is seen.
 * owner_query_run prepares *plan once (kept), runs it with args and leaves
 * SPI connected for the caller to read SPI_tuptable; owner_query_end
 * disconnects and restores the caller.  An error restores the caller's
 * identity with the (sub)transaction's abort.
 */
typedef struct OwnerQuery
{
	Oid			save_userid;
	int			save_sec_context;
} OwnerQuery;

extern void owner_query_run(Oid relid, SPIPlanPtr *plan, const char *query, int nargs,
							Oid *argtypes, Datum *args, long count, OwnerQuery *q);
extern void owner_query_end(const OwnerQuery *q);

#endif							/* APIKEYS_LOOKUP_H */
