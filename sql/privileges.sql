-- Privileges (SPEC section 6): every function of schemas apikeys and
-- apikeys_api, every relation of apikeys and both schemas, for PUBLIC, a
-- fresh role without grants and the three roles of the extension.  The
-- matrices come from the catalogs, so a new function or table shows up here
-- by itself; the invariants below hold for all of them.  Then real calls
-- under SET ROLE: 42501 wherever a matrix says no.
\set SHOW_CONTEXT never

CREATE ROLE regress_apikeys_nogrant;

-- the roles of the matrices, in column order
CREATE TEMP TABLE r (n int, label text, role text);
INSERT INTO r VALUES (1, 'public', 'public'), (2, 'nogrant', 'regress_apikeys_nogrant'),
                     (3, 'validator', 'apikeys_validator'), (4, 'admin', 'apikeys_admin'),
                     (5, 'anon', 'apikeys_anon');

-- roles exist, cannot log in, are not superusers and inherit nothing
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls,
       (SELECT count(*) FROM pg_auth_members AS m WHERE m.member = a.oid) AS member_of
  FROM pg_roles AS a WHERE rolname LIKE 'apikeys\_%' ORDER BY rolname;

------------------------------------------------------------------------------
-- EXECUTE on every function ('X': may execute)
------------------------------------------------------------------------------

CREATE TEMP TABLE f AS
SELECT p.oid, n.nspname, p.oid::regprocedure::text AS func, p.prosecdef, p.prokind,
       p.prorettype = 'trigger'::regtype AS is_trigger
  FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('apikeys', 'apikeys_api');

-- the functions of the contract (SPEC section 3) and flush_usage, one by one
SELECT f.func AS function, CASE WHEN f.prosecdef THEN 'definer' ELSE '' END AS security,
       string_agg(CASE WHEN has_function_privilege(r.role, f.oid, 'EXECUTE') THEN 'X' ELSE '-' END,
                  ' ' ORDER BY r.n) AS "pub nog val adm ano"
  FROM f, r
 WHERE f.nspname = 'apikeys' AND f.func NOT LIKE 'apikeys.\_%' AND NOT f.is_trigger
 GROUP BY f.func, f.prosecdef ORDER BY f.func;
-- every other function, by kind: 'X' if the role may execute any of them
-- (anon's access to apikeys_api is the HTTP API's, tested with it)
SELECT k.kind,
       string_agg(CASE WHEN k.kind = 'apikeys_api.*' AND r.label = 'anon' THEN '.'
                       WHEN EXISTS (SELECT FROM f
                                     WHERE CASE WHEN f.nspname = 'apikeys_api' THEN 'apikeys_api.*'
                                                WHEN f.is_trigger THEN 'apikeys trigger functions'
                                                WHEN f.func LIKE 'apikeys.\_%' THEN 'apikeys._* (internal)'
                                           END = k.kind
                                       AND has_function_privilege(r.role, f.oid, 'EXECUTE'))
                       THEN 'X' ELSE '-' END, ' ' ORDER BY r.n) AS "pub nog val adm ano"
  FROM (VALUES ('apikeys._* (internal)'), ('apikeys trigger functions'), ('apikeys_api.*')) AS k(kind), r
 GROUP BY k.kind ORDER BY k.kind;

-- the invariants, for every function now and later (each list must be empty):
-- nothing for PUBLIC or a role without grants
SELECT func AS public_may_execute FROM f
 WHERE has_function_privilege('public', oid, 'EXECUTE')
    OR has_function_privilege('regress_apikeys_nogrant', oid, 'EXECUTE') ORDER BY 1;
-- the request identity of SPEC section 14, for row-level security policies
CREATE TEMP TABLE identity_fn (func text);
INSERT INTO identity_fn VALUES ('apikeys.current_key_id()'), ('apikeys.current_owner()'),
	('apikeys.current_scope()'), ('apikeys.has_permission(text)');
-- the validator: apikey_validate and the request identity only
SELECT func AS validator_may_execute FROM f
 WHERE has_function_privilege('apikeys_validator', oid, 'EXECUTE')
   AND func <> 'apikeys.apikey_validate(text,text,inet)'
   AND func NOT IN (SELECT func FROM identity_fn) ORDER BY 1;
-- the admin: every apikeys function not marked internal (leading '_') and
-- not a trigger function, and nothing else
SELECT func AS admin_differs, has_function_privilege('apikeys_admin', oid, 'EXECUTE') AS may_execute
  FROM f
 WHERE nspname = 'apikeys'
   AND has_function_privilege('apikeys_admin', oid, 'EXECUTE')
       IS DISTINCT FROM (func NOT LIKE 'apikeys.\_%' AND NOT is_trigger)
 ORDER BY 1;
