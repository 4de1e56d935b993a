#!/usr/bin/env bash
# examples/replica/run.sh -- a primary and a streaming hot standby of it on
# one machine, each with its own PostgREST, behind one nginx that sends the
# seed API's GET and HEAD requests to the standby's PostgREST and every
# other method to the primary's (docs/standbys.md; walk-through in README.md).
#
#   bash examples/replica/run.sh start    create what is missing, start what is not running
#   bash examples/replica/run.sh status   what runs, replication, usage shipping
#   bash examples/replica/run.sh stop     stop everything it started
#
# Everything lives in REPLICA_DIR (/var/tmp/apikeys-replica) and listens on
# loopback and Unix sockets in that directory only; it is owned by `postgres`
# when run as root (else by the caller), and every server runs as that user:
#   primary/, primary.log    the primary, 127.0.0.1:5501, with database
#                            apikeys_replica (the extension, the authenticator
#                            role, examples/postgrest/verify.sql) and the
#                            replication role `replicator`
#   standby/, standby.log    its hot standby, 127.0.0.1:5502, made with
#                            pg_basebackup -R as `replicator` (slot
#                            apikeys_standby1)
#   http/                    PostgREST of the primary (127.0.0.1:3001) and of
#                            the standby (127.0.0.1:3002): run-time copies of
#                            examples/postgrest/postgrest.conf, only db-uri and
#                            server-port changed (and, for the standby,
#                            db-channel-enabled = false); nginx on 127.0.0.1:8081:
#                            examples/replica/nginx.conf with the server block
#                            of examples/postgrest/nginx.conf
# Settings: examples/replica/{primary,standby}.conf. `start` is idempotent;
# `stop` keeps the data (remove REPLICA_DIR to start afresh).
#
# Environment:
#   REPLICA_DIR                   where everything lives
#   PRIMARY_PORT, STANDBY_PORT    the servers' ports (5501, 5502)
#   PGRST_PRIMARY_PORT, PGRST_STANDBY_PORT, NGINX_PORT   (3001, 3002, 8081)
#   SKIP_SETUP=1                  do not run test/setup.sh (apikeys is installed)
set -euo pipefail

EX=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$EX/../.." && pwd)
# shellcheck source=test/lib.sh
source "$REPO/test/lib.sh"

DIR=${REPLICA_DIR:-/var/tmp/apikeys-replica}
PRIMARY_PORT=${PRIMARY_PORT:-5501}
STANDBY_PORT=${STANDBY_PORT:-5502}
PGRST_PRIMARY_PORT=${PGRST_PRIMARY_PORT:-3001}
PGRST_STANDBY_PORT=${PGRST_STANDBY_PORT:-3002}
NGINX_PORT=${NGINX_PORT:-8081}
DB=apikeys_replica
SLOT=apikeys_standby1
PRIMARY=$DIR/primary
STANDBY=$DIR/standby
HTTP=$DIR/http
NGINX_DIR=$HTTP/nginx
BASE=http://127.0.0.1:$NGINX_PORT

say() { echo "replica: $*"; }
die() { echo "replica: error: $*" >&2; exit 1; }

# psql_p / psql_s DB ARGS... -- psql as superuser on the primary / the standby.
psql_p() { psql_at "$DIR" "$PRIMARY_PORT" "$@"; }
psql_s() { psql_at "$DIR" "$STANDBY_PORT" "$@"; }

# settings FILE -- the setting lines of FILE (no comments, no blank lines).
settings() { grep -vE '^[[:space:]]*(#|$)' "$1"; }

# ---------------------------------------------------------------- the servers

# configure DATA PORT FILE -- DATA/apikeys_replica.conf: loopback, PORT, the
# socket in DIR, then the settings of FILE.
configure() {
	local -a lines
	mapfile -t lines < <(settings "$3")
	pg_cluster_config "$1" apikeys_replica.conf "$2" "$DIR" "listen_addresses = '127.0.0.1'" "${lines[@]}" ||
		die "could not write $1/apikeys_replica.conf"
}

