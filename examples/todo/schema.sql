-- examples/todo/schema.sql -- your own table behind API keys: a to-do list
-- served by PostgREST (examples/todo/postgrest.conf) behind nginx
-- (examples/todo/nginx.conf), where each key sees and changes only the rows
-- of its own owner.  See examples/todo/README.md and docs/http.md
-- ("Protecting your own API").
--
-- Run as a superuser, in a database where the extension is installed:
--
--   CREATE EXTENSION apikeys CASCADE;      -- once (shared_preload_libraries = 'apikeys')
--   \i examples/todo/schema.sql
--
-- What apikeys adds to an ordinary PostgREST schema is marked "apikeys:";
-- everything else is what any PostgREST table needs.

CREATE SCHEMA todo;

CREATE TABLE todo.todos (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	-- apikeys: the owner of the key that authenticated the request.  It is
	-- the default, and the only value the policy below lets a row have.
	owner		text NOT NULL DEFAULT apikeys.current_owner(),
	title		text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
	done		boolean NOT NULL DEFAULT false,
	created_at	timestamptz NOT NULL DEFAULT now()
);
-- Every query of a request filters on owner (the policy): lead with it.
CREATE INDEX todos_owner_id_idx ON todo.todos (owner, id);

-- apikeys: row-level security by the key's owner.  apikeys.current_owner()
-- is NULL unless apikeys.pre_request authenticated this very transaction, so
-- a request without a valid key sees no rows and cannot write any.  It is
-- STABLE and reads backend memory: the condition is an index condition,
-- with no lookup per row.
ALTER TABLE todo.todos ENABLE ROW LEVEL SECURITY;
-- FORCE: the policy holds for the table's owner too (unless it is a
-- superuser or has BYPASSRLS, which always skip policies).
ALTER TABLE todo.todos FORCE ROW LEVEL SECURITY;
CREATE POLICY todos_own_rows ON todo.todos
	USING (owner = apikeys.current_owner())
	WITH CHECK (owner = apikeys.current_owner());

-- The role PostgREST runs every request as (db-anon-role).  There is no JWT:
-- the key in X-API-Key, checked by apikeys.pre_request, is the credential.
CREATE ROLE todo_anon NOLOGIN;
-- apikeys: one of the two lines: the anon role may run apikeys.pre_request
-- and the identity functions (the other line is db-pre-request in
-- postgrest.conf).
GRANT apikeys_anon TO todo_anon;
GRANT USAGE ON SCHEMA todo TO todo_anon;
GRANT SELECT, DELETE ON todo.todos TO todo_anon;
-- owner is set by its default only, and never changed: no client writes it
-- (a POST or PATCH naming it is refused).
GRANT INSERT (title, done), UPDATE (title, done) ON todo.todos TO todo_anon;

-- The role PostgREST logs in as; it switches to todo_anon for each request.
-- Add PASSWORD '...' unless it connects over a local socket with peer/trust.
CREATE ROLE todo_authenticator LOGIN NOINHERIT;
GRANT todo_anon TO todo_authenticator;

-- Keys come from apikeys as usual, e.g. (superuser or apikeys_admin):
--   SELECT key FROM apikeys.apikey_create('alice', 'alice laptop', scope => 'full');
-- With no row in apikeys.routes, GET/HEAD /todos needs the permission
-- todos:read and POST/PATCH/DELETE /todos todos:write; the shipped scope
-- read-only ({*:read}) grants the first on every table.
