-- Every bad input of SPEC section 5 gets its SQLSTATE and one clear message,
-- and leaves nothing behind.
\set SHOW_CONTEXT never

SELECT count(*) AS keys_before FROM apikeys.keys \gset

-- 22023: owner and name
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_create(NULL, 'n')$$),
  ($$SELECT apikeys.apikey_create('', 'n')$$),
  ($$SELECT apikeys.apikey_create('   ', 'n')$$),
  ($$SELECT apikeys.apikey_create('o', NULL)$$),
  ($$SELECT apikeys.apikey_create('o', '')$$),
  ($$SELECT apikeys.apikey_create('o', repeat('n', 201))$$),
  ($$SELECT apikeys.apikey_create(repeat('o', 201), 'n')$$)) AS t(q);

-- 22023: prefix
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_create('o', 'n', prefix => '')$$),
  ($$SELECT apikeys.apikey_create('o', 'n', prefix => 'Live')$$),
  ($$SELECT apikeys.apikey_create('o', 'n', prefix => 'live-1')$$),
  ($$SELECT apikeys.apikey_create('o', 'n', prefix => repeat('a', 33))$$)) AS t(q);

-- 22023: expires_in_days outside 1-365
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_create('o', 'n', expires_in_days => 0)$$),
  ($$SELECT apikeys.apikey_create('o', 'n', expires_in_days => 366)$$),
  ($$SELECT apikeys.apikey_create('o', 'n', expires_in_days => -1)$$)) AS t(q);

-- 22023: unknown scope, named, with the valid ones listed
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_create('o', 'n', scope => 'admin')$$),
  ($$SELECT apikeys.apikey_create('o', 'n', scope => NULL)$$),
  ($$SELECT apikeys.apikey_create('o', 'n', scope => '')$$)) AS t(q);

-- 22023: other malformed arguments
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_create('o', 'n', metadata => '[1, 2]')$$),
  ($$SELECT apikeys.apikey_create('o', 'n', metadata => 'null')$$),
  ($$SELECT apikeys.apikey_create('o', 'n', ip_restrictions => '{10.0.0.0/8,NULL}')$$),
  ($$SELECT apikeys.apikey_create('o', 'n', ip_restrictions => '{{10.0.0.0/8},{10.1.0.0/16}}')$$)) AS t(q);

-- 22023: grace outside 0-7 days
SELECT id AS gid FROM apikeys.apikey_create('errors_owner', 'rotatable') \gset
SELECT id AS xid FROM apikeys.apikey_create('errors_owner', 'expired') \gset
-- (key ids are random: they print as <gid> and <xid>)
CREATE TEMP TABLE masks (id text, label text);
INSERT INTO masks VALUES (:'gid', '<gid>'), (:'xid', '<xid>');
CREATE FUNCTION pg_temp.masked(t text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	m record;
BEGIN
	FOR m IN SELECT * FROM pg_temp.masks LOOP
		t := replace(t, m.id, m.label);
	END LOOP;
	RETURN t;
END
$$;
SELECT pg_temp.masked(q) AS q, pg_temp.masked(regress.outcome(q)) FROM (VALUES
  (format($$SELECT apikeys.apikey_rotate(%L, interval '8 days')$$, :'gid')),
  (format($$SELECT apikeys.apikey_rotate(%L, interval '7 days 1 second')$$, :'gid')),
  (format($$SELECT apikeys.apikey_rotate(%L, interval '-1 second')$$, :'gid')),
  (format($$SELECT apikeys.apikey_rotate(%L, NULL)$$, :'gid'))) AS t(q);

-- P0002: unknown id, or another owner's id: the same message either way
SELECT pg_temp.masked(q) AS q, pg_temp.masked(regress.outcome(q)) FROM (VALUES
  ($$SELECT apikeys.apikey_revoke('key_doesNotExist0000')$$),
  (format($$SELECT apikeys.apikey_revoke(%L, 'someone_else')$$, :'gid')),
  ($$SELECT apikeys.apikey_rotate('key_doesNotExist0000')$$),
  (format($$SELECT apikeys.apikey_rotate(%L, owner => 'someone_else')$$, :'gid')),
  -- something that is not a key id (a key passed by mistake, say) is never echoed
  ($$SELECT apikeys.apikey_revoke('ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1')$$)) AS t(q);

-- 55000: rotating a revoked or an expired key
UPDATE apikeys.keys SET expires_at = now() - interval '1 second' WHERE id = :'xid';
SELECT apikeys.apikey_revoke(:'gid');
SELECT pg_temp.masked(q) AS q, pg_temp.masked(regress.outcome(q)) FROM (VALUES
  (format($$SELECT apikeys.apikey_rotate(%L)$$, :'gid')),
  (format($$SELECT apikeys.apikey_rotate(%L)$$, :'xid'))) AS t(q);

-- 42501: a role without grants can call nothing and read nothing
CREATE ROLE regress_apikeys_nobody;
SET ROLE regress_apikeys_nobody;
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_create('o', 'n')$$),
  ($$SELECT apikeys.apikey_validate('x')$$),
  ($$SELECT apikeys.apikey_list('o')$$),
  ($$SELECT apikeys.apikey_revoke('key_x')$$),
  ($$SELECT apikeys.apikey_rotate('key_x')$$),
  ($$SELECT * FROM apikeys.keys$$),
  ($$SELECT * FROM apikeys.scopes$$),
  ($$SELECT * FROM apikeys.audit$$)) AS t(q);
RESET ROLE;

-- the validator may only validate; the admin may not read digests
SET ROLE apikeys_validator;
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_validate('x')$$),
  ($$SELECT apikeys.apikey_create('o', 'n')$$),
  ($$SELECT apikeys.apikey_list('o')$$),
  ($$SELECT apikeys.apikey_revoke('key_x')$$),
  ($$SELECT * FROM apikeys.keys$$)) AS t(q);
RESET ROLE;
SET ROLE apikeys_admin;
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_validate('x')$$),
  ($$SELECT apikeys.apikey_list('errors_owner')$$),
  ($$SELECT * FROM apikeys.keys$$),
  ($$SELECT digest FROM apikeys.keys$$)) AS t(q);
RESET ROLE;
DROP ROLE regress_apikeys_nobody;

-- nothing was left half-done: only the two keys made on purpose were added
SELECT count(*) - :keys_before AS keys_added FROM apikeys.keys;
SELECT count(*) AS error_keys FROM apikeys.keys WHERE owner = 'o';
