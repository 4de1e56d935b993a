--
-- apikey_rotate(id, grace DEFAULT '0', owner DEFAULT NULL)
--     returns the same columns as apikey_create
--
-- Mints a successor with the same owner, name, scope, IP list, prefix,
-- metadata and lifetime, and lets the old key live on for grace (0 to 7
-- days).  Revoked and expired keys cannot be rotated (55000); an unknown id
-- or another owner's id is P0002.
--

-- Every row apikey_create or apikey_rotate returns (plaintext key included)
-- is kept under a label in this temporary table and never printed.
CREATE TEMP TABLE minted (label text PRIMARY KEY, LIKE apikeys.new_key);
CREATE FUNCTION pg_temp.id_of(label text) RETURNS text
LANGUAGE sql AS $$ SELECT id FROM minted WHERE label = $1 $$;
-- valid and code of labelled keys, validated in one statement.
CREATE FUNCTION pg_temp.validate_labels(VARIADIC labels text[],
	OUT label text, OUT valid boolean, OUT code text)
RETURNS SETOF record
LANGUAGE sql AS $$
	SELECT m.label, v.valid, v.code
	  FROM minted AS m,
	       apikeys.apikey_validate(m.key, client_ip => '10.1.2.3') AS v
	 WHERE m.label = ANY (labels)
	 ORDER BY m.label
$$;

------------------------------------------------------------------------------
-- Grace 0 (the default): the old key expires as the successor is minted.
------------------------------------------------------------------------------
INSERT INTO minted
SELECT 'plain', * FROM apikeys.apikey_create('rotate_owner_a', 'billing service',
	scope => 'lists', ip_restrictions => '{10.1.0.0/16,2001:db8::/32}',
	prefix => 'rot_pfx', metadata => '{"team": "billing", "tier": 2}');
INSERT INTO minted
SELECT 'plain.next', * FROM apikeys.apikey_rotate(pg_temp.id_of('plain'));

-- The successor carries the same name, prefix, scope, IP list and (lack of)
-- expiry, under a new id and with a new key.
SELECT n.name, n.prefix, n.scope, n.ip_restrictions,
       n.expires_at IS NULL AS never_expires,
       n.id <> o.id AS new_id, n.id ~ '^key_[0-9A-Za-z]+$' AS id_shape,
       n.key <> o.key AS new_key, n.key ~ '^rot_pfx_[0-9A-Za-z]+$' AS key_shape,
       n.warning
  FROM minted AS n, minted AS o
 WHERE n.label = 'plain.next' AND o.label = 'plain';

-- In apikeys.keys, the successor has the same owner, name, scope, IP list,
-- prefix, metadata and lifetime, a different digest, and rotated_from
-- pointing at the old key.
SELECT s.owner, s.metadata, s.lifetime_days,
       s.owner = p.owner AS same_owner, s.name = p.name AS same_name,
       s.scope = p.scope AS same_scope,
       s.ip_restrictions = p.ip_restrictions AS same_ips,
       s.prefix = p.prefix AS same_prefix, s.metadata = p.metadata AS same_metadata,
       s.digest <> p.digest AS new_digest,
       s.rotated_from = p.id AS linked_to_old, p.rotated_from IS NULL AS old_is_first
  FROM apikeys.keys AS s, apikeys.keys AS p
 WHERE s.id = pg_temp.id_of('plain.next') AND p.id = pg_temp.id_of('plain');

-- The old key's expires_at is the moment of rotation (the successor's
-- created_at, to within a second) ...
SELECT o.expires_at - n.created_at BETWEEN interval '-1 second' AND interval '1 second'
       AS expired_at_rotation
  FROM apikeys.keys AS o, apikeys.keys AS n
 WHERE o.id = pg_temp.id_of('plain') AND n.id = pg_temp.id_of('plain.next');
