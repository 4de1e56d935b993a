/*
 * usage_dump.c
 *		The counter table across a clean restart.
 *
 * At postmaster exit (never after a crash) the counters not yet flushed,
 * with any unsettled flush marks, are written to
 * pg_stat/apikeys_usage.stat, and read back and the file removed when
 * shared memory is next initialised.  After a crash the counts since the
 * last flush are lost.  The file carries a magic number and a version; a
 * file of another version or a damaged one is ignored with a LOG message.
 */
#include "postgres.h"

#include <unistd.h>

#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"

#include "guc.h"
#include "usage_internal.h"

#define USAGE_DUMP_FILE		PGSTAT_STAT_PERMANENT_DIRECTORY "/apikeys_usage.stat"
#define USAGE_DUMP_MAGIC	0x41504b55	/* "APKU" */
#define USAGE_DUMP_VERSION	4	/* 4 adds the shipping state and ship_batch;
									 * 3 adds creator_xid; 2 (0.1) is still read */

/* On-disk form of one entry in the shutdown dump. */
typedef struct UsageDumpEntry
{
	UsageKey	key;
	uint64		calls;
	uint64		rejected;
	TimestampTz last_used;
	TimestampTz flushed_last_used;
	TransactionId flush_xid;
	uint32		flushing_calls;
	uint32		flushing_rejected;
	TransactionId creator_xid;	/* version 3: a prepared transaction's keys */
	uint64		ship_batch;		/* version 4: a standby's unconfirmed batch */
} UsageDumpEntry;

/* Version 3's entry: version 4's without ship_batch. */
#define USAGE_DUMP_ENTRY_V3	offsetof(UsageDumpEntry, ship_batch)

/* Version 4's header, after the magic and version: a standby's shipping state. */
typedef struct UsageDumpShipping
{
	pg_uuid_t	source;
	pg_uuid_t	prev_source;
	uint64		source_from;
	uint64		next_batch;
	uint64		dropped;
} UsageDumpShipping;

/* An entry of version 2 (apikeys 0.1): the same fields but the last. */
typedef struct UsageDumpEntryV2
{
	UsageKey	key;
	uint64		calls;
	uint64		rejected;
	TimestampTz last_used;
	TimestampTz flushed_last_used;
	TransactionId flush_xid;
	uint32		flushing_calls;
	uint32		flushing_rejected;
} UsageDumpEntryV2;

#define USAGE_DUMP_ENTRY_V2	sizeof(UsageDumpEntryV2)

static void usage_shmem_shutdown(int code, Datum arg);
static void usage_load(void);

void
usage_dump_setup(bool restore)
{
	on_shmem_exit(usage_shmem_shutdown, (Datum) 0);
	if (restore)
		usage_load();
}

/*
 * Postmaster exit (never after a crash): writes the counters not yet
 * flushed to USAGE_DUMP_FILE.  Every other process has exited by now.
 */
static void
usage_shmem_shutdown(int code, Datum arg)
{
	FILE	   *file;
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	uint32		header[2] = {USAGE_DUMP_MAGIC, USAGE_DUMP_VERSION};
	UsageDumpShipping shipping;
	int32		count;

	if (code != 0 || usage_shared == NULL || usage_hash == NULL)
		return;

	file = AllocateFile(USAGE_DUMP_FILE ".tmp", PG_BINARY_W);
	if (file == NULL)
		goto error;
	count = (int32) hash_get_num_entries(usage_hash);
	memset(&shipping, 0, sizeof(shipping));
	shipping.source = usage_shared->source;
	shipping.prev_source = usage_shared->prev_source;
	shipping.source_from = usage_shared->source_from;
	shipping.next_batch = pg_atomic_read_u64(&usage_shared->next_batch);
	shipping.dropped = pg_atomic_read_u64(&usage_shared->dropped);
	if (fwrite(header, sizeof(header), 1, file) != 1 ||
		fwrite(&shipping, sizeof(shipping), 1, file) != 1 ||
		fwrite(&count, sizeof(count), 1, file) != 1)
		goto error;

	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		UsageDumpEntry out;

		memset(&out, 0, sizeof(out));
		out.key = entry->key;
		out.calls = pg_atomic_read_u64(&entry->calls);
		out.rejected = pg_atomic_read_u64(&entry->rejected);
		out.last_used = (TimestampTz) pg_atomic_read_u64(&entry->last_used);
		out.flushed_last_used = entry->flushed_last_used;
		out.flush_xid = entry->flush_xid;
		out.flushing_calls = entry->flushing_calls;
		out.flushing_rejected = entry->flushing_rejected;
		out.creator_xid = entry->creator_xid;
		out.ship_batch = entry->ship_batch;
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
	(void) durable_rename(USAGE_DUMP_FILE ".tmp", USAGE_DUMP_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("could not write file \"%s\": %m", USAGE_DUMP_FILE ".tmp")));
	if (file)
		FreeFile(file);
	unlink(USAGE_DUMP_FILE ".tmp");
}

