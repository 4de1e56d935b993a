#!/usr/bin/env bash
# examples/demo.sh -- `make demo`: build and install apikeys, keep a local
# PostgreSQL 15 cluster with the extension preloaded, walk through
# examples/demo.sql in a fresh database, then serve the HTTP API with
# PostgREST and nginx from examples/postgrest/ (with the metered endpoint of
# examples/postgrest/verify.sql) and run the seed's curl calls against it,
# printing each request and response.
#
#   bash examples/demo.sh          set up / restart everything and run the demo
#   bash examples/demo.sh stop     stop everything the demo started (`make demo-stop`)
#
# Everything lives in /var/tmp/apikeys-demo and listens on loopback only:
#   data/, server.log   the cluster: 127.0.0.1:5499 and a Unix socket in the
#                       directory; owned by `postgres` when run as root (else
#                       by the caller)
#   http/               PostgREST on 127.0.0.1:3000 and nginx on 127.0.0.1:8080
#                       (the ports of the shipped configs): run-time copies of
#                       examples/postgrest/{postgrest,nginx}.conf with the
#                       demo's db-uri, an nginx main config of the demo's own
#                       (not the system nginx service), pid files and logs
# Both commands are idempotent; a second `make demo` restarts everything.
#
# Environment:
#   SKIP_SETUP=1   do not run test/setup.sh (apikeys is built and installed)
#
# Keys are printed masked (prefix…last 4); the full keys never reach the screen.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=test/lib.sh
source "$REPO/test/lib.sh"
DEMO_DIR=/var/tmp/apikeys-demo
DATA=$DEMO_DIR/data
LOGFILE=$DEMO_DIR/server.log
PORT=5499
DB=apikeys_demo
HTTP_DIR=$DEMO_DIR/http
NGINX_DIR=$HTTP_DIR/nginx
PGRST_PID_FILE=$HTTP_DIR/postgrest.pid
PGRST_PORT=$(sed -nE 's/^server-port[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' "$SHIPPED_POSTGREST")
NGINX_PORT=$(sed -nE 's/^[[:space:]]*listen[[:space:]]+127\.0\.0\.1:([0-9]+);.*/\1/p' "$SHIPPED_NGINX" | head -n 1)
BASE=http://127.0.0.1:$NGINX_PORT

say() { echo "demo: $*"; }
die() { echo "demo: error: $*" >&2; exit 1; }

# psql_demo DB ARGS... -- psql over the demo socket as superuser postgres.
psql_demo() { psql_at "$DEMO_DIR" "$PORT" "$@"; }

# ---------------------------------------------------------------- the cluster

start_cluster() {
	if [[ ! -f $DATA/PG_VERSION ]]; then
		say "creating cluster in $DATA"
		# Demo only: trust authentication, and the server listens on the unix
		# socket in $DEMO_DIR and 127.0.0.1 alone. Never do this on a shared host.
		pg_cluster_init "$DATA" --locale=C.UTF-8 || die "initdb failed"
	fi
	pg_cluster_config "$DATA" apikeys_demo.conf "$PORT" "$DEMO_DIR" \
		"listen_addresses = '127.0.0.1'" "max_worker_processes = 16" \
		"log_line_prefix = '%m [%p] %q%u@%d '" || die "could not write $DATA/apikeys_demo.conf"
	local action=start
	pg_cluster_running "$DATA" && action=restart
	say "${action}ing the server on 127.0.0.1:$PORT"
	pg_cluster_start "$DATA" "$LOGFILE" 60 || die "pg_ctl $action failed (log: $LOGFILE)"
}

