--
-- apikeys.audit: the append-only record of every state change of a key
--
-- created, revoked, rotated (and expired, written by the background worker)
-- events, each with time, key id, owner, actor (session_user) and detail.
-- A call that fails records nothing; nobody can change or remove a row.
--

-- Every row apikey_create or apikey_rotate returns (plaintext key included)
-- is kept under a label in this temporary table and never printed; audit
-- rows show the label instead of the random key id.
CREATE TEMP TABLE minted (label text PRIMARY KEY, LIKE apikeys.new_key);
CREATE FUNCTION pg_temp.id_of(label text) RETURNS text
LANGUAGE sql AS $$ SELECT id FROM minted WHERE label = $1 $$;
CREATE FUNCTION pg_temp.label_of(id text) RETURNS text
LANGUAGE sql AS $$ SELECT coalesce((SELECT label FROM minted WHERE id = $1), $1) $$;
-- (the test also works under SET ROLE apikeys_admin)
GRANT SELECT, INSERT ON minted TO apikeys_admin;

-- The audit table's columns.
SELECT attname AS column_name, format_type(atttypid, atttypmod) AS type,
       attnotnull AS not_null
  FROM pg_attribute
 WHERE attrelid = 'apikeys.audit'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;

------------------------------------------------------------------------------
-- created
------------------------------------------------------------------------------
INSERT INTO minted
SELECT 'detailed', * FROM apikeys.apikey_create('audit_owner_a', 'audited key',
	scope => 'verify', ip_restrictions => '{10.0.0.0/8}', expires_in_days => 10,
	prefix => 'aud', metadata => '{"team": "audit"}');
INSERT INTO minted
SELECT 'plain', * FROM apikeys.apikey_create('audit_owner_a', 'plain key');

-- One 'created' event per key, by the session user, with the key's name,
-- scope, prefix, IP list and expiry (when it has one) as detail.
SELECT pg_temp.label_of(a.key_id) AS key, a.owner, a.event,
       a.actor = session_user AS by_session_user,
       a.detail - 'expires_at' AS detail,
       (a.detail ->> 'expires_at')::timestamptz = m.expires_at AS detail_expires_at
  FROM apikeys.audit AS a JOIN minted AS m ON m.id = a.key_id
 WHERE a.owner = 'audit_owner_a'
 ORDER BY a.event_id;

------------------------------------------------------------------------------
-- revoked
------------------------------------------------------------------------------
SELECT apikeys.apikey_revoke(pg_temp.id_of('detailed')) AS revoked;
-- Revoking again changes nothing, so it records nothing.
SELECT apikeys.apikey_revoke(pg_temp.id_of('detailed')) AS revoked;
SELECT pg_temp.label_of(a.key_id) AS key, a.owner, a.event,
       a.actor = session_user AS by_session_user, a.detail
  FROM apikeys.audit AS a
 WHERE a.owner = 'audit_owner_a' AND a.event = 'revoked'
 ORDER BY a.event_id;

------------------------------------------------------------------------------
-- rotated
------------------------------------------------------------------------------
INSERT INTO minted
SELECT 'plain.next', * FROM apikeys.apikey_rotate(pg_temp.id_of('plain'), grace => '1 hour');
-- Rotation records the successor's 'created' event (naming the key it
-- replaces) and a 'rotated' event on the old key naming the successor, the
-- grace and when the old key now expires.
SELECT pg_temp.label_of(a.key_id) AS key, a.event,
       a.actor = session_user AS by_session_user,
       a.detail - 'successor' - 'rotated_from' - 'expires_at' AS other_detail,
       pg_temp.label_of(a.detail ->> 'successor') AS successor,
       pg_temp.label_of(a.detail ->> 'rotated_from') AS rotated_from,
       (a.detail ->> 'expires_at')::timestamptz = k.expires_at AS detail_expires_at
  FROM apikeys.audit AS a JOIN apikeys.keys AS k ON k.id = a.key_id
 WHERE a.key_id IN (pg_temp.id_of('plain'), pg_temp.id_of('plain.next'))
 ORDER BY a.event_id;

------------------------------------------------------------------------------
-- The actor is the session user, even under SET ROLE and although the
-- functions run as SECURITY DEFINER.
------------------------------------------------------------------------------
SET ROLE apikeys_admin;
INSERT INTO minted
SELECT 'by admin', * FROM apikeys.apikey_create('audit_owner_a', 'made by the admin role');
SELECT apikeys.apikey_revoke(pg_temp.id_of('by admin')) AS revoked;
RESET ROLE;
SELECT pg_temp.label_of(a.key_id) AS key, a.event,
       a.actor = session_user AS by_session_user,
       a.actor = 'apikeys_admin' AS by_admin_role
  FROM apikeys.audit AS a
 WHERE a.key_id = pg_temp.id_of('by admin')
 ORDER BY a.event_id;

