/*
 * ship.c
 *		A hot standby's worker ships the standby's usage counts to the
 *		primary over libpq; apikey_standby_status() shows how it goes.
 *
 * On a standby, validations count in shared memory as on a primary
 * (usage.c), but no row can be written there.  Every flush_interval (or
 * when flush_usage() asks) the worker takes a batch of counters
 * (usage_ship_collect), sends it to the primary's apikeys._usage_ship()
 * (usage_apply.c) and, once the primary has answered, subtracts what it
 * sent (usage_ship_settle).  A batch whose answer never came (connection
 * lost, primary stopped, answer timed out, worker stopped) stays marked and
 * is sent again, unchanged, before any other: the primary recognises its
 * number and does not apply it twice.  Batches carry this server's source
 * id, random at first start and kept across clean restarts with the
 * counters (usage_dump.c), so a restarted standby is known again.
 *
 * Nothing here blocks a validation: backends only touch shared memory.
 * The network waits are the worker's, on its latch, bounded by a connect
 * timeout and ANSWER_TIMEOUT_MS, and left at once when the worker must
 * stop.  A connection serves one interval's batches and is closed: an idle
 * session would keep DROP DATABASE from working on the primary.  Failures
 * are logged at most once a minute per database.
 *
 * After promotion the worker resolves an unconfirmed batch locally with
 * the same bookkeeping (the promoted server's apikeys.standby_batches
 * holds what the old primary applied and replicated), then flushes like
 * any primary (worker.c).
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "mb/pg_wchar.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/procsignal.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "catalog/namespace.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "ship.h"
#include "slots.h"
#include "usage.h"

PG_FUNCTION_INFO_V1(apikey_standby_status);

/* Counters per batch: a bigger backlog goes in several batches in a row. */
#define SHIP_BATCH_MAX			10000
/* How long the worker waits for the primary's answer to a batch. */
#define ANSWER_TIMEOUT_MS		(60 * 1000)
/* How long a confirmed batch may wait for this standby to replay its commit. */
#define REPLAY_TIMEOUT_MS		(30 * 1000)
/* How often a network wait looks for a promotion. */
#define PROMOTION_POLL_MS		100
/* Connect timeout when the connection string gives none (seconds). */
#define DEFAULT_CONNECT_TIMEOUT	"10"
/* One failure log line per database per this long. */
#define LOG_EVERY_USECS			(60 * USECS_PER_SEC)

static PGconn *conn = NULL;

/* Rate-limited logging of failures. */
static TimestampTz last_logged = 0;
static int	unlogged_failures = 0;
static int	failures_in_a_row = 0;

/* Why a ship attempt stopped short: a failure, or the worker must leave. */
typedef enum ShipResult
{
	SHIP_OK,
	SHIP_FAILED,
	SHIP_INTERRUPTED,
	SHIP_PROMOTED				/* the batch is resolved locally (ship.h) */
} ShipResult;

static WorkerSlot *status_slot = NULL;

static ShipResult run_query(const char *sql, int nparams, const char *const *values,
							const char *what, PGresult **result);

/* Updates this worker's status under the slots lock. */
#define STATUS_UPDATE(stmt) \
	do { \
		LWLockAcquire(slots_shared->lock, LW_EXCLUSIVE); \
		stmt; \
		LWLockRelease(slots_shared->lock); \
	} while (0)

void
ship_init(WorkerSlot *slot)
{
	status_slot = slot;
	STATUS_UPDATE(slot->ship.since = GetCurrentTimestamp());
}

void
ship_disconnect(void)
{
	if (conn)
		PQfinish(conn);
	conn = NULL;
	if (status_slot)
		STATUS_UPDATE(status_slot->ship.connected = false);
}

/* Copies text into a status field, cut at a character boundary. */
static void
status_text(char *field, const char *text)
{
	int			len = pg_mbcliplen(text, strlen(text), SHIP_TEXT_LEN - 1);

	memcpy(field, text, len);
	field[len] = '\0';
}

