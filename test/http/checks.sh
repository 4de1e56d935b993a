# test/http/checks.sh -- what the HTTP suites (run.sh, todo.sh) share: the
# "ok - ..." / "not ok - ..." lines, one request with curl, and the checks of
# its answer, alone or as rows of a table.  Sourced; the caller sets S (a
# scratch directory), BASE (where requests go) and PASS=0 FAIL=0, and may
# set CHECK_PREFIX (put before every check's description) and TARGET (send
# requests elsewhere than BASE).
# shellcheck shell=bash

ok() {
	PASS=$((PASS + 1))
	echo "ok - ${CHECK_PREFIX:-}$1"
}

# not_ok DESC [DETAIL...] -- a failed check, with detail lines.
not_ok() {
	FAIL=$((FAIL + 1))
	echo "not ok - ${CHECK_PREFIX:-}$1"
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

# req METHOD PATH [CURL ARGS...] -- one request to $TARGET (default $BASE,
# nginx); sets CODE, LAST, and the files $S/body and $S/headers.
req() {
	local method=$1 path=$2
	shift 2
	local -a how=(-X "$method")
	[[ $method == HEAD ]] && how=(--head) # -X HEAD would wait for a body
	LAST="$method $path"
	CODE=$(curl -sS --max-time 10 -o "$S/body" -D "$S/headers" -w '%{http_code}' \
		"${how[@]}" "${TARGET:-$BASE}$path" "$@" 2>"$S/curl.err") || CODE="000 ($(head -c 200 "$S/curl.err"))"
}

# The error body PostgREST sends: {code,message,details,hint}; and the
# refusals of apikeys in it.
ERR='type == "object" and (keys | sort) == ["code","details","hint","message"]'
E401="$ERR and .code == \"PT401\""
E403="$ERR and .code == \"PT403\""

# expect DESC STATUS [CHECK...] -- the last response had STATUS and every
# CHECK holds: "no-body" (the body is empty), ERR, E401, E403, object, array (shorthands)
# or a jq filter that is true of the body.
expect() {
	local desc=$1 want=$2 f
	shift 2
	if [[ $CODE != "$want" ]]; then
		not_ok "$desc" "$LAST: got $CODE, expected $want" "body: $(body_excerpt)"
		return 1
	fi
	for f in "$@"; do
		case $f in
			no-body)
				if [[ -s $S/body ]]; then
					not_ok "$desc" "$LAST: $CODE, but the body is not empty" "body: $(body_excerpt)"
					return 1
				fi
				continue
				;;
			ERR) f=$ERR ;;
			E401) f=$E401 ;;
			E403) f=$E403 ;;
			object | array) f="type == \"$f\"" ;;
		esac
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

# expect_sql DESC GOT WANT -- a value read with sql() is WANT.
expect_sql() {
	if [[ $2 == "$3" ]]; then
		ok "$1"
	else
		not_ok "$1" "got '$2', expected '$3'"
	fi
}

trim() {
	local s=$1
	s=${s#"${s%%[![:space:]]*}"}
	printf '%s\n' "${s%"${s##*[![:space:]]}"}"
}

# run_table -- one request and one check per row of the table on stdin
# (blank lines and lines starting with # are skipped). A row is
#
#   METHOD | PATH | KEY | BODY | STATUS | DESCRIPTION | CHECK
#
#   KEY     - (no header), the name of a variable holding a key (sent as
#           X-API-Key), or a raw "Name: value" header; several joined by ", "
#   BODY    - (none); (empty): Content-Type application/json and no body;
#           form:TEXT: -d TEXT with curl's own Content-Type; else JSON text,
#           sent as application/json
#   CHECK   - (the status alone), or checks as `expect` takes them, joined
#           by " && " (the last column: it may hold "|")
#
# METHOD "same" checks the previous response again (STATUS, CHECK); METHOD
# "header" checks that a header line of the previous response matches the
# regex in PATH.
run_table() {
	local -a rows args checks
	local row method path key body status desc check item
	mapfile -t rows
	for row in "${rows[@]}"; do
		[[ $row =~ ^[[:space:]]*(#|$) ]] && continue
		IFS='|' read -r method path key body status desc check <<<"$row"
		method=$(trim "$method") path=$(trim "$path") key=$(trim "$key") body=$(trim "$body")
		status=$(trim "$status") desc=$(trim "$desc") check=$(trim "$check")
		case $method in
			header)
				expect_header "$desc" "$path"
				continue
				;;
			same) ;;
			*)
				args=()
				if [[ $key != - ]]; then
					while IFS= read -r item; do
						item=$(trim "$item")
						if [[ $item =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
							args+=(-H "X-API-Key: ${!item}")
						else
							args+=(-H "$item")
						fi
					done < <(tr ',' '\n' <<<"$key")
				fi
				case $body in
					-) ;;
					'(empty)') args+=(-H "Content-Type: application/json") ;;
					form:*) args+=(-d "${body#form:}") ;;
					*) args+=(-H "Content-Type: application/json" -d "$body") ;;
				esac
				req "$method" "$path" "${args[@]}"
				;;
		esac
		checks=()
		if [[ $check != - ]]; then
			while [[ $check == *' && '* ]]; do
				checks+=("${check%%' && '*}")
				check=${check#*' && '}
			done
			checks+=("$check")
		fi
		expect "$desc" "$status" "${checks[@]}"
	done
}
