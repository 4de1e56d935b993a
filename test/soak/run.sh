#!/usr/bin/env bash
# test/soak/run.sh -- `make soak`: a bounded soak test under mixed load (not
# part of `make test`).
#
# Runs test/setup.sh (installs what is missing, builds, installs), starts a
# throwaway PostgreSQL 15 cluster of its own (scratch directory under /tmp,
# Unix socket only, shared_preload_libraries = 'apikeys', owned by the
# unprivileged `postgres` user when run as root), seeds 200 keys over 20
# owners, then runs pgbench for SOAK_SECONDS with SOAK_CLIENTS clients and
# seven scripts at once, chosen by weight per transaction:
#
#   create        apikey_create for a random owner, scope, IP list, expiry
#   validate      one validation of a random known key, random permission and
#                 address (valid and refused outcomes)
#   validate_ro   two such validations in a READ ONLY transaction
#   unknown       a well-formed unknown key and a malformed one (not counted)
#   rotate        apikey_rotate of a random active key, grace 0 / 2 s / 1 h
#   revoke        apikey_revoke of a random unrevoked key
#   analytics     apikey_analytics, apikey_usage and apikey_list of an owner
#                 in one REPEATABLE READ snapshot (they must agree), and now
#                 and then flush_usage()
#
# Alongside the load, a DDL chaos loop works the launcher and the workers, from
# sessions named soak_chaos, in cycles of about 25 s started while the load
# lasts:
#
#   scratch       CREATE DATABASE with the extension, keys and validations,
#                 copied by CREATE DATABASE ... TEMPLATE, both dropped; and a
#                 database without the extension created and dropped
#   victim        a database with the extension and a connected session:
#                 DROP DATABASE cancelled by statement_timeout = 3ms, DROP
#                 DATABASE by a login role without privileges (refused, also
#                 of the soak database), DROP DATABASE refused because of the
#                 session; then DROP/CREATE EXTENSION, a 3 ms DROP with nobody
#                 connected, and a real DROP
#   connections   ALTER DATABASE soak ALLOW_CONNECTIONS false for 6 s, then
#                 true (pgbench's clients are connected already)
#   signals       pg_cancel_backend of the launcher and of the soak worker
#                 (both must carry on), pg_terminate_backend of the soak
#                 worker (replaced), then of the launcher (restarted)
#
# The counter table is small (SOAK_MAX_TRACKED_KEYS key-days), so that
# validations fill it and wait for flushes to make room: the longest single
# validation is reported (pg_stat_statements' max_exec_time of
# "SELECT soak.do_validate()", one validation each).
#
# The scripts call PL/pgSQL wrappers (schema soak) that keep each key's
# plaintext (soak.keys_pt) and log every change they made (soak.ops). Keys to
# rotate or revoke are picked with FOR UPDATE SKIP LOCKED; a rotation refused
# with 55000 because the key expired or was revoked meanwhile is legitimate
# and returns a status, so pgbench sees no failure. Anything unexpected (a
# known key validating as unknown, analytics disagreeing with usage, any
# other error) raises and shows up as a failed or aborted pgbench client.
#
# Then the invariants, each printed PASS or FAIL:
#   - pgbench: exit status 0, no aborted client, zero failed transactions
#   - counts: after flush_usage(), calls + rejected in apikeys.usage equal the
#     validations of known keys made, exactly; apikey_usage and
#     apikey_analytics agree with the table; no usage row for an unknown key;
#     last_used_at set for every key with calls
#   - keys: the keys the scripts created are exactly the keys in the table;
#     each has exactly one 'created' event
#   - revocations: the revoked keys are exactly those the scripts revoked
#     (apikey_revoke returned true, once per key); each has exactly one
#     'revoked' event, other keys none
#   - rotations: every rotation the scripts made has its successor with
#     rotated_from, a 'created' event naming it, and one 'rotated' event
#     naming the successor; nothing else has rotated_from
#   - expiry: every key past expires_at (not revoked) is marked by the worker
#     with exactly one 'expired' event; no revoked key was expired after its
#     revocation; no expired event before expires_at
#   - statuses: every key validates as its row says (revoked / expired /
#     valid) and apikey_list reports the same status: no key is both revoked
#     and valid
#   - chaos: at least one cycle ran, and every step did what it should
#     (refusals refused with the right error, workers and the launcher back)
#   - waits: the longest validation took less than flush_interval + 3 s
#   - the server: no process crashed (log: terminated by signal, PANIC), the
#     launcher and the database's worker are running; no ERROR or FATAL in
#     the log but the chaos's own (its sessions, and a worker's pass it
#     cancelled)
#
# The number of validations made is the number of completed executions of
# "SELECT soak.do_validate()" (one validation each) that pg_stat_statements
# counts: it needs no write, so the validations can run in READ ONLY
# transactions. (pgbench's own per-script counts are not exact for this:
# with -T, a few transactions that complete as the time runs out are
# executed and committed but not counted; they are printed for comparison.)
#
# Ends with a summary, then "N passed, N failed"; exits non-zero on any
# failure. Plaintext keys stay in the throwaway cluster and are never printed.
#
# Environment:
#   SOAK_SECONDS=120   duration of the load
#   SOAK_CLIENTS=12    pgbench clients
#   SOAK_MAX_TRACKED_KEYS=200  apikeys.max_tracked_keys of the soak server (the
#                      load touches more keys than that per flush interval)
#   SOAK_CHAOS=0       no DDL chaos loop
#   SKIP_SETUP=1       do not run test/setup.sh (already built and installed)
#   KEEP_SOAK_DIR=1    keep the scratch directory (server log, scripts)

# cleanup runs from the EXIT trap, which shellcheck cannot follow.
# shellcheck disable=SC2317