/* Records a failure: in the status, and in the log at most once a minute. */
static void
ship_failed(const char *what, const char *detail)
{
	TimestampTz now = GetCurrentTimestamp();
	char		message[SHIP_TEXT_LEN];
	int			len;

	snprintf(message, sizeof(message), "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
	/* libpq's messages span lines: one line here */
	for (char *c = message; *c; c++)
		if (*c == '\n' || *c == '\t')
			*c = ' ';
	len = strlen(message);
	while (len > 0 && (message[len - 1] == '\n' || message[len - 1] == ' '))
		message[--len] = '\0';

	ship_disconnect();
	STATUS_UPDATE({
		status_slot->ship.errors++;
		status_slot->ship.last_error_at = now;
		status_text(status_slot->ship.last_error, message);
	});
	/* validations waiting for room on this server drop their counts now */
	usage_wake_waiters();

	failures_in_a_row++;
	if (now - last_logged >= LOG_EVERY_USECS)
	{
		ereport(LOG,
				(errmsg("apikeys could not ship usage to the primary: %s", message),
				 unlogged_failures > 0 ?
				 errdetail("%d more failures since the last message.", unlogged_failures) : 0,
				 errhint("The counts wait in shared memory and are shipped when the primary answers; see apikeys.apikey_standby_status().")));
		last_logged = now;
		unlogged_failures = 0;
	}
	else
		unlogged_failures++;
}

/* Records a batch the primary confirmed (locally: after promotion). */
static void
ship_succeeded(uint64 batch, const UsageDelta *deltas, const bool *matched, int n,
			   bool locally)
{
	int64		calls = 0;
	int64		rejected = 0;

	for (int i = 0; i < n; i++)
		if (matched[i])
		{
			calls += deltas[i].calls;
			rejected += deltas[i].rejected;
		}
	STATUS_UPDATE({
		status_slot->ship.last_batch = batch;
		status_slot->ship.last_shipped_at = GetCurrentTimestamp();
		status_slot->ship.batches++;
		status_slot->ship.calls += calls;
		status_slot->ship.rejected += rejected;
	});
	if (failures_in_a_row > 0 && !locally)
	{
		ereport(LOG,
				(errmsg("apikeys is shipping usage to the primary again, after %d failed attempts",
						failures_in_a_row)));
	}
	failures_in_a_row = 0;
	unlogged_failures = 0;
	last_logged = 0;
}

/* True once this standby is being promoted, or has been. */
static bool
promoting(void)
{
	return PromoteIsTriggered() || !RecoveryInProgress();
}

/*
 * Waits on the latch and, if events asks, conn's socket, for up to timeout
 * ms (SHIP_PROMOTED at once once a promotion is under way).  SHIP_INTERRUPTED if the worker must stop; SHIP_FAILED on timeout;
 * else SHIP_OK with *ready saying whether the socket event came.
 */
static ShipResult
wait_socket(int events, long timeout, bool *ready)
{
	int			rc;

	*ready = false;
	/* promoted: whatever the old primary answers, the batch is resolved here */
	if (promoting())
		return SHIP_PROMOTED;
	if (timeout <= 0)
		return SHIP_FAILED;
	/* a promotion is noticed within PROMOTION_POLL_MS */
	rc = WaitLatchOrSocket(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH | events,
						   PQsocket(conn), Min(timeout, PROMOTION_POLL_MS), PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
	{
		ResetLatch(MyLatch);
		/* replaying DROP DATABASE waits for every process to absorb this */
		if (ProcSignalBarrierPending)
			ProcessProcSignalBarrier();
		/* stopping, or a recovery conflict (the worker's loop ends it) */
		if (ShutdownRequestPending || ProcDiePending)
			return SHIP_INTERRUPTED;
	}
	*ready = (rc & events) != 0;
	return SHIP_OK;
}

/*
 * The connection string to ship to, as keyword and value arrays (NULL
 * terminated), with *target set to it without secrets.  NULL with *error
 * set if there is none or it does not parse.
 */
static bool
ship_conninfo(const char *dbname, const char ***keys, const char ***vals,
			  char **target, char **error)
{
	const char *source = apikeys_primary_conninfo;
	PQconninfoOption *opts;
	PQconninfoOption *opt;
	char	   *err = NULL;
	int			n = 0;
	bool		has_appname = false;
	bool		has_timeout = false;
	StringInfoData target_buf;

	if (source == NULL || source[0] == '\0')
		source = GetConfigOption("primary_conninfo", true, false);
	if (source == NULL || source[0] == '\0')
	{
		*error = pstrdup("neither apikeys.primary_conninfo nor primary_conninfo is set");
		return false;
	}
	opts = PQconninfoParse(source, &err);
	if (opts == NULL)
	{
		/* libpq's message may quote part of a password: not repeated */
		*error = pstrdup(err ? "apikeys.primary_conninfo (or primary_conninfo) is not a valid connection string" :
						 "out of memory");
		if (err)
			PQfreemem(err);
		return false;
	}

	for (opt = opts; opt->keyword; opt++)
		n++;
	*keys = palloc0(sizeof(char *) * (n + 4));
	*vals = palloc0(sizeof(char *) * (n + 4));
	initStringInfo(&target_buf);
	n = 0;
	for (opt = opts; opt->keyword; opt++)
	{
		if (opt->val == NULL || opt->val[0] == '\0' ||
			strcmp(opt->keyword, "dbname") == 0 || strcmp(opt->keyword, "replication") == 0)
			continue;
		has_appname |= (strcmp(opt->keyword, "application_name") == 0);
		has_timeout |= (strcmp(opt->keyword, "connect_timeout") == 0);
		(*keys)[n] = pstrdup(opt->keyword);
		(*vals)[n] = pstrdup(opt->val);
		n++;
		/* where it goes, never a secret */
		if (strcmp(opt->keyword, "host") == 0 || strcmp(opt->keyword, "hostaddr") == 0 ||
			strcmp(opt->keyword, "port") == 0 || strcmp(opt->keyword, "user") == 0 ||
			strcmp(opt->keyword, "target_session_attrs") == 0)
			appendStringInfo(&target_buf, "%s%s=%s", target_buf.len ? " " : "",
							 opt->keyword, opt->val);
	}
	PQconninfoFree(opts);

	(*keys)[n] = "dbname";
	(*vals)[n++] = dbname;
	appendStringInfo(&target_buf, "%sdbname=%s", target_buf.len ? " " : "", dbname);
	if (!has_appname)
	{
		(*keys)[n] = "application_name";
		(*vals)[n++] = SHIP_APPLICATION_NAME;
	}
	if (!has_timeout)
	{
		(*keys)[n] = "connect_timeout";
		(*vals)[n++] = DEFAULT_CONNECT_TIMEOUT;
	}
	*target = target_buf.data;
	return true;
}

/* Connects to the primary, unless this round is connected already. */
static ShipResult
ship_connect(const char *dbname)
{
	const char **keys;
	const char **vals;
	char	   *target;
	char	   *error;
	int			timeout_s = 0;
	TimestampTz deadline;
	PostgresPollingStatusType status = PGRES_POLLING_WRITING;
	PGresult   *res;
	ShipResult	r;

	if (!ship_conninfo(dbname, &keys, &vals, &target, &error))
	{
		ship_disconnect();
		ship_failed(error, NULL);
		return SHIP_FAILED;
	}
	STATUS_UPDATE(status_text(status_slot->ship.target, target));
	/* within one round (ship_usage closes it after), the same connection */
	if (conn && PQstatus(conn) == CONNECTION_OK)
		return SHIP_OK;
	ship_disconnect();

	for (int i = 0; keys[i]; i++)
		if (strcmp(keys[i], "connect_timeout") == 0)
			timeout_s = atoi(vals[i]);
	if (timeout_s <= 0)
		timeout_s = atoi(DEFAULT_CONNECT_TIMEOUT);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_s * 1000);

	conn = PQconnectStartParams(keys, vals, false);
	if (conn == NULL)
	{
		ship_failed("could not connect to the primary", "out of memory");
		return SHIP_FAILED;
	}
	if (PQstatus(conn) == CONNECTION_BAD)
	{
		ship_failed("could not connect to the primary", PQerrorMessage(conn));
		return SHIP_FAILED;
	}
	while (status != PGRES_POLLING_OK && status != PGRES_POLLING_FAILED)
	{
		bool		ready;

		r = wait_socket(status == PGRES_POLLING_READING ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE,
						ms_until(deadline, GetCurrentTimestamp()), &ready);
		if (r == SHIP_INTERRUPTED || r == SHIP_PROMOTED)
		{
			ship_disconnect();
			return r;
		}
		if (r == SHIP_FAILED)
		{
			ship_failed("could not connect to the primary", "timeout expired");
			return SHIP_FAILED;
		}
		if (ready)
			status = PQconnectPoll(conn);
	}
	if (status == PGRES_POLLING_FAILED)
	{
		ship_failed("could not connect to the primary", PQerrorMessage(conn));
		return SHIP_FAILED;
	}

	if (PQsetnonblocking(conn, 1) != 0)
	{
		ship_failed("could not set up the connection to the primary", PQerrorMessage(conn));
		return SHIP_FAILED;
	}

	/*
	 * A standby there cannot apply anything (a cascade: point
	 * apikeys.primary_conninfo at the primary).  A batch's answer must mean
	 * a durable commit: synchronous_commit off there is raised to local.
	 */
	r = run_query("SELECT pg_catalog.pg_is_in_recovery(),"
				  " CASE WHEN pg_catalog.current_setting('synchronous_commit')"
				  "  OPERATOR(pg_catalog.=) 'off'"
				  " THEN pg_catalog.set_config('synchronous_commit', 'local', false) END",
				  0, NULL, "could not set up the connection to the primary", &res);
	if (r != SHIP_OK)
		return r;
	if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t") == 0)
	{
		PQclear(res);
		ship_failed("the server at apikeys.primary_conninfo (or primary_conninfo) is a standby",
					"set apikeys.primary_conninfo to reach the primary");
		return SHIP_FAILED;
	}
	PQclear(res);
	STATUS_UPDATE(status_slot->ship.connected = true);
	return SHIP_OK;
}

/* How this standby names itself to the primary: cluster_name, or its source id. */
static char *
ship_source_name(void)
{
	const char *cluster = GetConfigOption("cluster_name", true, false);
	pg_uuid_t	source = usage_source();

	if (cluster && cluster[0])
		return pstrdup(cluster);
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&source)));
}