# run_sql_demo -- recreate the demo database and walk through examples/demo.sql.
run_sql_demo() {
	local sql=$REPO/examples/demo.sql
	[[ -f $sql ]] || die "$sql not found"
	psql_demo postgres -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
	psql_demo "$DB" -c "SET client_min_messages = warning" -c "CREATE EXTENSION apikeys CASCADE"
	say "running examples/demo.sql"
	echo
	# Read the script from the repository when the owner can; else feed it on stdin.
	if (cd "$REPO/examples" 2>/dev/null && as_pg test -r "$sql"); then
		(cd "$REPO/examples" && as_pg psql -X -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" \
			-U "$PG_SUPER" -d "$DB" -f "$sql")
	else
		(cd "$DEMO_DIR" && as_pg psql -X -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" \
			-U "$PG_SUPER" -d "$DB" -f - <"$sql")
	fi
}

# ---------------------------------------------------------------- PostgREST and nginx

# stop_pidfile NAME FILE SIGNAL WHERE [quiet] -- stop the demo's NAME by the
# pid in FILE, only if that pid still runs NAME; remove FILE.
stop_pidfile() {
	local name=$1 file=$2 sig=$3 where=$4 pid msg
	pid=$(cat "$file" 2>/dev/null || true)
	msg="demo $name is not running"
	if pid_is "$pid" "$name"; then
		stop_pid "$name" "$pid" "$sig"
		msg="demo $name ($where) stopped"
	fi
	[[ ${5:-} == quiet ]] || say "$msg"
	rm -f "$file"
}

# stop_http [quiet] -- stop the demo's nginx and PostgREST.
stop_http() {
	stop_pidfile nginx "$NGINX_DIR/nginx.pid" QUIT "127.0.0.1:$NGINX_PORT" "$@"
	stop_pidfile postgrest "$PGRST_PID_FILE" TERM "127.0.0.1:$PGRST_PORT" "$@"
}

# check_ports -- die if another program listens on the demo's HTTP ports.
check_ports() {
	local p
	for p in "$PGRST_PORT" "$NGINX_PORT"; do
		if port_in_use "$p"; then
			die "127.0.0.1:$p is taken by another program (not this demo's); stop it and run make demo again"
		fi
	done
}

# start_http BOOTSTRAP-KEY -- PostgREST and nginx from the shipped configs,
# detached (they outlive this script; `make demo-stop` stops them), until the
# key gets 200 through nginx.
start_http() {
	local key=$1
	check_ports
	mkdir -p "$NGINX_DIR"
	postgrest_conf "$HTTP_DIR/postgrest.conf" "postgres://authenticator@/$DB?host=$DEMO_DIR&port=$PORT" \
		"$PGRST_PORT"
	nginx_site_conf "$NGINX_DIR/apikeys.conf" "$NGINX_PORT" "$PGRST_PORT"
	local -a opts=(daemon=on)
	[[ $EUID -eq 0 ]] && opts+=("user=$PG_USER")
	nginx_main_conf "$NGINX_DIR" "$NGINX_DIR/apikeys.conf" "${opts[@]}"
	own_by_pg "$HTTP_DIR"

	# PostgREST has no daemon mode: a session of its own, no terminal, and as
	# the cluster owner when run as root (setpriv execs, so $! is PostgREST).
	local -a user=()
	[[ $EUID -eq 0 ]] && user=(setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups --)
	setsid "${user[@]}" "$POSTGREST_BIN" "$HTTP_DIR/postgrest.conf" \
		</dev/null >>"$HTTP_DIR/postgrest.log" 2>&1 &
	local pgrst=$!
	echo "$pgrst" >"$PGRST_PID_FILE"
	(nginx_exec "$NGINX_DIR" </dev/null >>"$NGINX_DIR/stdout.log" 2>&1) ||
		die "nginx did not start: $(tail -n 5 "$NGINX_DIR/error.log" "$NGINX_DIR/stdout.log" 2>/dev/null)"
	# nginx daemonizes: its pid file appears once the master runs.
	local nginx_pid="" i
	for ((i = 0; i < 50; i++)); do
		nginx_pid=$(cat "$NGINX_DIR/nginx.pid" 2>/dev/null || true)
		pid_is "$nginx_pid" nginx && break
		sleep 0.1
	done
	pid_is "$nginx_pid" nginx || die "nginx did not write $NGINX_DIR/nginx.pid (log: $NGINX_DIR/error.log)"
	if ! wait_http "$BASE/v1/account/credits" "X-API-Key: $key" 30 "$pgrst" "$nginx_pid"; then
		die "PostgREST and nginx did not answer 200 within 30 s (logs: $HTTP_DIR/postgrest.log, $NGINX_DIR/error.log)"
	fi
	say "PostgREST $POSTGREST_VERSION on 127.0.0.1:$PGRST_PORT (pid $pgrst), nginx on 127.0.0.1:$NGINX_PORT (pid $nginx_pid)"
}

# ---------------------------------------------------------------- the curl flow

KNOWN_KEYS=()

# mask KEY -- the key's prefix, "…" and its last 4 characters.
mask() {
	local k=$1
	if [[ $k == *_* ]]; then
		printf '%s_…%s\n' "${k%_*}" "${k: -4}"
	else
		printf '…%s\n' "${k: -4}"
	fi
}

# hide -- stdin to stdout with every key the demo knows masked.
hide() {
	local -a args=()
	local k
	for k in "${KNOWN_KEYS[@]}"; do args+=(-e "s/$k/$(mask "$k")/g"); done
	if [[ ${#args[@]} -eq 0 ]]; then cat; else sed "${args[@]}"; fi
}

# show_json FILE -- the body, one line per member or array element (nested
# arrays one element a line too), with any "key" member masked.
show_json() {
	# shellcheck disable=SC2016 # a jq program
	jq -r '
		def mask: if type == "string" and length > 8
			then (if test("_") then sub("_[^_]*$"; "_") else "" end) + "…" + .[-4:] else . end;
		def arr(ind): if type == "array" and length > 0
			then "[\n" + (map(ind + "    " + tojson) | join(",\n")) + "\n" + ind + "  ]" else tojson end;
		((.. | objects | select(has("key")) | .key) |= mask)
		| if type == "object" and length > 0 then
			"{\n" + ([to_entries[] | "  " + (.key | tojson) + ": " + (.value | arr(""))] | join(",\n")) + "\n}"
		  elif type == "array" and length > 0 then
			"[\n" + (map("  " + tojson) | join(",\n")) + "\n]"
		  else tojson end' "$1" 2>/dev/null || hide <"$1"
}

# call DESC STATUS METHOD PATH KEY [JSON-BODY] -- one request through nginx:
# print it (as a curl command) and its answer; die unless it is STATUS. The
# body is left in $HTTP_DIR/body.
call() {
	local desc=$1 want=$2 method=$3 path=$4 key=$5 body=${6:-} code
	local -a args=(-X "$method" -H "X-API-Key: $key")
	local shown
	shown="curl -X $method '$BASE$path' -H 'X-API-Key: $(mask "$key")'"
	if [[ -n $body ]]; then
		args+=(-H "Content-Type: application/json" -d "$body")
		shown+=" -H 'Content-Type: application/json' -d '$body'"
	fi
	echo
	echo "-- $desc"
	echo "\$ $shown"
	code=$(umask 077 && curl -sS --max-time 10 -o "$HTTP_DIR/body" -D "$HTTP_DIR/headers" -w '%{http_code}' \
		"${args[@]}" "$BASE$path") || die "curl failed"
	head -n 1 "$HTTP_DIR/headers" | tr -d '\r'
	grep -i '^www-authenticate:' "$HTTP_DIR/headers" | tr -d '\r' || true
	[[ -s $HTTP_DIR/body ]] && show_json "$HTTP_DIR/body"
	[[ $code == "$want" ]] || die "$method $path answered $code, expected $want"
}

run_http_demo() {
	echo
	say "the HTTP API: PostgREST ($PGRST_PORT) behind nginx ($NGINX_PORT), configs from examples/postgrest/"
	ensure_cmds curl jq || die "curl and jq are needed"
	install_nginx || die "nginx is missing and could not be installed (apt-get install nginx-light)"
	install_postgrest || die "PostgREST could not be installed from npm $POSTGREST_PKG@$POSTGREST_PKG_VERSION"

	# The role PostgREST logs in as (docs/http.md), cluster-wide: once.
	psql_demo "$DB" -c "SET client_min_messages = warning" -c "
		DO \$\$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN
				CREATE ROLE authenticator LOGIN NOINHERIT;
			END IF;
		END \$\$" -c "GRANT apikeys_anon TO authenticator"
	# The deployment's metered endpoint, POST /v1/verify/email (before
	# PostgREST starts, so that its schema cache has it).
	psql_demo "$DB" -c "SET client_min_messages = warning" -f - <"$REPO/examples/postgrest/verify.sql" ||
		die "examples/postgrest/verify.sql failed"

	echo
	echo "-- The first key comes from SQL (a superuser or apikeys_admin):"
	local q="SELECT key FROM apikeys.apikey_create('acme', 'HTTP bootstrap', scope => 'full')"
	echo "\$ psql -d $DB -c \"$q\""
	local boot
	boot=$(psql_demo "$DB" -At -c "$q") || die "could not create the bootstrap key"
	KNOWN_KEYS+=("$boot")
	mask "$boot"
	echo "   (keys are shown masked in this demo: prefix…last 4)"

	start_http "$boot"

	call "create a key (the seed's POST); the answer shows the key once" 201 \
		POST /v1/api-keys "$boot" \
		'{"name": "Production Key", "scope": "verify", "ipRestrictions": [], "expiresInDays": 90}'
	local new new_id
	new=$(jq -r '.key' "$HTTP_DIR/body")
	new_id=$(jq -r '.id' "$HTTP_DIR/body")
	KNOWN_KEYS+=("$new")

	call "list the owner's keys: no key material, just the prefix" 200 GET /v1/api-keys "$boot"
	call "usage analytics for 30 days" 200 GET '/v1/api-keys/analytics?days=30' "$boot"
	call "the credits check with the new key: a valid key gets 200 (no balances yet: {})" 200 \
		GET /v1/account/credits "$new"

	echo
	echo "-- Credits come from SQL (a superuser or apikeys_admin):"
	q="SELECT apikeys.apikey_credit_add('acme', 'email_credit', 1000), apikeys.apikey_credit_add('acme', 'phone_credit', 500)"
	echo "\$ psql -d $DB -c \"$q\""
	psql_demo "$DB" -At -c "$q" >/dev/null || die "could not add credits"
	call "the account's balances" 200 GET /v1/account/credits "$new"
	call "the metered endpoint (examples/postgrest/verify.sql): 1 email_credit a request" 200 \
		POST /v1/verify/email "$new" '{"email": "jane.doe@example.com"}'
	call "the balance is 1 lower" 200 GET /v1/account/credits "$new"
	call "a request that fails costs nothing (its transaction, and the charge, roll back)" 400 \
		POST /v1/verify/email "$new" '{"email": ""}'
	call "the balance is unchanged" 200 GET /v1/account/credits "$new"
	call "revoke the new key" 204 DELETE "/v1/api-keys/$new_id" "$boot"
	call "the revoked key is refused from now on" 401 GET /v1/account/credits "$new"
	rm -f "$HTTP_DIR/body" "$HTTP_DIR/headers" # they held a key in full
}

print_howto() {
	local connect="psql -h $DEMO_DIR -p $PORT -U postgres $DB"
	echo
	say "the demo cluster, PostgREST and nginx keep running. Connect with:"
	echo "    $connect"
	if [[ $EUID -eq 0 ]]; then
		echo "    runuser -u postgres -- $connect    (as the cluster owner)"
	fi
	echo "  or over TCP: psql -h 127.0.0.1 -p $PORT -U postgres $DB"
	echo "  the HTTP API, with a key of your own (SELECT key FROM apikeys.apikey_create('acme', 'mine')):"
	echo "    curl $BASE/v1/api-keys -H 'X-API-Key: <that key>'"
	say "logs: $LOGFILE, $HTTP_DIR/postgrest.log, $NGINX_DIR/error.log"
	say "stop it all with: make demo-stop"
}

# ---------------------------------------------------------------- commands

cmd_stop() {
	stop_http
	if pg_cluster_running "$DATA"; then
		pg_cluster_stop "$DATA"
		say "demo cluster stopped"
	else
		say "demo cluster is not running"
	fi
}

cmd_demo() {
	run_setup || die "test/setup.sh failed"
	id "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER does not exist (is postgresql-15 installed?)"

	if [[ ! -d $DEMO_DIR ]]; then
		mkdir -p "$DEMO_DIR"
		own_by_pg "$DEMO_DIR"
	fi
	[[ $(stat -c %U "$DEMO_DIR") == "$PG_USER" ]] ||
		die "$DEMO_DIR belongs to $(stat -c %U "$DEMO_DIR"), not $PG_USER; run as that user or remove it"

	# A previous run's PostgREST and nginx hold the ports and the database
	# about to be recreated: they are started afresh below.
	stop_http quiet
	check_ports
	start_cluster
	run_sql_demo
	run_http_demo
	print_howto
}

[[ -n $PGRST_PORT && -n $NGINX_PORT ]] || die "no ports in $SHIPPED_POSTGREST and $SHIPPED_NGINX"
case ${1:-demo} in
	demo) cmd_demo ;;
	stop) cmd_stop ;;
	*) echo "usage: $0 [stop]" >&2; exit 2 ;;
esac
