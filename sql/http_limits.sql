-- Through the HTTP API a key mints only keys within its own limits (issue
-- 12): every permission granted by its scope, every network inside one of
-- its own (unless it has none), and an expiry no later than its own
-- (unless it never expires); otherwise PT403, which PostgREST answers 403.
-- The minting and revoking functions check their own permission too, so
-- no route reaches them unchecked.  Requests are made by hand, as
-- PostgREST makes them.
\set SHOW_CONTEXT never

SELECT key AS boxed FROM apikeys.apikey_create('limits_owner', 'boxed', scope => 'full',
	ip_restrictions => '{203.0.113.0/24}', expires_in_days => 2) \gset
INSERT INTO apikeys.scopes (name, permissions, description)
VALUES ('lists-admin', '{lists:*,api-keys:*}', 'Lists, and managing keys');
SELECT key AS listy FROM apikeys.apikey_create('limits_owner', 'lists admin', scope => 'lists-admin') \gset
SELECT key AS reader FROM apikeys.apikey_create('limits_owner', 'reader', scope => 'read-only') \gset

-- request(key, path, method, client): authenticates like PostgREST's pre-request
CREATE FUNCTION pg_temp.request(k text, path text, method text, client text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('request.headers',
		json_build_object('x-api-key', k, 'x-forwarded-for', client)::text, true);
	PERFORM set_config('request.path', path, true);
	PERFORM set_config('request.method', method, true);
	PERFORM apikeys_api.pre_request();
END $$;

-- the boxed key: full scope, 203.0.113.0/24, expires in 2 days
BEGIN;
SELECT pg_temp.request(:'boxed', '/rpc/create_key', 'POST', '203.0.113.7');
SELECT b AS body, regress.state(format('SELECT apikeys_api.create_key(%L)', b)) AS answer
  FROM (VALUES
	('{"name": "narrower", "ipRestrictions": ["203.0.113.0/25"], "expiresInDays": 1}'),
	('{"name": "same days, so a little later", "ipRestrictions": ["203.0.113.0/24"], "expiresInDays": 2}'),
	('{"name": "same net", "ipRestrictions": ["203.0.113.0/24"], "expiresInDays": 1}'),
	('{"name": "one host", "ipRestrictions": ["203.0.113.9/32"], "expiresInDays": 1, "scope": "lists"}'),
	('{"name": "wider net", "ipRestrictions": ["203.0.112.0/23"], "expiresInDays": 1}'),
	('{"name": "elsewhere", "ipRestrictions": ["198.51.100.0/24"], "expiresInDays": 1}'),
	('{"name": "anywhere", "expiresInDays": 1}'),
	('{"name": "never expires", "ipRestrictions": ["203.0.113.0/25"]}'),
	('{"name": "outlives", "ipRestrictions": ["203.0.113.0/25"], "expiresInDays": 3}')) AS v(b);
-- which limit: the message says
SELECT regress.outcome($$SELECT apikeys_api.create_key('{"name": "x", "expiresInDays": 1}')$$) AS wider_networks;
SELECT regress.outcome($$SELECT apikeys_api.create_key('{"name": "x", "ipRestrictions": ["203.0.113.0/25"], "expiresInDays": 30}')$$)
       LIKE 'PT403: expiresInDays must not outlive this key, which expires at %' AS later_expiry_named;
ROLLBACK;

-- a lists-admin key cannot mint a broader scope
BEGIN;
SELECT pg_temp.request(:'listy', '/rpc/create_key', 'POST', '198.51.100.1');
SELECT regress.outcome($$SELECT apikeys_api.create_key('{"name": "x", "scope": "full"}')$$) AS broader_scope,
       regress.state($$SELECT apikeys_api.create_key('{"name": "x", "scope": "lists"}')$$) AS narrower_scope;
ROLLBACK;

-- a key without api-keys:read cannot list or read analytics by another
-- route: the pre-request decodes the path as PostgREST does (%5F is _),
-- and the functions check their own permission, whatever path was authorized
SELECT key AS verifier FROM apikeys.apikey_create('limits_owner', 'verifier', scope => 'verify') \gset
BEGIN;
SELECT regress.outcome($$SELECT pg_temp.request('$$ || :'verifier' || $$', '/rpc/list%5Fkeys', 'GET', '198.51.100.1')$$)
       AS encoded_path_by_verifier;
SELECT pg_temp.request(:'verifier', '/rpc/credits', 'GET', '198.51.100.1');
SELECT regress.outcome($$SELECT apikeys_api.list_keys()$$) AS list_by_verifier,
       regress.outcome($$SELECT apikeys_api.analytics(7)$$) AS analytics_by_verifier;
ROLLBACK;

-- a read-only key that authenticated for a GET cannot reach the minting or
-- revoking function by another route
BEGIN;
SELECT pg_temp.request(:'reader', '/rpc/list_keys', 'GET', '198.51.100.1');
SELECT regress.outcome($$SELECT apikeys_api.create_key('{"name": "sneaky"}')$$) AS create_by_reader,
       regress.outcome($$SELECT apikeys_api.revoke_key('key_0000000000000000')$$) AS revoke_by_reader;
ROLLBACK;

-- a key (or anything) in ipRestrictions is refused without being echoed
BEGIN;
SELECT pg_temp.request(:'listy', '/rpc/create_key', 'POST', '198.51.100.1');
SELECT regress.outcome(format('SELECT apikeys_api.create_key(%L)',
		json_build_object('name', 'x', 'scope', 'lists', 'ipRestrictions', json_build_array('10.0.0.0/8', :'reader'))))
       AS key_as_network;
SELECT position(:'reader' IN regress.outcome(format('SELECT apikeys_api.create_key(%L)',
		json_build_object('name', 'x', 'scope', 'lists', 'ipRestrictions', json_build_array(:'reader'))))) = 0 AS key_not_echoed,
       position(:'reader' IN regress.outcome(format('SELECT apikeys_api.create_key(%L)',
		json_build_object('name', 'x', 'scope', 'lists', :'reader', 1)))) = 0 AS key_as_field_not_echoed;
SELECT regress.outcome(format('SELECT apikeys_api.create_key(%L)',
		json_build_object('name', 'x', 'scope', 'lists', :'reader', 1))) AS key_as_field;
SELECT position(:'reader' IN regress.outcome(format('SELECT apikeys_api.create_key(%L)',
		json_build_object('name', 'x', 'scope', 'lists', 'expiresInDays', :'reader')))) = 0 AS key_as_days_not_echoed,
       regress.outcome($$SELECT apikeys_api.create_key('{"name": "x", "scope": "lists", "expiresInDays": "1"}')$$) AS days_as_string;
SELECT regress.outcome($$SELECT apikeys_api.create_key('{"name": "x", "scope": "lists", "ipRestrictions": [42]}')$$) AS number_as_network,
       regress.outcome($$SELECT apikeys_api.create_key('{"name": "x", "scope": "lists", "ipRestrictions": "10.0.0.0/8"}')$$) AS not_an_array;
ROLLBACK;