/*
 * An array literal of the n deltas' field what (0 key id, 1 day, 2 calls,
 * 3 rejected, 4 last use), readable whatever the primary's settings.
 */
static char *
array_literal(const UsageDelta *deltas, int n, int what)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(&buf, ',');
		switch (what)
		{
			case 0:
				/* ids are of letters and digits: no quoting needed, quoted anyway */
				appendStringInfo(&buf, "\"%s\"", deltas[i].key_id);
				break;
			case 1:
				{
					int			y,
								m,
								d;

					j2date(deltas[i].day + POSTGRES_EPOCH_JDATE, &y, &m, &d);
					appendStringInfo(&buf, "%04d-%02d-%02d", y, m, d);
					break;
				}
			case 2:
				appendStringInfo(&buf, INT64_FORMAT, deltas[i].calls);
				break;
			case 3:
				appendStringInfo(&buf, INT64_FORMAT, deltas[i].rejected);
				break;
			case 4:
				if (deltas[i].last_used == 0)
					appendStringInfoString(&buf, "NULL");
				else
				{
					struct pg_tm tm;
					fsec_t		fsec;

					/* in UTC, whatever the primary's TimeZone and DateStyle */
					if (timestamp2tm(deltas[i].last_used, NULL, &tm, &fsec, NULL, NULL) != 0)
						elog(ERROR, "timestamp out of range");
					appendStringInfo(&buf, "\"%04d-%02d-%02d %02d:%02d:%02d.%06d+00\"",
									 tm.tm_year, tm.tm_mon, tm.tm_mday,
									 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
				}
				break;
		}
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * Runs sql with nparams text parameters on conn, waiting on the latch, and
 * sets *result to its last result, which has rows.  Any failure is
 * recorded (what: the message's start) and drops the connection.
 */
static ShipResult
run_query(const char *sql, int nparams, const char *const *values, const char *what,
		  PGresult **result)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ANSWER_TIMEOUT_MS);
	PGresult   *res;
	PGresult   *last = NULL;
	bool		ready;
	ShipResult	r = SHIP_OK;
	int			flushed;

	*result = NULL;
	if (!PQsendQueryParams(conn, sql, nparams, NULL, values, NULL, NULL, 0))
	{
		ship_failed(what, PQerrorMessage(conn));
		return SHIP_FAILED;
	}
	/* a big batch may not fit in the socket's buffer at once */
	while ((flushed = PQflush(conn)) == 1)
	{
		r = wait_socket(WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE,
						ms_until(deadline, GetCurrentTimestamp()), &ready);
		if (r != SHIP_OK)
			goto stopped;
		if (ready && !PQconsumeInput(conn))
			break;
	}
	if (flushed < 0)
	{
		ship_failed(what, PQerrorMessage(conn));
		return SHIP_FAILED;
	}

	for (;;)
	{
		while (PQisBusy(conn))
		{
			r = wait_socket(WL_SOCKET_READABLE, ms_until(deadline, GetCurrentTimestamp()), &ready);
			if (r != SHIP_OK)
				goto stopped;
			if (ready && !PQconsumeInput(conn))
			{
				if (last)
					PQclear(last);
				ship_failed(what, PQerrorMessage(conn));
				return SHIP_FAILED;
			}
		}
		res = PQgetResult(conn);
		if (res == NULL)
			break;
		if (last)
			PQclear(last);
		last = res;
	}
	if (last == NULL || PQresultStatus(last) != PGRES_TUPLES_OK)
	{
		ship_failed(what, last ? PQresultErrorMessage(last) : PQerrorMessage(conn));
		if (last)
			PQclear(last);
		return SHIP_FAILED;
	}
	*result = last;
	return SHIP_OK;

stopped:
	if (last)
		PQclear(last);
	if (r == SHIP_INTERRUPTED || r == SHIP_PROMOTED)
		ship_disconnect();
	else
		ship_failed(what, "no answer within the timeout");
	return r;
}

