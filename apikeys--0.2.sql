-- apikeys 0.2: API keys managed inside PostgreSQL.
-- Reads top to bottom as the data model: tables, result types, functions
-- grouped by what they serve, privileges last.  Every object is schema
-- qualified; SECURITY DEFINER functions pin search_path.

\echo Use "CREATE EXTENSION apikeys CASCADE" to load this file. \quit

------------------------------------------------------------------------------
-- Roles (cluster-wide, so created only when missing and left behind on DROP)
------------------------------------------------------------------------------

DO $roles$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['apikeys_admin', 'apikeys_validator', 'apikeys_anon'] LOOP
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
END
$roles$;

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

CREATE TABLE apikeys.scopes (
	name		text CONSTRAINT scopes_pkey PRIMARY KEY
				CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.:-]{1,64}$'),
	permissions	text[] NOT NULL,
	description	text
);
COMMENT ON TABLE apikeys.scopes IS
	'Named sets of permission patterns ("resource:action", "*" matching one whole segment, "*" alone matching everything) that a key can carry';

-- The four shipped scopes, as the script installs them.
CREATE FUNCTION apikeys._shipped_scopes()
RETURNS TABLE (name text, permissions text[], description text)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
VALUES ('full', '{*}'::text[], 'Every permission'),
	   ('verify', '{verify:*}', 'Every action on the verify resource'),
	   ('lists', '{lists:*}', 'Every action on the lists resource'),
	   ('read-only', '{*:read}', 'The read action on every resource')
$$;
COMMENT ON FUNCTION apikeys._shipped_scopes() IS
	'Internal: the four scopes the extension ships, as installed';

INSERT INTO apikeys.scopes (name, permissions, description)
SELECT * FROM apikeys._shipped_scopes();

CREATE TABLE apikeys.keys (
	id				text PRIMARY KEY
					CHECK (id OPERATOR(pg_catalog.~) '^key_[0-9A-Za-z]{16}$'),
	owner			text NOT NULL,
	name			text NOT NULL,
	prefix			text NOT NULL,
	last4			text NOT NULL,
	digest			bytea NOT NULL CONSTRAINT keys_digest_key UNIQUE
					CHECK (pg_catalog.length(digest) OPERATOR(pg_catalog.=) 32),
	scope			text NOT NULL,
	ip_restrictions	cidr[] NOT NULL DEFAULT '{}',
	metadata		jsonb NOT NULL DEFAULT '{}',
	lifetime_days	integer CHECK (lifetime_days BETWEEN 1 AND 365),
	expires_at		timestamptz,
	created_at		timestamptz NOT NULL,
	revoked_at		timestamptz,
	expired_at		timestamptz,
	last_used_at	timestamptz,
	rotated_from	text
);
CREATE INDEX keys_owner_created_idx ON apikeys.keys (owner, created_at DESC);
CREATE INDEX keys_scope_idx ON apikeys.keys (scope);
CREATE INDEX keys_expiry_idx ON apikeys.keys (expires_at)
	WHERE expired_at IS NULL AND revoked_at IS NULL;
COMMENT ON TABLE apikeys.keys IS
	'One row per API key; only the SHA-256 digest of the key is stored, never the key';
COMMENT ON COLUMN apikeys.keys.digest IS
	'SHA-256 of the whole key text, equal to pgcrypto''s digest(key, ''sha256'')';
COMMENT ON COLUMN apikeys.keys.last4 IS 'The last four characters of the key, for display';
COMMENT ON COLUMN apikeys.keys.lifetime_days IS
	'The expires_in_days the key was created with (NULL: never expires); rotation gives the successor the same lifetime';
COMMENT ON COLUMN apikeys.keys.rotated_from IS
	'The key this one replaced through apikey_rotate (keys are never deleted; no foreign key, so pg_dump sees no circular constraint)';
COMMENT ON COLUMN apikeys.keys.scope IS
	'A row of apikeys.scopes: apikey_create checks it, and a scope in use cannot be deleted or renamed';
COMMENT ON COLUMN apikeys.keys.expired_at IS
	'When the background worker marked the key expired (validation refuses it from expires_at on regardless)';
COMMENT ON COLUMN apikeys.keys.last_used_at IS
	'The last valid validation, as of the last flush of the usage counters';

CREATE TABLE apikeys.usage (
	key_id		text NOT NULL,
	day			date NOT NULL,
	calls		bigint NOT NULL DEFAULT 0 CHECK (calls >= 0),
	rejected	bigint NOT NULL DEFAULT 0 CHECK (rejected >= 0),
	PRIMARY KEY (key_id, day)
);
COMMENT ON TABLE apikeys.usage IS
	'Validations per key and UTC day, written by the background worker from the shared-memory counters';
COMMENT ON COLUMN apikeys.usage.calls IS 'Validations of the key that returned valid';
COMMENT ON COLUMN apikeys.usage.rejected IS
	'Validations of the key that failed (revoked, expired, IP, scope)';

-- A scope that keys use cannot be deleted, renamed or truncated away.  The
-- trigger runs as the extension's owner, so that apikeys_admin, who manages
-- scopes but cannot read apikeys.keys, can rename and delete unused ones.  This
-- is a foreign key in effect, kept as a trigger because pg_dump cannot order
-- a parallel pg_restore of extension tables by their foreign keys.
-- (apikey_create locks the scope row FOR KEY SHARE while it uses it.)
CREATE FUNCTION apikeys.scopes_in_use()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	used bigint;
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
		IF EXISTS (SELECT FROM apikeys.keys) THEN
			RAISE EXCEPTION 'cannot truncate apikeys.scopes while keys use scopes'
				USING ERRCODE = 'foreign_key_violation';
		END IF;
		RETURN NULL;
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' AND NEW.name OPERATOR(pg_catalog.=) OLD.name THEN
		RETURN NEW;
	END IF;
	SELECT pg_catalog.count(*) INTO used
	  FROM apikeys.keys AS k WHERE k.scope OPERATOR(pg_catalog.=) OLD.name;
	IF used OPERATOR(pg_catalog.>) 0 THEN
		RAISE EXCEPTION 'scope "%" is used by % api keys', OLD.name, used
			USING ERRCODE = 'foreign_key_violation',
				  HINT = 'Revoking a key does not free its scope; create a new scope instead of renaming one.';
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION apikeys.scopes_in_use() IS
	'Trigger function: refuses to delete, rename or truncate a scope that keys use';

CREATE TRIGGER scopes_in_use BEFORE DELETE OR UPDATE OF name ON apikeys.scopes
	FOR EACH ROW EXECUTE FUNCTION apikeys.scopes_in_use();
CREATE TRIGGER scopes_in_use_truncate BEFORE TRUNCATE ON apikeys.scopes
	FOR EACH STATEMENT EXECUTE FUNCTION apikeys.scopes_in_use();

