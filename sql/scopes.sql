-- Scopes: permission patterns "resource:action"; "*" alone grants every
-- permission, otherwise "*" stands for one whole segment.
\set SHOW_CONTEXT never

-- the shipped scopes
SELECT name, permissions, description FROM apikeys.scopes ORDER BY name;

-- one key per shipped scope; a table of which permission each passes
CREATE TEMP TABLE scope_keys AS
SELECT c.scope, c.key
  FROM unnest(ARRAY['full', 'verify', 'lists', 'read-only']) AS s(name),
       LATERAL apikeys.apikey_create('scopes_owner', 'matrix ' || s.name, scope => s.name) AS c;

SELECT p.permission,
       bool_or(v.valid) FILTER (WHERE k.scope = 'full') AS "full",
       bool_or(v.valid) FILTER (WHERE k.scope = 'verify') AS verify,
       bool_or(v.valid) FILTER (WHERE k.scope = 'lists') AS lists,
       bool_or(v.valid) FILTER (WHERE k.scope = 'read-only') AS "read-only"
  FROM (VALUES ('lists:write'), ('lists:read'), ('verify:read'), ('verify:run'),
               ('billing:read'), ('billing:write'), ('lists'), ('lists:read:extra'),
               ('lists:*'), ('*:read'), ('*'), (''), (':read'), ('lists:'))
       AS p(permission),
       scope_keys k,
       LATERAL apikeys.apikey_validate(k.key, p.permission) AS v
 GROUP BY p.permission
 ORDER BY p.permission;

-- the failing code is insufficient_scope, and NULL permission checks nothing
SELECT k.scope, (apikeys.apikey_validate(k.key, 'billing:write')).code AS with_permission,
       (apikeys.apikey_validate(k.key)).code AS without_permission
  FROM scope_keys k ORDER BY k.scope;

-- administrators add a scope with an INSERT; several patterns combine
INSERT INTO apikeys.scopes (name, permissions, description)
VALUES ('billing-admin', '{billing:*,lists:read}', 'Billing, and reading lists');
SELECT key AS bk FROM apikeys.apikey_create('scopes_owner', 'billing',
       scope => 'billing-admin') \gset
SELECT p AS permission, (apikeys.apikey_validate(:'bk', p)).code
  FROM unnest(ARRAY['billing:write', 'billing:read', 'lists:read', 'lists:write', 'verify:run'])
       WITH ORDINALITY AS u(p, n)
 ORDER BY n;

-- a change to a scope applies to its keys at once
UPDATE apikeys.scopes SET permissions = '{billing:read}' WHERE name = 'billing-admin';
SELECT (apikeys.apikey_validate(:'bk', 'billing:write')).code AS after_narrowing;

-- a scope in use cannot be deleted, renamed, or truncated away
DELETE FROM apikeys.scopes WHERE name = 'billing-admin';
UPDATE apikeys.scopes SET name = 'billing' WHERE name = 'billing-admin';
TRUNCATE apikeys.scopes;
-- its permissions and description can still change
UPDATE apikeys.scopes SET description = 'Billing, narrowed' WHERE name = 'billing-admin';

-- a scope not in use can be renamed and deleted
INSERT INTO apikeys.scopes (name, permissions) VALUES ('unused', '{x:y}');
UPDATE apikeys.scopes SET name = 'still-unused' WHERE name = 'unused';
DELETE FROM apikeys.scopes WHERE name = 'still-unused';
SELECT count(*) AS unused_left FROM apikeys.scopes WHERE name IN ('unused', 'still-unused');
