# test/http/credits.sh -- credits over HTTP (SPEC §11, issue 13): GET
# /v1/account/credits answers the owner's balances, and the example
# deployment's metered endpoint POST /v1/verify/email
# (examples/postgrest/verify.sql: permission verify:email, 1 email_credit a
# request) answers 200 and charges, 403 and 402 without charging, and costs
# nothing when the request fails.  Sourced by test/http/run.sh once the
# servers are up and examples/postgrest/verify.sql is loaded; it uses run.sh's
# sql, req, run_table and key_of, and adds its keys to CREDIT_KEYS (the log
# check at the end looks for them).
# shellcheck shell=bash
# Keys are used by name in the request tables.
# shellcheck disable=SC2034

CREDIT_KEYS=()

# credit_mint VAR OWNER NAME SCOPE -- a key from SQL into VAR, remembered for the log
# check (not in a command substitution: the array would not keep it).
credit_mint() {
	local var=$1 k
	k=$(sql "SELECT key FROM apikeys.apikey_create('$2', '$3', scope => '$4')")
	CREDIT_KEYS+=("$k")
	printf -v "$var" '%s' "$k"
}

# balance OWNER CREDIT -- apikey_credits(OWNER) ->> CREDIT, or "none".
balance() { sql "SELECT COALESCE(apikeys.apikey_credits('$1') ->> '$2', 'none')"; }

# expect_balance DESC OWNER CREDIT WANT -- the balance is the number WANT.
expect_balance() {
	local got
	got=$(balance "$2" "$3")
	if [[ $got =~ ^[0-9.]+$ && $(sql "SELECT '$got'::numeric = $4") == t ]]; then
		ok "$1"
	else
		not_ok "$1" "apikeys.apikey_credits('$2') ->> '$3' is '$got', expected $4"
	fi
}

# ---------------------------------------------------------------- GET /v1/account/credits

# An owner of its own, with no balance yet: a full key, a verify key, a
# read-only key and a verify key that will get a quota.
credit_mint APEX apexco 'apex full' full
credit_mint APEX_VERIFY apexco 'apex email service' verify
credit_mint APEX_RO apexco 'apex dashboard' read-only
credit_mint APEX_QUOTA apexco 'apex capped' verify
for k in APEX APEX_VERIFY APEX_RO APEX_QUOTA; do
	[[ ${!k} =~ ^ak_[0-9A-Za-z]+$ ]] || bail "credit keys minted with apikey_create" "$k: '${!k}'"
done

run_table <<EOT
GET | /v1/account/credits | APEX        | - | 200 | credits: an owner without balances -> 200 {} | . == {}
GET | /v1/account/credits | APEX_VERIFY | - | 200 | credits: ... with a verify key too -> 200 {} | . == {}
EOT
expect_sql "credits: apikey_credit_add(owner, 'email_credit', 1000) and ('phone_credit', 500) return the new balances" \
	"$(sql "SELECT apikeys.apikey_credit_add('apexco', 'email_credit', 1000) = 1000 AND apikeys.apikey_credit_add('apexco', 'phone_credit', 500) = 500")" t
run_table <<EOT
GET  | /v1/account/credits | APEX    | - | 200 | credits: GET /v1/account/credits -> 200 {"email_credit": 1000.0, "phone_credit": 500.0} | . == {"email_credit": 1000, "phone_credit": 500} && (.email_credit | type) == "number"
EOT
# The seed's answer, to the letter (a jq comparison would take 1000 for 1000.0).
if [[ $(tr -d ' \n' <"$S/body") == '{"email_credit":1000.0,"phone_credit":500.0}' ]]; then
	ok 'credits: the body is exactly {"email_credit": 1000.0, "phone_credit": 500.0}, as the seed shows it'
else
	not_ok 'credits: the body is exactly {"email_credit": 1000.0, "phone_credit": 500.0}' "body: $(body_excerpt)"
fi
run_table <<EOT
header | ^content-type: application/json | | | | credits: answered as application/json |
GET    | /v1/account/credits | APEX_RO | - | 200 | credits: a read-only key of the owner sees the same balances | . == {"email_credit": 1000, "phone_credit": 500}
GET    | /v1/account/credits | -       | - | 401 | credits: no key -> 401, no balances | E401 && (has("email_credit") | not)
GET    | /v1/account/credits | OTHER   | - | 200 | credits: another owner (globex) sees its own balances ({}), not these | . == {}
EOT

