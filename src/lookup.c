/*
 * lookup.c
 *		Hashing and lookup for the validation hot path.
 *
 * Keys are found by a direct index scan on apikeys.keys(digest), the way the
 * catalogs are read: no parser, planner or executor, and no permission check,
 * so apikey_validate needs neither SECURITY DEFINER nor table privileges of
 * its caller (EXECUTE on the function is the gate).
 *
 * Each backend keeps what it read in a cache keyed by digest (and scopes'
 * permissions by name), bounded by apikeys.backend_cache_keys.  The cache
 * follows the syscache's rules:
 *	- Row-level triggers on apikeys.keys (the columns validation reads)
 *	  and apikeys.scopes (and TRUNCATE triggers) send a relcache
 *	  invalidation, also when logical replication applies the change,
 *	  which every backend receives when the changing transaction commits
 *	  (and the changing backend at its next command).  The relcache
 *	  callback marks the cache stale; it is emptied at the start of the
 *	  next lookup, never while a caller still holds pointers into it.
 *	- Every lookup first accepts pending invalidations, and a miss reads the
 *	  latest committed state, so a revocation is seen by every validation
 *	  that starts after the revoking transaction commits, in every session,
 *	  whatever the caller's isolation level.
 *	- A row read during a miss is cached only if no invalidation arrived
 *	  meanwhile and no write of the current transaction is involved.
 *
 * The OIDs and attribute numbers of our tables are cached too, and reloaded
 * after any invalidation of those relations (DDL, DROP/CREATE EXTENSION).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "commands/trigger.h"
#include "common/cryptohash.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "guc.h"
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

typedef struct CachedKey
{
	uint8		digest[PG_SHA256_DIGEST_LENGTH];	/* hash key */
	KeyRow		row;			/* datums allocated in cache_cxt */
} CachedKey;

typedef struct CachedScope
{
	char		name[NAMEDATALEN * 2];	/* hash key; longer names are not cached */
	ArrayType  *permissions;	/* in cache_cxt; NULL: no such scope */
} CachedScope;

static Catalog catalog;
static bool callback_registered = false;

static MemoryContext cache_cxt = NULL;
static HTAB *key_cache = NULL;
static HTAB *scope_cache = NULL;
static bool cache_stale = false;

/* Relcache callback: an invalidation of our relations makes everything stale. */
static void
catalog_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == catalog.keys ||
		relid == catalog.keys_digest_idx || relid == catalog.scopes ||
		relid == catalog.scopes_pkey)
	{
		catalog.valid = false;
		cache_stale = true;
	}
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

/* Fills the catalog cache if it is not valid. */
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

/* Empties the caches (creating them on first use). */
static void
cache_reset(void)
{
	HASHCTL		info;

	if (cache_cxt == NULL)
		cache_cxt = AllocSetContextCreate(TopMemoryContext, "apikeys key cache",
										  ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(cache_cxt);

	info.keysize = PG_SHA256_DIGEST_LENGTH;
	info.entrysize = sizeof(CachedKey);
	info.hcxt = cache_cxt;
	key_cache = hash_create("apikeys key cache", 256, &info,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	info.keysize = sizeof(((CachedScope *) NULL)->name);
	info.entrysize = sizeof(CachedScope);
	scope_cache = hash_create("apikeys scope cache", 16, &info,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	cache_stale = false;
}

/*
 * Brings the caches up to date with every committed change: takes pending
 * invalidations and empties the caches if any concerned our tables.
 */
static void
cache_begin(void)
{
	AcceptInvalidationMessages();
	catalog_load();
	if (key_cache == NULL || cache_stale)
		cache_reset();
}

/* True if the current transaction wrote this tuple version (or may have). */
static bool
written_by_us(HeapTuple tuple)
{
	HeapTupleHeader h = tuple->t_data;

	if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(h)))
		return true;
	if (h->t_infomask & HEAP_XMAX_IS_MULTI)
		return true;
	return TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmax(h));
}