-- ... so in any later statement it validates 'expired', and the successor
-- 'valid', with the same owner, name, scope and metadata.
SELECT * FROM pg_temp.validate_labels('plain', 'plain.next');
SELECT v.owner, v.name, v.scope, v.metadata, v.expires_at IS NULL AS never_expires
  FROM apikeys.apikey_validate((SELECT key FROM minted WHERE label = 'plain.next'),
                               client_ip => '10.1.2.3') AS v;

------------------------------------------------------------------------------
-- Grace '1 hour': both keys are valid until the grace has passed.
------------------------------------------------------------------------------
INSERT INTO minted
SELECT 'graced', * FROM apikeys.apikey_create('rotate_owner_a', 'deploy bot');
INSERT INTO minted
SELECT 'graced.next', * FROM apikeys.apikey_rotate(pg_temp.id_of('graced'), grace => '1 hour');
SELECT * FROM pg_temp.validate_labels('graced', 'graced.next');
-- The old key now expires one hour after the rotation.
SELECT o.expires_at - n.created_at BETWEEN interval '1 hour' - interval '1 second'
                                       AND interval '1 hour' + interval '1 second'
       AS expires_one_hour_after_rotation
  FROM apikeys.keys AS o, apikeys.keys AS n
 WHERE o.id = pg_temp.id_of('graced') AND n.id = pg_temp.id_of('graced.next');
-- When the hour has passed (simulated by moving expires_at into the past),
-- the old key is expired and the successor still valid.
UPDATE apikeys.keys SET expires_at = now() - interval '1 minute'
 WHERE id = pg_temp.id_of('graced');
SELECT * FROM pg_temp.validate_labels('graced', 'graced.next');

------------------------------------------------------------------------------
-- Lifetime: a key made to live N days gets a successor that lives N days from
-- the rotation; a key that never expires, a successor that never expires.
------------------------------------------------------------------------------
INSERT INTO minted
SELECT 'thirty', * FROM apikeys.apikey_create('rotate_owner_a', 'monthly key',
	expires_in_days => 30);
-- Age the key by ten days, so only twenty of its thirty days are left.
UPDATE apikeys.keys SET created_at = created_at - interval '10 days',
                        expires_at = expires_at - interval '10 days'
 WHERE id = pg_temp.id_of('thirty');
INSERT INTO minted
SELECT 'thirty.next', * FROM apikeys.apikey_rotate(pg_temp.id_of('thirty'));
-- The successor lives thirty days from now, not the twenty left to the old key.
SELECT label, expires_at - created_at AS lifetime,
       expires_at - now() BETWEEN interval '30 days' - interval '1 minute'
                              AND interval '30 days' AS expires_30_days_from_now
  FROM minted WHERE label = 'thirty.next';
SELECT m.label, k.lifetime_days, k.expires_at - k.created_at AS lifetime
  FROM apikeys.keys AS k JOIN minted AS m ON m.id = k.id
 WHERE m.label IN ('thirty.next', 'plain.next')
 ORDER BY m.label;

-- Grace never extends a key's life: a key with one day left, rotated with a
-- grace of seven days, still expires when it would have.
INSERT INTO minted
SELECT 'short', * FROM apikeys.apikey_create('rotate_owner_a', 'short-lived key',
	expires_in_days => 1);
INSERT INTO minted
SELECT 'short.next', * FROM apikeys.apikey_rotate(pg_temp.id_of('short'), grace => '7 days');
SELECT k.expires_at = m.expires_at AS old_expiry_unchanged
  FROM apikeys.keys AS k JOIN minted AS m ON m.id = k.id
 WHERE m.label = 'short';
SELECT label, expires_at - created_at AS lifetime FROM minted WHERE label = 'short.next';
SELECT * FROM pg_temp.validate_labels('short', 'short.next');

