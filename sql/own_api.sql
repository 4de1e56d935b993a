-- Your own API behind keys (SPEC section 14): the request identity in SQL,
-- for row-level security, and apikeys.pre_request with its routes.
-- Requests are made by hand, as PostgREST makes them.
\set SHOW_CONTEXT never

SELECT key AS ka FROM apikeys.apikey_create('own_a', 'A', scope => 'full') \gset
SELECT key AS kb FROM apikeys.apikey_create('own_b', 'B', scope => 'read-only') \gset

CREATE FUNCTION pg_temp.request(k text, method text, path text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('request.headers', json_build_object('x-api-key', k)::text, true);
	PERFORM set_config('request.method', method, true);
	PERFORM set_config('request.path', path, true);
	PERFORM apikeys.pre_request();
END $$;

------------------------------------------------------------------------------
-- The identity: NULL outside an authenticated transaction, the key's inside,
-- gone at COMMIT and ROLLBACK and with an aborted subtransaction
------------------------------------------------------------------------------
SELECT apikeys.current_key_id() IS NULL AS no_id, apikeys.current_owner() IS NULL AS no_owner,
       apikeys.current_scope() IS NULL AS no_scope, apikeys.has_permission('todos:read') AS may_read;
BEGIN;
SELECT pg_temp.request(:'ka', 'GET', '/todos');
SELECT apikeys.current_key_id() LIKE 'key_%' AS has_id, apikeys.current_owner() AS owner,
       apikeys.current_scope() AS scope, apikeys.has_permission('todos:write') AS may_write;
-- set_config cannot forge it: it is not a setting
SELECT regress.outcome($$SELECT set_config('apikeys.current_owner', 'own_b', true)$$) AS forge_setting;
SELECT set_config('request.headers', json_build_object('x-api-key', :'kb')::text, true) IS NOT NULL AS headers_changed;
SELECT apikeys.current_owner() AS still_owner;
COMMIT;
SELECT apikeys.current_owner() IS NULL AS gone_after_commit;
BEGIN;
SELECT pg_temp.request(:'ka', 'GET', '/todos');
ROLLBACK;
SELECT apikeys.current_owner() IS NULL AS gone_after_rollback;
BEGIN;
SAVEPOINT s;
SELECT pg_temp.request(:'kb', 'GET', '/todos');
SELECT apikeys.current_owner() AS in_savepoint;
ROLLBACK TO SAVEPOINT s;
SELECT apikeys.current_owner() IS NULL AS gone_with_the_savepoint;
COMMIT;

------------------------------------------------------------------------------
-- has_permission follows the scope's patterns
------------------------------------------------------------------------------
BEGIN;
SELECT pg_temp.request(:'kb', 'GET', '/todos');
SELECT p AS permission, apikeys.has_permission(p) AS read_only_grants
  FROM unnest(ARRAY['todos:read', 'todos:write', 'lists:read', 'read', 'todos:read:x', '', NULL]) AS p;
ROLLBACK;

------------------------------------------------------------------------------
-- Default permissions, from the method and the path
------------------------------------------------------------------------------
SELECT m AS method, p AS path, apikeys._request_permission(m, p, false) AS needs
  FROM (VALUES ('GET', '/todos'), ('HEAD', '/todos'), ('POST', '/todos'), ('PATCH', '/todos'),
               ('DELETE', '/todos'), ('get', '/todos'), ('POST', '/rpc/archive'),
               ('GET', '/rpc/archive'), ('GET', '/')) AS v(m, p);

------------------------------------------------------------------------------
-- Routes: the most specific wins
------------------------------------------------------------------------------
INSERT INTO apikeys.routes (method, path, permission) VALUES
	('*', '/reports', 'reports:view'),
	('DELETE', '/reports', 'reports:admin'),
	('*', '/rpc/*', 'functions:call'),
	('*', '/rpc/archive', 'archive:run'),
	('GET', '/public', NULL);
SELECT m AS method, p AS path, apikeys._request_permission(m, p, false) AS needs
  FROM (VALUES ('GET', '/reports'), ('DELETE', '/reports'), ('POST', '/rpc/archive'),
               ('POST', '/rpc/other'), ('GET', '/public'), ('POST', '/public')) AS v(m, p);
-- a GET route covers HEAD too (a HEAD would answer the same rows' count)
SELECT apikeys._request_permission('HEAD', '/public', false) IS NULL AS head_follows_get,
       apikeys._request_permission('HEAD', '/reports', false) AS head_of_reports;
-- a path without its leading slash (PostgREST serves "reports" as
-- "/reports") is matched like one with it
BEGIN;
SELECT regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'kb', 'DELETE', 'reports'))
       AS no_leading_slash;
