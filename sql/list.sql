--
-- apikey_list(owner) returns table (id, name, prefix, last4, scope,
--     ip_restrictions, expires_at, last_used_at, created_at, is_revoked, status)
--
-- An owner's keys, newest first.  No key material beyond last4 (the key's
-- last four characters); status is 'active', 'expired' or 'revoked' as of the
-- query, whether or not the background worker has run.
--

-- The columns apikey_list returns, in order, and their types.
SELECT a.name AS column_name, format_type(a.type, NULL) AS type
  FROM pg_proc AS p,
       unnest(p.proargnames, p.proallargtypes, p.proargmodes)
         WITH ORDINALITY AS a(name, type, mode, position)
 WHERE p.oid = 'apikeys.apikey_list(text)'::regprocedure
   AND a.mode = 't'
 ORDER BY a.position;

-- An owner without keys gets no rows (the header shows the same columns).
SELECT * FROM apikeys.apikey_list('list_owner_nobody');

-- Three keys of one owner, made one after the other, and one of another
-- owner.  What apikey_create returned, plaintext key included, is kept in a
-- temporary table so it can be compared with the list; it is never printed.
CREATE TEMP TABLE minted AS
SELECT * FROM apikeys.apikey_create('list_owner_a', 'oldest');
INSERT INTO minted
SELECT * FROM apikeys.apikey_create('list_owner_a', 'middle', scope => 'lists',
	ip_restrictions => '{10.0.0.0/8,192.168.0.0/16}', expires_in_days => 30,
	prefix => 'list_pfx');
INSERT INTO minted
SELECT * FROM apikeys.apikey_create('list_owner_a', 'newest', scope => 'read-only',
	expires_in_days => 7);
INSERT INTO minted
SELECT * FROM apikeys.apikey_create('list_owner_b', 'owner b''s key');

-- The owner's keys, newest first, all active.
SELECT l.ordinality AS position, l.name, l.prefix, l.scope, l.ip_restrictions,
       l.expires_at IS NULL AS never_expires, l.last_used_at IS NULL AS never_used,
       l.is_revoked, l.status
  FROM apikeys.apikey_list('list_owner_a') WITH ORDINALITY AS l
 ORDER BY l.ordinality;

-- Newest first means created_at strictly decreases down the list.
SELECT bool_and(created_at > next_created_at) AS newest_first, count(*) AS pairs
  FROM (SELECT created_at,
               lead(created_at) OVER (ORDER BY ordinality) AS next_created_at
          FROM apikeys.apikey_list('list_owner_a') WITH ORDINALITY) AS s
 WHERE next_created_at IS NOT NULL;

-- Each row describes the key apikey_create returned: same id, times, and
-- last4 is the key's last four characters.
SELECT m.name, l.id = m.id AS same_id, l.id ~ '^key_[0-9A-Za-z]+$' AS id_shape,
       l.created_at = m.created_at AS same_created_at,
       l.expires_at IS NOT DISTINCT FROM m.expires_at AS same_expires_at,
       l.expires_at - l.created_at AS lifetime,
       l.last4 = right(m.key, 4) AS last4_is_key_end, length(l.last4) AS last4_length
  FROM minted AS m
  JOIN apikeys.apikey_list('list_owner_a') AS l ON l.id = m.id
 ORDER BY m.created_at;

-- No column holds key material: for every column of every listed row, the
-- text holds neither the key, nor any eight consecutive characters of its
-- body (the part after the prefix), nor the hex of its SHA-256 digest.
SELECT c.key AS column_name,
       coalesce(bool_or(strpos(c.value, m.key) > 0), false) AS holds_key,
       coalesce(bool_or(EXISTS (
           SELECT FROM generate_series(1, length(m.key) - length(m.prefix) - 8) AS i
            WHERE strpos(c.value, substr(m.key, length(m.prefix) + 1 + i, 8)) > 0)),
           false) AS holds_8_chars_of_body,
       coalesce(bool_or(strpos(c.value, encode(digest(m.key, 'sha256'), 'hex')) > 0),
           false) AS holds_digest
  FROM minted AS m
  JOIN apikeys.apikey_list('list_owner_a') AS l ON l.id = m.id
  CROSS JOIN LATERAL jsonb_each_text(to_jsonb(l)) AS c
 GROUP BY c.key
 ORDER BY c.key;

-- Control: the same checks do find the key in the one place it is shown,
-- the key column of what apikey_create returned.
SELECT c.key AS column_name,
       bool_and(strpos(c.value, m.key) > 0) AS holds_key,
       bool_and(EXISTS (
           SELECT FROM generate_series(1, length(m.key) - length(m.prefix) - 8) AS i
            WHERE strpos(c.value, substr(m.key, length(m.prefix) + 1 + i, 8)) > 0))
           AS holds_8_chars_of_body
  FROM minted AS m
  CROSS JOIN LATERAL jsonb_each_text(to_jsonb(m)) AS c
 WHERE c.key = 'key'
 GROUP BY c.key;

-- status is computed at query time: move 'middle' past its expires_at (no
-- background worker involved) and revoke 'newest'.
UPDATE apikeys.keys SET expires_at = now() - interval '1 minute'
 WHERE id = (SELECT id FROM minted WHERE name = 'middle');
SELECT apikeys.apikey_revoke((SELECT id FROM minted WHERE name = 'newest')) AS revoked;
SELECT l.ordinality AS position, l.name, l.expires_at < now() AS past_expiry,
       l.is_revoked, l.status
  FROM apikeys.apikey_list('list_owner_a') WITH ORDINALITY AS l
 ORDER BY l.ordinality;

-- A key that is both expired and revoked reads 'revoked'.
UPDATE apikeys.keys SET expires_at = now() - interval '1 minute'
 WHERE id = (SELECT id FROM minted WHERE name = 'newest');
SELECT name, expires_at < now() AS past_expiry, is_revoked, status
  FROM apikeys.apikey_list('list_owner_a')
 WHERE name = 'newest';

-- Other owners' keys are never listed; each owner sees only their own.
SELECT count(*) AS foreign_keys_listed
  FROM apikeys.apikey_list('list_owner_a') AS l
  JOIN minted AS m ON m.id = l.id
 WHERE m.name = 'owner b''s key';
SELECT l.name, l.id = m.id AS same_id, l.status
  FROM apikeys.apikey_list('list_owner_b') AS l
  JOIN minted AS m ON m.name = 'owner b''s key'
 ORDER BY l.name;

-- The owner is matched exactly: not as a pattern, not case-insensitively.
SELECT count(*) AS rows FROM apikeys.apikey_list('list_owner_%');
SELECT count(*) AS rows FROM apikeys.apikey_list('LIST_OWNER_A');

-- A NULL, empty or blank owner is an invalid parameter (22023).
SELECT 'NULL owner' AS attempt, e.*
  FROM regress.error_of('SELECT * FROM apikeys.apikey_list(NULL)') AS e
UNION ALL
SELECT 'empty owner', e.*
  FROM regress.error_of($$SELECT * FROM apikeys.apikey_list('')$$) AS e
UNION ALL
SELECT 'blank owner', e.*
  FROM regress.error_of($$SELECT * FROM apikeys.apikey_list('   ')$$) AS e
ORDER BY 1;
