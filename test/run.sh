#!/usr/bin/env bash
# test/run.sh -- run every apikeys test suite against throwaway clusters
# (what `make test` and .ci/run do).
#
#   bash test/run.sh                    all suites
#   bash test/run.sh regress unit       only these suites (run in the fixed order)
#
# Suites, in order; each is skipped when its inputs do not exist:
#   unit       test/unit/*.c + src/keyformat.c src/scope_match.c, plain C
#   fuzz       test/fuzz/run.sh short: the unit test under ASan/UBSan, then
#              the libFuzzer target for a bounded number of runs (clang)
#   regress    pg_regress, sql/ + expected/, REGRESS from `make print-regress`,
#              server with shared_preload_libraries = 'apikeys'
#   nopreload  pg_regress, test/nopreload/{sql,expected}, server WITHOUT the preload
#   isolation  pg_isolation_regress, test/isolation/{specs,expected}
#   tap        prove test/t/*.pl with PostgreSQL::Test::Cluster
#   http       test/http/run.sh (real PostgREST + nginx), run as root
#
# First runs test/setup.sh (installs what is missing, builds and installs the
# extension). Then copies the working tree into a scratch directory under /tmp,
# owned by the unprivileged test user (postgres when run as root, else the
# caller), and runs the suites there as that user; a failing suite does not
# stop the others. Ends with one line per suite and a final line
# "N passed, N failed"; exits non-zero if anything failed or nothing ran.
#
# Environment:
#   KEEP_TEST_DIR=1      keep the scratch directory (path printed at the end)
#   SKIP_SETUP=1         do not run test/setup.sh (the extension is installed)
#   PROVE_FLAGS          extra flags for prove (e.g. -v)
#   SUITE_TIMEOUT        seconds one suite may take (default 1800)

# Suite functions are called as "suite_$name", which shellcheck cannot follow.
# shellcheck disable=SC2317

# No `set -e`: a failing suite must not end the run; failures are counted.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PGBIN/pg_config
PGXS_DIR=/usr/lib/postgresql/15/lib/pgxs
PG_REGRESS=$PGXS_DIR/src/test/regress/pg_regress
PG_ISOLATION_REGRESS=$PGXS_DIR/src/test/isolation/pg_isolation_regress
SUITE_TIMEOUT=${SUITE_TIMEOUT:-1800}
ALL_SUITES=(unit fuzz regress nopreload isolation tap http)

# A caller's libpq settings must not point the tests at some other server.
unset PGDATA PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE \
	PGPASSWORD PGPASSFILE PGSSLMODE PGAPPNAME

declare -A STATUS=() NOTE=() NPASS=() NFAIL=()
TOTAL_PASSED=0
TOTAL_FAILED=0
SCRATCH=""
WORK=""

# ---------------------------------------------------------------- helpers

say() { echo "run.sh: $*"; }

# record SUITE STATUS PASSED FAILED [NOTE] -- remember a suite's outcome.
record() {
	local suite=$1 status=$2 passed=${3:-0} failed=${4:-0} note=${5:-}
	STATUS[$suite]=$status
	NPASS[$suite]=$passed
	NFAIL[$suite]=$failed
	NOTE[$suite]=$note
	TOTAL_PASSED=$((TOTAL_PASSED + passed))
	TOTAL_FAILED=$((TOTAL_FAILED + failed))
}

# AS_USER: command prefix that runs a command as the test user with a clean
# PostgreSQL PATH; extra environment follows it as NAME=value words (env(1)).
# Set by set_test_user. as_user CMD... runs CMD that way.
AS_USER=()
set_test_user() {
	local path="$PGBIN:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
	if [[ $EUID -eq 0 ]]; then
		TEST_USER=postgres
		AS_USER=(runuser -u "$TEST_USER" -- env PATH="$path")
	else
		TEST_USER=$(id -un)
		AS_USER=(env PATH="$path")
	fi
}
as_user() { "${AS_USER[@]}" "$@"; }

