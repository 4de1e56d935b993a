#!/usr/bin/env bash
# test/http/replica.sh -- hot standbys over HTTP (SPEC §13, issue 15,
# docs/standbys.md): the example deployment examples/replica/ (a primary, a
# streaming hot standby made with pg_basebackup -R, a PostgREST for each,
# nginx sending GET and HEAD to the standby's and the rest to the primary's),
# started with its own run.sh on free loopback ports in a scratch directory.
#
#   bash test/http/replica.sh      on its own (from the repo root, as root)
#   source test/http/replica.sh    from test/http/run.sh, after the seed API's
#                                  checks (uses its ok/not_ok/req/run_table,
#                                  PASS, FAIL and scratch directory S)
#
# Checks: routing (which PostgREST answered each request, from nginx's
# upstream log); a key created with a POST (primary) works with a GET
# (standby) once replayed; while the standby's replay is paused a key revoked
# through nginx still reads valid there, which proves the GET is answered by
# the standby, then 401 in every pooled session once replayed; a write can
# reach neither the standby (GET or POST straight to its PostgREST: 405/400,
# nothing written, no credit charged) nor a GET route; the primary's
# PostgREST answers reads while the standby's is down; rate limits are per
# server; and, when the installed apikeys ships standby usage
# (apikeys.apikey_standby_status() exists), exactly-once counts on the
# primary (apikeys.usage, apikeys.standby_batches, lastUsedAt, analytics)
# through flush_usage() on the standby, with the primary down for a while
# (validations do not wait; counts wait and are shipped after, with the
# rate-limited log lines) and across a clean standby restart. Without it the
# shipping checks are skipped with a "# skip" line. No key in any log;
# `run.sh stop` stops everything. Every wait is bounded; whatever it started
# is stopped at exit, pass or fail.
#
# Environment (on its own):
#   KEEP_TEST_DIR=1     keep the scratch directory (data, configs, logs)
#   SKIP_SETUP=1        in a git checkout, do not run test/setup.sh first

# Keys are used by name in the request tables; functions run from the EXIT trap.
# shellcheck disable=SC2034,SC2317

R_KEYS=()

# rsql_p / rsql_s QUERY... -- queries as superuser in the example's database
# on the primary / the standby (unaligned, tuples only; each argument one -c).
rsql() {
	local port=$1 q
	shift
	local -a cmds=()
	for q in "$@"; do cmds+=(-c "$q"); done
	psql_at "$R_DIR" "$port" apikeys_replica -A -t "${cmds[@]}"
}
rsql_p() { rsql "$R_PRIMARY" "$@"; }
rsql_s() { rsql "$R_STANDBY" "$@"; }

# r_mint VAR NAME [SCOPE] -- a key of owner acme minted on the primary (not
# validated there: its only validations are the test's requests) into VAR,
# its id into VAR_ID.
r_mint() {
	local row
	row=$(rsql_p "SELECT id || ' ' || key FROM apikeys.apikey_create('acme', '$2', scope => '${3:-full}')")
	printf -v "$1" '%s' "${row#* }"
	printf -v "$1_ID" '%s' "${row%% *}"
	R_KEYS+=("${row#* }")
}

# r_replayed -- wait (10 s at most) until the standby has replayed the
# primary's WAL as of now.
r_replayed() {
	local lsn
	lsn=$(rsql_p "SELECT pg_current_wal_lsn()") || return 1
	r_poll 10 r_replayed_to "$lsn"
}
r_replayed_to() { [[ $(rsql_s "SELECT pg_last_wal_replay_lsn() >= '$1'" 2>/dev/null) == t ]]; }

# r_example ARG -- examples/replica/run.sh ARG on this test's directory and
# ports, bounded in time.
r_example() {
	REPLICA_DIR=$R_DIR PRIMARY_PORT=$R_PRIMARY STANDBY_PORT=$R_STANDBY \
		PGRST_PRIMARY_PORT=$R_PGRST_P PGRST_STANDBY_PORT=$R_PGRST_S NGINX_PORT=$R_NGINX SKIP_SETUP=1 \
		timeout 240 bash "$ROOT/examples/replica/run.sh" "$1"
}