/*
 * Sends batch (n deltas) and reads the primary's answer into matched and
 * last_used_done.  Any failure leaves the batch for the next attempt.
 */
static ShipResult
ship_batch(uint64 batch, const UsageDelta *deltas, int n, bool *matched, bool *last_used_done,
		   BatchOutcome *outcome, XLogRecPtr *commit_lsn, TimeLineID *commit_tli)
{
	pg_uuid_t	source = usage_batch_source(batch);
	const char *values[8];
	PGresult   *res;
	ShipResult	r;
	uint32		hi;
	uint32		lo;
	uint32		tli;

	values[0] = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&source)));
	values[1] = ship_source_name();
	values[2] = psprintf(UINT64_FORMAT, batch);
	for (int a = 0; a < 5; a++)
		values[3 + a] = array_literal(deltas, n, a);

	r = run_query("SELECT outcome, i, last_used_done FROM apikeys._usage_ship($1::pg_catalog.uuid,"
				  " $2::pg_catalog.text, $3::pg_catalog.int8, $4::pg_catalog.text[],"
				  " $5::pg_catalog.date[], $6::pg_catalog.int8[], $7::pg_catalog.int8[],"
				  " $8::pg_catalog.timestamptz[])",
				  8, values, "the primary did not apply usage", &res);
	if (r != SHIP_OK)
		return r;

	memset(matched, 0, sizeof(bool) * n);
	memset(last_used_done, 0, sizeof(bool) * n);
	*outcome = BATCH_APPLIED;
	for (int row = 0; row < PQntuples(res); row++)
	{
		int			i = atoi(PQgetvalue(res, row, 1));

		if (i < 1 || i > n)
		{
			PQclear(res);
			ship_failed("the primary answered an unknown counter", NULL);
			return SHIP_FAILED;
		}
		for (int o = BATCH_APPLIED; o <= BATCH_CONFLICT; o++)
			if (strcmp(PQgetvalue(res, row, 0), batch_outcome_names[o]) == 0)
				*outcome = (BatchOutcome) o;
		matched[i - 1] = true;
		last_used_done[i - 1] = (strcmp(PQgetvalue(res, row, 2), "t") == 0);
	}
	PQclear(res);

	/*
	 * Where the primary's WAL is now, past the commit that applied the
	 * batch, and on which timeline (a WAL file name starts with it).
	 */
	r = run_query("SELECT pg_catalog.pg_current_wal_lsn(),"
				  " pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())", 0, NULL,
				  "could not read the primary's WAL position", &res);
	if (r != SHIP_OK)
		return r;
	if (PQntuples(res) != 1 || sscanf(PQgetvalue(res, 0, 0), "%X/%X", &hi, &lo) != 2 ||
		sscanf(PQgetvalue(res, 0, 1), "%8X", &tli) != 1)
	{
		PQclear(res);
		ship_failed("could not read the primary's WAL position", NULL);
		return SHIP_FAILED;
	}
	PQclear(res);
	*commit_lsn = ((uint64) hi << 32) | lo;
	*commit_tli = tli;
	return SHIP_OK;
}