set -uo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
PORT=5487
SECS=${SOAK_SECONDS:-120}
CLIENTS=${SOAK_CLIENTS:-12}
MAX_TRACKED=${SOAK_MAX_TRACKED_KEYS:-200}
FLUSH_MS=500
# the longest a validation may take: one flush interval plus slack
WAIT_LIMIT_MS=$((FLUSH_MS + 3000))
OWNERS=20
SEED_KEYS=200
DB=soak

unset PGDATA PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE \
	PGPASSWORD PGPASSFILE PGSSLMODE PGAPPNAME

SCRATCH=""
PASSED=0
FAILED=0

say() { echo "soak: $*"; }
die() {
	echo "soak: error: $*" >&2
	if [[ -n $SCRATCH && -f $SCRATCH/logs/postgres.log ]]; then
		echo "---- last lines of the server log:" >&2
		tail -n 25 "$SCRATCH/logs/postgres.log" >&2
	fi
	echo "$PASSED passed, $((FAILED + 1)) failed"
	exit 1
}

# check NAME OK [DETAIL] -- record and print one invariant.
check() {
	local name=$1 ok=$2 detail=${3:-}
	if [[ $ok == 1 ]]; then
		PASSED=$((PASSED + 1))
		echo "PASS  $name${detail:+ ($detail)}"
	else
		FAILED=$((FAILED + 1))
		echo "FAIL  $name${detail:+: $detail}"
	fi
}
# check_eq NAME GOT WANT -- a check that GOT equals WANT.
check_eq() {
	if [[ $2 == "$3" ]]; then
		check "$1" 1 "$2"
	else
		check "$1" 0 "got '$2', want '$3'"
	fi
}

# ---------------------------------------------------------------- user, cluster

AS_PG=()
set_pg_user() {
	local path="$PGBIN:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
	if [[ $EUID -eq 0 ]]; then
		id postgres >/dev/null 2>&1 || die "user postgres does not exist (is postgresql-15 installed?)"
		AS_PG=(runuser -u postgres -- env PATH="$path")
		PG_USER=postgres
	else
		AS_PG=(env PATH="$path")
		PG_USER=$(id -un)
	fi
}
as_pg() { "${AS_PG[@]}" "$@"; }

# psql_db ARGS... -- psql as the superuser into the soak database, stop on error.
psql_db() {
	as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$SCRATCH" -p "$PORT" -U "$PG_USER" -d "$DB" "$@"
}
# value SQL -- the single value SQL returns ('' and a message on error).
value() {
	local out
	if ! out=$(psql_db -At -c "$1" 2>&1); then
		echo "soak: query failed: $out" >&2
		echo "ERROR"
		return 1
	fi
	echo "$out"
}

cleanup() {
	if [[ -n $SCRATCH && -f $SCRATCH/data/postmaster.pid ]]; then
		as_pg pg_ctl -D "$SCRATCH/data" stop -m fast -w >/dev/null 2>&1 ||
			as_pg pg_ctl -D "$SCRATCH/data" stop -m immediate -w >/dev/null 2>&1 || true
	fi
	if [[ -n $SCRATCH && -d $SCRATCH ]]; then
		if [[ ${KEEP_SOAK_DIR:-0} == 1 ]]; then
			say "kept scratch directory $SCRATCH"
		else
			rm -rf "$SCRATCH"
		fi
	fi
}

start_cluster() {
	SCRATCH=$(mktemp -d /tmp/apikeys-soak.XXXXXX) || die "mktemp failed"
	mkdir -p "$SCRATCH/logs" "$SCRATCH/scripts"
	chmod 755 "$SCRATCH"
	[[ $EUID -eq 0 ]] && chown -R "$PG_USER:" "$SCRATCH"
	local out
	if ! out=$(as_pg initdb -D "$SCRATCH/data" -U "$PG_USER" --auth=trust \
		--encoding=UTF8 --no-locale 2>&1); then
		echo "$out" >&2
		die "initdb failed"
	fi
	# Keys travel as literals only inside PL/pgSQL: statement logging stays
	# off. A short flush interval and expiry interval keep the worker busy;
	# the log line names the backend type and application (what the chaos
	# did on purpose is told apart by them).
	as_pg tee -a "$SCRATCH/data/postgresql.conf" >/dev/null <<EOF
# written by test/soak/run.sh
listen_addresses = ''
unix_socket_directories = '$SCRATCH'
port = $PORT
shared_preload_libraries = 'apikeys,pg_stat_statements'
pg_stat_statements.track = top
max_connections = $((CLIENTS + 20))
max_worker_processes = 20
shared_buffers = 256MB
apikeys.flush_interval = '${FLUSH_MS}ms'
apikeys.max_tracked_keys = $MAX_TRACKED
apikeys.expiry_interval = 1
log_statement = 'none'
log_line_prefix = '%m [%p] %b %q%u@%d %a '
log_min_messages = warning
restart_after_crash = on
EOF
	if ! as_pg pg_ctl -D "$SCRATCH/data" -l "$SCRATCH/logs/postgres.log" -w -t 60 start >/dev/null; then
		die "the soak server did not start"
	fi
	say "cluster running in $SCRATCH (socket, port $PORT), as $PG_USER"
}

# ---------------------------------------------------------------- the harness