/* Copies a by-reference datum into cxt, detoasted. */
static Datum
copy_varlena(Datum d, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Datum		copy = PointerGetDatum(PG_DETOAST_DATUM_COPY(d));

	MemoryContextSwitchTo(old);
	return copy;
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

/*
 * Reads the key with this digest from the table under the latest snapshot
 * into *row (datums allocated in cxt); false if there is none.  *cacheable
 * says whether the current transaction had no hand in the row read.
 */
static bool
read_key(const uint8 *digest, KeyRow *row, MemoryContext cxt, bool *cacheable)
{
	Relation	rel;
	Relation	idx;
	SysScanDesc scan;
	ScanKeyData skey;
	HeapTuple	tuple;
	bytea	   *wanted;
	bool		found = false;

	wanted = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	SET_VARSIZE(wanted, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	memcpy(VARDATA(wanted), digest, PG_SHA256_DIGEST_LENGTH);

	/* lock both first: lock acquisition accepts invalidations, the snapshot follows */
	rel = table_open(catalog.keys, AccessShareLock);
	idx = index_open(catalog.keys_digest_idx, AccessShareLock);
	ScanKeyInit(&skey, catalog.k_digest, BTEqualStrategyNumber, F_BYTEAEQ,
				PointerGetDatum(wanted));
	scan = systable_beginscan(rel, catalog.keys_digest_idx, true,
							  GetLatestSnapshot(), 1, &skey);

	*cacheable = true;
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
			TransactionId xmin = HeapTupleHeaderGetRawXmin(tuple->t_data);

			found = true;
			*cacheable = !written_by_us(tuple);
			row->creator_xid = TransactionIdIsCurrentTransactionId(xmin) ?
				xmin : InvalidTransactionId;
			row->keys_relid = catalog.keys;
			row->id = copy_varlena(heap_getattr(tuple, catalog.k_id, desc, &isnull), cxt);
			row->owner = copy_varlena(heap_getattr(tuple, catalog.k_owner, desc, &isnull), cxt);
			row->name = copy_varlena(heap_getattr(tuple, catalog.k_name, desc, &isnull), cxt);
			row->scope = copy_varlena(heap_getattr(tuple, catalog.k_scope, desc, &isnull), cxt);
			d = heap_getattr(tuple, catalog.k_ip_restrictions, desc, &isnull);
			row->ip_restrictions = isnull ? NULL : DatumGetArrayTypeP(copy_varlena(d, cxt));
			d = heap_getattr(tuple, catalog.k_metadata, desc, &isnull);
			row->metadata = isnull ? NULL : DatumGetJsonbP(copy_varlena(d, cxt));
			d = heap_getattr(tuple, catalog.k_expires_at, desc, &isnull);
			row->has_expiry = !isnull;
			row->expires_at = isnull ? 0 : DatumGetTimestampTz(d);
			(void) heap_getattr(tuple, catalog.k_revoked_at, desc, &isnull);
			row->revoked = !isnull;
		}
	}
	else
		*cacheable = false;		/* absence is never cached */

	systable_endscan(scan);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	pfree(wanted);
	return found;
}

/*
 * Finds the key with this digest as of the latest committed state (plus the
 * current transaction's own changes); false if none.  The row's datums stay
 * valid until the next call.
 */
bool
apikey_lookup(const uint8 digest[PG_SHA256_DIGEST_LENGTH], KeyRow *row)
{
	CachedKey  *entry;
	bool		cacheable;

	cache_begin();

	entry = hash_search(key_cache, digest, HASH_FIND, NULL);
	if (entry)
	{
		*row = entry->row;
		return true;
	}

	if (!read_key(digest, row, CurrentMemoryContext, &cacheable))
		return false;

	if (cacheable && !cache_stale && apikeys_backend_cache_keys > 0)
	{
		if (hash_get_num_entries(key_cache) >= apikeys_backend_cache_keys)
			cache_reset();
		entry = hash_search(key_cache, digest, HASH_ENTER, NULL);
		entry->row = *row;
		entry->row.id = copy_varlena(row->id, cache_cxt);
		entry->row.owner = copy_varlena(row->owner, cache_cxt);
		entry->row.name = copy_varlena(row->name, cache_cxt);
		entry->row.scope = copy_varlena(row->scope, cache_cxt);
		if (row->ip_restrictions)
			entry->row.ip_restrictions =
				DatumGetArrayTypeP(copy_varlena(PointerGetDatum(row->ip_restrictions), cache_cxt));
		if (row->metadata)
			entry->row.metadata =
				DatumGetJsonbP(copy_varlena(PointerGetDatum(row->metadata), cache_cxt));
	}
	return true;
}