/*
 * Waits until this standby has replayed lsn of timeline tli: only then is
 * the batch's commit on the timeline this server would continue if
 * promoted.  A promotion first makes the batch this server's to resolve.
 * The wait gives way to anything asking this process to act: a barrier
 * (replaying DROP DATABASE waits for every process to absorb one), a
 * recovery conflict, a stop.
 */
static ShipResult
wait_replay(XLogRecPtr lsn, TimeLineID tli)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), REPLAY_TIMEOUT_MS);

	for (;;)
	{
		TimeLineID	replay_tli;

		if (GetXLogReplayRecPtr(&replay_tli) >= lsn && replay_tli == tli && RecoveryInProgress())
			return SHIP_OK;
		if (promoting())
			return SHIP_PROMOTED;
		if (GetCurrentTimestamp() >= deadline)
		{
			ship_failed("this standby has not replayed the primary's commit of the batch",
						"replay is paused or far behind");
			return SHIP_FAILED;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (ProcSignalBarrierPending)
			ProcessProcSignalBarrier();
		if (ShutdownRequestPending || ProcDiePending)
			return SHIP_INTERRUPTED;
	}
}

/*
 * The primary has batch's number from another server under this source id
 * (a data directory copied with its shutdown dump): this one takes a new
 * source id, and its batch goes again under it.
 */
