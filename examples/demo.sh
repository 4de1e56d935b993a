#!/usr/bin/env bash
# examples/demo.sh -- `make demo`: build and install apikeys, keep a local
# PostgreSQL 15 cluster with the extension preloaded, and walk through
# examples/demo.sql in a fresh database.
#
#   bash examples/demo.sh          set up / restart the cluster and run the demo
#   bash examples/demo.sh stop     stop the demo cluster (`make demo-stop`)
#
# The cluster lives in /var/tmp/apikeys-demo (data in data/, log in
# server.log, unix socket in the directory itself), listens on 127.0.0.1:5499
# only, and belongs to `postgres` when run as root (else to the caller).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
DEMO_DIR=/var/tmp/apikeys-demo
DATA=$DEMO_DIR/data
LOGFILE=$DEMO_DIR/server.log
PORT=5499
DB=apikeys_demo

say() { echo "demo: $*"; }
die() { echo "demo: error: $*" >&2; exit 1; }

# as_owner CMD... -- run CMD as the cluster owner with PostgreSQL 15 first in PATH.
as_owner() {
	local path="$PGBIN:/usr/local/bin:/usr/bin:/bin"
	if [[ $EUID -eq 0 ]]; then
		runuser -u "$OWNER" -- env PATH="$path" "$@"
	else
		env PATH="$path" "$@"
	fi
}

# is_running -- true if the demo server is up (pg_ctl status exits 0).
is_running() {
	[[ -f $DATA/PG_VERSION ]] && as_owner pg_ctl -D "$DATA" status >/dev/null 2>&1
}

# psql_demo DB ARGS... -- psql over the demo socket as superuser postgres.
psql_demo() {
	local db=$1
	shift
	as_owner psql -X -q -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" -U postgres -d "$db" "$@"
}

# write_config -- (re)write the demo's settings; postgresql.conf includes them.
write_config() {
	as_owner tee "$DATA/apikeys_demo.conf" >/dev/null <<EOF
# written by examples/demo.sh; rewritten on every run
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DEMO_DIR'
shared_preload_libraries = 'apikeys'
max_worker_processes = 16
log_line_prefix = '%m [%p] %q%u@%d '
EOF
	if ! grep -q "^include_if_exists = 'apikeys_demo.conf'" "$DATA/postgresql.conf"; then
		echo "include_if_exists = 'apikeys_demo.conf'" | as_owner tee -a "$DATA/postgresql.conf" >/dev/null
	fi
}

# init_cluster -- create the demo cluster.
init_cluster() {
	say "creating cluster in $DATA"
	# Demo only: trust authentication, and the server listens on the unix
	# socket in $DEMO_DIR and 127.0.0.1 alone. Never do this on a shared host.
	local out
	if ! out=$(as_owner initdb -D "$DATA" --username=postgres --auth=trust \
		--encoding=UTF8 --locale=C.UTF-8 2>&1); then
		echo "$out" >&2
		die "initdb failed"
	fi
}

# start_or_restart -- bring the server up, restarting it if it runs so that
# a freshly installed library is loaded.
start_or_restart() {
	local action=start
	if is_running; then
		action=restart
	fi
	say "${action}ing the server on 127.0.0.1:$PORT"
	if ! as_owner pg_ctl -D "$DATA" -l "$LOGFILE" -w -t 60 "$action" -m fast >/dev/null; then
		tail -n 30 "$LOGFILE" >&2 || true
		die "pg_ctl $action failed (log: $LOGFILE)"
	fi
}

# run_demo -- recreate the demo database and walk through examples/demo.sql.
run_demo() {
	local sql=$REPO/examples/demo.sql
	[[ -f $sql ]] || die "$sql not found"
	psql_demo postgres -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
	psql_demo "$DB" -c "SET client_min_messages = warning" -c "CREATE EXTENSION apikeys CASCADE"
	say "running examples/demo.sql"
	echo
	# Read the script from the repository when the owner can; else feed it on stdin.
	if (cd "$REPO/examples" 2>/dev/null && as_owner test -r "$sql"); then
		(cd "$REPO/examples" && as_owner psql -X -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" \
			-U postgres -d "$DB" -f "$sql")
	else
		(cd "$DEMO_DIR" && as_owner psql -X -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" \
			-U postgres -d "$DB" -f - <"$sql")
	fi
}

print_howto() {
	local connect="psql -h $DEMO_DIR -p $PORT -U postgres $DB"
	echo
	say "the demo cluster keeps running. Connect with:"
	echo "    $connect"
	if [[ $EUID -eq 0 ]]; then
		echo "    runuser -u postgres -- $connect    (as the cluster owner)"
	fi
	echo "  or over TCP: psql -h 127.0.0.1 -p $PORT -U postgres $DB"
	say "server log: $LOGFILE"
	say "stop it with: make demo-stop"
}

cmd_stop() {
	if is_running; then
		as_owner pg_ctl -D "$DATA" stop -m fast -w >/dev/null
		say "demo cluster stopped"
	else
		say "demo cluster is not running"
	fi
}

cmd_demo() {
	bash "$REPO/test/setup.sh"

	if [[ ! -d $DEMO_DIR ]]; then
		mkdir -p "$DEMO_DIR"
		[[ $EUID -eq 0 ]] && chown "$OWNER:" "$DEMO_DIR"
	fi
	[[ $(stat -c %U "$DEMO_DIR") == "$OWNER" ]] ||
		die "$DEMO_DIR belongs to $(stat -c %U "$DEMO_DIR"), not $OWNER; run as that user or remove it"

	[[ -f $DATA/PG_VERSION ]] || init_cluster
	write_config
	start_or_restart
	run_demo
	print_howto
}

if [[ $EUID -eq 0 ]]; then
	OWNER=postgres
else
	OWNER=$(id -un)
fi

case ${1:-demo} in
	demo) cmd_demo ;;
	stop) cmd_stop ;;
	*) echo "usage: $0 [stop]" >&2; exit 2 ;;
esac