load_harness() {
	as_pg createdb -h "$SCRATCH" -p "$PORT" -U "$PG_USER" "$DB" || die "createdb $DB"
	psql_db <<EOF || die "loading the harness failed"
SET client_min_messages = warning;
CREATE EXTENSION apikeys CASCADE;
CREATE EXTENSION pg_stat_statements;
-- the chaos's role without privileges (tries DROP DATABASE)
CREATE ROLE soak_mallory LOGIN;
CREATE SCHEMA soak;

-- every key the scripts made, with its plaintext (never printed)
CREATE TABLE soak.keys_pt (n bigserial PRIMARY KEY, id text NOT NULL UNIQUE,
                           key text NOT NULL, owner text NOT NULL);
-- every change the scripts made: create, rotate (key_id -> successor), revoke
CREATE TABLE soak.ops (op text NOT NULL, key_id text NOT NULL, successor text,
                       at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX ON soak.ops (key_id);
-- a well-formed key that exists nowhere
CREATE TABLE soak.consts (not_found text NOT NULL);
DO \$\$
DECLARE
	k text;
BEGIN
	BEGIN
		SELECT key INTO k FROM apikeys.apikey_create('nobody', 'rolled back');
		RAISE EXCEPTION 'roll the key back';
	EXCEPTION WHEN raise_exception THEN
		NULL;    -- the key and its audit event are gone; k keeps the plaintext
	END;
	INSERT INTO soak.consts VALUES (k);
END \$\$;

-- a random n, uniform over the keys (evaluate once, not per row)
CREATE FUNCTION soak.random_n() RETURNS bigint LANGUAGE sql AS
\$\$ SELECT 1 + floor(random() * (SELECT max(n) FROM soak.keys_pt))::bigint \$\$;

CREATE FUNCTION soak.do_create() RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	o text := 'owner_' || floor(random() * $OWNERS)::int;
	sc text := (ARRAY['full', 'verify', 'lists', 'read-only'])[1 + floor(random() * 4)::int];
	ips cidr[] := CASE WHEN random() < 0.2 THEN '{10.0.0.0/8}'::cidr[] ELSE '{}' END;
	days int := CASE WHEN random() < 0.3 THEN 1 + floor(random() * 365)::int END;
	k apikeys.new_key;
BEGIN
	SELECT * INTO k FROM apikeys.apikey_create(owner => o, name => 'soak', scope => sc,
		ip_restrictions => ips, expires_in_days => days,
		metadata => jsonb_build_object('soak', true));
	INSERT INTO soak.keys_pt (id, key, owner) VALUES (k.id, k.key, o);
	INSERT INTO soak.ops (op, key_id) VALUES ('create', k.id);
	RETURN 'created';
END \$\$;

-- one validation of a known key; a known key must never come back unknown
CREATE FUNCTION soak.do_validate() RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	r float8 := random();
	perm text := (ARRAY[NULL, 'lists:read', 'lists:write', 'verify:check'])[1 + floor(random() * 4)::int];
	ip inet := CASE WHEN r < 0.1 THEN '192.0.2.1'::inet WHEN r < 0.6 THEN '10.0.0.5'::inet END;
	r_n bigint := soak.random_n();
	kk text;
	v apikeys.validation;
BEGIN
	SELECT key INTO kk FROM soak.keys_pt WHERE n >= r_n ORDER BY n LIMIT 1;
	IF kk IS NULL THEN
		SELECT key INTO STRICT kk FROM soak.keys_pt ORDER BY n LIMIT 1;
	END IF;
	SELECT * INTO v FROM apikeys.apikey_validate(kk, perm, ip);
	IF v.key_id IS NULL OR v.code NOT IN ('valid', 'revoked', 'expired', 'ip_not_allowed', 'insufficient_scope') THEN
		RAISE EXCEPTION 'soak: a known key validated as %', v.code;
	END IF;
	RETURN v.code;
END \$\$;

CREATE FUNCTION soak.do_unknown() RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	a text := (apikeys.apikey_validate((SELECT not_found FROM soak.consts))).code;
	b text := (apikeys.apikey_validate('ak_' || md5(random()::text))).code;
BEGIN
	IF a <> 'not_found' OR b <> 'malformed' THEN
		RAISE EXCEPTION 'soak: unknown keys validated as % and %', a, b;
	END IF;
	RETURN 'ok';
END \$\$;

CREATE FUNCTION soak.do_rotate() RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	g interval := (ARRAY['0', '2 seconds', '1 hour']::interval[])[1 + floor(random() * 3)::int];
	r_n bigint := soak.random_n();
	p soak.keys_pt;
	k apikeys.new_key;
BEGIN
	SELECT * INTO p FROM soak.keys_pt AS t
	 WHERE n >= r_n
	   AND EXISTS (SELECT FROM apikeys.keys AS a WHERE a.id = t.id AND a.revoked_at IS NULL
	                  AND (a.expires_at IS NULL OR a.expires_at > clock_timestamp()))
	 ORDER BY n LIMIT 1 FOR UPDATE OF t SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN 'none';
	END IF;
	BEGIN
		SELECT * INTO k FROM apikeys.apikey_rotate(p.id, g);
	EXCEPTION WHEN object_not_in_prerequisite_state THEN
		-- expired (grace over) or revoked since the pick: legitimate
		RETURN 'refused';
	END;
	INSERT INTO soak.keys_pt (id, key, owner) VALUES (k.id, k.key, p.owner);
	INSERT INTO soak.ops (op, key_id, successor) VALUES ('rotate', p.id, k.id);
	RETURN 'rotated';
END \$\$;

CREATE FUNCTION soak.do_revoke() RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	r_n bigint := soak.random_n();
	p soak.keys_pt;
BEGIN
	SELECT * INTO p FROM soak.keys_pt AS t
	 WHERE n >= r_n
	   AND EXISTS (SELECT FROM apikeys.keys AS a WHERE a.id = t.id AND a.revoked_at IS NULL)
	 ORDER BY n LIMIT 1 FOR UPDATE OF t SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN 'none';
	END IF;
	IF apikeys.apikey_revoke(p.id, p.owner) THEN
		INSERT INTO soak.ops (op, key_id) VALUES ('revoke', p.id);
		RETURN 'revoked';
	END IF;
	RETURN 'already';
END \$\$;

-- run in REPEATABLE READ: analytics and usage read one snapshot and agree
CREATE FUNCTION soak.do_analytics() RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	o text := 'owner_' || floor(random() * $OWNERS)::int;
	an jsonb := apikeys.apikey_analytics(o, 7);
	u_calls bigint;
	l_keys bigint;
BEGIN
	SELECT coalesce(sum(calls), 0) INTO u_calls FROM apikeys.apikey_usage(o, 7);
	SELECT count(*) INTO l_keys FROM apikeys.apikey_list(o);
	IF (an->>'totalCalls')::bigint <> u_calls THEN
		RAISE EXCEPTION 'soak: apikey_analytics says % calls, apikey_usage %', an->>'totalCalls', u_calls;
	END IF;
	IF jsonb_array_length(an->'keys') <> l_keys THEN
		RAISE EXCEPTION 'soak: apikey_analytics lists % keys, apikey_list %', jsonb_array_length(an->'keys'), l_keys;
	END IF;
	IF random() < 0.05 THEN
		IF NOT apikeys.flush_usage() THEN
			RAISE EXCEPTION 'soak: flush_usage() returned false';
		END IF;
		RETURN 'flushed';
	END IF;
	RETURN 'ok';
END \$\$;

-- status a key must validate as, and be listed as, right now
CREATE FUNCTION soak.expected_status(k apikeys.keys) RETURNS text LANGUAGE sql STABLE AS \$\$
	SELECT CASE WHEN k.revoked_at IS NOT NULL THEN 'revoked'
	            WHEN k.expires_at <= statement_timestamp() THEN 'expired'
	            ELSE 'valid' END \$\$;
EOF
	[[ $(psql_db -At -c "SELECT count(*) FROM apikeys.keys WHERE owner = 'nobody'") == 0 ]] ||
		die "could not make a not-found key"
}

write_scripts() {
	local d=$SCRATCH/scripts
	echo "SELECT soak.do_create();" >"$d/create.sql"
	echo "SELECT soak.do_validate();" >"$d/validate.sql"
	printf 'BEGIN READ ONLY;\nSELECT soak.do_validate();\nSELECT soak.do_validate();\nCOMMIT;\n' >"$d/validate_ro.sql"
	echo "SELECT soak.do_unknown();" >"$d/unknown.sql"
	echo "SELECT soak.do_rotate();" >"$d/rotate.sql"
	echo "SELECT soak.do_revoke();" >"$d/revoke.sql"
	printf 'BEGIN ISOLATION LEVEL REPEATABLE READ;\nSELECT soak.do_analytics();\nCOMMIT;\n' >"$d/analytics.sql"
	[[ $EUID -eq 0 ]] && chown -R "$PG_USER:" "$d"
}

# unexpected_errors -- the ERROR and FATAL lines of a server log on stdin,
# but those the chaos caused on purpose: in its own sessions, and a worker's
# (or launcher's) pass it cancelled.
unexpected_errors() {
	grep -E '(ERROR|FATAL):' |
		grep -vE ' soak_(chaos|blocker) (ERROR|FATAL):' |
		grep -vE '\] apikeys (worker|launcher) ERROR:  canceling statement due to user request' || true
}

# script_txns NAME -- transactions pgbench reports for scripts/NAME.sql.
script_txns() {
	awk -v name="/$1.sql" '
		/^SQL script [0-9]+: / { cur = (index($0, name) > 0) }
		cur && /^ - [0-9]+ transactions/ { print $2; exit }' "$SCRATCH/logs/pgbench.out"
}

# ---------------------------------------------------------------- DDL chaos

CHAOS_LOG=""

# cpsql DB [-U USER] SQL... -- psql for the chaos, as application soak_chaos:
# each SQL its own -c (its own transaction); prints stdout and stderr; the
# exit status of psql (124 when it took more than 30 s).
cpsql() {
	local db=$1 user=$PG_USER q
	shift
	if [[ $1 == -U ]]; then
		user=$2
		shift 2
	fi
	local -a args=()
	for q in "$@"; do args+=(-c "$q"); done
	as_pg env PGAPPNAME=soak_chaos timeout 30 psql -X -q -At -v ON_ERROR_STOP=1 \
		-h "$SCRATCH" -p "$PORT" -U "$user" -d "$db" "${args[@]}" 2>&1
}

# pg_value SQL -- one value from the postgres database ('' on error).
pg_value() {
	cpsql postgres "$1" 2>/dev/null || true
}

# chaos_step NAME OK DETAIL -- record one step's outcome.
chaos_step() {
	if [[ $2 == 1 ]]; then
		echo "ok $1" >>"$CHAOS_LOG"
	else
		echo "unexpected $1: $(echo "$3" | tr '\n' ' ' | cut -c1-300)" >>"$CHAOS_LOG"
	fi
}

# step_ok NAME DB SQL... -- a step that must succeed.
step_ok() {
	local name=$1 out
	shift
	if out=$(cpsql "$@"); then chaos_step "$name" 1; else chaos_step "$name" 0 "$out"; fi
}

# step_fails NAME REGEX DB [-U USER] SQL... -- a step that must fail with an
# error matching REGEX.
step_fails() {
	local name=$1 re=$2 out
	shift 2
	if out=$(cpsql "$@"); then
		chaos_step "$name" 0 "succeeded"
	elif [[ $out =~ $re ]]; then
		chaos_step "$name" 1
	else
		chaos_step "$name" 0 "$out"
	fi
}

# wait_value SECONDS SQL WANT -- poll SQL (postgres database) until it
# prints WANT; false after SECONDS.
wait_value() {
	local n=0
	until [[ $(pg_value "$2") == "$3" ]]; do
		n=$((n + 1))
		[[ $n -gt $(($1 * 10)) ]] && return 1
		sleep 0.1
	done
}

worker_pid() {
	pg_value "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'apikeys worker' AND datname = '$1'"
}
launcher_pid() {
	pg_value "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'apikeys launcher'"
}

# chaos_cycle N -- one round of database DDL and signals (about 25 s).
chaos_cycle() {
	local i=$1 s=soak_scratch_$1 v=soak_victim_$1 out w l blocker
	local mint="CREATE TABLE chaos_keys AS SELECT k.key FROM generate_series(1, 30) g,
	            LATERAL apikeys.apikey_create(owner => 'chaos', name => 'k' || g) k"
	local validate="SELECT count(apikeys.apikey_validate(key)) FROM chaos_keys"

	# scratch databases, with counted validations and without the extension
	step_ok scratch_create postgres "CREATE DATABASE $s"
	step_ok scratch_extension "$s" "CREATE EXTENSION apikeys CASCADE" "$mint" "$validate" "$validate"
	step_ok template_copy postgres "CREATE DATABASE ${s}_copy TEMPLATE $s"
	step_ok drop_counted_db postgres "DROP DATABASE ${s}_copy"
	step_ok drop_counted_db postgres "DROP DATABASE $s"
	step_ok plain_db postgres "CREATE DATABASE soak_plain_$i" "DROP DATABASE soak_plain_$i"

	# a victim with a connected session
	step_ok victim_create postgres "CREATE DATABASE $v"
	step_ok victim_extension "$v" "CREATE EXTENSION apikeys CASCADE" "$mint" "$validate"
	as_pg env PGAPPNAME=soak_blocker timeout 60 psql -X -q -h "$SCRATCH" -p "$PORT" -U "$PG_USER" -d "$v" \
		-c 'SELECT pg_sleep(50)' >/dev/null 2>&1 &
	blocker=$!
	wait_value 10 "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'soak_blocker'" 1
	step_fails timeout_drop 'canceling statement due to statement timeout' \
		postgres "SET statement_timeout = '3ms'" "DROP DATABASE $v"
	step_fails unprivileged_drop "must be owner of database $v" postgres -U soak_mallory "DROP DATABASE $v"
	step_fails unprivileged_drop "must be owner of database $DB" postgres -U soak_mallory "DROP DATABASE $DB"
	step_fails unprivileged_drop "must be owner of database|statement timeout" \
		postgres -U soak_mallory "SET statement_timeout = '3ms'" "DROP DATABASE $DB"
	step_fails drop_while_connected 'is being accessed by other users' postgres "DROP DATABASE $v"
	pg_value "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'soak_blocker'" >/dev/null
	wait "$blocker" 2>/dev/null
	if wait_value 10 "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys worker' AND datname = '$v'" 1; then
		chaos_step worker_back_after_failed_drop 1
	else
		chaos_step worker_back_after_failed_drop 0 "$v has no worker after the refused drops"
	fi
	step_ok drop_extension "$v" "DROP EXTENSION apikeys"
	step_ok create_extension "$v" "CREATE EXTENSION apikeys"
	# nobody connected: cancelled anywhere (perhaps leaving it invalid), or done
	if out=$(cpsql postgres "SET statement_timeout = '3ms'" "DROP DATABASE $v") ||
		[[ $out =~ 'canceling statement due to statement timeout' ]]; then
		chaos_step timeout_drop 1
	else
		chaos_step timeout_drop 0 "$out"
	fi
	step_ok drop_counted_db postgres "DROP DATABASE IF EXISTS $v"

	# the soak database refuses new connections for a while
	step_ok allow_connections postgres "ALTER DATABASE $DB ALLOW_CONNECTIONS false"
	sleep 6
	step_ok allow_connections postgres "ALTER DATABASE $DB ALLOW_CONNECTIONS true"

	# signals: cancels are shrugged off; a terminated worker is replaced
	# before the launcher is terminated in turn
	l=$(launcher_pid)
	w=$(worker_pid "$DB")
	pg_value "SELECT pg_cancel_backend($l)" >/dev/null
	pg_value "SELECT pg_cancel_backend($w)" >/dev/null
	sleep 1
	chaos_step cancel_launcher "$([[ $l =~ ^[0-9]+$ && $(launcher_pid) == "$l" ]] && echo 1 || echo 0)" \
		"launcher '$l' after pg_cancel_backend: '$(launcher_pid)'"
	chaos_step cancel_worker "$([[ $w =~ ^[0-9]+$ && $(worker_pid "$DB") == "$w" ]] && echo 1 || echo 0)" \
		"worker '$w' after pg_cancel_backend: '$(worker_pid "$DB")'"
	w=$(worker_pid "$DB")
	pg_value "SELECT pg_terminate_backend($w)" >/dev/null
	if wait_value 10 "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys worker' AND datname = '$DB' AND pid <> ${w:-0}" 1; then
		chaos_step terminate_worker 1
	else
		chaos_step terminate_worker 0 "worker '$w' of $DB not replaced in 10 s"
	fi
	l=$(launcher_pid)
	pg_value "SELECT pg_terminate_backend($l)" >/dev/null
	if wait_value 12 "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys launcher' AND pid <> ${l:-0}" 1; then
		chaos_step terminate_launcher 1
	else
		chaos_step terminate_launcher 0 "launcher '$l' not replaced in 12 s"
	fi
}

# chaos_loop END -- chaos cycles, the first once pgbench's clients are
# connected, the last starting before END (epoch seconds).
chaos_loop() {
	local end=$1 i=0
	wait_value 30 "SELECT count(*) >= $CLIENTS FROM pg_stat_activity WHERE application_name = 'pgbench'" t
	while (($(date +%s) < end)); do
		i=$((i + 1))
		chaos_cycle "$i"
	done
	echo "cycles $i" >>"$CHAOS_LOG"
}

# ---------------------------------------------------------------- main

main() {
	if [[ ${SKIP_SETUP:-0} != 1 ]]; then
		bash "$REPO/test/setup.sh" || die "test/setup.sh failed"
	fi
	set_pg_user
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	start_cluster
	load_harness
	write_scripts

	# seed keys, all committed before the load
	psql_db -c "SELECT count(soak.do_create()) FROM generate_series(1, $SEED_KEYS)" >/dev/null ||
		die "seeding keys failed"
	local w=0
	until [[ $(value "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys worker' AND datname = '$DB'") == 1 ]]; do
		w=$((w + 1))
		[[ $w -gt 100 ]] && die "the soak database got no worker in 10 s"
		sleep 0.1
	done
	psql_db -c 'SELECT pg_stat_statements_reset()' >/dev/null || die "pg_stat_statements_reset() failed"
	local log_start
	log_start=$(stat -c %s "$SCRATCH/logs/postgres.log")

	say "load: $CLIENTS clients for ${SECS}s (create 8, validate 55, validate_ro 10, unknown 4, rotate 6, revoke 3, analytics 9)"
	local d=$SCRATCH/scripts t0 t1 rc chaos_pid=""
	t0=$(date +%s)
	CHAOS_LOG=$SCRATCH/logs/chaos.log
	: >"$CHAOS_LOG"
	if [[ ${SOAK_CHAOS:-1} != 0 ]]; then
		# new cycles start until 25 s (about one cycle) before the load ends
		chaos_loop "$((t0 + (SECS > 35 ? SECS - 25 : 10)))" &
		chaos_pid=$!
		say "DDL chaos loop running alongside (pid $chaos_pid)"
	fi
	as_pg pgbench -n -M prepared -c "$CLIENTS" -j 4 -T "$SECS" -P 15 \
		-f "$d/create.sql@8" -f "$d/validate.sql@55" -f "$d/validate_ro.sql@10" \
		-f "$d/unknown.sql@4" -f "$d/rotate.sql@6" -f "$d/revoke.sql@3" -f "$d/analytics.sql@9" \
		-h "$SCRATCH" -p "$PORT" -U "$PG_USER" "$DB" \
		>"$SCRATCH/logs/pgbench.out" 2>"$SCRATCH/logs/pgbench.err"
	rc=$?
	t1=$(date +%s)
	grep -E '^progress' "$SCRATCH/logs/pgbench.err" | sed 's/^/    /'
	say "load done in $((t1 - t0))s, pgbench exit status $rc"
	if [[ -n $chaos_pid ]]; then
		wait "$chaos_pid"
		say "chaos loop done after $(($(date +%s) - t0))s"
	fi
	# whatever became of the chaos loop, the soak database takes connections
	cpsql postgres "ALTER DATABASE $DB ALLOW_CONNECTIONS true" >/dev/null ||
		die "could not allow connections to $DB again"
	wait_value 20 "SELECT count(*) FILTER (WHERE backend_type = 'apikeys launcher') || '/' || count(*) FILTER (WHERE backend_type = 'apikeys worker' AND datname = '$DB') FROM pg_stat_activity" 1/1 ||
		say "the launcher and the soak worker are not both back after 20 s"
	echo

	# ------------------------------------------------------------ pgbench
	check "pgbench exits with status 0" "$([[ $rc -eq 0 ]] && echo 1 || echo 0)" "status $rc"
	local aborted
	aborted=$(grep -cE 'aborted|ERROR|FATAL' "$SCRATCH/logs/pgbench.err")
	check_eq "no pgbench client aborted, no error" "$aborted" 0
	if [[ $aborted -ne 0 ]]; then
		grep -E 'aborted|ERROR|FATAL' "$SCRATCH/logs/pgbench.err" | head -n 10 | sed 's/^/    /'
	fi
	local failed_tx
	failed_tx=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$SCRATCH/logs/pgbench.out")
	check_eq "zero failed pgbench transactions" "${failed_tx:-missing}" 0

	local n_create n_val n_ro n_unknown n_rot n_rev n_an
	n_create=$(script_txns create)
	n_val=$(script_txns validate)
	n_ro=$(script_txns validate_ro)
	n_unknown=$(script_txns unknown)
	n_rot=$(script_txns rotate)
	n_rev=$(script_txns revoke)
	n_an=$(script_txns analytics)
	local by_pgbench=$((${n_val:-0} + 2 * ${n_ro:-0})) validations
	validations=$(value "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '$DB' AND s.query = 'SELECT soak.do_validate()'")
	check "pgbench reports every script's transactions" \
		"$([[ -n $n_create && -n $n_val && -n $n_ro && -n $n_unknown && -n $n_rot && -n $n_rev && -n $n_an ]] && echo 1 || echo 0)"

	# ------------------------------------------------------------ chaos and waits
	local cycles=0 chaos_ok=0 chaos_bad=0 longest
	if [[ ${SOAK_CHAOS:-1} != 0 ]]; then
		cycles=$(sed -n 's/^cycles //p' "$CHAOS_LOG")
		chaos_ok=$(grep -c '^ok ' "$CHAOS_LOG")
		chaos_bad=$(grep -c '^unexpected ' "$CHAOS_LOG")
		check "DDL chaos ran alongside the load" "$([[ ${cycles:-0} -ge 1 ]] && echo 1 || echo 0)" \
			"${cycles:-0} cycles, $chaos_ok steps"
		check_eq "every chaos step did what it should (refusals refused, workers and launcher back)" "$chaos_bad" 0
		[[ $chaos_bad -ne 0 ]] && grep '^unexpected ' "$CHAOS_LOG" | head -n 10 | sed 's/^/    /'
	fi
	longest=$(value "SELECT round(coalesce(max(s.max_exec_time), 0)::numeric, 1) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '$DB' AND s.query = 'SELECT soak.do_validate()'")
	echo "longest validation: $longest ms"
	check "the longest validation took less than flush_interval + 3 s ($WAIT_LIMIT_MS ms)" \
		"$(value "SELECT $longest < $WAIT_LIMIT_MS" 2>/dev/null | sed 's/^t$/1/; s/^f$/0/')" "$longest ms"

	# ------------------------------------------------------------ counts
	check_eq "flush_usage() after the load" "$(value 'SELECT apikeys.flush_usage()')" t
	value 'SELECT apikeys.flush_usage()' >/dev/null    # last_used_at of keys locked during the first
	check "validations counted by pg_stat_statements" \
		"$([[ $validations =~ ^[0-9]+$ && $validations -ge $by_pgbench && $validations -gt 0 ]] && echo 1 || echo 0)" \
		"$validations; pgbench's per-script counts give $by_pgbench ($n_val x1 + $n_ro x2)"
	check_eq "calls + rejected in apikeys.usage = validations of known keys made" \
		"$(value 'SELECT coalesce(sum(calls + rejected), 0) FROM apikeys.usage')" "$validations"
	check_eq "apikey_usage over every owner agrees with apikeys.usage" \
		"$(value "SELECT coalesce(sum(u.calls + u.rejected), 0) FROM generate_series(0, $OWNERS - 1) g, apikeys.apikey_usage('owner_' || g, 7) u")" \
		"$(value 'SELECT coalesce(sum(calls + rejected), 0) FROM apikeys.usage')"
	check_eq "apikey_analytics totalCalls over every owner agrees with apikeys.usage" \
		"$(value "SELECT sum((apikeys.apikey_analytics('owner_' || g, 7)->>'totalCalls')::bigint) FROM generate_series(0, $OWNERS - 1) g")" \
		"$(value 'SELECT coalesce(sum(calls), 0) FROM apikeys.usage')"
	check_eq "no usage row for an unknown key" \
		"$(value 'SELECT count(*) FROM apikeys.usage u WHERE NOT EXISTS (SELECT FROM apikeys.keys k WHERE k.id = u.key_id)')" 0
	local usage_summary
	usage_summary=$(value "SELECT coalesce(sum(calls), 0) || ' calls, ' || coalesce(sum(rejected), 0) || ' rejected' FROM apikeys.usage")
	check_eq "last_used_at is set for every key with calls" \
		"$(value 'SELECT count(*) FROM apikeys.keys k WHERE k.last_used_at IS NULL AND EXISTS (SELECT FROM apikeys.usage u WHERE u.key_id = k.id AND u.calls > 0)')" 0

	# ------------------------------------------------------------ keys and audit
	check_eq "the keys the scripts created are exactly the keys in apikeys.keys" \
		"$(value 'SELECT count(*) FROM (SELECT id FROM soak.keys_pt EXCEPT SELECT id FROM apikeys.keys UNION ALL (SELECT id FROM apikeys.keys EXCEPT SELECT id FROM soak.keys_pt)) s')" 0
	check_eq "every key has exactly one 'created' event" \
		"$(value "SELECT count(*) FROM apikeys.keys k WHERE (SELECT count(*) FROM apikeys.audit a WHERE a.key_id = k.id AND a.event = 'created') <> 1")" 0
	check_eq "no audit event names an unknown key" \
		"$(value 'SELECT count(*) FROM apikeys.audit a WHERE NOT EXISTS (SELECT FROM apikeys.keys k WHERE k.id = a.key_id)')" 0

	check_eq "each key was revoked by the scripts at most once (apikey_revoke true once)" \
		"$(value "SELECT count(*) FROM (SELECT key_id FROM soak.ops WHERE op = 'revoke' GROUP BY key_id HAVING count(*) > 1) s")" 0
	check_eq "the revoked keys are exactly the keys the scripts revoked" \
		"$(value "SELECT count(*) FROM (SELECT id FROM apikeys.keys WHERE revoked_at IS NOT NULL EXCEPT SELECT key_id FROM soak.ops WHERE op = 'revoke' UNION ALL (SELECT key_id FROM soak.ops WHERE op = 'revoke' EXCEPT SELECT id FROM apikeys.keys WHERE revoked_at IS NOT NULL)) s")" 0
	check_eq "every revoked key has exactly one 'revoked' event, other keys none" \
		"$(value "SELECT count(*) FROM apikeys.keys k WHERE (SELECT count(*) FROM apikeys.audit a WHERE a.key_id = k.id AND a.event = 'revoked') <> (k.revoked_at IS NOT NULL)::int")" 0

	check_eq "every rotation has its successor with rotated_from" \
		"$(value "SELECT count(*) FROM soak.ops o LEFT JOIN apikeys.keys k ON k.id = o.successor WHERE o.op = 'rotate' AND k.rotated_from IS DISTINCT FROM o.key_id")" 0
	check_eq "keys with rotated_from = rotations made" \
		"$(value 'SELECT count(*) FROM apikeys.keys WHERE rotated_from IS NOT NULL')" \
		"$(value "SELECT count(*) FROM soak.ops WHERE op = 'rotate'")"
	check_eq "every rotation has one 'rotated' event naming its successor, and no other 'rotated' event exists" \
		"$(value "SELECT (SELECT count(*) FROM soak.ops o WHERE o.op = 'rotate' AND (SELECT count(*) FROM apikeys.audit a WHERE a.key_id = o.key_id AND a.event = 'rotated' AND a.detail->>'successor' = o.successor) <> 1) + abs((SELECT count(*) FROM apikeys.audit WHERE event = 'rotated') - (SELECT count(*) FROM soak.ops WHERE op = 'rotate'))")" 0
	check_eq "every successor's 'created' event names the key it replaced" \
		"$(value "SELECT count(*) FROM apikeys.keys k JOIN apikeys.audit a ON a.key_id = k.id AND a.event = 'created' WHERE k.rotated_from IS NOT NULL AND a.detail->>'rotated_from' IS DISTINCT FROM k.rotated_from")" 0

	# ------------------------------------------------------------ expiry
	local n=0
	until [[ $(value "SELECT count(*) FROM apikeys.keys WHERE expires_at <= now() AND expired_at IS NULL AND revoked_at IS NULL") == 0 ]]; do
		n=$((n + 1))
		[[ $n -gt 100 ]] && break
		sleep 0.1
	done
	check "the worker marks every key past expires_at (not revoked) within 10 s" "$([[ $n -le 100 ]] && echo 1 || echo 0)"
	check_eq "every key marked expired has exactly one 'expired' event, other keys none" \
		"$(value "SELECT count(*) FROM apikeys.keys k WHERE (SELECT count(*) FROM apikeys.audit a WHERE a.key_id = k.id AND a.event = 'expired') <> (k.expired_at IS NOT NULL)::int")" 0
	check_eq "no 'expired' event before expires_at, none after a revocation" \
		"$(value "SELECT count(*) FROM apikeys.audit a JOIN apikeys.keys k ON k.id = a.key_id WHERE a.event = 'expired' AND (a.at < k.expires_at OR k.expires_at IS NULL OR k.revoked_at < a.at)")" 0

	# ------------------------------------------------------------ statuses (after the counts: this validates)
	check_eq "every key validates as its row says (revoked / expired / valid, right key id)" \
		"$(value "SELECT count(*) FROM (SELECT k, apikeys.apikey_validate(p.key, NULL, '10.0.0.5') AS v FROM soak.keys_pt p JOIN apikeys.keys k USING (id)) s WHERE (v).code <> soak.expected_status(k) OR (v).key_id <> (k).id")" 0
	check_eq "no key is both revoked and valid" \
		"$(value "SELECT count(*) FROM soak.keys_pt p JOIN apikeys.keys k USING (id) WHERE k.revoked_at IS NOT NULL AND (apikeys.apikey_validate(p.key, NULL, '10.0.0.5')).valid")" 0
	check_eq "apikey_list reports every key's status as its row says" \
		"$(value "SELECT count(*) FROM generate_series(0, $OWNERS - 1) g, apikeys.apikey_list('owner_' || g) l JOIN apikeys.keys k ON k.id = l.id WHERE l.status <> replace(soak.expected_status(k), 'valid', 'active') OR l.is_revoked <> (k.revoked_at IS NOT NULL)")" 0

	# ------------------------------------------------------------ the server
	local crashes
	crashes=$(tail -c +"$((log_start + 1))" "$SCRATCH/logs/postgres.log" |
		grep -cE 'terminated by signal|PANIC|exited with exit code [2-9]|server process .* was terminated')
	check_eq "no server process crashed (server log)" "$crashes" 0
	[[ $crashes -ne 0 ]] && grep -E 'terminated by signal|PANIC|exited with exit code|was terminated' \
		"$SCRATCH/logs/postgres.log" | head -n 10 | sed 's/^/    /'
	check_eq "the launcher and the soak database's worker are running" \
		"$(value "SELECT count(*) FILTER (WHERE backend_type = 'apikeys launcher') || '/' || count(*) FILTER (WHERE backend_type = 'apikeys worker' AND datname = '$DB') FROM pg_stat_activity")" "1/1"
	local errors
	errors=$(tail -c +"$((log_start + 1))" "$SCRATCH/logs/postgres.log" | unexpected_errors | wc -l)
	check_eq "no ERROR or FATAL in the server log during the load (but the chaos's own)" "$errors" 0
	[[ $errors -ne 0 ]] && tail -c +"$((log_start + 1))" "$SCRATCH/logs/postgres.log" |
		unexpected_errors | sed -E 's/^[^]]*\] //' | sort | uniq -c | sort -rn | head -n 10 | sed 's/^/    /'

	# ------------------------------------------------------------ summary
	echo
	echo "==================== soak summary"
	printf '  %-28s %s\n' "duration" "$((t1 - t0))s, $CLIENTS clients"
	printf '  %-28s %s\n' "transactions" "$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$SCRATCH/logs/pgbench.out"), $(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$SCRATCH/logs/pgbench.out") tps"
	printf '  %-28s %s\n' "validations of known keys" "$validations (pgbench counted $n_val single, $n_ro read-only pairs: $by_pgbench)"
	printf '  %-28s %s\n' "unknown-key transactions" "$n_unknown (2 validations each, not counted)"
	printf '  %-28s %s\n' "create transactions" "$n_create"
	printf '  %-28s %s\n' "rotate transactions" "$n_rot ($(value "SELECT count(*) FROM soak.ops WHERE op = 'rotate'") rotated)"
	printf '  %-28s %s\n' "revoke transactions" "$n_rev ($(value "SELECT count(*) FROM soak.ops WHERE op = 'revoke'") revoked)"
	printf '  %-28s %s\n' "analytics transactions" "$n_an"
	printf '  %-28s %s\n' "keys at the end" "$(value "SELECT count(*) || ' (' || count(*) FILTER (WHERE revoked_at IS NOT NULL) || ' revoked, ' || count(*) FILTER (WHERE expired_at IS NOT NULL) || ' marked expired)' FROM apikeys.keys")"
	printf '  %-28s %s\n' "audit events" "$(value "SELECT string_agg(event || ' ' || n, ', ' ORDER BY event) FROM (SELECT event, count(*) AS n FROM apikeys.audit GROUP BY event) s")"
	printf '  %-28s %s\n' "usage after the load" "$usage_summary"
	printf '  %-28s %s\n' "DDL chaos" "${cycles:-0} cycles, $chaos_ok steps as expected, $chaos_bad unexpected"
	printf '  %-28s %s\n' "longest validation" "$longest ms (max_tracked_keys $MAX_TRACKED, flush every ${FLUSH_MS} ms)"
	echo
	echo "$PASSED passed, $FAILED failed"
	[[ $FAILED -eq 0 ]]
}

main "$@"