-- The whole trail of the owner, in order; times never go backwards.
SELECT a.event_id - min(a.event_id) OVER () + 1 AS n,
       pg_temp.label_of(a.key_id) AS key, a.event,
       a.at >= lag(a.at, 1, a.at) OVER (ORDER BY a.event_id) AS in_time_order
  FROM apikeys.audit AS a
 WHERE a.owner = 'audit_owner_a'
 ORDER BY a.event_id;

-- No audit row holds key material: neither a key nor its digest appears in
-- any row of this owner.
SELECT count(*) AS rows_with_key_material
  FROM apikeys.audit AS a, minted AS m
 WHERE a.owner = 'audit_owner_a'
   AND (strpos(a::text, m.key) > 0
        OR strpos(a::text, substr(m.key, length(m.prefix) + 2)) > 0
        OR strpos(a::text, encode(digest(m.key, 'sha256'), 'hex')) > 0);

------------------------------------------------------------------------------
-- A call that fails records nothing and stores nothing.
------------------------------------------------------------------------------
-- An unknown scope fails the create (22023; the message lists the valid
-- scopes, which other tests may add to, so only the SQLSTATE is shown) ...
\set VERBOSITY sqlstate
SELECT * FROM apikeys.apikey_create('audit_owner_failed', 'never made',
	scope => 'no-such-scope');
\set VERBOSITY default
-- ... and leaves neither a key row nor an audit row behind.
SELECT (SELECT count(*) FROM apikeys.keys WHERE owner = 'audit_owner_failed') AS key_rows,
       (SELECT count(*) FROM apikeys.audit WHERE owner = 'audit_owner_failed') AS audit_rows;

-- Failed rotations and revocations of the owner's keys add no event either.
SELECT count(*) AS events_before FROM apikeys.audit WHERE owner = 'audit_owner_a' \gset
SELECT a.attempt, e.state, e.message
  FROM (VALUES
        (1, 'rotate a revoked key', pg_temp.id_of('detailed'),
            'SELECT apikeys.apikey_rotate(%L)'),
        (2, 'rotate with a bad grace', pg_temp.id_of('plain.next'),
            $$SELECT apikeys.apikey_rotate(%L, grace => '8 days')$$),
        (3, 'rotate as another owner', pg_temp.id_of('plain.next'),
            $$SELECT apikeys.apikey_rotate(%L, owner => 'audit_owner_b')$$),
        (4, 'revoke as another owner', pg_temp.id_of('plain.next'),
            $$SELECT apikeys.apikey_revoke(%L, owner => 'audit_owner_b')$$))
         AS a(n, attempt, id, stmt),
       regress.error_of(format(a.stmt, a.id), a.id) AS e
 ORDER BY a.n;
SELECT count(*) - :events_before AS new_events
  FROM apikeys.audit WHERE owner = 'audit_owner_a';

------------------------------------------------------------------------------
-- Append-only: UPDATE, DELETE and TRUNCATE are refused, even to a superuser.
------------------------------------------------------------------------------
SELECT a.attempt, e.state, e.message, e.detail
  FROM (VALUES
        (1, 'UPDATE', $$UPDATE apikeys.audit SET actor = 'mallory' WHERE owner = 'audit_owner_a'$$),
        (2, 'DELETE', $$DELETE FROM apikeys.audit WHERE owner = 'audit_owner_a'$$),
        (3, 'TRUNCATE', 'TRUNCATE apikeys.audit')) AS a(n, attempt, stmt),
       regress.error_of(a.stmt) AS e
 ORDER BY a.n;
-- The trail is unchanged.
SELECT count(*) - :events_before AS new_events,
       bool_and(actor = session_user) AS actors_unchanged
  FROM apikeys.audit WHERE owner = 'audit_owner_a';

------------------------------------------------------------------------------
-- apikeys_admin reads the audit trail, but cannot write or change it.
------------------------------------------------------------------------------
SET ROLE apikeys_admin;
SELECT a.event, count(*) AS events
  FROM apikeys.audit AS a
 WHERE a.owner = 'audit_owner_a'
 GROUP BY a.event
 ORDER BY a.event;
SELECT a.attempt, e.state, e.message
  FROM (VALUES
        (1, 'INSERT', $$INSERT INTO apikeys.audit (key_id, owner, event) VALUES ('key_forged', 'audit_owner_a', 'revoked')$$),
        (2, 'UPDATE', $$UPDATE apikeys.audit SET actor = 'mallory' WHERE owner = 'audit_owner_a'$$),
        (3, 'DELETE', $$DELETE FROM apikeys.audit WHERE owner = 'audit_owner_a'$$),
        (4, 'TRUNCATE', 'TRUNCATE apikeys.audit')) AS a(n, attempt, stmt),
       regress.error_of(a.stmt) AS e
 ORDER BY a.n;
RESET ROLE;
SELECT count(*) - :events_before AS new_events
  FROM apikeys.audit WHERE owner = 'audit_owner_a';