/* Reads scope's permissions from the table into cxt; NULL if no such scope. */
static ArrayType *
read_scope(Datum scope, MemoryContext cxt)
{
	Relation	rel;
	Relation	idx;
	SysScanDesc scan;
	ScanKeyData skey;
	HeapTuple	tuple;
	ArrayType  *result = NULL;

	rel = table_open(catalog.scopes, AccessShareLock);
	idx = index_open(catalog.scopes_pkey, AccessShareLock);
	/* text comparison needs the collation the index was built with */
	ScanKeyEntryInitialize(&skey, 0, catalog.s_name, BTEqualStrategyNumber,
						   InvalidOid,
						   TupleDescAttr(RelationGetDescr(rel), catalog.s_name - 1)->attcollation,
						   F_TEXTEQ, scope);
	scan = systable_beginscan(rel, catalog.scopes_pkey, true,
							  GetLatestSnapshot(), 1, &skey);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, catalog.s_permissions,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			result = DatumGetArrayTypeP(copy_varlena(d, cxt));
	}
	systable_endscan(scan);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	return result;
}

ArrayType *
scope_permissions(Datum scope)
{
	char	   *name = TextDatumGetCString(scope);
	CachedScope *entry;
	ArrayType  *result;

	if (key_cache == NULL)
		cache_begin();
	catalog_load();

	if (strlen(name) >= sizeof(entry->name))
		return read_scope(scope, CurrentMemoryContext);

	entry = cache_stale ? NULL : hash_search(scope_cache, name, HASH_FIND, NULL);
	if (entry)
		return entry->permissions;

	result = read_scope(scope, CurrentMemoryContext);
	if (!cache_stale && apikeys_backend_cache_keys > 0)
	{
		entry = hash_search(scope_cache, name, HASH_ENTER, NULL);
		entry->permissions = result ?
			DatumGetArrayTypeP(copy_varlena(PointerGetDatum(result), cache_cxt)) : NULL;
	}
	return result;
}

PG_FUNCTION_INFO_V1(apikeys_invalidate_cache);

/*
 * Row-level (and TRUNCATE) trigger on apikeys.keys and apikeys.scopes: every
 * backend drops its cached keys and scopes when this transaction commits.
 * Row-level so that logical replication's apply worker fires it too.
 */
Datum
apikeys_invalidate_cache(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("apikeys._invalidate_cache() must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

void
owner_query_run(Oid relid, SPIPlanPtr *plan, const char *query, int nargs, Oid *argtypes,
				Datum *args, long count, OwnerQuery *q)
{
	HeapTuple	rel = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(rel))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(rel))->relowner;
	ReleaseSysCache(rel);
	GetUserIdAndSecContext(&q->save_userid, &q->save_sec_context);
	SetUserIdAndSecContext(owner, q->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	SPI_connect();
	if (*plan == NULL)
	{
		*plan = SPI_prepare(query, nargs, argtypes);
		if (*plan == NULL || SPI_keepplan(*plan) != 0)
			elog(ERROR, "could not prepare a query on relation %u", relid);
	}
	if (SPI_execute_snapshot(*plan, args, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, count) != SPI_OK_SELECT)
		elog(ERROR, "could not query relation %u", relid);
}

void
owner_query_end(const OwnerQuery *q)
{
	SPI_finish();
	SetUserIdAndSecContext(q->save_userid, q->save_sec_context);
}