# run_suite_cmd LOG CMD... -- run CMD (with a time limit), show its output
# indented, keep it in LOG; returns CMD's exit status.
run_suite_cmd() {
	local log=$1
	shift
	timeout --foreground --kill-after=30 "$SUITE_TIMEOUT" "$@" 2>&1 |
		tee "$log" | sed -u 's/^/    /'
	local rc=${PIPESTATUS[0]}
	case $rc in
		124) echo "    *** timed out after ${SUITE_TIMEOUT}s ***" | tee -a "$log" ;;
		130 | 143) touch "$SCRATCH/interrupted" ;; # SIGINT/SIGTERM: stop the run
	esac
	return "$rc"
}

# closing_counts LOG -- print "P F" from the last "N passed, N failed" line.
closing_counts() {
	grep -E '^[[:space:]]*[0-9]+ passed, [0-9]+ failed[[:space:]]*$' "$1" | tail -n 1 |
		sed -E 's/^[[:space:]]*([0-9]+) passed, ([0-9]+) failed.*/\1 \2/'
}

# regress_counts LOG -- print "P F" counted from pg_regress's per-test lines
# (PG15: "test name ... ok  12 ms", "     name ... FAILED"; PG16+: "ok 1 - name").
regress_counts() {
	local p f
	p=$(grep -cE '\.\.\. +ok( |$)|^ok [0-9]+ ' "$1")
	f=$(grep -cE '\.\.\. +(FAILED|failed)|^not ok [0-9]+ ' "$1")
	echo "$p $f"
}

# finish_counted SUITE RC P F -- record a suite from exit status and counts;
# a non-zero exit with no failing test still counts as one failure.
finish_counted() {
	local suite=$1 rc=$2 p=$3 f=$4
	if [[ $rc -eq 0 && $f -eq 0 ]]; then
		record "$suite" PASS "$p" 0
	elif [[ $f -eq 0 ]]; then
		record "$suite" FAIL "$p" 1 "exit status $rc"
	else
		record "$suite" FAIL "$p" "$f"
	fi
}

# stop_leftover_postmasters -- stop any server still running from the
# scratch directory (e.g. after a pg_regress that was killed by the timeout).
stop_leftover_postmasters() {
	[[ -n $SCRATCH && -d $SCRATCH ]] || return 0
	local pidfile
	while IFS= read -r pidfile; do
		say "stopping leftover server in $(dirname "$pidfile")"
		as_user pg_ctl -D "$(dirname "$pidfile")" stop -m immediate -w >/dev/null 2>&1 || true
	done < <(find "$SCRATCH" -name postmaster.pid 2>/dev/null)
}

cleanup() {
	stop_leftover_postmasters
	if [[ -n $SCRATCH && -d $SCRATCH ]]; then
		if [[ ${KEEP_TEST_DIR:-0} == 1 ]]; then
			say "kept scratch directory $SCRATCH"
		else
			rm -rf "$SCRATCH"
		fi
	fi
}

# make_scratch -- copy the working tree (minus .git and build outputs) into a
# fresh directory under /tmp owned by the test user.
make_scratch() {
	SCRATCH=$(mktemp -d /tmp/apikeys-test.XXXXXX)
	WORK=$SCRATCH/repo
	mkdir -p "$WORK" "$SCRATCH/logs"
	tar -C "$REPO" \
		--exclude=./.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude=.deps --exclude=node_modules \
		--exclude=./results --exclude=./log --exclude=./tmp_check \
		--exclude=./output_iso --exclude=./regression.diffs --exclude=./regression.out \
		-cf - . | tar -C "$WORK" -xf - || return 1
	if [[ $EUID -eq 0 ]]; then
		chown -R "$TEST_USER:" "$SCRATCH" || return 1
	fi
}

