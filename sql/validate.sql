-- apikey_validate: every outcome code, NULL and empty input, exactly one
-- row always, and no write (it runs inside a READ ONLY transaction).
\set SHOW_CONTEXT never

SELECT key AS k, id AS kid FROM apikeys.apikey_create('validate_owner', 'main',
       metadata => '{"plan": "pro"}') \gset
SELECT key AS rk FROM apikeys.apikey_create('validate_owner', 'to revoke') \gset
SELECT key AS ek, id AS ekid FROM apikeys.apikey_create('validate_owner', 'to expire',
       expires_in_days => 7) \gset
SELECT key AS ik FROM apikeys.apikey_create('validate_owner', 'office only',
       ip_restrictions => '{192.0.2.0/24}') \gset
SELECT key AS sk FROM apikeys.apikey_create('validate_owner', 'verify only',
       scope => 'verify') \gset
SELECT apikeys.apikey_revoke(id) FROM apikeys.keys
 WHERE owner = 'validate_owner' AND name = 'to revoke';
-- no worker involved: expiry is judged by expires_at alone
UPDATE apikeys.keys SET expires_at = now() - interval '1 second' WHERE id = :'ekid';

-- valid: the key's details come back
SELECT valid, code, key_id = :'kid' AS same_id, owner, name, scope, expires_at, metadata
  FROM apikeys.apikey_validate(:'k');

-- each failing outcome; details are NULL only when the key is unknown
SELECT t.label, v.valid, v.code, v.key_id IS NOT NULL AS has_key_id, v.owner, v.name
  FROM (VALUES (1, 'malformed', 'not a key', NULL::text, NULL::inet),
               (2, 'not_found', 'ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1', NULL, NULL),
               (3, 'revoked', :'rk', NULL, NULL),
               (4, 'expired', :'ek', NULL, NULL),
               (5, 'ip_not_allowed', :'ik', NULL, '198.51.100.1'),
               (6, 'insufficient_scope', :'sk', 'lists:write', NULL),
               (7, 'valid with permission', :'sk', 'verify:run', NULL))
       AS t(n, label, key, permission, ip),
       LATERAL apikeys.apikey_validate(t.key, t.permission, t.ip) AS v
 ORDER BY t.n;

-- NULL and empty input: malformed, never an error, always one row
SELECT code, key_id, owner, name, scope, expires_at, metadata
  FROM apikeys.apikey_validate(NULL);
SELECT code FROM apikeys.apikey_validate('');
SELECT code FROM apikeys.apikey_validate(:'k', NULL, NULL);
SELECT count(*) AS rows_for_garbage FROM apikeys.apikey_validate(repeat('x', 100000));
SELECT count(*) AS rows_for_unknown
  FROM apikeys.apikey_validate('ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1');

-- checks run in order: revoked before expired, expired before IP, IP before scope
UPDATE apikeys.keys SET expires_at = now() - interval '1 second'
 WHERE owner = 'validate_owner' AND name IN ('to revoke', 'office only');
SELECT (apikeys.apikey_validate(:'rk')).code AS revoked_and_expired,
       (apikeys.apikey_validate(:'ik', NULL, '198.51.100.1')).code AS expired_and_wrong_ip;
UPDATE apikeys.keys SET expires_at = NULL
 WHERE owner = 'validate_owner' AND name = 'office only';
SELECT (apikeys.apikey_validate(:'ik', 'nothing:granted', '198.51.100.1')).code AS wrong_ip_and_scope;

-- a key that expires later is still valid now
UPDATE apikeys.keys SET expires_at = now() + interval '1 hour' WHERE id = :'ekid';
SELECT code FROM apikeys.apikey_validate(:'ek');

-- READ ONLY: validation works and assigns no transaction id (wrote nothing)
BEGIN READ ONLY;
SELECT code FROM apikeys.apikey_validate(:'k');
SELECT code FROM apikeys.apikey_validate(:'rk');
SELECT pg_current_xact_id_if_assigned() IS NULL AS wrote_nothing;
COMMIT;

-- a transaction that only validates, many times, writes nothing
BEGIN;
SELECT count(*) FILTER (WHERE valid) AS valid_calls
  FROM generate_series(1, 100), LATERAL apikeys.apikey_validate(:'k');
SELECT pg_current_xact_id_if_assigned() IS NULL AS wrote_nothing;
COMMIT;

-- a revocation in this transaction is seen by the next statement
BEGIN;
SELECT apikeys.apikey_revoke(:'kid');
SELECT code FROM apikeys.apikey_validate(:'k');
ROLLBACK;
SELECT code AS after_rollback FROM apikeys.apikey_validate(:'k');
