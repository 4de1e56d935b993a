# test/http/ratelimits.sh -- rate limits over HTTP (SPEC §12, issue 14,
# docs/http.md "Rate limits over HTTP"): through apikeys_api.pre_request, a
# key with a limit gets RateLimit-Limit, -Remaining and -Reset on every 200,
# and 429 with Retry-After, the same headers and {"code":"rate_limited",...}
# once the limit is spent; a key without limits gets none of them; an owner's
# limit is shared by its keys and a request refused by one limit consumes no
# other; on the metered POST /v1/verify/email a 429 charges nothing and a 402
# consumes no limit; 429s stay out of the server log.  Sourced by
# test/http/run.sh after test/http/credits.sh (examples/postgrest/verify.sql
# is loaded); it uses run.sh's sql, req, run_table and expect, credits.sh's
# expect_balance, and adds its keys to RL_KEYS (the log check at the end
# looks for them).
# shellcheck shell=bash
# Keys are used by name in the request tables.
# shellcheck disable=SC2034

RL_KEYS=()

# rl_mint VAR OWNER NAME SCOPE -- a key from SQL into VAR, remembered for the log
# check (not in a command substitution: the array would not keep it).
rl_mint() {
	local var=$1 k
	k=$(sql "SELECT key FROM apikeys.apikey_create('$2', '$3', scope => '$4')")
	RL_KEYS+=("$k")
	printf -v "$var" '%s' "$k"
}

# rl_header NAME -- the value of header NAME in the last response (empty if absent).
rl_header() {
	tr -d '\r' <"$S/headers" | awk -v n="$(tr '[:upper:]' '[:lower:]' <<<"$1")" -F': ' \
		'tolower($1) == n { sub(/^[^:]*: /, ""); print; exit }'
}

# expect_rl DESC STATUS LIMIT REMAINING [CHECK...] -- the last response had
# STATUS (and every CHECK holds of its body, as `expect` takes them), and
# RateLimit-Limit: LIMIT, RateLimit-Remaining: REMAINING and a RateLimit-Reset
# of whole seconds, at most 1.1 hours (a sub-bucket past the window of
# 1 hour).
expect_rl() {
	local desc=$1 status=$2 limit=$3 remaining=$4 l r reset
	shift 4
	l=$(rl_header RateLimit-Limit) r=$(rl_header RateLimit-Remaining) reset=$(rl_header RateLimit-Reset)
	if [[ $CODE == "$status" && $l == "$limit" && $r == "$remaining" && $reset =~ ^[0-9]+$ ]] &&
		((reset <= 3960)); then
		expect "$desc" "$status" "$@"
	else
		not_ok "$desc" "$LAST: $CODE (expected $status), RateLimit-Limit '$l' (expected $limit)," \
			"RateLimit-Remaining '$r' (expected $remaining), RateLimit-Reset '$reset' (expected 0..3960 s)" \
			"headers: $(tr '\r\n' '  ' <"$S/headers")"
	fi
}

# expect_429 DESC LIMIT -- the last response is 429 with Retry-After (a
# positive number of seconds, at most 1.1 hours), RateLimit-Limit: LIMIT,
# RateLimit-Remaining: 0, and PostgREST's error shape with code rate_limited.
expect_429() {
	local retry
	retry=$(rl_header Retry-After)
	if [[ $retry =~ ^[0-9]+$ ]] && ((retry >= 1 && retry <= 3960)); then
		expect_rl "$1" 429 "$2" 0 ERR '.code == "rate_limited"'
	else
		not_ok "$1" "$LAST: $CODE, Retry-After '$retry' (expected 1..3960 s)" \
			"headers: $(tr '\r\n' '  ' <"$S/headers")" "body: $(body_excerpt)"
	fi
}

# expect_no_rl DESC STATUS -- the last response had STATUS and no RateLimit-* or Retry-After header.
expect_no_rl() {
	if [[ $CODE != "$2" ]]; then
		not_ok "$1" "$LAST: got $CODE, expected $2" "body: $(body_excerpt)"
	elif grep -qiE '^(ratelimit-|retry-after)' "$S/headers"; then
		not_ok "$1" "$LAST: $CODE with $(grep -iE '^(ratelimit-|retry-after)' "$S/headers" | tr '\r\n' '  ')"
	else
		ok "$1"
	fi
}