start_primary() {
	if [[ ! -f $PRIMARY/PG_VERSION ]]; then
		say "creating the primary in $PRIMARY"
		# trust on loopback and the socket: an example, not a deployment
		pg_cluster_init "$PRIMARY" --locale=C.UTF-8 || die "initdb failed"
	fi
	configure "$PRIMARY" "$PRIMARY_PORT" "$EX/primary.conf"
	if ! pg_cluster_running "$PRIMARY"; then
		say "starting the primary on 127.0.0.1:$PRIMARY_PORT"
		pg_cluster_start "$PRIMARY" "$DIR/primary.log" 60 || die "the primary did not start (log: $DIR/primary.log)"
	fi
	[[ $(psql_p postgres -Atc "SELECT count(*) FROM pg_database WHERE datname = '$DB'") == 1 ]] && return 0

	say "creating database $DB on the primary"
	psql_p postgres -c "CREATE DATABASE $DB" >/dev/null
	# The set-up of docs/http.md, the metered endpoint of the seed API, and
	# the role the standby replicates as (and ships usage as: docs/standbys.md).
	psql_p "$DB" -c "SET client_min_messages = warning" -f - >/dev/null <<-'SQL'
		CREATE EXTENSION apikeys CASCADE;
		DO $$ BEGIN
		    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN
		        CREATE ROLE authenticator LOGIN NOINHERIT;
		    END IF;
		    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') THEN
		        CREATE ROLE replicator LOGIN REPLICATION;
		    END IF;
		END $$;
		GRANT apikeys_anon TO authenticator;
	SQL
	psql_p "$DB" -c "SET client_min_messages = warning" -f - >/dev/null <"$REPO/examples/postgrest/verify.sql" ||
		die "examples/postgrest/verify.sql failed"
	if [[ $(psql_p "$DB" -Atc "SELECT count(*) FROM pg_roles WHERE rolname = 'apikeys_standby'") == 1 ]]; then
		psql_p "$DB" -c "GRANT apikeys_standby TO replicator" >/dev/null
	else
		say "note: this apikeys has no role apikeys_standby (no usage shipping): the standby answers but does not count"
	fi
}

# wait_replay SECONDS -- until the standby has replayed the primary's WAL as of now.
wait_replay() {
	local lsn i
	lsn=$(psql_p postgres -Atc "SELECT pg_current_wal_lsn()") || return 1
	for ((i = 0; i < $1 * 10; i++)); do
		[[ $(psql_s postgres -Atc "SELECT pg_last_wal_replay_lsn() >= '$lsn'" 2>/dev/null) == t ]] && return 0
		sleep 0.1
	done
	return 1
}

start_standby() {
	if [[ ! -f $STANDBY/PG_VERSION ]]; then
		say "making the standby in $STANDBY: pg_basebackup -R as replicator"
		# a slot left by an earlier standby of this directory would be in the way
		psql_p postgres -Atc "SELECT pg_drop_replication_slot('$SLOT') FROM pg_replication_slots
			WHERE slot_name = '$SLOT' AND NOT active" >/dev/null
		as_pg pg_basebackup -h 127.0.0.1 -p "$PRIMARY_PORT" -U replicator -D "$STANDBY" \
			-R -X stream -C -S "$SLOT" -c fast >"$DIR/basebackup.log" 2>&1 ||
			die "pg_basebackup failed: $(tail -n 5 "$DIR/basebackup.log")"
	fi
	configure "$STANDBY" "$STANDBY_PORT" "$EX/standby.conf"
	if ! pg_cluster_running "$STANDBY"; then
		say "starting the standby on 127.0.0.1:$STANDBY_PORT"
		pg_cluster_start "$STANDBY" "$DIR/standby.log" 60 || die "the standby did not start (log: $DIR/standby.log)"
	fi
	wait_replay 60 || die "the standby did not catch up with the primary within 60 s (log: $DIR/standby.log)"
	[[ $(psql_s postgres -Atc "SELECT pg_is_in_recovery()") == t ]] || die "the server on $STANDBY_PORT is not a standby"
}

# ---------------------------------------------------------------- PostgREST and nginx

# stop_pidfile NAME FILE SIGNAL [quiet] -- stop NAME by the pid in FILE, if
# that pid still runs NAME; remove FILE.
stop_pidfile() {
	local pid
	pid=$(cat "$2" 2>/dev/null || true)
	if pid_is "$pid" "$1"; then
		stop_pid "$1" "$pid" "$3"
		[[ ${4:-} == quiet ]] || say "$1 (pid $pid) stopped"
	fi
	rm -f "$2"
}

# running NAME FILE -- true if the pid in FILE runs NAME.
running() { pid_is "$(cat "$2" 2>/dev/null || true)" "$1"; }