# rreq METHOD PATH [CURL ARGS...] -- req through nginx, then R_UP: the
# upstream address(es) nginx logged for it ("-" when nginx answered itself),
# and R_MS: how long the request took (ms).
rreq() {
	local log=$R_DIR/http/nginx/upstream.log before i t0
	before=$(wc -l <"$log" 2>/dev/null || echo 0)
	t0=$(date +%s%N)
	req "$@"
	R_MS=$((($(date +%s%N) - t0) / 1000000))
	R_UP=""
	for ((i = 0; i < 20; i++)); do
		if (($(wc -l <"$log") > before)); then
			R_UP=$(tail -n 1 "$log" | cut -d' ' -f5-)
			return 0
		fi
		sleep 0.1
	done
}

# expect_up DESC primary|standby -- the last rreq was answered by that
# server's PostgREST (the last address nginx tried).
expect_up() {
	local port=$R_PGRST_P
	[[ $2 == standby ]] && port=$R_PGRST_S
	if [[ $R_UP =~ 127\.0\.0\.1:$port$ ]]; then
		ok "$1"
	else
		not_ok "$1" "$LAST: nginx logged upstream '$R_UP', expected 127.0.0.1:$port (the $2's PostgREST)"
	fi
}

# direct WHICH METHOD PATH [CURL ARGS...] -- req straight to the primary's or
# the standby's PostgREST, past nginx.
direct() {
	local port=$R_PGRST_P
	[[ $1 == standby ]] && port=$R_PGRST_S
	TARGET=http://127.0.0.1:$port req "${@:2}"
}