-- pg_restore runs CREATE EXTENSION (which installs the shipped scopes)
-- before it copies the dumped rows, among them the shipped scopes an
-- administrator edited.  Such a row replaces its shipped original instead
-- of colliding with it: an INSERT of a shipped scope's name, while that
-- scope is exactly as shipped, updates it.
CREATE FUNCTION apikeys.scopes_restore_edit()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT FROM apikeys.scopes AS s
				 JOIN apikeys._shipped_scopes() AS d ON d.name OPERATOR(pg_catalog.=) s.name
				WHERE s.name OPERATOR(pg_catalog.=) NEW.name
				  AND s.permissions OPERATOR(pg_catalog.=) d.permissions
				  AND s.description OPERATOR(pg_catalog.=) d.description) THEN
		UPDATE apikeys.scopes AS s
		   SET permissions = NEW.permissions, description = NEW.description
		 WHERE s.name OPERATOR(pg_catalog.=) NEW.name;
		RETURN NULL;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION apikeys.scopes_restore_edit() IS
	'Trigger function: an inserted row named like an unedited shipped scope replaces it (how pg_restore brings back edits)';

CREATE TRIGGER scopes_restore_edit BEFORE INSERT ON apikeys.scopes
	FOR EACH ROW EXECUTE FUNCTION apikeys.scopes_restore_edit();

CREATE TABLE apikeys.audit (
	event_id	bigserial PRIMARY KEY,
	at			timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	key_id		text NOT NULL,
	owner		text NOT NULL,
	event		text NOT NULL
				CHECK (event OPERATOR(pg_catalog.=) ANY ('{created,revoked,rotated,expired,route_added,route_changed,route_removed}')),
	actor		text NOT NULL DEFAULT SESSION_USER,
	detail		jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_key_idx ON apikeys.audit (key_id, at);
COMMENT ON TABLE apikeys.audit IS
	'Append-only record of every state change of a key: created, revoked, rotated, expired';

CREATE FUNCTION apikeys.audit_append_only()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RAISE EXCEPTION 'apikeys.audit is append-only'
		USING ERRCODE = 'insufficient_privilege',
			  DETAIL = pg_catalog.format('%s on apikeys.audit is not allowed.', TG_OP);
END
$$;
COMMENT ON FUNCTION apikeys.audit_append_only() IS
	'Trigger function refusing UPDATE, DELETE and TRUNCATE on apikeys.audit';

CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON apikeys.audit
	FOR EACH ROW EXECUTE FUNCTION apikeys.audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON apikeys.audit
	FOR EACH STATEMENT EXECUTE FUNCTION apikeys.audit_append_only();

-- Validation caches keys and scopes in each backend; any change to what it
-- reads invalidates every backend's cache when the change commits.  (The
-- worker's last_used_at and expired_at updates do not concern validation.)
CREATE FUNCTION apikeys._invalidate_cache()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'apikeys_invalidate_cache';
COMMENT ON FUNCTION apikeys._invalidate_cache() IS
	'Trigger function: makes every backend drop its cached keys and scopes at commit';

CREATE TRIGGER keys_invalidate_cache
	AFTER UPDATE OF id, owner, name, digest, scope, ip_restrictions, metadata,
		expires_at, revoked_at OR DELETE ON apikeys.keys
	FOR EACH ROW EXECUTE FUNCTION apikeys._invalidate_cache();
CREATE TRIGGER keys_invalidate_cache_truncate
	AFTER TRUNCATE ON apikeys.keys
	FOR EACH STATEMENT EXECUTE FUNCTION apikeys._invalidate_cache();
CREATE TRIGGER scopes_invalidate_cache
	AFTER INSERT OR UPDATE OR DELETE ON apikeys.scopes
	FOR EACH ROW EXECUTE FUNCTION apikeys._invalidate_cache();
CREATE TRIGGER scopes_invalidate_cache_truncate
	AFTER TRUNCATE ON apikeys.scopes
	FOR EACH STATEMENT EXECUTE FUNCTION apikeys._invalidate_cache();
-- Row-level, because the logical replication apply worker fires row-level
-- (and TRUNCATE) triggers only, and ENABLE ALWAYS, because it runs with
-- session_replication_role = replica: a revocation applied on a subscriber
-- reaches every session's cache at apply commit.  (One invalidation per
-- transaction and table: PostgreSQL drops the duplicates.)
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_invalidate_cache;
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_invalidate_cache_truncate;
ALTER TABLE apikeys.scopes ENABLE ALWAYS TRIGGER scopes_invalidate_cache;
ALTER TABLE apikeys.scopes ENABLE ALWAYS TRIGGER scopes_invalidate_cache_truncate;

-- pg_dump keeps user data of extension tables only when asked to.  Shipped
-- scopes are part of the script, so scopes added later and edits to the
-- shipped ones are dumped (the condition repeats _shipped_scopes() because
-- pg_dump evaluates it with the dumping role's rights; 011_upgrade.pl and
-- 007_dump_restore.pl check the two agree).
SELECT pg_catalog.pg_extension_config_dump('apikeys.scopes',
	$$WHERE (name, permissions, description) NOT IN (VALUES
		('full', '{*}'::text[], 'Every permission'),
		('verify', '{verify:*}', 'Every action on the verify resource'),
		('lists', '{lists:*}', 'Every action on the lists resource'),
		('read-only', '{*:read}', 'The read action on every resource'))$$);
SELECT pg_catalog.pg_extension_config_dump('apikeys.keys', '');
SELECT pg_catalog.pg_extension_config_dump('apikeys.audit', '');
SELECT pg_catalog.pg_extension_config_dump('apikeys.usage', '');
SELECT pg_catalog.pg_extension_config_dump('apikeys.audit_event_id_seq', '');

------------------------------------------------------------------------------
-- Result types
------------------------------------------------------------------------------

CREATE TYPE apikeys.new_key AS (
	id				text,
	name			text,
	prefix			text,
	key				text,
	scope			text,
	ip_restrictions	cidr[],
	expires_at		timestamptz,
	created_at		timestamptz,
	warning			text
);
COMMENT ON TYPE apikeys.new_key IS
	'What apikey_create and apikey_rotate return: the only place a key''s plaintext is ever shown';

CREATE TYPE apikeys.validation AS (
	valid		boolean,
	code		text,
	key_id		text,
	owner		text,
	name		text,
	scope		text,
	expires_at	timestamptz,
	metadata	jsonb
);
COMMENT ON TYPE apikeys.validation IS
	'What apikey_validate returns: the outcome code and, for a known key, who it belongs to';

------------------------------------------------------------------------------
-- Internal helpers
------------------------------------------------------------------------------

CREATE FUNCTION apikeys._assert_preloaded()
RETURNS void
LANGUAGE C STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'apikeys_assert_preloaded';
COMMENT ON FUNCTION apikeys._assert_preloaded() IS
	'Raises 55000 unless the apikeys library was loaded through shared_preload_libraries';