# ---------------------------------------------------------------- POST /v1/verify/email

expect_sql "verify: examples/postgrest/verify.sql added the route POST /rpc/verify_email (verify:email, 1 email_credit)" \
	"$(sql "SELECT permission || ' ' || credit || ' ' || cost::numeric::text FROM apikeys.routes WHERE method = 'POST' AND path = '/rpc/verify_email'")" \
	"verify:email email_credit 1"

run_table <<EOT
POST | /v1/verify/email | APEX_VERIFY | {"email": "jane.doe@example.com"} | 200 | verify: a verify key -> 200 with the check's JSON result | (keys | sort) == ["email","reason","valid"] and .email == "jane.doe@example.com" and .valid == true
header | ^content-type: application/json | | | | verify: answered as application/json |
EOT
expect_balance "verify: the 200 cost 1 email_credit (1000 -> 999)" apexco email_credit 999
expect_balance "verify: ... and no phone_credit" apexco phone_credit 500
run_table <<EOT
GET  | /v1/account/credits | APEX_VERIFY | - | 200 | verify: GET /v1/account/credits shows 999 at once | .email_credit == 999 and .phone_credit == 500
POST | /v1/verify/email | APEX_VERIFY | {"email": "not-an-email"}       | 200 | verify: an address that is not valid -> 200 with valid false and a reason (a check is a check) | .valid == false and (.reason | type) == "string" and .reason != "ok"
POST | /v1/verify/email | APEX_VERIFY | {"email": "a@b@example.com"}    | 200 | verify: two @ -> valid false | .valid == false
POST | /v1/verify/email | APEX        | {"email": "ops@example.org"}    | 200 | verify: a full key ({*}) -> 200 | .valid == true
EOT
expect_balance "verify: three more 200s cost 3 more (999 -> 996)" apexco email_credit 996

# Refusals and failures take nothing.
run_table <<EOT
POST   | /v1/verify/email | APEX_RO     | {"email": "jane@example.com"} | 403 | verify: a read-only key (no verify:email) -> 403 naming verify:email | E403 && (.message | test("verify:email"))
POST   | /v1/verify/email | OFFICE      | {"email": "jane@example.com"} | 403 | verify: a verify key from a refused address -> 403 | E403
POST   | /v1/verify/email | -           | {"email": "jane@example.com"} | 401 | verify: no key -> 401 | E401
POST   | /v1/verify/email | GHOST       | {"email": "jane@example.com"} | 401 | verify: unknown key -> 401 | E401
POST   | /v1/verify/email | APEX_VERIFY | {"email": ""}                 | 400 | verify: an empty email -> 400 with PostgREST's error shape | ERR && .code == "22023"
POST   | /v1/verify/email | APEX_VERIFY | {"email": "   "}              | 400 | verify: a blank email -> 400 | ERR
POST   | /v1/verify/email | APEX_VERIFY | {}                            | 400 | verify: no email at all -> 400 | ERR
POST   | /v1/verify/email | APEX_VERIFY | {"email": null}               | 400 | verify: email null -> 400 | ERR
GET    | /v1/verify/email | APEX_VERIFY | -                             | 405 | verify: GET /v1/verify/email -> 405 | -
header | ^allow: POST     |             |                               |     | verify: 405 says Allow: POST |
EOT
expect_balance "verify: the 401s, 403s, 400s and 405 took nothing (still 996)" apexco email_credit 996
run_table <<EOT
POST | /v1/verify/email | APEX_VERIFY | form:{"email": "form@example.com"} | 200 | verify: curl -d without a Content-Type -> 200 (nginx sends application/json) | .valid == true
EOT
expect_balance "verify: ... and it cost 1 (995)" apexco email_credit 995

# No balance, then a balance of 1 spent: 402 with a JSON body, nothing taken.
credit_mint POOR pennyless 'poor email service' verify
run_table <<EOT
POST | /v1/verify/email | POOR | {"email": "jane@example.com"} | 402 | verify: an owner without email_credit -> 402 with {code,message,details,hint} | ERR && .code == "PT402" and .message == "not enough email_credit"
header | ^content-type: application/json | | | | verify: the 402 is application/json |
EOT
expect_sql "verify: the 402 created no balance (apikey_credits stays {})" "$(sql "SELECT apikeys.apikey_credits('pennyless')")" "{}"
expect_sql "verify: apikey_credit_add('pennyless', 'email_credit', 1) -> 1" \
	"$(sql "SELECT apikeys.apikey_credit_add('pennyless', 'email_credit', 1) = 1")" t