# pg_regress_suite SUITE DRIVER CONF INPUTDIR LOAD(yes|no) TESTS... -- run a
# pg_regress-style driver on a temp instance under the scratch directory.
pg_regress_suite() {
	local suite=$1 driver=$2 conf=$3 inputdir=$4 load=$5
	shift 5
	local out=$SCRATCH/${suite}_out log=$SCRATCH/logs/$suite.log
	local -a opts=(
		--temp-instance="$SCRATCH/tmp_$suite"
		--temp-config="$WORK/$conf"
		--inputdir="$inputdir"
		--outputdir="$out"
		--bindir="$PGBIN"
		--encoding=UTF8 --no-locale
		--dbname=contrib_regression
	)
	[[ $load == yes ]] && opts+=(--load-extension=pgcrypto --load-extension=apikeys)

	as_user mkdir -p "$out"
	(cd "$WORK" && run_suite_cmd "$log" "${AS_USER[@]}" "$driver" "${opts[@]}" "$@")
	local rc=$?
	local p f
	read -r p f < <(regress_counts "$log")
	finish_counted "$suite" "$rc" "$p" "$f"

	if [[ ${STATUS[$suite]} == FAIL ]]; then
		if [[ -s $out/regression.diffs ]]; then
			echo "---- $suite: first 200 lines of $out/regression.diffs"
			head -n 200 "$out/regression.diffs"
		fi
		# The server log matters when the diffs do not explain the failure
		# (startup failed, extension not loadable) or a backend crashed.
		if [[ -f $out/log/postmaster.log ]] && { [[ ! -s $out/regression.diffs ]] ||
			grep -qE 'terminated by signal|PANIC|was terminated' "$out/log/postmaster.log"; }; then
			echo "---- $suite: last 40 lines of the server log"
			tail -n 40 "$out/log/postmaster.log"
		fi
	fi
}