-- anon: nothing outside apikeys_api but the request identity and the
-- generic pre-request (PostgREST runs it as its anonymous role)
SELECT func AS anon_may_execute_outside_api FROM f
 WHERE nspname <> 'apikeys_api' AND has_function_privilege('apikeys_anon', oid, 'EXECUTE')
   AND func NOT IN (SELECT func FROM identity_fn) AND func <> 'apikeys.pre_request()' ORDER BY 1;
-- no SECURITY DEFINER function is executable by anyone but the admin (and,
-- in apikeys_api and the generic pre-request, anon)
SELECT f.func AS definer_reachable, r.label FROM f, r
 WHERE f.prosecdef AND has_function_privilege(r.role, f.oid, 'EXECUTE')
   AND NOT (r.label = 'admin' OR (r.label = 'anon' AND
			(f.nspname = 'apikeys_api' OR f.func = 'apikeys.pre_request()')))
 ORDER BY 1, 2;
-- ACLs name no role outside these three (and the owner)
SELECT DISTINCT f.func AS granted_elsewhere, g.grantee::regrole
  FROM f, pg_proc AS p, aclexplode(p.proacl) AS g
 WHERE p.oid = f.oid AND g.grantee <> p.proowner
   AND g.grantee NOT IN ('apikeys_admin'::regrole, 'apikeys_validator'::regrole, 'apikeys_anon'::regrole)
 ORDER BY 1, 2;

------------------------------------------------------------------------------
-- Relations of schemas apikeys and apikeys_api that any of the roles may
-- touch: S(elect) I(nsert) U(pdate) D(elete) T(runcate) R(eferences)
-- t(rigger); for sequences U(sage) S(elect) u(pdate)
------------------------------------------------------------------------------

CREATE TEMP TABLE rel AS
SELECT c.oid, c.relname, c.relkind
  FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('apikeys', 'apikeys_api') AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S');

