-- The key that authenticated an HTTP request (apikeys_api.pre_request) is
-- remembered in C for that transaction only, and nothing a caller can do
-- from SQL sets or changes it.  Here PostgREST's per-request settings are
-- made by hand, as PostgREST makes them.
\set SHOW_CONTEXT never

SELECT key AS ka FROM apikeys.apikey_create('identity_a', 'A key') \gset
SELECT key AS kb FROM apikeys.apikey_create('identity_b', 'B key') \gset
SELECT apikeys.apikey_create('identity_b', 'B second') IS NOT NULL AS b_has_two;

-- a request with A's key acts on A's keys only
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', :'ka')::text, true) IS NOT NULL AS headers_set,
       set_config('request.path', '/rpc/list_keys', true) IS NOT NULL AS path_set,
       set_config('request.method', 'GET', true) IS NOT NULL AS method_set;
SET LOCAL ROLE apikeys_anon;
SELECT apikeys_api.pre_request();
SELECT jsonb_array_length(apikeys_api.list_keys()) AS a_keys,
       apikeys_api.list_keys()->0->>'name' AS a_key_name;
-- changing the headers afterwards changes nothing: the identity is not a setting
SELECT set_config('request.headers', json_build_object('x-api-key', :'kb')::text, true) IS NOT NULL AS headers_changed;
SELECT jsonb_array_length(apikeys_api.list_keys()) AS still_a_keys;
-- the apikeys. setting prefix is reserved: no custom setting can pose as it
SELECT set_config('apikeys.owner', 'identity_b', true);
ROLLBACK;

-- the identity ends with the transaction, whether it commits or not
SET ROLE apikeys_anon;
SELECT regress.outcome($$SELECT apikeys_api.list_keys()$$) AS after_rollback;
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', :'ka')::text, true) IS NOT NULL AS headers_set;
SELECT apikeys_api.pre_request();
COMMIT;
SELECT regress.outcome($$SELECT apikeys_api.list_keys()$$) AS after_commit;

-- a savepoint that authenticated and rolled back leaves no identity behind
BEGIN;
SAVEPOINT s;
SELECT set_config('request.headers', json_build_object('x-api-key', :'ka')::text, true) IS NOT NULL AS headers_set;
SELECT apikeys_api.pre_request();
ROLLBACK TO SAVEPOINT s;
SELECT regress.outcome($$SELECT apikeys_api.list_keys()$$) AS after_savepoint_rollback;
COMMIT;

-- the anonymous role cannot call the authentication itself, nor read it
SELECT regress.outcome($$SELECT apikeys._authenticate('x', NULL, NULL)$$) AS call_authenticate,
       regress.outcome($$SELECT apikeys._auth_owner()$$) AS read_owner;
RESET ROLE;

-- a failed authentication leaves none either, and says why
BEGIN;
SELECT set_config('request.headers', '{"x-api-key": "not a key"}', true) IS NOT NULL AS headers_set;
SELECT regress.outcome($$SELECT apikeys_api.pre_request()$$) AS garbage_key;
SELECT regress.outcome($$SELECT apikeys_api.list_keys()$$) AS after_failure;
SELECT set_config('request.headers', '{}', true) IS NOT NULL AS headers_set;
SELECT regress.outcome($$SELECT apikeys_api.pre_request()$$) AS no_key;
ROLLBACK;