-- The one rule of expiry, for SQL and the worker alike: a key expires at
-- expires_at (validation in C applies the same comparison).  No SET
-- search_path, so that it is inlined and the expiry index stays usable; its
-- body names nothing outside pg_catalog.
CREATE FUNCTION apikeys._is_expired(expires_at timestamptz, at timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT $1 OPERATOR(pg_catalog.<=) $2 $$;
COMMENT ON FUNCTION apikeys._is_expired(timestamptz, timestamptz) IS
	'True if a key with this expires_at is expired at the given time (NULL expires_at: never)';

-- The only writer of apikeys.audit: SQL functions, the C create path and
-- the worker's expiry pass all record events through it.
CREATE FUNCTION apikeys._audit(event text, key_id text, owner text, detail jsonb,
	at timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
INSERT INTO apikeys.audit (at, key_id, owner, event, detail)
VALUES (COALESCE($5, pg_catalog.clock_timestamp()), $2, $3, $1, $4)
$$;
COMMENT ON FUNCTION apikeys._audit(text, text, text, jsonb, timestamptz) IS
	'Internal: appends one event to apikeys.audit (at defaults to the current time)';

-- The C entry point of apikey_create, with the predecessor's id when rotating.
CREATE FUNCTION apikeys._create_key(owner text, name text, scope text,
	ip_restrictions cidr[], expires_in_days integer, prefix text,
	metadata jsonb, rotated_from text)
RETURNS apikeys.new_key
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'apikeys_create_key';
COMMENT ON FUNCTION apikeys._create_key(text, text, text, cidr[], integer, text, jsonb, text) IS
	'Internal: apikey_create with the id of the key being rotated';

-- Raises 22023 unless txt is a non-empty string.
CREATE FUNCTION apikeys._require_text(argname text, txt text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF txt IS NULL OR pg_catalog.btrim(txt, E' \t\n\r') OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION '% must not be null or empty', argname
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;
COMMENT ON FUNCTION apikeys._require_text(text, text) IS
	'Internal: raises 22023 when a required text argument is NULL or blank';

-- Raises P0002 for an id that names no key of the caller.  The id is
-- echoed only when it has the shape of a key id: a key passed by mistake
-- must never reach a message (or the server log).
CREATE FUNCTION apikeys._no_such_key(id text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF id OPERATOR(pg_catalog.~) '^key_[0-9A-Za-z]{16}$' THEN
		RAISE EXCEPTION 'api key "%" does not exist', id USING ERRCODE = 'no_data_found';
	END IF;
	RAISE EXCEPTION 'api key does not exist'
		USING ERRCODE = 'no_data_found',
			  DETAIL = 'The id given is not an api key id (key_ and 16 letters or digits).';
END
$$;
COMMENT ON FUNCTION apikeys._no_such_key(text) IS
	'Internal: raises P0002 for an unknown id, echoing it only if it is shaped like a key id';

-- The key id, of owner when owner is given, locked against concurrent
-- change (FOR NO KEY UPDATE, so flushes and foreign-key checks never wait);
-- P0002 when there is no such key, with the same message either way.
CREATE FUNCTION apikeys._lock_key(id text, owner text)
RETURNS apikeys.keys
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k apikeys.keys;
BEGIN
	-- another owner's key is never locked: no waiting on it tells its id exists
	SELECT * INTO k FROM apikeys.keys AS t
	 WHERE t.id OPERATOR(pg_catalog.=) _lock_key.id
	   AND (_lock_key.owner IS NULL OR t.owner OPERATOR(pg_catalog.=) _lock_key.owner)
	   FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		PERFORM apikeys._no_such_key(_lock_key.id);
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION apikeys._lock_key(text, text) IS
	'Internal: the key id (of owner, if given) locked for update, or P0002';

-- The rotation grace rule: grace ends at + grace, which must lie between
-- at and at + 7 days (the resulting times are compared, in the session's
-- time zone, so '1 mon -23 days' is judged by the month it spans).
CREATE FUNCTION apikeys._grace_end(grace interval, at timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ends timestamptz;
BEGIN
	BEGIN
		ends := at OPERATOR(pg_catalog.+) grace;
	EXCEPTION WHEN datetime_field_overflow THEN
		ends := NULL;			-- out of range, as below
	END;
	IF ends IS NULL OR ends OPERATOR(pg_catalog.<) at
	   OR ends OPERATOR(pg_catalog.>) (at OPERATOR(pg_catalog.+) interval '7 days') THEN
		RAISE EXCEPTION 'grace must be between 0 and 7 days'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The grace given was %s.', COALESCE(grace::text, 'NULL'));
	END IF;
	RETURN ends;
END
$$;
COMMENT ON FUNCTION apikeys._grace_end(interval, timestamptz) IS
	'Internal: when a rotation grace given at this time ends; 22023 unless within 0 to 7 days';

-- Raises 22023 unless days is a window length of 1 to 90.
CREATE FUNCTION apikeys._require_days(days integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF days IS NULL OR days OPERATOR(pg_catalog.<) 1 OR days OPERATOR(pg_catalog.>) 90 THEN
		RAISE EXCEPTION 'days must be between 1 and 90'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The value given was %s.', COALESCE(days::text, 'NULL'));
	END IF;
END
$$;
COMMENT ON FUNCTION apikeys._require_days(integer) IS
	'Internal: raises 22023 unless an analytics window is 1 to 90 days';

CREATE FUNCTION apikeys._launch_worker()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'apikeys_launch_worker';
COMMENT ON FUNCTION apikeys._launch_worker() IS
	'Internal: asks the launcher for this database''s worker when the calling transaction commits';

------------------------------------------------------------------------------
-- Key lifecycle
------------------------------------------------------------------------------

CREATE FUNCTION apikeys.apikey_create(owner text, name text,
	scope text DEFAULT 'full',
	ip_restrictions cidr[] DEFAULT '{}',
	expires_in_days integer DEFAULT NULL,
	prefix text DEFAULT NULL,
	metadata jsonb DEFAULT '{}')
RETURNS apikeys.new_key
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'apikey_create_0_2';
COMMENT ON FUNCTION apikeys.apikey_create(text, text, text, cidr[], integer, text, jsonb) IS
	'Mints a key for owner and returns it once; only its SHA-256 digest is stored';

CREATE FUNCTION apikeys.apikey_validate(key text, permission text DEFAULT NULL,
	client_ip inet DEFAULT NULL)
RETURNS apikeys.validation
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'apikey_validate';
COMMENT ON FUNCTION apikeys.apikey_validate(text, text, inet) IS
	'Checks a key (format, existence, revoked, expired, IP, permission) and returns one outcome row; writes nothing';

CREATE FUNCTION apikeys.apikey_revoke(id text, owner text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k apikeys.keys;
BEGIN
	PERFORM apikeys._assert_preloaded();
	PERFORM apikeys._require_text('id', apikey_revoke.id);
	IF apikey_revoke.owner IS NOT NULL THEN
		PERFORM apikeys._require_text('owner', apikey_revoke.owner);
	END IF;

	k := apikeys._lock_key(apikey_revoke.id, apikey_revoke.owner);
	IF k.revoked_at IS NOT NULL THEN
		RETURN false;
	END IF;

	UPDATE apikeys.keys AS t SET revoked_at = pg_catalog.clock_timestamp()
	 WHERE t.id OPERATOR(pg_catalog.=) k.id;
	PERFORM apikeys._audit('revoked', k.id, k.owner,
			pg_catalog.jsonb_build_object('name', k.name,
				'was_expired', apikeys._is_expired(k.expires_at, pg_catalog.statement_timestamp())));
	RETURN true;
END
$$;
COMMENT ON FUNCTION apikeys.apikey_revoke(text, text) IS
	'Revokes a key for good: true if this call revoked it, false if it already was; P0002 for an unknown id or another owner''s';

CREATE FUNCTION apikeys.apikey_list(owner text)
RETURNS TABLE (id text, name text, prefix text, last4 text, scope text,
			   ip_restrictions cidr[], expires_at timestamptz,
			   last_used_at timestamptz, created_at timestamptz,
			   is_revoked boolean, status text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._assert_preloaded();
	PERFORM apikeys._require_text('owner', apikey_list.owner);
	RETURN QUERY
	SELECT k.id, k.name, k.prefix, k.last4, k.scope, k.ip_restrictions,
		   k.expires_at, k.last_used_at, k.created_at,
		   k.revoked_at IS NOT NULL,
		   CASE
			   WHEN k.revoked_at IS NOT NULL THEN 'revoked'
			   WHEN apikeys._is_expired(k.expires_at, pg_catalog.statement_timestamp()) THEN 'expired'
			   ELSE 'active'
		   END
	  FROM apikeys.keys AS k
	 WHERE k.owner OPERATOR(pg_catalog.=) apikey_list.owner
	 ORDER BY k.created_at DESC, k.id DESC;
END
$$;
COMMENT ON FUNCTION apikeys.apikey_list(text) IS
	'Lists an owner''s keys, newest first, with status as of this statement and no key material beyond last4';

CREATE FUNCTION apikeys.apikey_rotate(id text, grace interval DEFAULT '0',
	owner text DEFAULT NULL)
RETURNS apikeys.new_key
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k apikeys.keys;
	successor apikeys.new_key;
	old_until timestamptz;
BEGIN
	PERFORM apikeys._assert_preloaded();
	PERFORM apikeys._require_text('id', apikey_rotate.id);
	IF apikey_rotate.owner IS NOT NULL THEN
		PERFORM apikeys._require_text('owner', apikey_rotate.owner);
	END IF;
	PERFORM apikeys._grace_end(grace, pg_catalog.statement_timestamp());

	k := apikeys._lock_key(apikey_rotate.id, apikey_rotate.owner);
	IF k.revoked_at IS NOT NULL THEN
		RAISE EXCEPTION 'api key "%" is revoked and cannot be rotated', k.id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF apikeys._is_expired(k.expires_at, pg_catalog.statement_timestamp()) THEN
		RAISE EXCEPTION 'api key "%" is expired and cannot be rotated', k.id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;

	successor := apikeys._create_key(k.owner, k.name, k.scope, k.ip_restrictions,
									 k.lifetime_days, k.prefix, k.metadata, k.id);

	old_until := successor.created_at OPERATOR(pg_catalog.+) grace;
	IF k.expires_at IS NOT NULL AND k.expires_at OPERATOR(pg_catalog.<) old_until THEN
		old_until := k.expires_at;
	END IF;
	UPDATE apikeys.keys AS t SET expires_at = old_until
	 WHERE t.id OPERATOR(pg_catalog.=) k.id;
	PERFORM apikeys._audit('rotated', k.id, k.owner,
			pg_catalog.jsonb_build_object('successor', successor.id,
										  'grace', grace::text,
										  'expires_at', old_until));
	RETURN successor;
END
$$;
COMMENT ON FUNCTION apikeys.apikey_rotate(text, interval, text) IS
	'Mints a successor with the same owner, name, scope, IPs, prefix, metadata and lifetime; the old key stays valid for grace (0 to 7 days)';

-- The expiry pass, run by the background worker every
-- apikeys.expiry_interval: marks keys past expires_at (not revoked) as
-- expired, audits and announces each, and returns their ids.  Keys locked
-- by a user's transaction are left for the next pass.
CREATE FUNCTION apikeys._expire_due_keys()
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e record;
BEGIN
	FOR e IN
		WITH due AS (
			SELECT k.id FROM apikeys.keys AS k
			 WHERE apikeys._is_expired(k.expires_at, pg_catalog.now())
			   AND k.expired_at IS NULL AND k.revoked_at IS NULL
			   FOR NO KEY UPDATE SKIP LOCKED)
		UPDATE apikeys.keys AS k SET expired_at = pg_catalog.now()
		  FROM due WHERE k.id OPERATOR(pg_catalog.=) due.id
		RETURNING k.id, k.owner, k.name, k.expires_at
	LOOP
		PERFORM apikeys._audit('expired', e.id, e.owner,
				pg_catalog.jsonb_build_object('name', e.name, 'expires_at', e.expires_at));
		PERFORM pg_catalog.pg_notify('apikeys_expired', e.id);
		RETURN NEXT e.id;
	END LOOP;
END
$$;
COMMENT ON FUNCTION apikeys._expire_due_keys() IS
	'Internal: the expiry pass of the background worker; returns the ids it expired';

------------------------------------------------------------------------------
-- Usage and analytics: both read apikeys.usage, which the background worker
-- fills from the shared-memory counters every apikeys.flush_interval, so the
-- two always agree.  apikeys.flush_usage() makes the latest counts visible.
------------------------------------------------------------------------------

CREATE FUNCTION apikeys.flush_usage()
RETURNS boolean
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'apikeys_flush_usage';
COMMENT ON FUNCTION apikeys.flush_usage() IS
	'Has this database''s worker flush the usage counters now; true once the flush committed (waits up to 30 s)';

CREATE FUNCTION apikeys.apikey_usage(owner text, days integer DEFAULT 30)
RETURNS TABLE (key_id text, day date, calls bigint, rejected bigint)
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	today date := pg_catalog.timezone('UTC', pg_catalog.now())::pg_catalog.date;
BEGIN
	PERFORM apikeys._assert_preloaded();
	PERFORM apikeys._require_text('owner', apikey_usage.owner);
	PERFORM apikeys._require_days(apikey_usage.days);
	RETURN QUERY
	SELECT u.key_id, u.day, u.calls, u.rejected
	  FROM apikeys.keys AS k
	  JOIN apikeys.usage AS u ON u.key_id OPERATOR(pg_catalog.=) k.id
	 WHERE k.owner OPERATOR(pg_catalog.=) apikey_usage.owner
	   AND u.day OPERATOR(pg_catalog.>) (today OPERATOR(pg_catalog.-) apikey_usage.days)
	   AND u.day OPERATOR(pg_catalog.<=) today
	 ORDER BY u.day DESC, u.key_id;
END
$$;
COMMENT ON FUNCTION apikeys.apikey_usage(text, integer) IS
	'Valid and rejected validations per key and UTC day over the last days (1 to 90) days, newest first';

CREATE FUNCTION apikeys.apikey_analytics(owner text, days integer DEFAULT 30)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	today date := pg_catalog.timezone('UTC', pg_catalog.now())::pg_catalog.date;
	result jsonb;
BEGIN
	PERFORM apikeys._assert_preloaded();
	PERFORM apikeys._require_text('owner', apikey_analytics.owner);
	PERFORM apikeys._require_days(apikey_analytics.days);

	WITH k AS (
		SELECT k.id, k.name, k.prefix, k.revoked_at IS NOT NULL AS is_revoked, k.created_at
		  FROM apikeys.keys AS k
		 WHERE k.owner OPERATOR(pg_catalog.=) apikey_analytics.owner),
	u AS (
		SELECT u.key_id, u.day, u.calls
		  FROM k JOIN apikeys.usage AS u ON u.key_id OPERATOR(pg_catalog.=) k.id
		 WHERE u.day OPERATOR(pg_catalog.>) (today OPERATOR(pg_catalog.-) apikey_analytics.days)
		   AND u.day OPERATOR(pg_catalog.<=) today
		   AND u.calls OPERATOR(pg_catalog.>) 0),
	window_days AS (
		SELECT today OPERATOR(pg_catalog.-) i AS day
		  FROM pg_catalog.generate_series(0, apikey_analytics.days OPERATOR(pg_catalog.-) 1) AS i)
	SELECT pg_catalog.jsonb_build_object(
		'totalCalls', (SELECT COALESCE(pg_catalog.sum(u.calls), 0) FROM u),
		'dailyUsage', (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
							'date', pg_catalog.to_char(w.day, 'YYYY-MM-DD'),
							'count', (SELECT COALESCE(pg_catalog.sum(u.calls), 0) FROM u
									   WHERE u.day OPERATOR(pg_catalog.=) w.day))
						ORDER BY w.day DESC)
						 FROM window_days AS w),
		'keys', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
							'keyId', k.id, 'name', k.name, 'prefix', k.prefix,
							'isRevoked', k.is_revoked,
							'totalCalls', (SELECT COALESCE(pg_catalog.sum(u.calls), 0) FROM u
											WHERE u.key_id OPERATOR(pg_catalog.=) k.id),
							'dailyUsage', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
									'date', pg_catalog.to_char(u.day, 'YYYY-MM-DD'), 'count', u.calls)
									ORDER BY u.day DESC)
								  FROM u WHERE u.key_id OPERATOR(pg_catalog.=) k.id), '[]'))
						ORDER BY k.created_at DESC, k.id DESC)
						   FROM k), '[]'))
	  INTO result;
	RETURN result;