ROLLBACK;
-- a path with an encoded character is matched as PostgREST decodes it
BEGIN;
SELECT regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'kb', 'POST', '/rpc/arch%69ve'))
       AS encoded_route_for_read_only;
ROLLBACK;
BEGIN;
SELECT regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'ka', 'GET', '/rpc/bad%zz'))
       AS malformed_escape;
ROLLBACK;
-- each change is audited
UPDATE apikeys.routes SET permission = 'reports:read' WHERE path = '/reports' AND method = '*';
DELETE FROM apikeys.routes WHERE path = '/public';
SELECT event, detail->>'method' AS method, detail->>'path' AS path, detail->>'permission' AS permission
  FROM apikeys.audit WHERE event LIKE 'route%' ORDER BY event_id;
-- a route with a credit is accepted (credits charge it: see credits.sql)
SELECT * FROM regress.error_of($$INSERT INTO apikeys.routes (method, path, permission, credit, cost)
	VALUES ('POST', '/verify', 'verify:email', 'email_credit', 1)$$);
SELECT * FROM regress.error_of($$INSERT INTO apikeys.routes (method, path) VALUES ('get', 'todos')$$);

------------------------------------------------------------------------------
-- Refusals, PostgREST's way: 401 for a bad key, 403 for a missing permission
------------------------------------------------------------------------------
BEGIN;
SELECT regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', 'ak_nope', 'GET', '/todos')) AS bad_key,
       regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'kb', 'POST', '/todos')) AS read_only_posts,
       regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'kb', 'DELETE', '/reports')) AS read_only_deletes;
ROLLBACK;

------------------------------------------------------------------------------
-- Row-level security with current_owner(): rows of the key's owner only,
-- and the policy is an index condition (no lookup per row)
------------------------------------------------------------------------------
CREATE TABLE public.own_todos (id serial PRIMARY KEY, owner text NOT NULL DEFAULT apikeys.current_owner(),
	title text NOT NULL);
CREATE INDEX ON public.own_todos (owner);
INSERT INTO public.own_todos (owner, title)
SELECT CASE WHEN g % 100 = 0 THEN 'own_a' ELSE 'other' || g END, 'todo ' || g FROM generate_series(1, 5000) g;
ALTER TABLE public.own_todos ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON public.own_todos USING (owner = apikeys.current_owner());
CREATE ROLE regress_own_anon IN ROLE apikeys_anon;
GRANT SELECT, INSERT ON public.own_todos TO regress_own_anon;
GRANT USAGE ON SEQUENCE public.own_todos_id_seq TO regress_own_anon;
ANALYZE public.own_todos;
BEGIN;
SET LOCAL ROLE regress_own_anon;
SELECT count(*) AS rows_without_a_key FROM public.own_todos;
SELECT pg_temp.request(:'ka', 'GET', '/own_todos');
SELECT count(*) AS rows_of_own_a FROM public.own_todos;
INSERT INTO public.own_todos (title) VALUES ('new') RETURNING owner;
EXPLAIN (COSTS OFF) SELECT * FROM public.own_todos;
ROLLBACK;