# basenames DIR EXT -- sorted basenames of DIR/*.EXT, one per line.
basenames() {
	local f
	for f in "$1"/*."$2"; do
		[[ -e $f ]] && basename "$f" ".$2"
	done | LC_ALL=C sort
}

# ---------------------------------------------------------------- suites

suite_unit() {
	local -a tests srcs=()
	mapfile -t tests < <(compgen -G "$WORK/test/unit/*.c")
	if [[ ${#tests[@]} -eq 0 ]]; then
		record unit SKIP 0 0 "no test/unit/*.c"
		return
	fi
	local s
	for s in src/keyformat.c src/scope_match.c; do
		[[ -f $WORK/$s ]] && srcs+=("$s")
	done
	local bin=$SCRATCH/unit_tests log=$SCRATCH/logs/unit.log
	# shellcheck disable=SC2016 # $0 and $@ belong to the inner sh
	(cd "$WORK" && run_suite_cmd "$log" "${AS_USER[@]}" sh -c '
		cc -std=c11 -Wall -Wextra -Werror -O1 -g -Isrc -o "$0" "$@" && exec "$0"' \
		"$bin" test/unit/*.c "${srcs[@]}")
	local rc=$? p=0 f=0 counts
	counts=$(closing_counts "$log")
	[[ -n $counts ]] && read -r p f <<<"$counts"
	finish_counted unit "$rc" "$p" "$f"
}

# The pure-C modules under sanitizers and libFuzzer, as the test user; clang
# comes from test/setup.sh. Binaries and the grown corpus stay in the scratch.
suite_fuzz() {
	if [[ ! -f $WORK/test/fuzz/run.sh ]]; then
		record fuzz SKIP 0 0 "no test/fuzz/run.sh"
		return
	fi
	local log=$SCRATCH/logs/fuzz.log
	(cd "$WORK" && run_suite_cmd "$log" "${AS_USER[@]}" \
		bash test/fuzz/run.sh short "$SCRATCH/fuzz_out")
	local rc=$? p=0 f=0 counts
	counts=$(closing_counts "$log")
	[[ -n $counts ]] && read -r p f <<<"$counts"
	finish_counted fuzz "$rc" "$p" "$f"
}

suite_regress() {
	if [[ ! -d $WORK/sql ]] || ! compgen -G "$WORK/sql/*.sql" >/dev/null; then
		record regress SKIP 0 0 "no sql/*.sql"
		return
	fi
	local list
	if ! list=$(cd "$WORK" && as_user make -s --no-print-directory print-regress PG_CONFIG="$PG_CONFIG" 2>/dev/null) ||
		[[ -z ${list// /} ]]; then
		say "regress: 'make print-regress' gave nothing; using sql/*.sql"
		list=$(basenames "$WORK/sql" sql | tr '\n' ' ')
	fi
	local -a tests
	read -r -a tests <<<"$list"
	pg_regress_suite regress "$PG_REGRESS" test/regress.conf . yes "${tests[@]}"
}

suite_nopreload() {
	local -a tests
	mapfile -t tests < <(basenames "$WORK/test/nopreload/sql" sql)
	if [[ ${#tests[@]} -eq 0 ]]; then
		record nopreload SKIP 0 0 "no test/nopreload/sql/*.sql"
		return
	fi
	pg_regress_suite nopreload "$PG_REGRESS" test/nopreload.conf test/nopreload no "${tests[@]}"
}

suite_isolation() {
	local -a tests
	mapfile -t tests < <(basenames "$WORK/test/isolation/specs" spec)
	if [[ ${#tests[@]} -eq 0 ]]; then
		record isolation SKIP 0 0 "no test/isolation/specs/*.spec"
		return
	fi
	pg_regress_suite isolation "$PG_ISOLATION_REGRESS" test/regress.conf test/isolation yes "${tests[@]}"
}

# Mirrors PGXS's prove_installcheck: TESTDIR, PGPORT, PG_REGRESS, -I paths.
# cwd and TESTDIR are the scratch copy's root; logs land in tmp_check/log.
suite_tap() {
	if ! compgen -G "$WORK/test/t/*.pl" >/dev/null; then
		record tap SKIP 0 0 "no test/t/*.pl"
		return
	fi
	local log=$SCRATCH/logs/tap.log
	local -a flags
	read -r -a flags <<<"${PROVE_FLAGS:-}"
	as_user mkdir -p "$WORK/tmp_check"
	(cd "$WORK" && run_suite_cmd "$log" "${AS_USER[@]}" \
		TESTDIR="$WORK" PGPORT=65432 PG_REGRESS="$PG_REGRESS" \
		PERL5LIB="$PGXS_DIR/src/test/perl" \
		PATH="$PGBIN:$WORK:/usr/local/bin:/usr/bin:/bin" \
		prove -I "$PGXS_DIR/src/test/perl" -I . -I test "${flags[@]}" test/t/*.pl)
	local rc=$? total failed
	total=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+),.*/\1/p' "$log" | tail -n 1)
	failed=$(sed -nE 's/.*Failed ([0-9]+)\/[0-9]+ subtests.*/\1/p' "$log" |
		awk '{s += $1} END {print s + 0}')
	total=${total:-0}
	finish_counted tap "$rc" "$((total - failed))" "$failed"

	if [[ ${STATUS[tap]} == FAIL && -d $WORK/tmp_check/log ]]; then
		local f
		for f in "$WORK"/tmp_check/log/*; do
			[[ -f $f ]] || continue
			echo "---- tap: last 60 lines of ${f#"$WORK"/}"
			tail -n 60 "$f"
		done
	fi
}

# The HTTP suite installs and starts its own PostgREST/nginx, so it runs as
# the caller (root, or a sudo-capable user), from the scratch copy.
suite_http() {
	if [[ ! -f $WORK/test/http/run.sh ]]; then
		record http SKIP 0 0 "no test/http/run.sh"
		return
	fi
	# The seed API (run.sh), then your own API behind keys (todo.sh: the
	# to-do example, directly and behind pgbouncer); their counts add up.
	local script log rc p f counts rcs=0 np=0 nf=0
	for script in run.sh todo.sh; do
		[[ -f $WORK/test/http/$script ]] || continue
		log=$SCRATCH/logs/http-${script%.sh}.log
		echo "    -- test/http/$script"
		(cd "$WORK" && run_suite_cmd "$log" bash "test/http/$script")
		rc=$? p=0 f=0
		counts=$(closing_counts "$log")
		[[ -n $counts ]] && read -r p f <<<"$counts"
		# a script that failed without a failing check counts as one failure
		[[ $rc -ne 0 && $f -eq 0 ]] && f=1
		[[ $rc -ne 0 ]] && rcs=$rc
		np=$((np + p)) nf=$((nf + f))
		[[ -e $SCRATCH/interrupted ]] && break
	done
	echo "    $np passed, $nf failed (test/http/run.sh and test/http/todo.sh)"
	finish_counted http "$rcs" "$np" "$nf"
}

# ---------------------------------------------------------------- main

print_summary() {
	local suite line
	echo
	echo "==================== apikeys test summary ===================="
	for suite in "${SELECTED[@]}"; do
		case ${STATUS[$suite]:-} in
			SKIP) line="SKIP  (${NOTE[$suite]})" ;;
			PASS | FAIL)
				line="${STATUS[$suite]}  (${NPASS[$suite]} passed, ${NFAIL[$suite]} failed"
				[[ -n ${NOTE[$suite]} ]] && line+="; ${NOTE[$suite]}"
				line+=")"
				;;
			*) line="NOT RUN" ;;
		esac
		printf '  %-10s %s\n' "$suite" "$line"
	done
	echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
}

# select_suites ARGS... -- fill SELECTED with the wanted suites, in fixed order.
select_suites() {
	local s a known
	SELECTED=()
	for a in "$@"; do
		known=no
		for s in "${ALL_SUITES[@]}"; do [[ $a == "$s" ]] && known=yes; done
		if [[ $known == no ]]; then
			echo "usage: $0 [${ALL_SUITES[*]}]..." >&2
			echo "unknown suite: $a" >&2
			exit 2
		fi
	done
	for s in "${ALL_SUITES[@]}"; do
		if [[ $# -eq 0 ]]; then
			SELECTED+=("$s")
			continue
		fi
		for a in "$@"; do [[ $a == "$s" ]] && SELECTED+=("$s") && break; done
	done
}

main() {
	select_suites "$@"

	if [[ ${SKIP_SETUP:-0} != 1 ]]; then
		if ! bash "$REPO/test/setup.sh"; then
			echo "run.sh: test/setup.sh failed; no suite was run" >&2
			echo "0 passed, 1 failed"
			exit 1
		fi
	fi

	set_test_user
	# A signal only flags the run; the suite loop stops after the current
	# suite, and the EXIT trap stops leftover servers and removes the scratch.
	INTERRUPTED=0
	trap cleanup EXIT
	trap 'INTERRUPTED=1' INT TERM
	if ! make_scratch; then
		echo "run.sh: could not prepare the scratch directory" >&2
		echo "0 passed, 1 failed"
		exit 1
	fi
	say "running ${SELECTED[*]} as $TEST_USER in $SCRATCH"

	local suite
	for suite in "${SELECTED[@]}"; do
		echo
		echo "==================== $suite ===================="
		"suite_$suite"
		stop_leftover_postmasters
		echo "---- $suite: ${STATUS[$suite]}"
		if [[ $INTERRUPTED == 1 || -e $SCRATCH/interrupted ]]; then
			print_summary
			echo "run.sh: interrupted" >&2
			exit 130
		fi
	done

	print_summary
	if [[ $((TOTAL_PASSED + TOTAL_FAILED)) -eq 0 ]]; then
		echo "run.sh: no test ran" >&2
		exit 1
	fi
	[[ $TOTAL_FAILED -eq 0 ]] || exit 1
	exit 0
}

main "$@"