# r_keyless_401 PORT SECONDS -- wait until PostgREST on PORT answers a
# keyless GET /rpc/credits with 401 (it serves its database again).
r_keyless_401() { r_poll "$2" r_is_401 "$1"; }
r_is_401() { [[ $(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/rpc/credits") == 401 ]]; }

# r_status COLUMN -- that column of apikeys.apikey_standby_status() on the standby.
r_status() { rsql_s "SELECT $1 FROM apikeys.apikey_standby_status()"; }
# r_status_is EXPR WANT -- true if r_status EXPR is WANT.
r_status_is() { [[ $(r_status "$1") == "$2" ]]; }
# r_shipped -- true if nothing is pending on the standby; else asks for a ship.
r_shipped() {
	[[ $(r_status pending_calls) == 0 ]] && return 0
	r_flush >/dev/null
	return 1
}
# r_calls ID -- calls/rejected of key ID in the primary's apikeys.usage.
r_calls() { rsql_p "SELECT COALESCE(sum(calls), 0) || '/' || COALESCE(sum(rejected), 0) FROM apikeys.usage WHERE key_id = '$1'"; }

# r_poll SECONDS CMD... -- until CMD succeeds, at most SECONDS (wall clock).
r_poll() {
	local end=$((SECONDS + $1))
	shift
	while ((SECONDS <= end)); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

# r_flush -- SELECT apikeys.flush_usage() on the standby (bounded): its answer.
r_flush() { rsql_s "SET statement_timeout = '60s'" "SELECT apikeys.flush_usage()" 2>&1; }

# ---------------------------------------------------------------- the checks

replica_checks() {
	local CHECK_PREFIX="replica: " BASE TARGET="" fail0=$FAIL t0 out i codes
	t0=$(date +%s)
	R_DIR=$S/replica
	R_PRIMARY=$(free_port 55401)
	R_STANDBY=$(free_port $((R_PRIMARY + 1)))
	R_PGRST_P=$(free_port 3101)
	R_PGRST_S=$(free_port $((R_PGRST_P + 1)))
	R_NGINX=$(free_port 8101)
	BASE=http://127.0.0.1:$R_NGINX
	at_exit r_example stop

	# ------------------------------------------------------------ set-up
	if ! out=$(r_example start 2>&1); then
		not_ok "examples/replica/run.sh start brings up a primary, a standby, two PostgRESTs and nginx" \
			"$(tail -n 15 <<<"$out")"
		replica_logs
		return 1
	fi
	ok "examples/replica/run.sh start: primary :$R_PRIMARY, standby :$R_STANDBY (pg_basebackup -R), PostgREST :$R_PGRST_P and :$R_PGRST_S, nginx :$R_NGINX ($(($(date +%s) - t0)) s)"
	expect_sql "the standby is in recovery, streaming from the primary as replicator (pg_stat_replication)" \
		"$(rsql_s "SELECT pg_is_in_recovery()")/$(rsql_p "SELECT usename || ' ' || application_name || ' ' || state FROM pg_stat_replication")" \
		"t/replicator standby1 streaming"
	if out=$(r_example status 2>&1); then
		ok "examples/replica/run.sh status: every piece runs (exit 0)"
	else
		not_ok "examples/replica/run.sh status: every piece runs (exit 0)" "$out"
	fi

	r_mint R_BOOT bootstrap
	r_replayed || not_ok "the standby replays the bootstrap key within 10 s"

	# ------------------------------------------------------------ routing
	rreq GET /v1/api-keys -H "X-API-Key: $R_BOOT"
	expect "GET /v1/api-keys -> 200, the bootstrap key listed" 200 "any(.[]; .id == \"$R_BOOT_ID\")"
	expect_up "... answered by the standby's PostgREST" standby
	rreq HEAD /v1/api-keys -H "X-API-Key: $R_BOOT"
	expect "HEAD /v1/api-keys -> 200" 200
	expect_up "... answered by the standby's PostgREST" standby
	rreq POST /v1/api-keys -H "X-API-Key: $R_BOOT" -H "Content-Type: application/json" \
		-d '{"name": "made over HTTP", "scope": "full"}'
	expect "POST /v1/api-keys -> 201 with the key" 201 '.key | test("^ak_")'
	expect_up "... answered by the primary's PostgREST" primary
	R_NEW=$(jq -r '.key // empty' "$S/body")
	R_NEW_ID=$(jq -r '.id // empty' "$S/body")
	R_KEYS+=("$R_NEW")
	if r_replayed; then
		ok "the standby replays the new key's commit within 10 s"
	else
		not_ok "the standby replays the new key's commit within 10 s"
	fi
	rreq GET /v1/account/credits -H "X-API-Key: $R_NEW"
	expect "the new key (created on the primary) gets 200 on GET /v1/account/credits" 200 object
	expect_up "... answered by the standby's PostgREST" standby
	rreq GET '/v1/api-keys/analytics?days=7' -H "X-API-Key: $R_NEW"
	expect "GET /v1/api-keys/analytics -> 200" 200 '(.dailyUsage | length) == 7'
	expect_up "... answered by the standby's PostgREST" standby

	# ------------------------------------------------------------ revocation at replay
	rsql_s "SELECT pg_wal_replay_pause()" >/dev/null
	rreq DELETE "/v1/api-keys/$R_NEW_ID" -H "X-API-Key: $R_BOOT"
	expect "with the standby's replay paused, DELETE /v1/api-keys/:id -> 204" 204 no-body
	expect_up "... answered by the primary's PostgREST" primary
	direct primary GET /rpc/credits -H "X-API-Key: $R_NEW"
	expect "... the primary refuses the key at once (401 from its PostgREST)" 401 E401
	rreq GET /v1/account/credits -H "X-API-Key: $R_NEW"
	expect "... while a GET through nginx still gets 200: the standby answers it, and has not replayed the revocation" 200 object
	expect_up "... (nginx logged the standby's PostgREST)" standby
	rsql_s "SELECT pg_wal_replay_resume()" >/dev/null
	if r_replayed; then
		ok "replay resumed: the standby replays the revocation within 10 s"
	else
		not_ok "replay resumed: the standby replays the revocation within 10 s"
	fi
	codes=""
	for ((i = 0; i < 12; i++)); do
		rreq GET /v1/account/credits -H "X-API-Key: $R_NEW"
		codes+="$CODE "
	done
	expect_sql "once replayed, 12 GETs with the revoked key across the standby PostgREST's pooled sessions -> all 401" \
		"$codes" "$(printf '401 %.0s' {1..12})"
	expect "... with PostgREST's body, code PT401, 'revoked'" 401 E401 '.message | test("revoked")'
	rreq GET /v1/api-keys -H "X-API-Key: $R_BOOT"
	expect "the list (from the standby) shows the key revoked" 200 "any(.[]; .id == \"$R_NEW_ID\" and .isRevoked == true)"

	# ------------------------------------------------------------ writes never reach the standby
	r_mint R_VICTIM victim
	rsql_p "SELECT apikeys.apikey_credit_add('acme', 'email_credit', 100)" >/dev/null
	r_replayed
	rreq GET "/v1/api-keys/$R_VICTIM_ID" -H "X-API-Key: $R_BOOT"
	expect "GET /v1/api-keys/:id (a revoke sent as GET) -> 405 from nginx, Allow: DELETE" 405
	expect_header "... Allow: DELETE" '^allow: DELETE'
	direct standby GET "/rpc/revoke_key?id=$R_VICTIM_ID" -H "X-API-Key: $R_BOOT"
	expect "GET /rpc/revoke_key straight to the standby's PostgREST -> 405 (25006: READ ONLY)" 405 ERR '.code == "25006"'
	direct standby POST /rpc/revoke_key -H "X-API-Key: $R_BOOT" -H "Content-Type: application/json" \
		-d "{\"id\": \"$R_VICTIM_ID\"}"
	expect "POST /rpc/revoke_key straight to the standby's PostgREST -> 400 (0A000: no read-write transaction in recovery)" 400 ERR '.code == "0A000"'
	direct standby POST /rpc/create_key -H "X-API-Key: $R_BOOT" -H "Content-Type: application/json" \
		-d '{"name": "misrouted", "scope": "full"}'
	expect "POST /rpc/create_key straight to the standby's PostgREST -> 400 (0A000)" 400 ERR '.code == "0A000"'
	expect_sql "... nothing written: the victim key is active on the primary, no key 'misrouted'" \
		"$(rsql_p "SELECT CASE WHEN revoked_at IS NULL THEN 'active' ELSE 'revoked' END FROM apikeys.keys WHERE id = '$R_VICTIM_ID'")/$(rsql_p "SELECT count(*) FROM apikeys.keys WHERE name = 'misrouted'")" \
		"active/0"
	direct standby POST /rpc/verify_email -H "X-API-Key: $R_BOOT" -H "Content-Type: application/json" \
		-H "Content-Profile: apexverify" -d '{"email": "jane@example.com"}'
	expect "the metered POST straight to the standby's PostgREST -> 405, 25006 'cannot charge credits on a hot standby'" \
		405 ERR '.code == "25006" and (.message | test("hot standby"))'
	rreq POST /v1/verify/email -H "X-API-Key: $R_BOOT" -d '{"email": "jane@example.com"}'
	expect "POST /v1/verify/email through nginx -> 200 (the primary charges)" 200 '.email == "jane@example.com"'
	expect_up "... answered by the primary's PostgREST" primary
	expect_sql "... 1 email_credit charged in all (100 -> 99 on the primary)" \
		"$(rsql_p "SELECT apikeys.apikey_credits('acme') ->> 'email_credit'")" "99.0"

	# ------------------------------------------------------------ rate limits per server
	r_mint R_RL limited
	rsql_p "SELECT apikeys.apikey_ratelimit_set('hourly', 2, '1 hour', key_id => '$R_RL_ID')" >/dev/null
	r_replayed
	codes=""
	for ((i = 0; i < 3; i++)); do
		rreq GET /v1/account/credits -H "X-API-Key: $R_RL"
		codes+="$CODE "
	done
	expect_sql "a key limited to 2 an hour: 3 GETs through nginx (the standby) -> 200 200 429" "$codes" "200 200 429 "
	direct primary GET /rpc/credits -H "X-API-Key: $R_RL"
	expect "... the primary keeps its own window: 200 there, RateLimit-Remaining 1" 200 object
	expect_header "... RateLimit-Remaining: 1" '^ratelimit-remaining: 1'

	# ------------------------------------------------------------ the standby's PostgREST down
	stop_pid postgrest "$(cat "$R_DIR/http/postgrest-standby.pid")" TERM
	rreq GET /v1/api-keys -H "X-API-Key: $R_BOOT"
	expect "the standby's PostgREST stopped: GET /v1/api-keys through nginx -> 200 still" 200 array
	expect_up "... answered by the primary's PostgREST (the backup server of the read upstream)" primary
	if out=$(r_example start 2>&1); then
		ok "run.sh start again (idempotent) restarts only what is down"
	else
		not_ok "run.sh start again (idempotent) restarts only what is down" "$(tail -n 10 <<<"$out")"
	fi
	# nginx sends reads to the backup for fail_timeout (10 s) after a failure
	if r_poll 20 r_read_on_standby; then
		ok "... and GET /v1/api-keys goes to the standby's PostgREST again (within nginx's fail_timeout)"
	else
		not_ok "... and GET /v1/api-keys goes to the standby's PostgREST again within 20 s" "last: $CODE from '$R_UP'"
	fi

	# ------------------------------------------------------------ the standby down
	pg_cluster_stop "$R_DIR/standby"
	rreq GET /v1/api-keys -H "X-API-Key: $R_BOOT"
	expect "the standby stopped: GET /v1/api-keys through nginx -> 200 still" 200 array
	expect_up "... answered by the primary's PostgREST (the standby's answered 503)" primary
	if out=$(r_example start 2>&1); then
		ok "run.sh start brings the standby back (its PostgREST reconnects by itself)"
	else
		not_ok "run.sh start brings the standby back (its PostgREST reconnects by itself)" "$(tail -n 10 <<<"$out")"
	fi
	if r_keyless_401 "$R_PGRST_S" 30 && r_poll 20 r_read_on_standby; then
		ok "... and reads go to the standby's PostgREST again"
	else
		not_ok "... and reads go to the standby's PostgREST again within 50 s" "last: $CODE from '$R_UP'"
	fi

	# ------------------------------------------------------------ usage shipping
	if [[ $(rsql_s "SELECT to_regprocedure('apikeys.apikey_standby_status()') IS NOT NULL") == t ]]; then
		replica_shipping
	else
		echo "# skip: the installed apikeys has no apikeys.apikey_standby_status(): usage shipping is not checked"
	fi

	# ------------------------------------------------------------ logs, stop
	local leaked=() k f
	for k in "${R_KEYS[@]}"; do
		[[ -n $k ]] || continue
		for f in "$R_DIR"/*.log "$R_DIR"/http/*.log "$R_DIR"/http/nginx/*.log; do
			[[ -f $f ]] && grep -qF -- "$k" "$f" && leaked+=("${k:0:8}... in ${f#"$R_DIR"/}")
		done
	done
	if [[ ${#leaked[@]} -eq 0 ]]; then
		ok "no key in the primary's, the standby's, PostgREST's or nginx's logs"
	else
		not_ok "no key in the primary's, the standby's, PostgREST's or nginx's logs" "${leaked[@]}"
	fi
	[[ $FAIL -gt $fail0 ]] && replica_logs
	out=$(r_example stop 2>&1)
	if ! r_example status >/dev/null 2>&1 && ! pg_cluster_running "$R_DIR/primary" && ! pg_cluster_running "$R_DIR/standby" &&
		! port_in_use "$R_NGINX" && ! port_in_use "$R_PGRST_P" && ! port_in_use "$R_PGRST_S"; then
		ok "examples/replica/run.sh stop stops both servers, both PostgRESTs and nginx"
	else
		not_ok "examples/replica/run.sh stop stops both servers, both PostgRESTs and nginx" "$out"
	fi
	echo "# replica.sh took $(($(date +%s) - t0)) s"
}

# replica_shipping -- usage counted on the standby reaches the primary once.
replica_shipping() {
	local before after out n i ms codes down

	r_mint R_SHIP shipped
	r_mint R_GONE gone
	rsql_p "SELECT apikeys.apikey_revoke('$R_GONE_ID')" >/dev/null
	r_replayed
	out=$(r_flush)
	expect_sql "SELECT apikeys.flush_usage() on the standby -> true" "$out" t
	before=$(r_status "shipped_calls + pending_calls || '/' || shipped_rejected + pending_rejected")
	codes=""
	for ((i = 0; i < 7; i++)); do
		rreq GET /v1/account/credits -H "X-API-Key: $R_SHIP"
		codes+="$CODE ${R_UP##*:} "
	done
	for ((i = 0; i < 3; i++)); do
		rreq GET /v1/account/credits -H "X-API-Key: $R_GONE"
		codes+="$CODE ${R_UP##*:} "
	done
	expect_sql "7 GETs with a fresh key and 3 with a revoked one, all answered by the standby" "$codes" \
		"$(printf "200 $R_PGRST_S %.0s" {1..7})$(printf "401 $R_PGRST_S %.0s" {1..3})"
	expect_sql "... counted on the standby: apikey_standby_status() shipped + pending calls/rejected grew by 7/3" \
		"$(r_status "shipped_calls + pending_calls || '/' || shipped_rejected + pending_rejected")" \
		"$((${before%/*} + 7))/$((${before#*/} + 3))"
	out=$(r_flush)
	expect_sql "flush_usage() on the standby -> true (ships and waits)" "$out" t
	after=$(r_status "shipped_calls || '/' || shipped_rejected")
	expect_sql "... apikey_standby_status(): shipped_calls/shipped_rejected grew by 7/3" \
		"$after" "$((${before%/*} + 7))/$((${before#*/} + 3))"
	out=$(r_status "in_recovery || ' ' || pending_keys || ' ' || pending_calls || ' ' || lag_seconds || ' ' || dropped_calls || ' ' || (last_error IS NULL)")
	if [[ $out == "true 0 0 0 0 true" ]]; then
		ok "... in_recovery, nothing pending, lag 0, nothing dropped, no error"
	else
		not_ok "... in_recovery, nothing pending, lag 0, nothing dropped, no error" "got '$out'" \
			"$(rsql_s "SELECT row_to_json(s) FROM apikeys.apikey_standby_status() s")"
	fi
	expect_sql "the primary's apikeys.usage has them once: 7 calls of the fresh key, 3 rejected of the revoked one" \
		"$(r_calls "$R_SHIP_ID") $(r_calls "$R_GONE_ID")" "7/0 0/3"
	expect_sql "apikeys.standby_batches on the primary: a row for standby1 with the standby's last batch, no duplicates" \
		"$(rsql_p "SELECT standby || ' ' || last_batch || ' ' || duplicates || ' ' || (calls >= 7 AND rejected >= 3) FROM apikeys.standby_batches")" \
		"standby1 $(r_status last_batch) 0 true"
	out=$(r_flush)
	expect_sql "a second flush_usage() on the standby and one on the primary add nothing" \
		"$out $(rsql_p "SELECT apikeys.flush_usage()") $(r_calls "$R_SHIP_ID")" "t t 7/0"
	r_replayed
	rreq GET /v1/api-keys -H "X-API-Key: $R_BOOT"
	expect "the list (from the standby) shows lastUsedAt for the key used only on the standby" 200 \
		"any(.[]; .id == \"$R_SHIP_ID\" and (.lastUsedAt | type) == \"string\")"
	rreq GET '/v1/api-keys/analytics?days=7' -H "X-API-Key: $R_BOOT"
	expect "analytics counts them: totalCalls 7 for that key" 200 \
		"any(.keys[]; .keyId == \"$R_SHIP_ID\" and .totalCalls == 7)"

	# the primary down: validations go on, counts wait
	out=$(r_flush)
	down=$SECONDS
	pg_cluster_stop "$R_DIR/primary"
	codes="" ms=0
	for ((i = 0; i < 5; i++)); do
		rreq GET /v1/account/credits -H "X-API-Key: $R_SHIP"
		((R_MS > ms)) && ms=$R_MS
		codes+="$CODE ${R_UP##*:} "
	done
	if [[ $codes == "$(printf "200 $R_PGRST_S %.0s" {1..5})" && $ms -lt 1000 ]]; then
		ok "the primary stopped: 5 GETs through nginx -> 200 from the standby, the slowest in $ms ms (no wait on the network)"
	else
		not_ok "the primary stopped: 5 GETs through nginx -> 200 from the standby, each within 1 s" "got '$codes', the slowest in $ms ms"
	fi
	# the worker tries every flush_interval (10 s)
	if r_poll 30 r_status_is "pending_calls || ' ' || connected || ' ' || (last_error IS NOT NULL) || ' ' || (connection_errors > 0)" \
		"5 false true true"; then
		ok "... apikey_standby_status(): 5 calls pending, not connected, last_error and connection_errors set"
	else
		not_ok "... apikey_standby_status(): 5 calls pending, not connected, last_error and connection_errors set" \
			"$(rsql_s "SELECT row_to_json(s) FROM apikeys.apikey_standby_status() s")"
	fi
	if r_poll 20 grep -q 'apikeys could not ship usage to the primary' "$R_DIR/standby.log"; then
		ok "... the standby logs 'apikeys could not ship usage to the primary'"
	else
		not_ok "... the standby logs 'apikeys could not ship usage to the primary'" "$(tail -n 5 "$R_DIR/standby.log")"
	fi
	if ! pg_cluster_start "$R_DIR/primary" "$R_DIR/primary.log" 60 2>/dev/null; then
		not_ok "the primary starts again"
		return 1
	fi
	out=$(r_flush)
	if r_poll 30 r_shipped; then
		ok "the primary back: the standby ships what waited (pending_calls 0)"
	else
		not_ok "the primary back: the standby ships what waited (pending_calls 0)" \
			"flush_usage: $out" "$(rsql_s "SELECT row_to_json(s) FROM apikeys.apikey_standby_status() s")"
	fi
	expect_sql "... once: the primary's apikeys.usage has 12 calls of that key" "$(r_calls "$R_SHIP_ID")" "12/0"
	if r_poll 20 grep -q 'apikeys is shipping usage to the primary again' "$R_DIR/standby.log"; then
		ok "... and the standby logs 'apikeys is shipping usage to the primary again'"
	else
		not_ok "... and the standby logs 'apikeys is shipping usage to the primary again'" "$(tail -n 5 "$R_DIR/standby.log")"
	fi
	n=$(grep -c 'apikeys could not ship usage to the primary' "$R_DIR/standby.log")
	down=$((SECONDS - down))
	if [[ $n -ge 1 && $n -le $((down / 60 + 1)) ]]; then
		ok "... 'could not ship' logged $n time(s) for an outage of $down s (at most once a minute)"
	else
		not_ok "... 'could not ship' logged at most once a minute" "$n lines for an outage of $down s"
	fi

	# a clean standby restart: the counts survive in the shutdown dump
	r_keyless_401 "$R_PGRST_P" 30 || not_ok "the primary's PostgREST serves again within 30 s"
	codes=""
	for ((i = 0; i < 4; i++)); do
		rreq GET /v1/account/credits -H "X-API-Key: $R_SHIP"
		codes+="$CODE "
	done
	expect_sql "4 more GETs through nginx -> 200" "$codes" "200 200 200 200 "
	if pg_cluster_start "$R_DIR/standby" "$R_DIR/standby.log" 60 2>/dev/null; then
		ok "the standby restarts (fast shutdown) with those counts in flight"
	else
		not_ok "the standby restarts (fast shutdown) with those counts in flight"
		return 1
	fi
	out=$(r_flush)
	expect_sql "... flush_usage() on the restarted standby -> true" "$out" t
	expect_sql "... the primary's apikeys.usage has 16 calls of that key: nothing lost, nothing twice" \
		"$(r_calls "$R_SHIP_ID")" "16/0"
	r_keyless_401 "$R_PGRST_S" 30 || not_ok "the standby's PostgREST serves again within 30 s"
}

# r_read_on_standby -- a GET /v1/api-keys through nginx is answered 200 by
# the standby's PostgREST.
r_read_on_standby() {
	rreq GET /v1/api-keys -H "X-API-Key: $R_BOOT"
	[[ $CODE == 200 && $R_UP =~ 127\.0\.0\.1:$R_PGRST_S$ ]]
}

# replica_logs -- the last lines of the example's logs (on failure).
replica_logs() {
	local f
	for f in "$R_DIR/primary.log" "$R_DIR/standby.log" "$R_DIR/http/postgrest-primary.log" \
		"$R_DIR/http/postgrest-standby.log" "$R_DIR/http/nginx/error.log" "$R_DIR/http/nginx/upstream.log"; do
		[[ -s $f ]] || continue
		echo "# ---- last 15 lines of replica/${f#"$R_DIR"/}"
		tail -n 15 "$f" | sed 's/^/#   /'
	done
}

# ---------------------------------------------------------------- on its own

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	set -uo pipefail
	ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	# shellcheck source=test/lib.sh
	source "$ROOT/test/lib.sh"
	# shellcheck source=test/http/checks.sh
	source "$ROOT/test/http/checks.sh"
	PASS=0 FAIL=0 CODE="" LAST="" S=""
	finish() {
		[[ $EXIT_STATUS -ne 0 && $FAIL -eq 0 ]] && FAIL=1
		echo "$PASS passed, $FAIL failed"
		[[ $FAIL -eq 0 ]] && exit 0
		exit 1
	}
	trap_exit
	at_exit finish
	cd "$ROOT" || exit 1
	ensure_cmds curl jq || bail "curl and jq are installed"
	install_nginx || bail "nginx is installed (apt-get install nginx-light)"
	install_postgrest || bail "PostgREST is installed from npm $POSTGREST_PKG@$POSTGREST_PKG_VERSION"
	[[ -e $ROOT/.git ]] || SKIP_SETUP=1
	run_setup || bail "test/setup.sh builds and installs the extension"
	make_scratch apikeys-replica KEEP_TEST_DIR || bail "scratch directory"
	S=$SCRATCH
	replica_checks
	exit 0
fi
replica_checks
