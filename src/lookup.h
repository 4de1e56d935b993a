/*
 * lookup.h
 *		The validation hot path's data access: hashing a key and finding its
 *		row by digest, and a scope's permission patterns by name.
 */
#ifndef APIKEYS_LOOKUP_H
#define APIKEYS_LOOKUP_H

#include "common/sha2.h"
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

#endif							/* APIKEYS_LOOKUP_H */