static void
ship_conflict(uint64 batch)
{
	pg_uuid_t	old = usage_batch_source(batch);

	usage_new_source();
	usage_ship_unmark(MyDatabaseId);
	ereport(WARNING,
			(errmsg("apikeys: the primary has batch " UINT64_FORMAT " of source %s from another server",
					batch, DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&old)))),
			 errdetail("Another server ships usage under the same source id, likely a copy of this data directory."),
			 errhint("This standby now ships under a new source id; its counts are kept.")));
}

/* ship_usage's rounds: a batch at a time while counts wait. */
static bool
ship_rounds(Oid keys_relid, const char *dbname)
{
	for (;;)
	{
		UsageDelta *deltas;
		uint64		batch;
		int			n;
		bool	   *matched;
		bool	   *last_used_done;
		BatchOutcome outcome;
		XLogRecPtr	lsn;
		TimeLineID	tli;
		ShipResult	r;

		if (!usage_pending(MyDatabaseId))
			return true;
		if (ship_connect(dbname) != SHIP_OK)
			return false;
		deltas = usage_ship_collect(MyDatabaseId, keys_relid, SHIP_BATCH_MAX, &batch, &n);
		if (n == 0)
			return true;
		matched = palloc(sizeof(bool) * n);
		last_used_done = palloc(sizeof(bool) * n);
		pgstat_report_activity(STATE_RUNNING, "apikeys: ship usage");
		r = ship_batch(batch, deltas, n, matched, last_used_done, &outcome, &lsn, &tli);
		if (r == SHIP_OK && outcome == BATCH_CONFLICT)
		{
			ship_conflict(batch);
			pgstat_report_activity(STATE_IDLE, NULL);
			continue;
		}
		/* the wait for replay holds no session in the primary's database */
		ship_disconnect();
		if (r == SHIP_OK)
			r = wait_replay(lsn, tli);
		pgstat_report_activity(STATE_IDLE, NULL);
		if (r != SHIP_OK)
			return false;
		usage_ship_settle(MyDatabaseId, keys_relid, batch, deltas, matched, last_used_done, n);
		ship_succeeded(batch, deltas, matched, n, false);
		pfree(deltas);
		pfree(matched);
		pfree(last_used_done);
		if (n < SHIP_BATCH_MAX)
			return true;
	}
}

bool
ship_usage(Oid keys_relid, const char *dbname)
{
	bool		ok = ship_rounds(keys_relid, dbname);

	/*
	 * The connection is not kept between intervals: an idle session in the
	 * primary's database would make DROP DATABASE there fail.
	 */
	ship_disconnect();
	return ok;
}