rl_get() { req GET /v1/account/credits -H "X-API-Key: $1"; }
rl_verify() {
	req POST /v1/verify/email -H "X-API-Key: $1" -H "Content-Type: application/json" -d '{"email": "jane@example.com"}'
}

# ---------------------------------------------------------------- a key's limit

# Owner rlkeyco: a key limited to 3 per hour, and a sibling without a limit.
rl_mint RL rlkeyco 'limited 3/h' verify
rl_mint RL_FREE rlkeyco 'no limit' verify
RL_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$RL')")
sql "SELECT apikeys.apikey_ratelimit_set('hourly', 3, '1 hour', key_id => '$RL_ID')" >/dev/null
expect_sql "ratelimit: apikey_ratelimit_set('hourly', 3, '1 hour', key_id) shows in apikey_ratelimits" \
	"$(sql "SELECT string_agg(name || ' ' || key_id || ' ' || max || ' ' || per, ',') FROM apikeys.apikey_ratelimits('rlkeyco')")" \
	"hourly $RL_ID 3 01:00:00"

for i in 1 2 3; do
	rl_get "$RL"
	expect_rl "ratelimit: request $i of 3 per hour -> 200, RateLimit-Limit: 3, RateLimit-Remaining: $((3 - i)), RateLimit-Reset in seconds" \
		200 3 $((3 - i)) object
done
rl_get "$RL"
expect_429 "ratelimit: the 4th request -> 429, Retry-After in seconds, RateLimit-Limit: 3, RateLimit-Remaining: 0, {\"code\":\"rate_limited\"}" 3
expect_header "ratelimit: the 429 is application/json" '^content-type: application/json'
rl_get "$RL"
expect_429 "ratelimit: ... and the 5th again 429 (the refusal consumed nothing, and freed nothing)" 3

rl_get "$RL_FREE"
expect_no_rl "ratelimit: a key without limits (the limited key's sibling) -> 200 with no RateLimit-* or Retry-After header" 200
rl_get "$BOOT"
expect_no_rl "ratelimit: ... nor another owner's key (acme, no limits)" 200
req GET /v1/api-keys -H "X-API-Key: $BOOT"
expect_no_rl "ratelimit: ... on GET /v1/api-keys either" 200

# The other pre-request routes carry them too: a 403 is decided before the
# limits (nothing counted), a 200 on another path counts.
rl_mint RL_LIST rlkeyco 'limited reader' read-only
RL_LIST_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$RL_LIST')")
sql "SELECT apikeys.apikey_ratelimit_set('burst', 2, '1 hour', key_id => '$RL_LIST_ID')" >/dev/null
req POST /v1/api-keys -H "X-API-Key: $RL_LIST" -H "Content-Type: application/json" -d '{"name": "x", "scope": "read-only"}'
expect_no_rl "ratelimit: a limited read-only key refused on POST /v1/api-keys -> 403 without RateLimit headers (the permission comes first)" 403
req GET /v1/api-keys -H "X-API-Key: $RL_LIST"
expect_rl "ratelimit: ... GET /v1/api-keys -> 200 with RateLimit-Remaining: 1 (the 403 counted nothing)" 200 2 1 array
req GET '/v1/api-keys/analytics?days=7' -H "X-API-Key: $RL_LIST"
expect_rl "ratelimit: ... GET /v1/api-keys/analytics -> 200, RateLimit-Remaining: 0 (one limit over every path)" 200 2 0 object
req GET /v1/api-keys -H "X-API-Key: $RL_LIST"
expect_429 "ratelimit: ... the next GET /v1/api-keys -> 429" 2

# ---------------------------------------------------------------- an owner's limit

# Owner rlshared: 4 per hour for all its keys; key A also has 1 per hour of its own.
rl_mint RL_A rlshared 'shared a' verify
rl_mint RL_B rlshared 'shared b' verify
RL_A_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$RL_A')")
sql "SELECT apikeys.apikey_ratelimit_set('account', 4, '1 hour', owner => 'rlshared')" \
	"SELECT apikeys.apikey_ratelimit_set('own', 1, '1 hour', key_id => '$RL_A_ID')" >/dev/null