run_table <<EOT
POST | /v1/verify/email | POOR | {"email": ""}                 | 400 | verify: with 1 credit left, a failing request -> 400 | ERR
POST | /v1/verify/email | POOR | {"email": "jane@example.com"} | 200 | verify: ... the credit is still there: the next request -> 200 | .valid == true
POST | /v1/verify/email | POOR | {"email": "jane@example.com"} | 402 | verify: the balance spent -> 402 "not enough email_credit" | ERR && .code == "PT402" and .message == "not enough email_credit" and (.details | type) == "string"
POST | /v1/verify/email | POOR | {"email": "jane@example.com"} | 402 | verify: ... and again 402 | ERR && .code == "PT402"
GET  | /v1/account/credits | POOR | - | 200 | verify: the spent balance reads 0 over HTTP, never below | .email_credit == 0
EOT
expect_balance "verify: the 402s took nothing (0)" pennyless email_credit 0

# A key with a quota of 1: one request, then 402 while the owner has plenty.
APEX_QUOTA_ID=$(sql "SELECT key_id FROM apikeys.apikey_validate('$APEX_QUOTA')")
sql "SELECT apikeys.apikey_quota_set('$APEX_QUOTA_ID', 'email_credit', 1)" >/dev/null
run_table <<EOT
POST | /v1/verify/email | APEX_QUOTA | {"email": ""}                  | 400 | quota: a key with a quota of 1: a failing request -> 400 (gives the unit back) | ERR
POST | /v1/verify/email | APEX_QUOTA | {"email": "first@example.com"} | 200 | quota: the first request -> 200 | .valid == true
POST | /v1/verify/email | APEX_QUOTA | {"email": "again@example.com"} | 402 | quota: the second -> 402 with {code,message,details,hint} | ERR && .code == "PT402" and .message == "not enough email_credit"
POST | /v1/verify/email | APEX_VERIFY | {"email": "other@example.com"} | 200 | quota: another key of the owner (no quota) still gets 200 | .valid == true
GET  | /v1/account/credits | APEX_QUOTA | - | 200 | quota: the exhausted key still reads the balances (GET /v1/account/credits costs nothing) | .email_credit == 993
EOT
expect_balance "quota: the owner paid for the two 200s only (995 -> 993)" apexco email_credit 993

# 30 concurrent requests over a balance of 20: exactly 20 pass.
credit_mint BURST burstco 'burst email service' verify
sql "SELECT apikeys.apikey_credit_add('burstco', 'email_credit', 20)" >/dev/null
pids=()
for ((i = 0; i < 30; i++)); do
	curl -sS --max-time 30 -o /dev/null -w '%{http_code}\n' -X POST "$BASE/v1/verify/email" \
		-H "X-API-Key: $BURST" -H "Content-Type: application/json" -d "{\"email\": \"u$i@example.com\"}" \
		>"$S/burst.$i" 2>&1 &
	pids+=($!)
done
wait "${pids[@]}"
codes=$(cat "$S"/burst.* | sort | uniq -c | awk '{print $2 "x" $1}' | tr '\n' ' ')
rm -f "$S"/burst.*
if [[ $codes == "200x20 402x10 " ]]; then
	ok "burst: 30 concurrent POST /v1/verify/email over a balance of 20 -> exactly 20 x 200 and 10 x 402"
else
	not_ok "burst: 30 concurrent POSTs over a balance of 20 -> exactly 20 x 200 and 10 x 402" "got: $codes"
fi
expect_balance "burst: the balance is 0 afterwards" burstco email_credit 0

# 402s, like 401s and 403s, stay out of the server log.
lines_before=$(wc -l <"$S/pg/server.log")
for ((i = 0; i < 50; i++)); do
	req POST /v1/verify/email -H "X-API-Key: $POOR" -H "Content-Type: application/json" -d '{"email": "jane@example.com"}'
done
lines_after=$(wc -l <"$S/pg/server.log")
if [[ $CODE == 402 && $((lines_after - lines_before)) -lt 10 ]]; then
	ok "50 refused metered requests (402) add $((lines_after - lines_before)) lines to the server log (fewer than 10)"
else
	not_ok "50 refused metered requests (402) add fewer than 10 lines to the server log" \
		"last answer $CODE; $((lines_after - lines_before)) lines added" "$(tail -n 5 "$S/pg/server.log")"
fi