void
ship_resolve_body(void *arg)
{
	ShipResolve *rs = (ShipResolve *) arg;
	pg_uuid_t	source;
	MemoryContext spi_cxt;

	rs->batch = 0;
	rs->n = 0;
	/* 0.1's schema has no batches: then no batch was ever applied anywhere */
	if (!OidIsValid(get_relname_relid("standby_batches", get_namespace_oid("apikeys", false))))
	{
		usage_ship_unmark(MyDatabaseId);
		return;
	}
	spi_cxt = MemoryContextSwitchTo(rs->cxt);
	rs->deltas = usage_ship_collect(MyDatabaseId, rs->keys_relid, 0, &rs->batch, &rs->n);
	rs->matched = palloc(sizeof(bool) * Max(rs->n, 1));
	rs->last_used_done = palloc(sizeof(bool) * Max(rs->n, 1));
	MemoryContextSwitchTo(spi_cxt);
	if (rs->batch == 0)
		return;
	source = usage_batch_source(rs->batch);
	if (usage_apply_batch(&source, ship_source_name(), rs->batch, rs->deltas, rs->n,
						  rs->matched, rs->last_used_done) == BATCH_CONFLICT)
	{
		/* another server's batch had the number: ours goes into a local flush */
		usage_ship_unmark(MyDatabaseId);
		rs->batch = 0;
	}
}

void
ship_resolve_settle(ShipResolve *rs)
{
	if (rs->batch == 0)
		return;
	usage_ship_settle(MyDatabaseId, rs->keys_relid, rs->batch, rs->deltas, rs->matched,
					  rs->last_used_done, rs->n);
	ship_succeeded(rs->batch, rs->deltas, rs->matched, rs->n, true);
}

/*
 * apikeys.apikey_standby_status(): this database's shipping, as this
 * server's worker sees it.
 */
Datum
apikey_standby_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[17];
	bool		nulls[17];
	ShipStatus	ship;
	bool		has_slot = false;
	int			pending_keys;
	int64		pending_calls;
	int64		pending_rejected;
	pg_uuid_t  *source = palloc(sizeof(pg_uuid_t));
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz from;

	apikeys_require_preload();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	memset(&ship, 0, sizeof(ship));
	LWLockAcquire(slots_shared->lock, LW_SHARED);
	{
		WorkerSlot *slot = slot_find(MyDatabaseId, false);

		if (slot)
		{
			ship = slot->ship;
			has_slot = true;
		}
	}
	LWLockRelease(slots_shared->lock);
	usage_pending_counts(MyDatabaseId, &pending_keys, &pending_calls, &pending_rejected);
	*source = usage_source();

	memset(nulls, 0, sizeof(nulls));
	values[0] = BoolGetDatum(RecoveryInProgress());
	values[1] = UUIDPGetDatum(source);
	values[2] = CStringGetTextDatum(ship.target);
	nulls[2] = (ship.target[0] == '\0');
	values[3] = BoolGetDatum(ship.connected);
	values[4] = Int64GetDatum((int64) ship.last_batch);
	nulls[4] = (ship.last_batch == 0);
	values[5] = TimestampTzGetDatum(ship.last_shipped_at);
	nulls[5] = (ship.last_shipped_at == 0);
	values[6] = Int64GetDatum((int64) ship.batches);
	values[7] = Int64GetDatum((int64) ship.calls);
	values[8] = Int64GetDatum((int64) ship.rejected);
	values[9] = Int32GetDatum(pending_keys);
	values[10] = Int64GetDatum(pending_calls);
	values[11] = Int64GetDatum(pending_rejected);
	/* how long the oldest unshipped count may have waited */
	from = Max(ship.last_shipped_at, ship.since);
	values[12] = Float8GetDatum((pending_keys == 0 || !has_slot || from == 0) ? 0.0 :
								(double) (now - from) / USECS_PER_SEC);
	/* a primary ships nothing: its lag is its flushes' business */
	nulls[12] = !RecoveryInProgress();
	values[13] = Int64GetDatum((int64) usage_dropped());
	values[14] = Int64GetDatum((int64) ship.errors);
	values[15] = CStringGetTextDatum(ship.last_error);
	nulls[15] = (ship.last_error[0] == '\0');
	values[16] = TimestampTzGetDatum(ship.last_error_at);
	nulls[16] = (ship.last_error_at == 0);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
