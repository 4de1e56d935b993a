-- The apikeys walk-through run by `make demo`: the story of one team that
-- issues keys for production and staging, uses them, rotates one and
-- revokes another.  Every statement is plain SQL you can type yourself.
\set ON_ERROR_STOP on
\pset footer off
\set QUIET on

\echo
\echo '== 1. Acme creates two labelled keys: production (full access) and staging'
\echo '      (read-only, office network only, expires in 30 days).'
\echo '      The key itself is returned exactly once; only its SHA-256 digest is stored.'
\echo '      (This demo prints keys masked, prefix…last 4; psql keeps them in variables.)'
\echo
SELECT id, name, prefix, key, scope, expires_at IS NULL AS never_expires, warning
  FROM apikeys.apikey_create(owner => 'acme', name => 'Production',
                             prefix => 'acme_live') \gset prod_
\x on
SELECT :'prod_id' AS id, :'prod_name' AS name,
       :'prod_prefix' || '_…' || right(:'prod_key', 4) AS key,
       :'prod_scope' AS scope, :'prod_warning' AS warning;
\x off
SELECT id, key, expires_at
  FROM apikeys.apikey_create(owner => 'acme', name => 'Staging',
                             scope => 'read-only',
                             ip_restrictions => '{203.0.113.0/24}',
                             expires_in_days => 30,
                             prefix => 'acme_test',
                             metadata => '{"env": "staging"}') \gset stage_
SELECT 'acme_test_…' || right(:'stage_key', 4) AS staging_key \gset
\echo 'staging key:' :staging_key

\echo
\echo '== 2. Listing keys shows no key material: just the last four characters.'
\echo
SELECT id, name, prefix, last4, scope, ip_restrictions, expires_at::date AS expires,
       status
  FROM apikeys.apikey_list('acme');

\echo
\echo '== 3. The production key validates; the check needs no write.'
\echo
SELECT valid, code, key_id, owner, name, scope
  FROM apikeys.apikey_validate(:'prod_key', 'lists:write');

\echo
\echo '== 4. The staging key is read-only: writing is refused for its scope,'
\echo '      reading is fine from the office network ...'
\echo
SELECT 'lists:write from 203.0.113.7' AS attempt, code
  FROM apikeys.apikey_validate(:'stage_key', 'lists:write', '203.0.113.7')
UNION ALL
SELECT 'lists:read from 203.0.113.7', code
  FROM apikeys.apikey_validate(:'stage_key', 'lists:read', '203.0.113.7')
UNION ALL
SELECT 'lists:read from 198.51.100.9', code
  FROM apikeys.apikey_validate(:'stage_key', 'lists:read', '198.51.100.9');
\echo '      ... and refused from anywhere else (last row: wrong address).'

\echo
\echo '== 5. Garbage, a mistyped key and a well-formed stranger:'
\echo '      the checksum rejects typos without touching a table.'
\echo
SELECT 'not a key' AS input, code FROM apikeys.apikey_validate('not a key')
UNION ALL
SELECT 'one character changed', code
  FROM apikeys.apikey_validate(overlay(:'prod_key' PLACING
       CASE WHEN substr(:'prod_key', 15, 1) = 'x' THEN 'y' ELSE 'x' END FROM 15 FOR 1))
UNION ALL
SELECT 'valid format, never issued', code
  FROM apikeys.apikey_validate('ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1');

\echo
\echo '== 6. Usage: every validation is counted in shared memory (no write on the'
\echo '      hot path); the background worker flushes them every 10 seconds, or now.'
\echo '      Here 250 production calls and 40 staging calls, 10 of them refused'
\echo '      (the totals below also hold the calls of steps 3 and 4).'
\echo
SELECT count(*) AS production_calls
  FROM (SELECT apikeys.apikey_validate(:'prod_key') FROM generate_series(1, 250)) AS s;
SELECT count(*) FILTER (WHERE valid) AS staging_ok, count(*) FILTER (WHERE NOT valid) AS staging_refused
  FROM (SELECT (apikeys.apikey_validate(:'stage_key', 'lists:read',
                CASE WHEN i <= 30 THEN '203.0.113.7' ELSE '198.51.100.9' END::inet)).valid
          FROM generate_series(1, 40) AS i) AS s;
SELECT apikeys.flush_usage() AS flushed;
SELECT key_id, day, calls, rejected FROM apikeys.apikey_usage('acme', 7);
\echo 'The analytics object the HTTP API returns (last 3 days):'
SELECT jsonb_pretty(apikeys.apikey_analytics('acme', 3));

\echo
\echo '== 7. Rotation with a one-hour grace: a new production key, same settings;'
\echo '      the old one keeps working for an hour so deployments can switch over.'
\echo
SELECT id, key FROM apikeys.apikey_rotate(:'prod_id', grace => '1 hour') \gset new_
SELECT 'old key' AS which, code,
       'in ' || round(extract(epoch FROM expires_at - now()) / 60) || ' minutes' AS expires
  FROM apikeys.apikey_validate(:'prod_key')
UNION ALL
SELECT 'new key', code, coalesce(expires_at::text, 'never')
  FROM apikeys.apikey_validate(:'new_key');

\echo
\echo '== 8. The staging key leaked: revoke it. Revocation is immediate and final.'
\echo
SELECT apikeys.apikey_revoke(:'stage_id', owner => 'acme') AS revoked;
SELECT apikeys.apikey_revoke(:'stage_id', owner => 'acme') AS revoked_again;
SELECT code FROM apikeys.apikey_validate(:'stage_key', 'lists:read', '203.0.113.7');
\echo '      (the old production key is still active for its grace hour)'
SELECT name, last4, expires_at IS NOT NULL AS expires, status FROM apikeys.apikey_list('acme');

\echo
\echo '== 9. Every change is in the append-only audit trail.'
\echo
SELECT at::time(0) AS at, key_id, event, actor, detail - 'expires_at' AS detail
  FROM apikeys.audit ORDER BY event_id;

\echo
\echo '== 10. An operator can find a leaked key by its hash, in plain SQL:'
\echo
SELECT id, owner, name
  FROM apikeys.keys
 WHERE digest = public.digest(:'stage_key', 'sha256');
\echo
