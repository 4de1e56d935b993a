/*
 * lookup.c
 *		Hashing and lookup for the validation hot path.
 *
 * Keys are found by a direct index scan on apikeys.keys(digest), the way the
 * catalogs are read: no parser, planner or executor, and no permission check,
 * so apikey_validate needs neither SECURITY DEFINER nor table privileges of
 * its caller (EXECUTE on the function is the gate).  Scans use the active
 * snapshot, so a revocation is seen exactly by the statements that start
 * after it commits, as with any query.
 *
 * Each backend caches the OIDs of the tables and indexes and the attribute
 * numbers it reads; a relcache invalidation of any of them (DDL, or DROP and
 * CREATE EXTENSION) clears the cache and it is looked up again on next use.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "common/cryptohash.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "lookup.h"

/* Where the rows live; valid only while 'valid' is true. */
typedef struct Catalog
{
	bool		valid;
	Oid			keys;
	Oid			keys_digest_idx;
	Oid			scopes;
	Oid			scopes_pkey;
	AttrNumber	k_id;
	AttrNumber	k_owner;
	AttrNumber	k_name;
	AttrNumber	k_digest;
	AttrNumber	k_scope;
	AttrNumber	k_ip_restrictions;
	AttrNumber	k_metadata;
	AttrNumber	k_expires_at;
	AttrNumber	k_revoked_at;
	AttrNumber	s_name;
	AttrNumber	s_permissions;
} Catalog;

static Catalog catalog;
static bool callback_registered = false;

/* Relcache callback: forget the cache when any relation of ours changes. */
static void
catalog_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == catalog.keys ||
		relid == catalog.keys_digest_idx || relid == catalog.scopes ||
		relid == catalog.scopes_pkey)
		catalog.valid = false;
}

/* Attribute number of column in rel, or an error naming what is missing. */
static AttrNumber
column(Oid rel, const char *name)
{
	AttrNumber	attnum = get_attnum(rel, name);

	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						name, get_rel_name(rel)),
				 errhint("The apikeys extension may be damaged; reinstall it.")));
	return attnum;
}

/* Relation apikeys.<name>, or an error saying the extension is missing. */
static Oid
relation(Oid nsp, const char *name)
{
	Oid			relid = get_relname_relid(name, nsp);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"apikeys.%s\" does not exist", name),
				 errhint("Run CREATE EXTENSION apikeys CASCADE in this database.")));
	return relid;
}

/* Fills the cache if it is not valid. */
static void
catalog_load(void)
{
	Oid			nsp;

	if (catalog.valid)
		return;
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(catalog_invalidate, (Datum) 0);
		callback_registered = true;
	}

	nsp = get_namespace_oid("apikeys", true);
	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_SCHEMA),
				 errmsg("schema \"apikeys\" does not exist"),
				 errhint("Run CREATE EXTENSION apikeys CASCADE in this database.")));

	catalog.keys = relation(nsp, "keys");
	catalog.keys_digest_idx = relation(nsp, "keys_digest_key");
	catalog.scopes = relation(nsp, "scopes");
	catalog.scopes_pkey = relation(nsp, "scopes_pkey");
	catalog.k_id = column(catalog.keys, "id");
	catalog.k_owner = column(catalog.keys, "owner");
	catalog.k_name = column(catalog.keys, "name");
	catalog.k_digest = column(catalog.keys, "digest");
	catalog.k_scope = column(catalog.keys, "scope");
	catalog.k_ip_restrictions = column(catalog.keys, "ip_restrictions");
	catalog.k_metadata = column(catalog.keys, "metadata");
	catalog.k_expires_at = column(catalog.keys, "expires_at");
	catalog.k_revoked_at = column(catalog.keys, "revoked_at");
	catalog.s_name = column(catalog.scopes, "name");
	catalog.s_permissions = column(catalog.scopes, "permissions");
	catalog.valid = true;
}