------------------------------------------------------------------------------
-- Grace is 0 to 7 days; anything else is 22023 and rotates nothing.
------------------------------------------------------------------------------
INSERT INTO minted
SELECT 'weekly', * FROM apikeys.apikey_create('rotate_owner_a', 'weekly rotated key');
INSERT INTO minted
SELECT 'weekly.next', * FROM apikeys.apikey_rotate(pg_temp.id_of('weekly'), grace => '7 days');
SELECT o.expires_at - n.created_at BETWEEN interval '7 days' - interval '1 second'
                                       AND interval '7 days' + interval '1 second'
       AS expires_7_days_after_rotation
  FROM apikeys.keys AS o, apikeys.keys AS n
 WHERE o.id = pg_temp.id_of('weekly') AND n.id = pg_temp.id_of('weekly.next');

INSERT INTO minted
SELECT 'untouched', * FROM apikeys.apikey_create('rotate_owner_a', 'not rotated');
SELECT g.grace, e.state, e.message, e.detail
  FROM (VALUES (1, $$'7 days 1 second'$$), (2, $$'8 days'$$), (3, $$'1 mon'$$),
               (4, $$'-1 second'$$), (5, 'NULL')) AS g(n, grace),
       regress.error_of(format('SELECT apikeys.apikey_rotate(%L, grace => %s)',
                               pg_temp.id_of('untouched'), g.grace)) AS e
 ORDER BY g.n;
-- The failed calls minted nothing and left the key as it was.
SELECT count(*) AS successors FROM apikeys.keys
 WHERE rotated_from = pg_temp.id_of('untouched');
SELECT expires_at IS NULL AS never_expires FROM apikeys.keys
 WHERE id = pg_temp.id_of('untouched');
SELECT * FROM pg_temp.validate_labels('untouched');

------------------------------------------------------------------------------
-- Keys that cannot be rotated.
------------------------------------------------------------------------------
INSERT INTO minted
SELECT 'revoked', * FROM apikeys.apikey_create('rotate_owner_a', 'revoked key');
SELECT apikeys.apikey_revoke(pg_temp.id_of('revoked')) AS revoked;
INSERT INTO minted
SELECT 'expired', * FROM apikeys.apikey_create('rotate_owner_a', 'expired key',
	expires_in_days => 30);
UPDATE apikeys.keys SET expires_at = now() - interval '1 minute'
 WHERE id = pg_temp.id_of('expired');
INSERT INTO minted
SELECT 'foreign', * FROM apikeys.apikey_create('rotate_owner_b', 'owner b''s key');

-- A revoked key and an expired one (by expires_at, or by an earlier rotation
-- with grace 0) are 55000; an unknown id and another owner's id are P0002,
-- with the same message; a NULL or empty id, or an empty owner, is 22023.
SELECT a.attempt, e.state, e.message, e.detail
  FROM (VALUES
        (1, 'revoked key', pg_temp.id_of('revoked'), NULL),
        (2, 'expired key', pg_temp.id_of('expired'), NULL),
        (3, 'key expired by rotation', pg_temp.id_of('plain'), NULL),
        (4, 'unknown id', 'key_doesNotExist0000', NULL),
        (5, 'another owner''s id', pg_temp.id_of('foreign'), 'rotate_owner_a'),
        (6, 'unknown id, with owner', 'key_doesNotExist0000', 'rotate_owner_a'),
        (7, 'NULL id', NULL, NULL),
        (8, 'empty id', '', NULL),
        (9, 'empty owner', pg_temp.id_of('foreign'), '')) AS a(n, attempt, id, owner),
       regress.error_of(format('SELECT apikeys.apikey_rotate(%L, owner => %L)',
                               a.id, a.owner), a.id) AS e
 ORDER BY a.n;
-- None of them minted a successor, and the other owner's key is still valid.
SELECT count(*) AS successors FROM apikeys.keys
 WHERE rotated_from IN (pg_temp.id_of('revoked'), pg_temp.id_of('expired'),
                        pg_temp.id_of('foreign'));