rl_get "$RL_A"
expect_rl "owner limit: key A (own 1/h, owner 4/h) -> 200, the most constrained limit: RateLimit-Limit: 1, Remaining: 0" 200 1 0 object
rl_get "$RL_A"
expect_429 "owner limit: key A again -> 429 for its own limit (RateLimit-Limit: 1)" 1
rl_get "$RL_B"
expect_rl "owner limit: key B -> 200, RateLimit-Limit: 4, Remaining: 2 (A's 200 counted, A's 429 did not)" 200 4 2 object
rl_get "$RL_B"
expect_rl "owner limit: key B -> 200, Remaining: 1" 200 4 1 object
rl_get "$RL_B"
expect_rl "owner limit: key B -> 200, Remaining: 0" 200 4 0 object
rl_get "$RL_B"
expect_429 "owner limit: key B's 4th -> 429: the owner's 4 per hour are spent (1 by A, 3 by B)" 4
rl_mint RL_C rlshared 'shared c, minted later' verify
rl_get "$RL_C"
expect_429 "owner limit: a key of the owner minted afterwards -> 429 at once (the limit is the owner's)" 4
rl_get "$RL_FREE"
expect_no_rl "owner limit: another owner's key without limits is not affected -> 200, no RateLimit headers" 200

# ---------------------------------------------------------------- metered requests

# Owner rlmeter: 2 email_credit and a key limited to 3 per hour.
rl_mint RL_METER rlmeter 'limited email service' verify
RL_METER_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$RL_METER')")
sql "SELECT apikeys.apikey_credit_add('rlmeter', 'email_credit', 2)" \
	"SELECT apikeys.apikey_ratelimit_set('hourly', 3, '1 hour', key_id => '$RL_METER_ID')" >/dev/null
rl_verify "$RL_METER"
expect_rl "metered: POST /v1/verify/email -> 200 with RateLimit-Limit: 3, Remaining: 2" 200 3 2 '.valid == true'
expect_balance "metered: ... and it cost 1 email_credit (2 -> 1)" rlmeter email_credit 1
rl_verify "$RL_METER"
expect_rl "metered: the second -> 200, Remaining: 1" 200 3 1 '.valid == true'
expect_balance "metered: ... the balance is spent (0)" rlmeter email_credit 0
rl_verify "$RL_METER"
expect "metered: the third, with no credit left -> 402" 402 ERR '.code == "PT402"'
rl_verify "$RL_METER"
expect "metered: ... and again 402" 402 ERR '.code == "PT402"'
expect_sql "metered: apikey_credit_add('rlmeter', 'email_credit', 5) -> 5" \
	"$(sql "SELECT apikeys.apikey_credit_add('rlmeter', 'email_credit', 5) = 5")" t
rl_verify "$RL_METER"
expect_rl "metered: with credits again -> 200, RateLimit-Remaining: 0 (the two 402s consumed no rate limit)" 200 3 0 '.valid == true'
expect_balance "metered: ... and it cost 1 (5 -> 4)" rlmeter email_credit 4
rl_verify "$RL_METER"
expect_429 "metered: the limit spent -> 429 with Retry-After and {\"code\":\"rate_limited\"}" 3
rl_verify "$RL_METER"
expect_429 "metered: ... and again 429" 3
expect_balance "metered: the 429s charged nothing (still 4)" rlmeter email_credit 4
rl_get "$RL_METER"
expect_429 "metered: the key's limit covers GET /v1/account/credits too -> 429" 3

# ---------------------------------------------------------------- the log

# 429s, like 401, 403 and 402, stay out of the server log.
lines_before=$(wc -l <"$S/pg/server.log")
for ((i = 0; i < 25; i++)); do
	rl_get "$RL"
	rl_verify "$RL_METER"
done
lines_after=$(wc -l <"$S/pg/server.log")
if [[ $CODE == 429 && $((lines_after - lines_before)) -lt 10 ]]; then
	ok "ratelimit: 50 rate-limited requests (429, GET and metered POST) add $((lines_after - lines_before)) lines to the server log (fewer than 10)"
else
	not_ok "ratelimit: 50 rate-limited requests (429) add fewer than 10 lines to the server log" \
		"last answer $CODE; $((lines_after - lines_before)) lines added" "$(tail -n 5 "$S/pg/server.log")"
fi
expect_balance "ratelimit: ... and charged nothing (still 4)" rlmeter email_credit 4