END
$$;
COMMENT ON FUNCTION apikeys.apikey_analytics(text, integer) IS
	'Valid calls of an owner''s keys over the last days (1 to 90) UTC days, as the HTTP API''s camelCase JSON';

------------------------------------------------------------------------------
-- Authentication for the HTTP API (see src/identity.c): the key that
-- authenticated the current transaction, held in C and never settable
-- from SQL.
------------------------------------------------------------------------------

CREATE FUNCTION apikeys._authenticate(key text, permission text, forwarded_for text)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'apikeys_authenticate';
COMMENT ON FUNCTION apikeys._authenticate(text, text, text) IS
	'Internal: validates a request''s key (PT401/PT403 on failure) and remembers it until the transaction ends';

CREATE FUNCTION apikeys._auth_key_id() RETURNS text
LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'apikeys_auth_key_id';
COMMENT ON FUNCTION apikeys._auth_key_id() IS
	'Internal: id of the key that authenticated this transaction, or NULL';
CREATE FUNCTION apikeys._auth_owner() RETURNS text
LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'apikeys_auth_owner';
COMMENT ON FUNCTION apikeys._auth_owner() IS
	'Internal: owner of the key that authenticated this transaction, or NULL';
CREATE FUNCTION apikeys._auth_scope() RETURNS text
LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'apikeys_auth_scope';
COMMENT ON FUNCTION apikeys._auth_scope() IS
	'Internal: scope of the key that authenticated this transaction, or NULL';