SELECT count(*) AS successors_of_plain FROM apikeys.keys
 WHERE rotated_from = pg_temp.id_of('plain');
SELECT * FROM pg_temp.validate_labels('foreign');

------------------------------------------------------------------------------
-- Rotating twice makes a chain: each successor links to its predecessor.
------------------------------------------------------------------------------
INSERT INTO minted
SELECT 'chain', * FROM apikeys.apikey_create('rotate_owner_a', 'chained key',
	scope => 'read-only', metadata => '{"rotation": "chain"}');
-- the owner may be given, and must then match
INSERT INTO minted
SELECT 'chain.next', * FROM apikeys.apikey_rotate(pg_temp.id_of('chain'),
	owner => 'rotate_owner_a');
INSERT INTO minted
SELECT 'chain.next.next', * FROM apikeys.apikey_rotate(pg_temp.id_of('chain.next'));
SELECT * FROM pg_temp.validate_labels('chain', 'chain.next', 'chain.next.next');
-- Walk back from the newest key through rotated_from.
WITH RECURSIVE chain AS (
	SELECT k.id, k.rotated_from, k.name, k.scope, k.metadata, 1 AS step
	  FROM apikeys.keys AS k WHERE k.id = pg_temp.id_of('chain.next.next')
	UNION ALL
	SELECT k.id, k.rotated_from, k.name, k.scope, k.metadata, c.step + 1
	  FROM apikeys.keys AS k JOIN chain AS c ON k.id = c.rotated_from
)
SELECT c.step, m.label, c.name, c.scope, c.metadata, c.rotated_from IS NULL AS is_first
  FROM chain AS c JOIN minted AS m ON m.id = c.id
 ORDER BY c.step;

------------------------------------------------------------------------------
-- Every successor made above links to the key it replaced, with the same
-- owner, name, scope, IP list, prefix, metadata and lifetime.
------------------------------------------------------------------------------
SELECT sm.label AS successor, pm.label AS predecessor,
       s.owner = p.owner AND s.name = p.name AND s.scope = p.scope
       AND s.ip_restrictions = p.ip_restrictions AND s.prefix = p.prefix
       AND s.metadata = p.metadata
       AND s.lifetime_days IS NOT DISTINCT FROM p.lifetime_days AS same_attributes
  FROM apikeys.keys AS s
  JOIN apikeys.keys AS p ON p.id = s.rotated_from
  JOIN minted AS sm ON sm.id = s.id
  JOIN minted AS pm ON pm.id = p.id
 ORDER BY sm.label;

-- The grace limit is on the resulting time, not on the interval: '1 mon -23
-- days' compares equal to 7 days as an interval but ends 8 days after
-- 1 July.  apikeys._grace_end(grace, at) is the rule apikey_rotate applies
-- at its statement's time.
SET TimeZone = 'UTC';
SELECT g AS grace, regress.outcome(format('SELECT apikeys._grace_end(%L, %L)', g, t)) AS outcome
  FROM (VALUES ('1 mon -23 days', '2026-07-01 00:00+00'),
               ('1 mon -23 days', '2026-02-01 00:00+00'),
               ('7 days', '2026-07-01 00:00+00'),
               ('168 hours', '2026-07-01 00:00+00'),
               ('168 hours 1 second', '2026-07-01 00:00+00'),
               ('-1 second', '2026-07-01 00:00+00'),
               ('1 mon -30 days', '2026-07-01 00:00+00')) AS v(g, t);
SELECT apikeys._grace_end('1 mon -23 days', '2026-02-01 00:00+00') AS ends;
-- across a daylight-saving change the limit is 7 calendar days of the
-- session's time zone, as the grace is
SET TimeZone = 'America/New_York';
SELECT regress.outcome($$SELECT apikeys._grace_end('7 days', '2026-03-05 12:00')$$) AS seven_days_over_dst;
RESET TimeZone;
