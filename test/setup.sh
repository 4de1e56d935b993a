#!/usr/bin/env bash
# test/setup.sh -- make this machine able to build and test apikeys, then build
# and install the extension.
#
# Idempotent. Installs only what is missing (PostgreSQL 15 server, its PGXS dev
# files, IPC::Run for the TAP tests, libfaketime for the TAP test that crosses
# midnight, pgbouncer for the HTTP suite's transaction pooling pass
# (test/http/todo.sh), a compiler; curl, jq, nginx and PostgREST for the HTTP suite, the
# demo and the benchmarks, through test/lib.sh), running `apt-get update` at
# most once and only when something has to be installed.  This is the one
# place `make test` and `make demo` install from. Works as root, or as a user with passwordless
# sudo. apt and make output is shown only on failure.
#
# Environment:
#   PG_CONFIG   pg_config to build against (default: PostgreSQL 15's)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export DEBIAN_FRONTEND=noninteractive

SUDO=()        # command prefix that gives root, filled in by need_root
LOG=$(mktemp /tmp/apikeys-setup.XXXXXX)
trap 'rm -f "$LOG"' EXIT

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

# need_root WHY -- set SUDO so that "${SUDO[@]}" cmd runs cmd as root, or die.
need_root() {
	if [[ $EUID -eq 0 ]]; then
		SUDO=()
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		SUDO=(sudo -n)
	else
		die "$1 needs root: run as root, or as a user with passwordless sudo"
	fi
}

# run_logged DESC CMD... -- run CMD with output to $LOG; print it only on failure.
run_logged() {
	local desc=$1
	shift
	if ! "$@" >"$LOG" 2>&1; then
		echo "setup: $desc failed; output follows" >&2
		cat "$LOG" >&2
		exit 1
	fi
}

# is_installed PKG -- true if the Debian package PKG is installed.
is_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# missing_packages -- print the packages this project needs that are absent.
missing_packages() {
	local pkg
	for pkg in postgresql-15 postgresql-server-dev-15 libipc-run-perl libio-pty-perl perl clang libclang-rt-14-dev faketime pgbouncer; do
		is_installed "$pkg" || echo "$pkg"
	done
	if ! command -v gcc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
		echo build-essential
	fi
}

# no_main_cluster -- keep Debian from creating (and starting) a default
# "main" cluster when postgresql-15 is installed for the first time; the tests
# and the demo use their own clusters. postgresql-common's createcluster.conf
# includes this directory.
no_main_cluster() {
	local dir=/etc/postgresql-common/createcluster.d
	local file=$dir/50-apikeys-no-main-cluster.conf
	[[ -e $file ]] && return 0
	"${SUDO[@]}" mkdir -p "$dir"
	printf '%s\n' '# written by apikeys test/setup.sh: tests and demo use their own clusters' \
		'create_main_cluster = false' | "${SUDO[@]}" tee "$file" >/dev/null
}

# install_packages -- apt-get install whatever missing_packages reports.
install_packages() {
	local -a missing
	mapfile -t missing < <(missing_packages)
	[[ ${#missing[@]} -eq 0 ]] && return 0

	need_root "installing ${missing[*]}"
	is_installed postgresql-15 || no_main_cluster
	say "installing ${missing[*]} (apt output shown only on failure)"
	run_logged "apt-get update" \
		"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get -q -o DPkg::Lock::Timeout=300 update
	run_logged "apt-get install ${missing[*]}" \
		"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get -q -y --no-install-recommends -o DPkg::Lock::Timeout=300 \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		install "${missing[@]}"
}

# check_toolchain -- fail clearly if what the build and tests rely on is absent.
check_toolchain() {
	[[ -x $PG_CONFIG ]] || die "$PG_CONFIG not found (is postgresql-server-dev-15 installed?)"
	local share
	share=$("$PG_CONFIG" --sharedir)
	[[ -f $share/extension/pgcrypto.control ]] ||
		die "pgcrypto is not installed ($share/extension/pgcrypto.control missing)"
	command -v prove >/dev/null 2>&1 || die "prove not found (package perl)"
}

# build_and_install -- make && make install the extension from the repo root.
build_and_install() {
	[[ -f $REPO/Makefile ]] || die "no Makefile in $REPO"
	run_logged "make" make -C "$REPO" -j"$(nproc)" PG_CONFIG="$PG_CONFIG"
	# Show compiler warnings even on success: the build is meant to be clean.
	if grep -q 'warning:' "$LOG"; then
		grep -A3 'warning:' "$LOG" >&2 || true
	fi

	local pkglibdir extdir
	pkglibdir=$("$PG_CONFIG" --pkglibdir)
	extdir=$("$PG_CONFIG" --sharedir)/extension
	if [[ $EUID -eq 0 || ( -w $pkglibdir && -w $extdir ) ]]; then
		SUDO=()
	else
		need_root "make install into $pkglibdir"
	fi
	run_logged "make install" \
		"${SUDO[@]}" make -C "$REPO" install PG_CONFIG="$PG_CONFIG"
	say "apikeys built and installed into $pkglibdir"
}

# install_http_tools -- what the HTTP suite, make demo and make bench run:
# curl, jq and nginx from Debian, PostgREST from npm (test/lib.sh says how;
# the suites call the same functions, which do nothing once installed).
install_http_tools() {
	(
		# shellcheck source=test/lib.sh
		source "$REPO/test/lib.sh" &&
			ensure_cmds curl jq && install_nginx && install_postgrest
	) >"$LOG" 2>&1 || {
		echo "setup: installing curl, jq, nginx and PostgREST failed; output follows" >&2
		cat "$LOG" >&2
		exit 1
	}
}

install_packages
check_toolchain
install_http_tools
build_and_install