# start_postgrest WHICH SERVER-PORT HTTP-PORT [NAME=VALUE...] -- PostgREST
# for the primary or the standby, detached (setsid, no terminal), as the
# cluster owner.
start_postgrest() {
	local which=$1 pidfile=$HTTP/postgrest-$1.pid
	running postgrest "$pidfile" && return 0
	port_in_use "$3" && die "127.0.0.1:$3 is taken by another program"
	postgrest_conf "$HTTP/postgrest-$which.conf" "postgres://authenticator@/$DB?host=$DIR&port=$2" "$3" "${@:4}"
	own_by_pg "$HTTP/postgrest-$which.conf"
	local -a user=()
	[[ $EUID -eq 0 ]] && user=(setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups --)
	setsid "${user[@]}" "$POSTGREST_BIN" "$HTTP/postgrest-$which.conf" \
		</dev/null >>"$HTTP/postgrest-$which.log" 2>&1 &
	echo $! >"$pidfile"
	say "PostgREST of the $which on 127.0.0.1:$3 (pid $!)"
}

# nginx_site -- the site: examples/replica/nginx.conf (upstream ports set)
# and the server block of examples/postgrest/nginx.conf, which proxies to
# $apikeys_upstream instead of 127.0.0.1:3000 and listens on NGINX_PORT.
nginx_site() {
	sed -e "s/server 127\.0\.0\.1:3002/server 127.0.0.1:$PGRST_STANDBY_PORT/" \
		-e "s/server 127\.0\.0\.1:3001/server 127.0.0.1:$PGRST_PRIMARY_PORT/" "$EX/nginx.conf"
	echo
	# shellcheck disable=SC2016 # $apikeys_upstream is nginx's variable
	sed -e "s/listen 127\.0\.0\.1:8080;/listen 127.0.0.1:$NGINX_PORT;/" \
		-e 's|proxy_pass http://127\.0\.0\.1:3000;|proxy_pass http://$apikeys_upstream;|' "$SHIPPED_NGINX"
}

start_nginx() {
	running nginx "$NGINX_DIR/nginx.pid" && return 0
	port_in_use "$NGINX_PORT" && die "127.0.0.1:$NGINX_PORT is taken by another program"
	mkdir -p "$NGINX_DIR"
	nginx_site >"$NGINX_DIR/apikeys.conf"
	local -a opts=(daemon=on)
	[[ $EUID -eq 0 ]] && opts+=("user=$PG_USER")
	nginx_main_conf "$NGINX_DIR" "$NGINX_DIR/apikeys.conf" "${opts[@]}"
	own_by_pg "$HTTP"
	(nginx_exec "$NGINX_DIR" </dev/null >>"$NGINX_DIR/stdout.log" 2>&1) ||
		die "nginx did not start: $(tail -n 5 "$NGINX_DIR/error.log" "$NGINX_DIR/stdout.log" 2>/dev/null)"
	local i
	for ((i = 0; i < 50; i++)); do
		running nginx "$NGINX_DIR/nginx.pid" && break
		sleep 0.1
	done
	running nginx "$NGINX_DIR/nginx.pid" || die "nginx did not write $NGINX_DIR/nginx.pid"
	say "nginx on 127.0.0.1:$NGINX_PORT (pid $(cat "$NGINX_DIR/nginx.pid")): GET and HEAD to :$PGRST_STANDBY_PORT, the rest to :$PGRST_PRIMARY_PORT"
}

# answers URL METHOD CODE SECONDS -- wait until a keyless METHOD URL answers CODE.
answers() {
	local i code
	for ((i = 0; i < $4 * 10; i++)); do
		code=$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' -X "$2" "$1" 2>/dev/null || true)
		[[ $code == "$3" ]] && return 0
		sleep 0.1
	done
	return 1
}

start_http() {
	ensure_cmds curl jq || die "curl and jq are needed"
	install_nginx || die "nginx is missing and could not be installed (apt-get install nginx-light)"
	install_postgrest || die "PostgREST could not be installed from npm $POSTGREST_PKG@$POSTGREST_PKG_VERSION"
	mkdir -p "$HTTP"
	own_by_pg "$HTTP"
	start_postgrest primary "$PRIMARY_PORT" "$PGRST_PRIMARY_PORT"
	# A standby cannot LISTEN (NOTIFY pgrst on the primary does not reach it):
	# reload this one's schema cache with SIGUSR1 after ALTER EXTENSION UPDATE.
	start_postgrest standby "$STANDBY_PORT" "$PGRST_STANDBY_PORT" db-channel-enabled=false
	start_nginx
	# A keyless request is refused (401) by the pre-request in the database:
	# once each PostgREST answers so, it serves its server.
	local which port
	for which in primary standby; do
		port=PGRST_${which^^}_PORT
		answers "http://127.0.0.1:${!port}/rpc/credits" GET 401 30 ||
			die "PostgREST of the $which did not answer within 30 s (log: $HTTP/postgrest-$which.log)"
	done
	answers "$BASE/v1/account/credits" GET 401 10 || die "nginx does not reach PostgREST (log: $NGINX_DIR/error.log)"
}