Oid
apikeys_keys_relid(void)
{
	catalog_load();
	return catalog.keys;
}

/* The snapshot a query in this statement would use. */
static Snapshot
statement_snapshot(void)
{
	return ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
}

void
apikey_digest(const char *key, size_t len, uint8 digest[PG_SHA256_DIGEST_LENGTH])
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) key, len) < 0 ||
		pg_cryptohash_final(ctx, digest, PG_SHA256_DIGEST_LENGTH) < 0)
	{
		pg_cryptohash_free(ctx);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute SHA-256 digest")));
	}
	pg_cryptohash_free(ctx);
}

bool
apikey_lookup(const uint8 digest[PG_SHA256_DIGEST_LENGTH], KeyRow *row)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData skey;
	HeapTuple	tuple;
	bytea	   *wanted;
	bool		found = false;

	catalog_load();

	wanted = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	SET_VARSIZE(wanted, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	memcpy(VARDATA(wanted), digest, PG_SHA256_DIGEST_LENGTH);

	rel = table_open(catalog.keys, AccessShareLock);
	ScanKeyInit(&skey, catalog.k_digest, BTEqualStrategyNumber, F_BYTEAEQ,
				PointerGetDatum(wanted));
	scan = systable_beginscan(rel, catalog.keys_digest_idx, true,
							  statement_snapshot(), 1, &skey);

	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		bytea	   *stored;
		Datum		d;

		/* the index compared the digests already; confirm in constant time */
		stored = DatumGetByteaPP(heap_getattr(tuple, catalog.k_digest, desc, &isnull));
		if (!isnull && VARSIZE_ANY_EXHDR(stored) == PG_SHA256_DIGEST_LENGTH &&
			timingsafe_bcmp(VARDATA_ANY(stored), digest, PG_SHA256_DIGEST_LENGTH) == 0)
		{
			found = true;
			row->keys_relid = catalog.keys;
			row->id = datumCopy(heap_getattr(tuple, catalog.k_id, desc, &isnull), false, -1);
			row->owner = datumCopy(heap_getattr(tuple, catalog.k_owner, desc, &isnull), false, -1);
			row->name = datumCopy(heap_getattr(tuple, catalog.k_name, desc, &isnull), false, -1);
			row->scope = datumCopy(heap_getattr(tuple, catalog.k_scope, desc, &isnull), false, -1);
			d = heap_getattr(tuple, catalog.k_ip_restrictions, desc, &isnull);
			row->ip_restrictions = isnull ? NULL : DatumGetArrayTypePCopy(d);
			d = heap_getattr(tuple, catalog.k_metadata, desc, &isnull);
			row->metadata = isnull ? NULL : DatumGetJsonbPCopy(d);
			d = heap_getattr(tuple, catalog.k_expires_at, desc, &row->has_expiry);
			row->has_expiry = !row->has_expiry;
			row->expires_at = row->has_expiry ? DatumGetTimestampTz(d) : 0;
			(void) heap_getattr(tuple, catalog.k_revoked_at, desc, &isnull);
			row->revoked = !isnull;
		}
	}

	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	pfree(wanted);
	return found;
}

ArrayType *
scope_permissions(Datum scope)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData skey;
	HeapTuple	tuple;
	ArrayType  *result = NULL;

	catalog_load();

	rel = table_open(catalog.scopes, AccessShareLock);
	/* text comparison needs the collation the index was built with */
	ScanKeyEntryInitialize(&skey, 0, catalog.s_name, BTEqualStrategyNumber,
						   InvalidOid,
						   TupleDescAttr(RelationGetDescr(rel), catalog.s_name - 1)->attcollation,
						   F_TEXTEQ, scope);
	scan = systable_beginscan(rel, catalog.scopes_pkey, true,
							  statement_snapshot(), 1, &skey);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, catalog.s_permissions,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			result = DatumGetArrayTypePCopy(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return result;
}