CREATE FUNCTION apikeys._auth_has_permission(permission text) RETURNS boolean
LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'apikeys_auth_has_permission';
COMMENT ON FUNCTION apikeys._auth_has_permission(text) IS
	'Internal: true if the transaction is authenticated and its key''s scope grants permission';

-- The networks of a JSON array of strings, as cidr[]; 22023 for anything
-- else, naming the position, never the value (it may be a key sent by
-- mistake, and a message reaches the client and the log).
CREATE FUNCTION apikeys._json_networks(field text, networks jsonb) RETURNS cidr[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result cidr[] := '{}';
	elem jsonb;
	i integer := 0;
BEGIN
	IF networks IS NULL OR networks OPERATOR(pg_catalog.=) 'null'::jsonb THEN
		RETURN result;
	END IF;
	IF pg_catalog.jsonb_typeof(networks) OPERATOR(pg_catalog.<>) 'array' THEN
		RAISE EXCEPTION '% must be an array of networks', field
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR elem IN SELECT e FROM pg_catalog.jsonb_array_elements(networks) AS e LOOP
		i := i OPERATOR(pg_catalog.+) 1;
		BEGIN
			IF pg_catalog.jsonb_typeof(elem) OPERATOR(pg_catalog.<>) 'string' THEN
				RAISE invalid_text_representation;
			END IF;
			result := pg_catalog.array_append(result, (elem OPERATOR(pg_catalog.#>>) '{}')::cidr);
		EXCEPTION WHEN invalid_text_representation OR invalid_binary_representation
					   OR invalid_parameter_value OR data_exception THEN
			RAISE EXCEPTION '%[%] is not a network address', field, i
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'A network is written like 203.0.113.0/24 or 2001:db8::/32; the value is not shown.';
		END;
	END LOOP;
	RETURN result;
END
$$;
COMMENT ON FUNCTION apikeys._json_networks(text, jsonb) IS
	'Internal: a JSON array of network strings as cidr[]; 22023 naming the position, never the value';

CREATE FUNCTION apikeys._scope_covers(granting text, target text) RETURNS boolean
LANGUAGE C STABLE STRICT AS 'MODULE_PATHNAME', 'apikeys_scope_covers';
COMMENT ON FUNCTION apikeys._scope_covers(text, text) IS
	'Internal: true if scope granting grants every permission of scope target (NULL if target does not exist)';

-- The authenticated owner, or PT401 when the transaction is not authenticated.
CREATE FUNCTION apikeys._require_auth_owner() RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	o text := apikeys._auth_owner();
BEGIN
	IF o IS NULL THEN
		RAISE EXCEPTION 'not authenticated'
			USING ERRCODE = 'PT401',
				  HINT = 'Requests must go through PostgREST with apikeys_api.pre_request as db-pre-request.';
	END IF;
	RETURN o;
END
$$;
COMMENT ON FUNCTION apikeys._require_auth_owner() IS
	'Internal: the authenticated owner, or PT401';

-- PT401 unless the transaction is authenticated, PT403 unless its key's
-- scope grants permission: each HTTP function checks its own, so that no
-- route (an encoded path, a hand-made request.path) reaches it unchecked.
CREATE FUNCTION apikeys._require_auth_permission(permission text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._require_auth_owner();
	IF NOT apikeys._auth_has_permission(permission) THEN
		RAISE EXCEPTION 'api key lacks permission "%"', permission
			USING ERRCODE = 'PT403',
				  DETAIL = pg_catalog.format('Its scope "%s" does not grant it.', apikeys._auth_scope());
	END IF;
END
$$;
COMMENT ON FUNCTION apikeys._require_auth_permission(text) IS
	'Internal: PT401 unless authenticated, PT403 unless the key''s scope grants permission';

------------------------------------------------------------------------------
-- Your own API behind keys (SPEC section 14): the authenticated key in SQL,
-- for row-level security, and a db-pre-request for any schema, with a
-- permission per route.
------------------------------------------------------------------------------

-- The key that authenticated this transaction (NULL when none did).  Only a
-- successful apikeys.pre_request (or apikeys_api.pre_request) in the same
-- transaction sets it; it is gone at commit or abort.  STABLE and a memory
-- read, so a policy such as USING (owner = apikeys.current_owner()) is an
-- index condition; PARALLEL RESTRICTED, as parallel workers do not share it.
CREATE FUNCTION apikeys.current_key_id() RETURNS text
LANGUAGE C STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'apikeys_auth_key_id';
COMMENT ON FUNCTION apikeys.current_key_id() IS
	'Id of the key that authenticated this transaction, or NULL';
CREATE FUNCTION apikeys.current_owner() RETURNS text
LANGUAGE C STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'apikeys_auth_owner';
COMMENT ON FUNCTION apikeys.current_owner() IS
	'Owner of the key that authenticated this transaction, or NULL (for row-level security)';
CREATE FUNCTION apikeys.current_scope() RETURNS text
LANGUAGE C STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'apikeys_auth_scope';
COMMENT ON FUNCTION apikeys.current_scope() IS
	'Scope of the key that authenticated this transaction, or NULL';
CREATE FUNCTION apikeys.has_permission(permission text) RETURNS boolean
LANGUAGE C STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'apikeys_auth_has_permission';
COMMENT ON FUNCTION apikeys.has_permission(text) IS
	'True if this transaction is authenticated and its key''s scope grants permission';

-- Routes: the permission a request needs, when the default does not fit.
CREATE TABLE apikeys.routes (
	method		text NOT NULL DEFAULT '*'
				CHECK (method OPERATOR(pg_catalog.~) '^(\*|[A-Z]{1,16})$'),
	path		text NOT NULL
				CHECK (path OPERATOR(pg_catalog.~) '^/([^/?#]+(/[^/?#]+)*)?$'),
	permission	text,
	credit		text,
	cost		numeric,
	CONSTRAINT routes_pkey PRIMARY KEY (method, path)
);
COMMENT ON TABLE apikeys.routes IS
	'Permission (NULL: any valid key) each request method and path needs from a key, for apikeys.pre_request; "*" matches any method, and a path segment "*" any one segment';

-- Adds, changes and removals of routes are audited; a route with a credit
-- waits for credits (a later version).
CREATE FUNCTION apikeys.routes_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r apikeys.routes := CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN OLD ELSE NEW END;
BEGIN
	IF TG_OP OPERATOR(pg_catalog.<>) 'DELETE' AND (NEW.credit IS NOT NULL OR NEW.cost IS NOT NULL) THEN
		RAISE EXCEPTION 'routes that charge credits are not supported yet'
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Credits (apikey_charge) come in a later version of apikeys.',
				  HINT = 'Leave credit and cost NULL.';
	END IF;
	PERFORM apikeys._audit(CASE TG_OP WHEN 'INSERT' THEN 'route_added'
									 WHEN 'UPDATE' THEN 'route_changed'
									 ELSE 'route_removed' END,
						   '', '',
						   pg_catalog.jsonb_build_object('method', r.method, 'path', r.path,
														 'permission', r.permission));
	RETURN r;
END
$$;
COMMENT ON FUNCTION apikeys.routes_changed() IS
	'Trigger function: audits route changes and refuses routes with a credit (not supported yet)';
CREATE TRIGGER routes_changed BEFORE INSERT OR UPDATE OR DELETE ON apikeys.routes
	FOR EACH ROW EXECUTE FUNCTION apikeys.routes_changed();
-- pg_dump keeps the routes
SELECT pg_catalog.pg_extension_config_dump('apikeys.routes', '');

-- True if path matches the route pattern: as many segments, and each
-- pattern segment "*" or equal.
CREATE FUNCTION apikeys._path_matches(pattern text, path text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.cardinality(p) OPERATOR(pg_catalog.=) pg_catalog.cardinality(q)
	   AND NOT EXISTS (SELECT FROM pg_catalog.generate_subscripts(p, 1) AS i
					    WHERE p[i] OPERATOR(pg_catalog.<>) '*'
						  AND p[i] OPERATOR(pg_catalog.<>) q[i])
	  FROM pg_catalog.string_to_array($1, '/') AS p, pg_catalog.string_to_array($2, '/') AS q
$$;
COMMENT ON FUNCTION apikeys._path_matches(text, text) IS
	'Internal: true if path matches the route pattern ("*" matches one segment)';

-- The permission a request needs (NULL: any valid key).  The most specific
-- matching route wins: the one with a literal segment where the others
-- have "*", at the leftmost segment where they differ; among equally
-- specific paths, an exact method before "*" (a GET route also covers
-- HEAD, unless a HEAD route is given).  With no route: GET and
-- HEAD of /<name>... need <name>:read, other methods <name>:write;
-- /rpc/<fn> needs <fn>:call; / (the API description) any valid key.  The
-- seed API (apikeys_api) brings its own routes instead of the table.
CREATE FUNCTION apikeys._request_permission(method text, path text, seed boolean)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m text := pg_catalog.upper(method);
	segs text[] := pg_catalog.string_to_array(pg_catalog.ltrim(path, '/'), '/');
	found_route boolean;
	perm text;
BEGIN
	IF seed THEN
		SELECT true, r.permission INTO found_route, perm
		  FROM (VALUES ('*', '/rpc/create_key', 'api-keys:write'),
					   ('*', '/rpc/revoke_key', 'api-keys:write'),
					   ('GET', '/rpc/list_keys', 'api-keys:read'),
					   ('HEAD', '/rpc/list_keys', 'api-keys:read'),
					   ('*', '/rpc/list_keys', 'api-keys:write'),
					   ('GET', '/rpc/analytics', 'api-keys:read'),
					   ('HEAD', '/rpc/analytics', 'api-keys:read'),
					   ('*', '/rpc/analytics', 'api-keys:write'),
					   ('*', '/rpc/credits', NULL)) AS r(method, path, permission)
		 WHERE (r.method OPERATOR(pg_catalog.=) '*' OR r.method OPERATOR(pg_catalog.=) m)
		   AND r.path OPERATOR(pg_catalog.=) _request_permission.path
		 ORDER BY r.method OPERATOR(pg_catalog.=) '*'
		 LIMIT 1;
	ELSE
		SELECT true, r.permission INTO found_route, perm
		  FROM apikeys.routes AS r
		 WHERE (r.method OPERATOR(pg_catalog.=) ANY (ARRAY['*', m])
				OR (m OPERATOR(pg_catalog.=) 'HEAD' AND r.method OPERATOR(pg_catalog.=) 'GET'))
		   AND apikeys._path_matches(r.path, _request_permission.path)
		 ORDER BY pg_catalog.array_to_string(ARRAY(
					 SELECT CASE WHEN s OPERATOR(pg_catalog.=) '*' THEN '0' ELSE '1' END
					   FROM pg_catalog.unnest(pg_catalog.string_to_array(r.path, '/')) AS s), '') DESC,
				  CASE r.method WHEN m THEN 0 WHEN 'GET' THEN 1 ELSE 2 END
		 LIMIT 1;
	END IF;
	IF found_route THEN
		RETURN perm;
	END IF;
	IF pg_catalog.cardinality(segs) OPERATOR(pg_catalog.=) 0 OR segs[1] OPERATOR(pg_catalog.=) '' THEN
		RETURN NULL;
	END IF;
	IF segs[1] OPERATOR(pg_catalog.=) 'rpc' AND pg_catalog.cardinality(segs) OPERATOR(pg_catalog.>=) 2 THEN
		RETURN segs[2] OPERATOR(pg_catalog.||) ':call';
	END IF;
	RETURN segs[1] OPERATOR(pg_catalog.||)
		   CASE WHEN m OPERATOR(pg_catalog.=) ANY ('{GET,HEAD}') THEN ':read' ELSE ':write' END;
END
$$;
COMMENT ON FUNCTION apikeys._request_permission(text, text, boolean) IS
	'Internal: the permission a request method and path need (NULL: any valid key), from the routes or the default';

-- Authenticates the current PostgREST request for the permission its
-- method and path need: what both pre-requests do.
CREATE FUNCTION apikeys._authorize_request(seed boolean) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	headers jsonb := COALESCE(NULLIF(pg_catalog.current_setting('request.headers', true), ''), '{}')::jsonb;
	method text := COALESCE(NULLIF(pg_catalog.current_setting('request.method', true), ''), 'GET');
	raw_path text := COALESCE(NULLIF(pg_catalog.current_setting('request.path', true), ''), '/');
	path text := apikeys._url_path_decode(raw_path);
BEGIN
	-- PostgREST serves "todos" (no leading slash) as "/todos": match it so
	path := '/' OPERATOR(pg_catalog.||) pg_catalog.ltrim(path, '/');
	IF path IS NULL THEN
		RAISE EXCEPTION 'request path is not valid'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A percent escape in the path is malformed or does not decode to text.';
	END IF;
	PERFORM apikeys._authenticate(headers OPERATOR(pg_catalog.->>) 'x-api-key',
								  apikeys._request_permission(method, path, seed),
								  headers OPERATOR(pg_catalog.->>) 'x-forwarded-for');
END
$$;
COMMENT ON FUNCTION apikeys._authorize_request(boolean) IS
	'Internal: authenticates the current PostgREST request for the permission of its route (the seed API''s when seed)';

CREATE FUNCTION apikeys._url_path_decode(path text) RETURNS text
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'apikeys_url_path_decode';
COMMENT ON FUNCTION apikeys._url_path_decode(text) IS
	'Internal: a request path with %XX escapes decoded, as PostgREST decodes it; NULL if it does not decode to text';

-- db-pre-request for any schema PostgREST serves: authenticates X-API-Key
-- (client address from X-Forwarded-For, as for apikeys_api) for the
-- permission of the request's route; PT401/PT403 otherwise.
CREATE FUNCTION apikeys.pre_request() RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._authorize_request(false);
END
$$;
COMMENT ON FUNCTION apikeys.pre_request() IS
	'PostgREST db-pre-request for your own schemas: authenticates X-API-Key for the permission of the request''s route (apikeys.routes, or <name>:read/<name>:write/<fn>:call)';

------------------------------------------------------------------------------
-- The HTTP API, served by PostgREST (db-schemas = apikeys_api,
-- db-pre-request = apikeys_api.pre_request).  Every request authenticates
-- with its X-API-Key header and acts on that key's owner only.
------------------------------------------------------------------------------

CREATE SCHEMA apikeys_api;
COMMENT ON SCHEMA apikeys_api IS
	'The HTTP API exposed through PostgREST; reachable by apikeys_anon only';

CREATE FUNCTION apikeys_api.pre_request()
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- the same machinery as apikeys.pre_request, with the seed API's routes:
	-- key management needs api-keys:read to look and api-keys:write to
	-- change; the credits check needs only a valid key
	PERFORM apikeys._authorize_request(true);
END
$$;
COMMENT ON FUNCTION apikeys_api.pre_request() IS
	'PostgREST db-pre-request: authenticates the X-API-Key header (PT401/PT403) for the request''s transaction';

CREATE FUNCTION apikeys_api.create_key(jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	body jsonb := COALESCE($1, '{}');
	caller text := apikeys._require_auth_owner();
	caller_scope text := apikeys._auth_scope();
	minter apikeys.keys;
	wanted_scope text;
	extra text;
	ips cidr[];
	days integer;
	k apikeys.new_key;
BEGIN
	-- this function checks its own permission, whatever route reached it
	PERFORM apikeys._require_auth_permission('api-keys:write');
	IF pg_catalog.jsonb_typeof(body) OPERATOR(pg_catalog.<>) 'object' THEN
		RAISE EXCEPTION 'request body must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- field names are shown only when they look like field names, never a key
	SELECT pg_catalog.string_agg(CASE WHEN f OPERATOR(pg_catalog.~) '^[A-Za-z_]{1,32}$' THEN f ELSE '(not shown)' END,
								 ', ' ORDER BY f) INTO extra
	  FROM pg_catalog.jsonb_object_keys(body) AS f
	 WHERE f OPERATOR(pg_catalog.<>) ALL ('{name,scope,ipRestrictions,expiresInDays,prefix,metadata}');
	IF extra IS NOT NULL THEN
		RAISE EXCEPTION 'unknown field in request body: %', extra
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The fields are name, scope, ipRestrictions, expiresInDays, prefix and metadata.';
	END IF;
	-- ('{number,"null"}': an unquoted null would be SQL NULL, and the test never true)
	IF pg_catalog.jsonb_typeof(body OPERATOR(pg_catalog.->) 'expiresInDays')
	   OPERATOR(pg_catalog.<>) ALL ('{number,"null"}') THEN
		RAISE EXCEPTION 'expiresInDays must be a number of days' USING ERRCODE = 'invalid_parameter_value';
	END IF;

	wanted_scope := COALESCE(body OPERATOR(pg_catalog.->>) 'scope', 'full');
	-- a key can only mint keys whose every permission its own scope grants
	IF NOT COALESCE(apikeys._scope_covers(caller_scope, wanted_scope), true) THEN
		RAISE EXCEPTION 'scope "%" grants more than this key''s scope "%"', wanted_scope, caller_scope
			USING ERRCODE = 'PT403';
	END IF;
	ips := apikeys._json_networks('ipRestrictions', body OPERATOR(pg_catalog.->) 'ipRestrictions');
	days := (body OPERATOR(pg_catalog.->>) 'expiresInDays')::integer;

	-- a key mints only keys within its own limits: every network inside one
	-- of its own (unless it has none), and no later expiry (unless it never
	-- expires)
	SELECT * INTO minter FROM apikeys.keys AS m
	 WHERE m.id OPERATOR(pg_catalog.=) apikeys._auth_key_id();
	IF pg_catalog.cardinality(minter.ip_restrictions) OPERATOR(pg_catalog.>) 0 AND
	   (pg_catalog.cardinality(ips) OPERATOR(pg_catalog.=) 0 OR
		EXISTS (SELECT FROM pg_catalog.unnest(ips) AS n
				 WHERE NOT EXISTS (SELECT FROM pg_catalog.unnest(minter.ip_restrictions) AS c
									WHERE n OPERATOR(pg_catalog.<<=) c))) THEN
		RAISE EXCEPTION 'ipRestrictions must lie within this key''s: %',
			pg_catalog.array_to_string(minter.ip_restrictions, ', ')
			USING ERRCODE = 'PT403',
				  HINT = 'Give every network of the new key inside one of these.';
	END IF;

	k := apikeys.apikey_create(caller, body OPERATOR(pg_catalog.->>) 'name', wanted_scope, ips, days,
							   body OPERATOR(pg_catalog.->>) 'prefix',
							   NULLIF(body OPERATOR(pg_catalog.->) 'metadata', 'null'));
	-- judged on the new key's actual expiry (the error undoes its creation)
	IF minter.expires_at IS NOT NULL AND
	   (k.expires_at IS NULL OR k.expires_at OPERATOR(pg_catalog.>) minter.expires_at) THEN
		RAISE EXCEPTION 'expiresInDays must not outlive this key, which expires at %', minter.expires_at
			USING ERRCODE = 'PT403',
				  HINT = 'Give an expiresInDays that ends no later than this key.';
	END IF;
	PERFORM pg_catalog.set_config('response.status', '201', true);
	RETURN pg_catalog.jsonb_build_object(
		'id', k.id, 'name', k.name, 'prefix', k.prefix, 'key', k.key, 'scope', k.scope,
		'ipRestrictions', pg_catalog.to_jsonb(k.ip_restrictions),
		'expiresAt', k.expires_at, 'createdAt', k.created_at, 'warning', k.warning);
END
$$;
COMMENT ON FUNCTION apikeys_api.create_key(jsonb) IS
	'POST /v1/api-keys: mints a key for the caller''s owner, within the caller''s own permissions, networks and expiry';

CREATE FUNCTION apikeys_api.list_keys()
RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._require_auth_permission('api-keys:read');
	RETURN (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
					   'id', l.id, 'name', l.name, 'prefix', l.prefix, 'scope', l.scope,
					   'ipRestrictions', pg_catalog.to_jsonb(l.ip_restrictions),
					   'expiresAt', l.expires_at, 'lastUsedAt', l.last_used_at,
					   'createdAt', l.created_at, 'isRevoked', l.is_revoked)
				   ORDER BY l.created_at DESC, l.id DESC), '[]')
			  FROM apikeys.apikey_list(apikeys._require_auth_owner()) AS l);
END
$$;
COMMENT ON FUNCTION apikeys_api.list_keys() IS
	'GET /v1/api-keys: the caller''s owner''s keys, newest first, without key material';

CREATE FUNCTION apikeys_api.analytics(days integer DEFAULT 30)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._require_auth_permission('api-keys:read');
	RETURN apikeys.apikey_analytics(apikeys._require_auth_owner(), analytics.days);
END
$$;
COMMENT ON FUNCTION apikeys_api.analytics(integer) IS
	'GET /v1/api-keys/analytics?days=N: usage of the caller''s owner''s keys';

CREATE FUNCTION apikeys_api.revoke_key(id text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- this function checks its own permission, whatever route reached it
	PERFORM apikeys._require_auth_permission('api-keys:write');
	PERFORM apikeys.apikey_revoke(revoke_key.id, apikeys._require_auth_owner());
EXCEPTION WHEN no_data_found THEN
	RAISE EXCEPTION '%', SQLERRM USING ERRCODE = 'PT404';
END
$$;
COMMENT ON FUNCTION apikeys_api.revoke_key(text) IS
	'DELETE /v1/api-keys/:id: revokes one of the caller''s owner''s keys (404 for any other id)';

CREATE FUNCTION apikeys_api.credits()
RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result jsonb;
BEGIN
	PERFORM apikeys._require_auth_owner();
	SELECT pg_catalog.jsonb_build_object('valid', true, 'keyId', k.id, 'name', k.name,
										 'owner', k.owner, 'scope', k.scope,
										 'expiresAt', k.expires_at)
	  INTO result
	  FROM apikeys.keys AS k
	 WHERE k.id OPERATOR(pg_catalog.=) apikeys._auth_key_id();
	RETURN result;
END
$$;
COMMENT ON FUNCTION apikeys_api.credits() IS
	'GET /v1/account/credits: answers 200 with the key''s identity when the key is valid';

------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC; admin manages, validator validates, anon
-- reaches only the HTTP schema.
------------------------------------------------------------------------------

REVOKE ALL ON SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON SCHEMA apikeys_api FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA apikeys_api FROM PUBLIC;

GRANT USAGE ON SCHEMA apikeys TO apikeys_admin, apikeys_validator, apikeys_anon;
GRANT USAGE ON SCHEMA apikeys_api TO apikeys_anon;

GRANT EXECUTE ON FUNCTION
	apikeys.apikey_create(text, text, text, cidr[], integer, text, jsonb),
	apikeys.apikey_validate(text, text, inet),
	apikeys.apikey_revoke(text, text),
	apikeys.apikey_list(text),
	apikeys.apikey_rotate(text, interval, text),
	apikeys.apikey_usage(text, integer),
	apikeys.apikey_analytics(text, integer),
	apikeys.flush_usage()
TO apikeys_admin;
GRANT EXECUTE ON FUNCTION apikeys.apikey_validate(text, text, inet) TO apikeys_validator;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA apikeys_api TO apikeys_anon;
-- Your own API: the request identity for row-level security, and the
-- pre-request PostgREST runs as its anonymous role.
GRANT EXECUTE ON FUNCTION
	apikeys.current_key_id(), apikeys.current_owner(), apikeys.current_scope(),
	apikeys.has_permission(text)
TO apikeys_anon, apikeys_validator, apikeys_admin;
GRANT EXECUTE ON FUNCTION apikeys.pre_request() TO apikeys_anon, apikeys_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON apikeys.routes TO apikeys_admin;


-- Neither table holds key material: administrators manage scopes and read
-- the audit trail directly.
GRANT SELECT, INSERT, UPDATE, DELETE ON apikeys.scopes TO apikeys_admin;
GRANT SELECT ON apikeys.audit TO apikeys_admin;

-- This database gets its background worker once CREATE EXTENSION commits.
SELECT apikeys._launch_worker();
