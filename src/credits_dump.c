/*
 * credits_dump.c
 *		The credit table across a clean restart.
 *
 * At postmaster exit after a clean shutdown (never after a crash or an
 * immediate stop, which the control file tells apart) every entry is written to
 * pg_stat/apikeys_credits.stat, and read back, then the file removed, when
 * shared memory is next initialised.  A restored pool keeps its lease and
 * stays reconciled with its row, so a clean restart changes no balance.
 * After a crash there is no file: the worker meets each pool unreconciled
 * and writes off what its row says was leased (credits.c).  Every process
 * has ended when the file is written, so nothing is reserved, settling or
 * being recalled; whatever an entry still shows there is folded back
 * (reserved and recalled credits to available, settling to spent).
 */
#include "postgres.h"

#include <unistd.h>

#include "common/controldata_utils.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"

#include "credits_internal.h"
#include "guc.h"

#define CREDITS_DUMP_FILE		PGSTAT_STAT_PERMANENT_DIRECTORY "/apikeys_credits.stat"
#define CREDITS_DUMP_MAGIC		0x41504b43	/* "APKC" */
#define CREDITS_DUMP_VERSION	1

typedef struct CreditDumpEntry
{
	CreditKey	key;
	int64		available;
	int64		spent;
	int64		leased;
	int64		table_available;
	int32		generation;
	TimestampTz period_end;
	bool		is_quota;
	bool		synced;
	TimestampTz last_used;
} CreditDumpEntry;

static void credits_shmem_shutdown(int code, Datum arg);
static void credits_load(void);

void
credits_dump_setup(bool restore)
{
	on_shmem_exit(credits_shmem_shutdown, (Datum) 0);
	if (restore)
		credits_load();
}

/*
 * True if the server stopped cleanly: its last checkpoint was a shutdown
 * checkpoint.  An immediate stop (pg_ctl -m immediate) ends the postmaster
 * with code 0 too, but with processes killed mid-operation: their entries
 * must not be saved (a committed charge not yet marked spent would come
 * back as available).
 */
static bool
stopped_cleanly(void)
{
	bool		crc_ok;
	ControlFileData *control = get_controlfile(DataDir, &crc_ok);
	bool		clean = crc_ok &&
		(control->state == DB_SHUTDOWNED || control->state == DB_SHUTDOWNED_IN_RECOVERY);

	pfree(control);
	return clean;
}

static void
credits_shmem_shutdown(int code, Datum arg)
{
	FILE	   *file;
	HASH_SEQ_STATUS seq;
	CreditEntry *e;
	uint32		header[2] = {CREDITS_DUMP_MAGIC, CREDITS_DUMP_VERSION};
	int32		count;

	if (code != 0 || credits_shared == NULL || credits_hash == NULL)
		return;
	if (!stopped_cleanly())
	{
		ereport(LOG,
				(errmsg("apikeys did not save its credit leases: the server did not shut down cleanly"),
				 errdetail("Unspent leased credits are written off, and audited, when each balance is next charged.")));
		return;
	}

	file = AllocateFile(CREDITS_DUMP_FILE ".tmp", PG_BINARY_W);
	if (file == NULL)
		goto error;
	count = (int32) hash_get_num_entries(credits_hash);
	if (fwrite(header, sizeof(header), 1, file) != 1 ||
		fwrite(&count, sizeof(count), 1, file) != 1)
		goto error;

	hash_seq_init(&seq, credits_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		CreditDumpEntry out;

		memset(&out, 0, sizeof(out));
		out.key = e->key;
		out.available = e->available + e->recalling +
			(credit_key_is_pool(&e->key) ? e->reserved : 0);
		out.spent = e->spent + e->settling;
		out.leased = e->leased;
		out.table_available = e->table_available;
		out.generation = e->generation;
		out.period_end = e->period_end;
		out.is_quota = e->is_quota;
		out.synced = e->synced;
		out.last_used = e->last_used;
		if (fwrite(&out, sizeof(out), 1, file) != 1)
		{
			hash_seq_term(&seq);
			goto error;
		}
	}
	if (FreeFile(file))
	{
		file = NULL;
		goto error;
	}
	(void) durable_rename(CREDITS_DUMP_FILE ".tmp", CREDITS_DUMP_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("could not write file \"%s\": %m", CREDITS_DUMP_FILE ".tmp")));
	if (file)
		FreeFile(file);
	unlink(CREDITS_DUMP_FILE ".tmp");
}

static void
credits_load(void)
{
	FILE	   *file = AllocateFile(CREDITS_DUMP_FILE, PG_BINARY_R);
	uint32		header[2];
	int32		count;
	int32		lost = 0;

	if (file == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", CREDITS_DUMP_FILE)));
		return;
	}
	if (fread(header, sizeof(header), 1, file) != 1 ||
		header[0] != CREDITS_DUMP_MAGIC || header[1] != CREDITS_DUMP_VERSION ||
		fread(&count, sizeof(count), 1, file) != 1 || count < 0)
	{
		ereport(LOG,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("ignoring invalid file \"%s\"", CREDITS_DUMP_FILE)));
		goto done;
	}
	for (int32 i = 0; i < count; i++)
	{
		CreditDumpEntry in;
		CreditEntry *e;
		bool		found;

		if (fread(&in, sizeof(in), 1, file) != 1)
		{
			ereport(LOG,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("file \"%s\" is truncated", CREDITS_DUMP_FILE)));
			break;
		}
		if (hash_get_num_entries(credits_hash) >= apikeys_max_credit_pools)
		{
			/* the worker writes off such a pool's lease when it meets it again */
			lost++;
			continue;
		}
		e = hash_search(credits_hash, &in.key, HASH_ENTER, &found);
		credit_entry_init(e);
		e->available = in.available;
		e->spent = in.spent;
		e->leased = in.leased;
		e->table_available = in.table_available;
		e->generation = in.generation;
		e->period_end = in.period_end;
		e->is_quota = in.is_quota;
		e->synced = in.synced;
		e->last_used = in.last_used;
	}
	if (lost > 0)
		ereport(WARNING,
				(errmsg("apikeys could not restore %d credit entries at startup", lost),
				 errdetail("apikeys.max_credit_pools is smaller than the number of entries saved at shutdown; their leases will be written off."),
				 errhint("Raise apikeys.max_credit_pools to at least %d.",
						 apikeys_max_credit_pools + lost)));
done:
	FreeFile(file);
	unlink(CREDITS_DUMP_FILE);
}
