--
-- apikey_revoke(id, owner DEFAULT NULL) returns boolean
--
-- True if the key was active and is now revoked, false if it already was.
-- An unknown id and another owner's id fail alike with P0002.  Once the
-- revoking transaction commits, the key validates as 'revoked'.
--

-- Keys of two owners; ids and keys are random, so they are kept in variables.
SELECT id AS a1_id, key AS a1_key
  FROM apikeys.apikey_create('revoke_owner_a', 'first key') \gset
SELECT id AS a2_id, key AS a2_key
  FROM apikeys.apikey_create('revoke_owner_a', 'expiring key', expires_in_days => 30) \gset
SELECT id AS a3_id, key AS a3_key
  FROM apikeys.apikey_create('revoke_owner_a', 'rolled back key') \gset
SELECT id AS b1_id, key AS b1_key
  FROM apikeys.apikey_create('revoke_owner_b', 'other owner''s key') \gset

-- An active key validates before it is revoked.
SELECT valid, code FROM apikeys.apikey_validate(:'a1_key');

-- Revoking an active key (as its owner) returns true ...
SELECT apikeys.apikey_revoke(:'a1_id', owner => 'revoke_owner_a') AS revoked;
-- ... and revoking it again returns false: revocation is idempotent.
SELECT apikeys.apikey_revoke(:'a1_id', owner => 'revoke_owner_a') AS revoked;
SELECT apikeys.apikey_revoke(:'a1_id') AS revoked;

-- The revoked key now validates as 'revoked', still naming its key id.
SELECT valid, code, key_id = :'a1_id' AS same_key_id, owner, name
  FROM apikeys.apikey_validate(:'a1_key');
SELECT revoked_at IS NOT NULL AS has_revoked_at, revoked_at <= now() AS revoked_in_the_past
  FROM apikeys.keys WHERE id = :'a1_id';

-- An unknown id and the id of another owner's key fail alike: P0002 and the
-- same message, so a caller cannot tell whether a foreign key id exists.
SELECT 'unknown id' AS attempt, e.*
  FROM regress.error_of($$SELECT apikeys.apikey_revoke('key_doesNotExist0000')$$,
                        'key_doesNotExist0000') AS e
UNION ALL
SELECT 'another owner''s id', e.*
  FROM regress.error_of(format('SELECT apikeys.apikey_revoke(%L, owner => %L)',
                               :'b1_id', 'revoke_owner_a'), :'b1_id') AS e
UNION ALL
SELECT 'unknown id, with owner', e.*
  FROM regress.error_of($$SELECT apikeys.apikey_revoke('key_doesNotExist0000', 'revoke_owner_a')$$,
                        'key_doesNotExist0000') AS e
ORDER BY 1;

-- The message names the id that was asked for, unmasked.
SELECT e.* FROM regress.error_of($$SELECT apikeys.apikey_revoke('key_doesNotExist0000')$$) AS e;

-- The failed attempt left the other owner's key untouched.
SELECT valid, code FROM apikeys.apikey_validate(:'b1_key');

-- A NULL or empty id (or an empty owner) is an invalid parameter (22023).
SELECT 'NULL id' AS attempt, e.*
  FROM regress.error_of('SELECT apikeys.apikey_revoke(NULL)') AS e
UNION ALL
SELECT 'empty id', e.*
  FROM regress.error_of($$SELECT apikeys.apikey_revoke('')$$) AS e
UNION ALL
SELECT 'empty owner', e.*
  FROM regress.error_of(format('SELECT apikeys.apikey_revoke(%L, owner => %L)',
                               :'b1_id', ''), :'b1_id') AS e
ORDER BY 1;

-- An administrator's call (owner NULL, the default) revokes any owner's key.
SELECT apikeys.apikey_revoke(:'b1_id') AS revoked;
SELECT valid, code FROM apikeys.apikey_validate(:'b1_key');

-- An expired key can still be revoked: it was not revoked before, so true.
UPDATE apikeys.keys SET expires_at = now() - interval '1 minute' WHERE id = :'a2_id';
SELECT valid, code FROM apikeys.apikey_validate(:'a2_key');
SELECT name, is_revoked, status
  FROM apikeys.apikey_list('revoke_owner_a')
 WHERE id = :'a2_id';
SELECT apikeys.apikey_revoke(:'a2_id', 'revoke_owner_a') AS revoked;
-- Revoked wins over expired, in validation and in the owner's list.
SELECT valid, code FROM apikeys.apikey_validate(:'a2_key');
SELECT name, is_revoked, status
  FROM apikeys.apikey_list('revoke_owner_a')
 ORDER BY name;

-- A revocation whose transaction rolls back never happened.
BEGIN;
SELECT apikeys.apikey_revoke(:'a3_id') AS revoked;
-- inside the transaction, the key is revoked ...
SELECT valid, code FROM apikeys.apikey_validate(:'a3_key');
ROLLBACK;
-- ... after the rollback it is valid and active again, with no audit event.
SELECT valid, code FROM apikeys.apikey_validate(:'a3_key');
SELECT name, is_revoked, status
  FROM apikeys.apikey_list('revoke_owner_a')
 WHERE id = :'a3_id';
SELECT count(*) AS revoked_events
  FROM apikeys.audit WHERE key_id = :'a3_id' AND event = 'revoked';
-- and it can be revoked for real afterwards.
SELECT apikeys.apikey_revoke(:'a3_id') AS revoked;
SELECT valid, code FROM apikeys.apikey_validate(:'a3_key');