# ---------------------------------------------------------------- commands

cmd_start() {
	run_setup || die "test/setup.sh failed"
	id "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER does not exist (is postgresql-15 installed?)"
	if [[ ! -d $DIR ]]; then
		mkdir -p "$DIR"
		own_by_pg "$DIR"
	fi
	[[ $(stat -c %U "$DIR") == "$PG_USER" ]] ||
		die "$DIR belongs to $(stat -c %U "$DIR"), not $PG_USER; run as that user or remove it"
	start_primary
	start_standby
	start_http
	cat <<-EOT
	replica: running. Mint a first key on the primary (keys are written there only):
	    psql -h $DIR -p $PRIMARY_PORT -U postgres $DB -Atc "SELECT key FROM apikeys.apikey_create('acme', 'first', scope => 'full')"
	  (as root: runuser -u $PG_USER -- psql ...), then, once the standby has replayed it (milliseconds):
	    curl $BASE/v1/api-keys -H "X-API-Key: \$KEY"                      # GET: the standby answers
	    curl -X POST $BASE/v1/api-keys -H "X-API-Key: \$KEY" -d '{"name": "second"}'   # POST: the primary
	  which server answered each request: $NGINX_DIR/upstream.log
	  bash $EX/run.sh status | stop
	EOT
}

cmd_status() {
	local all=0 which
	for which in primary standby; do
		local data=$DIR/$which port=${which^^}_PORT
		if pg_cluster_running "$data"; then
			say "$which: running on 127.0.0.1:${!port}"
		else
			say "$which: not running"; all=1
		fi
	done
	for which in primary standby; do
		local port=PGRST_${which^^}_PORT
		if running postgrest "$HTTP/postgrest-$which.pid"; then
			say "PostgREST of the $which: running on 127.0.0.1:${!port} (pid $(cat "$HTTP/postgrest-$which.pid"))"
		else
			say "PostgREST of the $which: not running"; all=1
		fi
	done
	if running nginx "$NGINX_DIR/nginx.pid"; then
		say "nginx: running on 127.0.0.1:$NGINX_PORT (pid $(cat "$NGINX_DIR/nginx.pid"))"
	else
		say "nginx: not running"; all=1
	fi
	if pg_cluster_running "$PRIMARY"; then
		echo
		say "replication, on the primary (pg_stat_replication):"
		psql_p postgres -P footer=off -c "SELECT application_name, state, sync_state, replay_lag,
			pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS bytes_behind FROM pg_stat_replication" || true
		if psql_p "$DB" -Atc "SELECT to_regclass('apikeys.standby_batches') IS NOT NULL" 2>/dev/null | grep -qx t; then
			say "usage shipped by standbys, on the primary (apikeys.standby_batches):"
			psql_p "$DB" -P footer=off -c "SELECT standby, last_batch, batches, duplicates, calls, rejected, last_batch_at
				FROM apikeys.standby_batches ORDER BY standby" || true
		fi
	fi
	if pg_cluster_running "$STANDBY"; then
		say "replay, on the standby:"
		psql_s postgres -P footer=off -c "SELECT pg_is_in_recovery() AS in_recovery, pg_last_wal_replay_lsn() AS replayed,
			now() - pg_last_xact_replay_timestamp() AS since_last_replayed_commit" || true
		if psql_s "$DB" -Atc "SELECT to_regprocedure('apikeys.apikey_standby_status()') IS NOT NULL" 2>/dev/null | grep -qx t; then
			say "usage shipping, on the standby (apikeys.apikey_standby_status()):"
			psql_s "$DB" -x -P footer=off -c "SELECT * FROM apikeys.apikey_standby_status()" || true
		fi
	fi
	return "$all"
}

cmd_stop() {
	stop_pidfile nginx "$NGINX_DIR/nginx.pid" QUIT
	stop_pidfile postgrest "$HTTP/postgrest-standby.pid" TERM
	stop_pidfile postgrest "$HTTP/postgrest-primary.pid" TERM
	local which
	for which in standby primary; do
		if pg_cluster_running "$DIR/$which"; then
			pg_cluster_stop "$DIR/$which"
			say "$which stopped"
		fi
	done
}

case ${1:-} in
	start) cmd_start ;;
	status) cmd_status ;;
	stop) cmd_stop ;;
	*) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
