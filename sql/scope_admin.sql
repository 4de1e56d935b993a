-- Scope administration by apikeys_admin (issue 12): an administrator, who
-- cannot read apikeys.keys, can rename and delete a scope no key uses, and
-- is refused, with a clear error, for a scope keys use.
\set SHOW_CONTEXT never
CREATE ROLE regress_scope_admin IN ROLE apikeys_admin;

SET ROLE regress_scope_admin;
SELECT has_table_privilege('apikeys.keys', 'SELECT') AS admin_reads_keys;
INSERT INTO apikeys.scopes (name, permissions, description)
VALUES ('tmp-reports', '{reports:read}', 'Reading reports');
UPDATE apikeys.scopes SET name = 'tmp-reports-2' WHERE name = 'tmp-reports';
UPDATE apikeys.scopes SET permissions = '{reports:*}' WHERE name = 'tmp-reports-2';
SELECT name, permissions FROM apikeys.scopes WHERE name LIKE 'tmp-%';
DELETE FROM apikeys.scopes WHERE name = 'tmp-reports-2';
SELECT count(*) AS tmp_scopes_left FROM apikeys.scopes WHERE name LIKE 'tmp-%';

-- a scope in use: renaming and deleting are refused, editing is not
INSERT INTO apikeys.scopes (name, permissions, description)
VALUES ('tmp-billing', '{billing:*}', 'Billing');
SELECT length(key) > 0 AS created
  FROM apikeys.apikey_create('scope_admin_owner', 'uses tmp-billing', scope => 'tmp-billing');
SELECT * FROM regress.error_of($$DELETE FROM apikeys.scopes WHERE name = 'tmp-billing'$$);
SELECT * FROM regress.error_of($$UPDATE apikeys.scopes SET name = 'tmp-billing-2' WHERE name = 'tmp-billing'$$);
SELECT * FROM regress.error_of($$TRUNCATE apikeys.scopes$$);
UPDATE apikeys.scopes SET description = 'Billing, all of it' WHERE name = 'tmp-billing';
SELECT name, description FROM apikeys.scopes WHERE name = 'tmp-billing';
RESET ROLE;

-- the trigger runs as the extension's owner: the caller's search_path and
-- privileges do not matter, and it reads nothing else
SELECT p.prosecdef AS definer, p.proconfig
  FROM pg_proc p WHERE p.oid = 'apikeys.scopes_in_use()'::regprocedure;