SELECT rel.relname AS relation, r.label AS role,
       CASE WHEN rel.relkind = 'S' THEN
            concat(CASE WHEN has_sequence_privilege(r.role, rel.oid, 'USAGE') THEN 'U' END,
                   CASE WHEN has_sequence_privilege(r.role, rel.oid, 'SELECT') THEN 'S' END,
                   CASE WHEN has_sequence_privilege(r.role, rel.oid, 'UPDATE') THEN 'u' END)
       ELSE
            concat(CASE WHEN has_table_privilege(r.role, rel.oid, 'SELECT') THEN 'S' END,
                   CASE WHEN has_table_privilege(r.role, rel.oid, 'INSERT') THEN 'I' END,
                   CASE WHEN has_table_privilege(r.role, rel.oid, 'UPDATE') THEN 'U' END,
                   CASE WHEN has_table_privilege(r.role, rel.oid, 'DELETE') THEN 'D' END,
                   CASE WHEN has_table_privilege(r.role, rel.oid, 'TRUNCATE') THEN 'T' END,
                   CASE WHEN has_table_privilege(r.role, rel.oid, 'REFERENCES') THEN 'R' END,
                   CASE WHEN has_table_privilege(r.role, rel.oid, 'TRIGGER') THEN 't' END)
       END AS privileges,
       CASE WHEN rel.relkind <> 'S' AND has_any_column_privilege(r.role, rel.oid, 'SELECT')
                 <> has_table_privilege(r.role, rel.oid, 'SELECT')
            THEN 'column grants' ELSE '' END AS columns
  FROM rel, r
 WHERE CASE WHEN rel.relkind = 'S' THEN has_sequence_privilege(r.role, rel.oid, 'USAGE,SELECT,UPDATE')
            ELSE has_any_column_privilege(r.role, rel.oid, 'SELECT,INSERT,UPDATE,REFERENCES')
                 OR has_table_privilege(r.role, rel.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
       END
 ORDER BY rel.relname, r.n;

-- no role but superusers (and the built-in pg_read_all_data) can read
-- apikeys.keys, whole or any column: every role in the cluster is checked
SELECT a.rolname AS may_read_keys
  FROM pg_roles AS a
 WHERE NOT a.rolsuper AND a.rolname NOT IN ('pg_read_all_data', 'pg_write_all_data')
   AND a.oid <> (SELECT relowner FROM pg_class WHERE oid = 'apikeys.keys'::regclass)
   AND (has_any_column_privilege(a.oid, 'apikeys.keys', 'SELECT')
        OR has_table_privilege(a.oid, 'apikeys.keys', 'SELECT'))
 ORDER BY 1;
-- nor write it, nor read or write usage; audit is read-only for the admin
SELECT a.rolname, rel.relname, p.priv
  FROM pg_roles AS a, rel,
       unnest('{SELECT,INSERT,UPDATE,DELETE,TRUNCATE}'::text[]) AS p(priv)
 WHERE NOT a.rolsuper AND a.rolname NOT IN ('pg_read_all_data', 'pg_write_all_data')
   AND a.oid <> (SELECT relowner FROM pg_class WHERE oid = 'apikeys.keys'::regclass)
   AND rel.relkind <> 'S'
   AND has_table_privilege(a.oid, rel.oid, p.priv)
   AND NOT (a.rolname = 'apikeys_admin' AND rel.relname IN ('scopes', 'routes') AND p.priv <> 'TRUNCATE')
   AND NOT (a.rolname = 'apikeys_admin' AND rel.relname = 'audit' AND p.priv = 'SELECT')
 ORDER BY 1, 2, 3;

-- schemas: USAGE and CREATE
SELECT s.nspname AS schema,
       string_agg(concat(CASE WHEN has_schema_privilege(r.role, s.oid, 'USAGE') THEN 'U' ELSE '-' END,
                         CASE WHEN has_schema_privilege(r.role, s.oid, 'CREATE') THEN 'C' ELSE '-' END),
                  ' ' ORDER BY r.n) AS "pub nog val adm ano"
  FROM pg_namespace AS s, r
 WHERE s.nspname IN ('apikeys', 'apikeys_api')
 GROUP BY s.nspname ORDER BY 1;

------------------------------------------------------------------------------
-- Real calls under SET ROLE: 42501 where the matrices say no
------------------------------------------------------------------------------

SELECT key AS k, id AS kid FROM apikeys.apikey_create('priv_owner', 'main') \gset
CREATE TEMP TABLE calls (n int, q text);
INSERT INTO calls VALUES
  (1, $$SELECT apikeys.apikey_create('priv_owner', 'n')$$),
  (2, format($$SELECT apikeys.apikey_validate(%L)$$, :'k')),
  (3, $$SELECT apikeys.apikey_list('priv_owner')$$),
  (4, format($$SELECT apikeys.apikey_revoke(%L)$$, :'kid')),
  (5, format($$SELECT apikeys.apikey_rotate(%L)$$, :'kid')),
  (6, $$SELECT apikeys.apikey_usage('priv_owner')$$),
  (7, $$SELECT apikeys.apikey_analytics('priv_owner')$$),
  (8, $$SELECT apikeys.flush_usage()$$),
  (9, $$SELECT apikeys._create_key('priv_owner', 'n', 'full', '{}', NULL, NULL, '{}', NULL)$$),
  (14, $$SELECT * FROM apikeys.keys$$),
  (15, $$SELECT digest FROM apikeys.keys$$),
  (16, $$SELECT id FROM apikeys.keys$$),
  (17, $$UPDATE apikeys.keys SET revoked_at = NULL$$),
  (18, $$DELETE FROM apikeys.keys$$),
  (19, $$INSERT INTO apikeys.keys (id) VALUES ('key_0000000000000000')$$),
  (20, $$SELECT * FROM apikeys.usage$$),
  (21, $$INSERT INTO apikeys.usage VALUES ('key_0000000000000000', current_date, 1, 0)$$),
  (22, $$SELECT * FROM apikeys.audit$$),
  (23, $$INSERT INTO apikeys.audit (key_id, owner, event) VALUES ('key_x', 'o', 'created')$$),
  (24, $$UPDATE apikeys.audit SET owner = 'x'$$),
  (25, $$DELETE FROM apikeys.audit$$),
  (26, $$TRUNCATE apikeys.audit$$),
  (27, $$SELECT * FROM apikeys.scopes$$),
  (28, $$INSERT INTO apikeys.scopes VALUES ('regress-priv', '{a:b}', 'test')$$),
  (29, $$UPDATE apikeys.scopes SET description = description WHERE name = 'full'$$),
  (30, $$DELETE FROM apikeys.scopes WHERE name = 'no-such-scope'$$),
  (31, $$TRUNCATE apikeys.scopes$$),
  (32, $$SELECT nextval('apikeys.audit_event_id_seq')$$),
  (33, $$CREATE TABLE apikeys.intruder (a int)$$),
  (34, $$CREATE FUNCTION apikeys_api.intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'$$),
  (35, $$SELECT 1 FROM pg_catalog.pg_class WHERE relname = 'keys'$$);

-- every internal function, and every function of apikeys_api, called with
-- harmless arguments by the roles that must not execute it (not NULLs: the
-- planner folds a STRICT function of a NULL constant to NULL without ever
-- checking EXECUTE)
INSERT INTO calls
SELECT 100 + row_number() OVER (ORDER BY f.func),
       format('SELECT %s(%s)', p.oid::regproc,
              (SELECT string_agg(format('%L::%s', CASE t::regtype::text
                                                      WHEN 'integer' THEN '1'
                                                      WHEN 'jsonb' THEN '{}'
                                                      WHEN 'cidr[]' THEN '{}'
                                                      WHEN 'interval' THEN '0'
                                                      WHEN 'inet' THEN '127.0.0.1'
                                                      WHEN 'boolean' THEN 'false'
                                                      WHEN 'timestamp with time zone' THEN 'epoch'
                                                      ELSE 'x' END, t::regtype), ', ' ORDER BY i)
                 FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, i)))
  FROM f JOIN pg_proc AS p ON p.oid = f.oid
 WHERE (f.func LIKE 'apikeys.\_%' OR f.nspname = 'apikeys_api') AND NOT f.is_trigger;

-- one column per role: 'ok' (allowed, then rolled back) or the SQLSTATE
CREATE TEMP TABLE outcome (n int, role text, result text);
GRANT ALL ON calls, outcome TO PUBLIC;

SET ROLE regress_apikeys_nogrant;
INSERT INTO outcome SELECT n, 'nogrant', regress.state(q) FROM calls;
RESET ROLE;
SET ROLE apikeys_validator;
INSERT INTO outcome SELECT n, 'validator', regress.state(q) FROM calls;
RESET ROLE;
SET ROLE apikeys_admin;
INSERT INTO outcome SELECT n, 'admin', regress.state(q) FROM calls;
RESET ROLE;
SET ROLE apikeys_anon;
INSERT INTO outcome SELECT n, 'anon', regress.state(q) FROM calls WHERE q NOT LIKE 'SELECT apikeys_api.%';
RESET ROLE;

SELECT regexp_replace(regexp_replace(c.q, 'key_[0-9A-Za-z]{16}', '<id>'),
                      '[a-z0-9_]+_[0-9A-Za-z]{38}', '<key>') AS call,
       max(o.result) FILTER (WHERE o.role = 'nogrant') AS nogrant,
       max(o.result) FILTER (WHERE o.role = 'validator') AS validator,
       max(o.result) FILTER (WHERE o.role = 'admin') AS admin,
       max(o.result) FILTER (WHERE o.role = 'anon') AS anon
  FROM calls AS c JOIN outcome AS o USING (n)
 WHERE c.n < 100
 GROUP BY c.n, c.q ORDER BY c.n;
-- the generated calls: internal functions are refused to every role,
-- apikeys_api functions to every role but anon (whose answers depend on
-- the request and are tested with the HTTP API)
SELECT CASE WHEN c.q LIKE 'SELECT apikeys_api.%' THEN 'apikeys_api.*' ELSE 'apikeys._*' END AS functions,
       count(DISTINCT c.n) > 0 AS called,
       string_agg(DISTINCT o.result, ',') FILTER (WHERE o.role = 'nogrant') AS nogrant,
       string_agg(DISTINCT o.result, ',') FILTER (WHERE o.role = 'validator') AS validator,
       string_agg(DISTINCT o.result, ',') FILTER (WHERE o.role = 'admin') AS admin,
       coalesce(string_agg(DISTINCT o.result, ',') FILTER (WHERE o.role = 'anon'), '(not run)') AS anon
  FROM calls AS c JOIN outcome AS o USING (n)
 WHERE c.n > 100
 GROUP BY 1 ORDER BY 1;

-- a role granted apikeys_validator or apikeys_admin gets exactly that
CREATE ROLE regress_apikeys_gateway LOGIN IN ROLE apikeys_validator;
CREATE ROLE regress_apikeys_billing LOGIN IN ROLE apikeys_admin;
SET ROLE regress_apikeys_gateway;
SELECT regress.state(format($$SELECT apikeys.apikey_validate(%L)$$, :'k')) AS gateway_validates,
       regress.state($$SELECT apikeys.apikey_list('priv_owner')$$) AS gateway_lists;
RESET ROLE;
SET ROLE regress_apikeys_billing;
SELECT regress.state($$SELECT apikeys.apikey_list('priv_owner')$$) AS billing_lists,
       regress.state($$SELECT digest FROM apikeys.keys$$) AS billing_reads_digests;
RESET ROLE;

-- the key and its row are as they were: every allowed call was rolled back
SELECT (apikeys.apikey_validate(:'k')).code, count(*) AS keys_of_owner
  FROM apikeys.keys WHERE owner = 'priv_owner';

DROP ROLE regress_apikeys_nogrant, regress_apikeys_gateway, regress_apikeys_billing;
