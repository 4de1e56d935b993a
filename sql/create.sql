-- apikey_create: every column of the result and every default.
\set SHOW_CONTEXT never

-- defaults: scope full, no IP restriction, never expires, prefix ak, metadata {}
SELECT id AS kid, key AS k, created_at AS created
  FROM apikeys.apikey_create('create_owner', 'Production Key') \gset
SELECT id ~ '^key_[0-9A-Za-z]{16}$' AS id_ok, name, prefix,
       key ~ '^ak_' AS key_ok, scope, ip_restrictions, expires_at,
       created_at > now() - interval '1 minute' AS created_recently,
       warning
  FROM apikeys.apikey_create('create_owner', 'Second Key');

-- the result has exactly the contract's columns, in order
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a
 WHERE a.attrelid = 'apikeys.new_key'::regclass AND a.attnum > 0
 ORDER BY a.attnum;

-- what is stored for a default key
SELECT owner, name, prefix, scope, ip_restrictions, metadata, lifetime_days,
       expires_at, revoked_at, last_used_at, rotated_from,
       created_at = :'created'::timestamptz AS created_at_matches
  FROM apikeys.keys WHERE id = :'kid';

-- every argument by name
SELECT name, prefix, key ~ '^vfx_prod_[0-9A-Za-z]{38}$' AS key_ok, scope,
       ip_restrictions,
       expires_at - created_at AS lifetime
  FROM apikeys.apikey_create(owner => 'create_owner', name => 'Staging',
                             scope => 'read-only',
                             ip_restrictions => '{10.0.0.0/8,2001:db8::/32}',
                             expires_in_days => 30,
                             prefix => 'vfx_prod',
                             metadata => '{"env": "staging", "team": 7}');
SELECT metadata, lifetime_days FROM apikeys.keys
 WHERE owner = 'create_owner' AND name = 'Staging';

-- the bounds of expires_in_days are accepted
SELECT expires_at - created_at AS one_day
  FROM apikeys.apikey_create('create_owner', 'short', expires_in_days => 1);
SELECT expires_at - created_at AS a_year
  FROM apikeys.apikey_create('create_owner', 'long', expires_in_days => 365);

-- NULL for the optional arguments means their default
SELECT ip_restrictions, expires_at, prefix, key ~ '^ak_' AS key_ok
  FROM apikeys.apikey_create('create_owner', 'nulls', 'full', NULL, NULL, NULL, NULL);
SELECT metadata FROM apikeys.keys WHERE owner = 'create_owner' AND name = 'nulls';

-- names and owners of up to 200 characters, any script
SELECT length(name) AS name_length
  FROM apikeys.apikey_create(repeat('o', 200), repeat('é', 200));
SELECT name FROM apikeys.apikey_create('create_owner', 'clé 🔑 production');

-- the same name may be used twice: keys are told apart by id
SELECT count(*) AS keys_named_twice FROM (
    SELECT (apikeys.apikey_create('create_owner', 'twin')).id
    UNION ALL
    SELECT (apikeys.apikey_create('create_owner', 'twin')).id) AS t;

-- a new key validates at once, and its id and owner come back
SELECT key AS nk, id AS nid
  FROM apikeys.apikey_create('create_owner', 'fresh', metadata => '{"tier": "gold"}') \gset
SELECT valid, code, key_id = :'nid' AS same_id, owner, name, scope, expires_at, metadata
  FROM apikeys.apikey_validate(:'nk');

-- created within a transaction that rolls back: nothing remains
BEGIN;
SELECT key AS rk FROM apikeys.apikey_create('create_rollback', 'gone') \gset
ROLLBACK;
SELECT count(*) AS keys_after_rollback FROM apikeys.keys WHERE owner = 'create_rollback';
SELECT (apikeys.apikey_validate(:'rk')).code AS rolled_back_key;