/* Restores the counters dumped at the last clean shutdown, then removes the file. */
static void
usage_load(void)
{
	FILE	   *file = AllocateFile(USAGE_DUMP_FILE, PG_BINARY_R);
	uint32		header[2];
	UsageDumpShipping shipping;
	int32		count;
	int32		lost = 0;
	size_t		entry_size;

	if (file == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", USAGE_DUMP_FILE)));
		return;
	}

	if (fread(header, sizeof(header), 1, file) != 1 ||
		header[0] != USAGE_DUMP_MAGIC ||
		header[1] < 2 || header[1] > USAGE_DUMP_VERSION ||
		(header[1] >= 4 && fread(&shipping, sizeof(shipping), 1, file) != 1) ||
		fread(&count, sizeof(count), 1, file) != 1 || count < 0)
	{
		ereport(LOG,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("ignoring invalid file \"%s\"", USAGE_DUMP_FILE)));
		goto done;
	}

	entry_size = header[1] == 2 ? USAGE_DUMP_ENTRY_V2 :
		header[1] == 3 ? USAGE_DUMP_ENTRY_V3 : sizeof(UsageDumpEntry);
	if (header[1] >= 4)
	{
		/* the same source, so that the primary knows a batch sent again */
		usage_shared->source = shipping.source;
		usage_shared->prev_source = shipping.prev_source;
		usage_shared->source_from = shipping.source_from;
		pg_atomic_write_u64(&usage_shared->next_batch, shipping.next_batch);
		pg_atomic_write_u64(&usage_shared->dropped, shipping.dropped);
	}

	for (int32 i = 0; i < count; i++)
	{
		UsageDumpEntry in;
		UsageEntry *entry;
		bool		found;

		memset(&in, 0, sizeof(in));
		if (fread(&in, entry_size, 1, file) != 1)
		{
			ereport(LOG,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("file \"%s\" is truncated", USAGE_DUMP_FILE)));
			break;
		}
		if (hash_get_num_entries(usage_hash) >= apikeys_max_tracked_keys)
		{
			lost++;
			continue;
		}
		entry = hash_search(usage_hash, &in.key, HASH_ENTER, &found);
		usage_entry_init(entry);
		pg_atomic_write_u64(&entry->calls, in.calls);
		pg_atomic_write_u64(&entry->rejected, in.rejected);
		pg_atomic_write_u64(&entry->last_used, (uint64) in.last_used);
		entry->flushed_last_used = in.flushed_last_used;
		entry->flush_xid = in.flush_xid;
		entry->flushing_calls = in.flushing_calls;
		entry->flushing_rejected = in.flushing_rejected;
		entry->creator_xid = in.creator_xid;
		entry->ship_batch = in.ship_batch;
	}
	if (lost > 0)
		ereport(WARNING,
				(errmsg("apikeys dropped the unflushed counts of %d keys at startup", lost),
				 errdetail("apikeys.max_tracked_keys is smaller than the number of counters saved at shutdown."),
				 errhint("Raise apikeys.max_tracked_keys to at least %d.",
						 apikeys_max_tracked_keys + lost)));

done:
	FreeFile(file);
	unlink(USAGE_DUMP_FILE);
}
