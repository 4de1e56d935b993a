#!/usr/bin/env bash
# test/fuzz/run.sh -- the pure-C key format and scope matcher under sanitizers:
# the unit test built with AddressSanitizer + UndefinedBehaviorSanitizer, then
# the libFuzzer target test/fuzz/fuzz_keyformat.c over the seed corpus.
#
#   bash test/fuzz/run.sh [short|long] [OUTDIR]
#
#   short   bounded by executions (FUZZ_RUNS, default 200000): a few seconds;
#           what `make test` runs (suite "fuzz" of test/run.sh)
#   long    bounded by time (FUZZ_SECONDS, default 300); what `make fuzz` runs
#   OUTDIR  where binaries, the grown corpus, logs and crash artifacts go;
#           default a fresh directory from mktemp, removed when all passed
#
# Needs clang with libFuzzer (Debian: clang, libclang-rt-14-dev); installs
# them with apt-get when run as root and they are missing, else fails with a
# clear message. Runs as any user: it writes only into OUTDIR (the seed
# corpus in test/fuzz/corpus is only read). Exits non-zero on any finding,
# and ends with "N passed, N failed" (the unit test's own counts, plus one
# for the fuzz run).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODE=${1:-short}
OUT=${2:-}
FUZZ_RUNS=${FUZZ_RUNS:-200000}
FUZZ_SECONDS=${FUZZ_SECONDS:-300}

PASSED=0
FAILED=0
MADE_OUT=no

say() { echo "fuzz: $*"; }

finish() {
	echo "$PASSED passed, $FAILED failed"
	if [[ $FAILED -eq 0 && $MADE_OUT == yes ]]; then
		rm -rf "$OUT"
	elif [[ -n $OUT ]]; then
		say "binaries, logs and artifacts kept in $OUT"
	fi
	[[ $FAILED -eq 0 ]]
	exit
}

fail_setup() {
	echo "fuzz: error: $*" >&2
	FAILED=$((FAILED + 1))
	finish
}

case $MODE in
	short) FUZZ_LIMIT=(-runs="$FUZZ_RUNS" -max_len=256) ;;
	long) FUZZ_LIMIT=(-max_total_time="$FUZZ_SECONDS" -max_len=1024) ;;
	*)
		echo "usage: $0 [short|long] [OUTDIR]" >&2
		exit 2
		;;
esac

if [[ -z $OUT ]]; then
	OUT=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-fuzz.XXXXXX") || fail_setup "could not create a scratch directory"
	MADE_OUT=yes
else
	mkdir -p "$OUT" || fail_setup "could not create $OUT"
	OUT=$(cd "$OUT" && pwd)
fi

# find_clang -- set CLANG to a clang that links -fsanitize=fuzzer, or return 1.
find_clang() {
	local c probe=$OUT/probe
	printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
		'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);' \
		'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void) d; (void) n; return 0; }' \
		>"$probe.c"
	for c in clang clang-14; do
		command -v "$c" >/dev/null 2>&1 || continue
		if "$c" -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" >"$probe.log" 2>&1; then
			CLANG=$c
			return 0
		fi
	done
	return 1
}

if ! find_clang; then
	if [[ $EUID -eq 0 ]]; then
		say "clang with libFuzzer not found: installing clang and libclang-rt-14-dev"
		if ! { DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update &&
			DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends \
				-o DPkg::Lock::Timeout=300 install clang libclang-rt-14-dev; } >"$OUT/apt.log" 2>&1; then
			cat "$OUT/apt.log" >&2
			fail_setup "apt-get install clang libclang-rt-14-dev failed"
		fi
	fi
	find_clang || fail_setup "clang with libFuzzer (-fsanitize=fuzzer) not found: install the Debian packages clang and libclang-rt-14-dev (test/setup.sh does, run as root), or run this as root"
fi
say "using $("$CLANG" --version | head -n 1)"

SAN=('-fsanitize=address,undefined' -fno-sanitize-recover=all -fno-omit-frame-pointer)
CFLAGS=(-std=c11 -g -O1 -Wall -Wextra -Werror -I"$REPO/src")
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# 1. the unit test, under AddressSanitizer and UndefinedBehaviorSanitizer
say "unit test under ASan/UBSan"
if "$CLANG" "${CFLAGS[@]}" "${SAN[@]}" -o "$OUT/test_pure" \
	"$REPO"/test/unit/*.c "$REPO/src/keyformat.c" "$REPO/src/scope_match.c" 2>&1; then
	"$OUT/test_pure" >"$OUT/unit.log" 2>&1
	rc=$?
	grep -v -E '^[0-9]+ passed, [0-9]+ failed$' "$OUT/unit.log" | sed 's/^/  /'
	counts=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$OUT/unit.log" | tail -n 1)
	p=0 f=0
	[[ -n $counts ]] && read -r p f <<<"$counts"
	say "unit: $p passed, $f failed (exit status $rc)"
	# a sanitizer report ends the program before its summary: one more failure
	[[ $rc -ne 0 && $f -eq 0 ]] && f=1
	PASSED=$((PASSED + p))
	FAILED=$((FAILED + f))
else
	say "unit test build failed"
	FAILED=$((FAILED + 1))
fi

# 2. the fuzzer: new inputs go to OUT/corpus; the seed corpus is only read
say "fuzzing ($MODE: ${FUZZ_LIMIT[*]})"
mkdir -p "$OUT/corpus" "$OUT/artifacts"
if "$CLANG" "${CFLAGS[@]}" -fsanitize=fuzzer "${SAN[@]}" -o "$OUT/fuzz_keyformat" \
	"$REPO/test/fuzz/fuzz_keyformat.c" "$REPO/src/keyformat.c" "$REPO/src/scope_match.c" 2>&1; then
	start=$SECONDS
	"$OUT/fuzz_keyformat" "${FUZZ_LIMIT[@]}" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$OUT/artifacts/" \
		"$OUT/corpus" "$REPO/test/fuzz/corpus" >"$OUT/fuzz.log" 2>&1
	rc=$?
	if [[ $rc -eq 0 ]] && ! compgen -G "$OUT/artifacts/*" >/dev/null; then
		grep -E '^(Done|INFO: Seed|stat::number_of_executed_units|stat::peak_rss_mb)' "$OUT/fuzz.log" |
			sed 's/^/  /'
		say "no finding in $((SECONDS - start)) s, $(find "$OUT/corpus" -type f | wc -l) new corpus entries"
		PASSED=$((PASSED + 1))
	else
		echo "---- last 60 lines of the fuzzer's log ($OUT/fuzz.log)"
		tail -n 60 "$OUT/fuzz.log"
		for a in "$OUT"/artifacts/*; do
			[[ -f $a ]] || continue
			say "finding: $a (reproduce: $OUT/fuzz_keyformat $a)"
			od -A d -c "$a" | head -n 10 | sed 's/^/  /'
		done
		say "FAILED (exit status $rc)"
		FAILED=$((FAILED + 1))
	fi
else
	say "fuzzer build failed"
	FAILED=$((FAILED + 1))
fi

finish
