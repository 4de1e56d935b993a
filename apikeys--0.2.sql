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
	FOREACH r IN ARRAY ARRAY['apikeys_admin', 'apikeys_validator', 'apikeys_anon', 'apikeys_standby'] LOOP
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
				CHECK (event OPERATOR(pg_catalog.=) ANY ('{created,revoked,rotated,expired,route_added,route_changed,route_removed,credits_added,credit_alert_set,quota_set,quota_removed,quota_refilled,credits_written_off,ratelimit_set,ratelimit_dropped}')),
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
	metadata	jsonb,
	ratelimit_limit		integer,
	ratelimit_remaining	integer,
	ratelimit_reset		timestamptz
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
	-- the successor carries the key's rate limits (fresh windows) and quotas
	-- (the same amount and refill, starting full)
	INSERT INTO apikeys.ratelimits (name, key_id, max, per)
	SELECT r.name, successor.id, r.max, r.per
	  FROM apikeys.ratelimits AS r WHERE r.key_id OPERATOR(pg_catalog.=) k.id;
	PERFORM apikeys.apikey_quota_set(successor.id, p.credit, p.amount, p.refill, p.refill_day)
	   FROM apikeys.credit_pools AS p WHERE p.key_id OPERATOR(pg_catalog.=) k.id;

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
	'Mints a successor with the same owner, name, scope, IPs, prefix, metadata, lifetime, rate limits and quotas; the old key stays valid for grace (0 to 7 days)';

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
-- Credits (SPEC section 11): balances per owner and credit, quotas per key,
-- charged in shared memory without a row write (src/credits.c says how).
------------------------------------------------------------------------------

-- One row per owner's balance (key_id NULL) and per key's quota of a
-- credit.  available: spendable and not leased; leased: moved to the
-- server's shared memory by the worker, where charges take from it.  The
-- balance an owner sees is available plus the unspent part of the lease.
CREATE TABLE apikeys.credit_pools (
	id			bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	owner		text NOT NULL,
	credit		text NOT NULL CHECK (credit OPERATOR(pg_catalog.~) '^[a-z0-9_]{1,64}$'),
	key_id		text REFERENCES apikeys.keys (id) ON DELETE CASCADE,
	available	numeric(18,4) NOT NULL DEFAULT 0 CHECK (available OPERATOR(pg_catalog.>=) 0),
	leased		numeric(18,4) NOT NULL DEFAULT 0 CHECK (leased OPERATOR(pg_catalog.>=) 0),
	generation	integer NOT NULL DEFAULT 1,
	-- quotas: the amount a refill sets back, how often, and the current period
	amount		numeric(18,4) CHECK (amount OPERATOR(pg_catalog.>=) 0),
	refill		text CHECK (refill OPERATOR(pg_catalog.=) ANY ('{daily,monthly}')),
	refill_day	integer CHECK (refill_day BETWEEN 1 AND 31),
	period		date,
	-- balances: NOTIFY apikeys_credits_low once when the balance falls below
	low_balance	numeric(18,4),
	low_notified boolean NOT NULL DEFAULT false,
	CHECK ((key_id IS NULL) OPERATOR(pg_catalog.=) (amount IS NULL))
);
CREATE UNIQUE INDEX credit_pools_balance_idx ON apikeys.credit_pools (owner, credit)
	WHERE key_id IS NULL;
CREATE UNIQUE INDEX credit_pools_quota_idx ON apikeys.credit_pools (key_id, credit)
	WHERE key_id IS NOT NULL;
COMMENT ON TABLE apikeys.credit_pools IS
	'Credit balances (key_id NULL) and key quotas; available + the unspent lease is what can be spent';
-- pools appearing or disappearing reach every backend's pool id cache
CREATE TRIGGER credit_pools_invalidate_cache
	AFTER INSERT OR DELETE ON apikeys.credit_pools
	FOR EACH ROW EXECUTE FUNCTION apikeys._invalidate_cache();
ALTER TABLE apikeys.credit_pools ENABLE ALWAYS TRIGGER credit_pools_invalidate_cache;
CREATE TRIGGER credit_pools_invalidate_cache_truncate
	AFTER TRUNCATE ON apikeys.credit_pools
	FOR EACH STATEMENT EXECUTE FUNCTION apikeys._invalidate_cache();
SELECT pg_catalog.pg_extension_config_dump('apikeys.credit_pools', '');
SELECT pg_catalog.pg_extension_config_dump('apikeys.credit_pools_id_seq', '');

-- What each key spent of each credit per UTC day (written by the flush).
CREATE TABLE apikeys.credit_usage (
	key_id		text NOT NULL REFERENCES apikeys.keys (id) ON DELETE CASCADE,
	day			date NOT NULL,
	credit		text NOT NULL,
	spent		numeric(18,4) NOT NULL DEFAULT 0,
	PRIMARY KEY (key_id, day, credit)
);
COMMENT ON TABLE apikeys.credit_usage IS
	'Credits spent per key, UTC day and credit';
SELECT pg_catalog.pg_extension_config_dump('apikeys.credit_usage', '');

-- The composite apikey_charge returns: apikey_validate's columns, then the charge.
CREATE TYPE apikeys.charge AS (
	valid		boolean,
	code		text,
	key_id		text,
	owner		text,
	name		text,
	scope		text,
	expires_at	timestamptz,
	metadata	jsonb,
	ratelimit_limit		integer,
	ratelimit_remaining	integer,
	ratelimit_reset		timestamptz,
	credit		text,
	cost		numeric,
	remaining	numeric
);
COMMENT ON TYPE apikeys.charge IS
	'What apikey_charge returns: the validation, the credit and cost asked, and what is left';

CREATE FUNCTION apikeys._credit_recall(pool bigint) RETURNS numeric
LANGUAGE C VOLATILE STRICT AS 'MODULE_PATHNAME', 'apikeys_credit_recall';
COMMENT ON FUNCTION apikeys._credit_recall(bigint) IS
	'Internal: takes the free part of the pool''s lease, to be added back to its locked row in this transaction';
CREATE FUNCTION apikeys._credit_apply(pool bigint, available numeric, leased numeric,
	generation integer, period_end timestamptz, is_quota boolean, reset boolean,
	granted numeric, synced boolean) RETURNS void
LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'apikeys_credit_apply';
COMMENT ON FUNCTION apikeys._credit_apply(bigint, numeric, numeric, integer, timestamptz, boolean, boolean, numeric, boolean) IS
	'Internal: at commit, the pool''s shared-memory entry takes its row''s new state (and a lease)';
CREATE FUNCTION apikeys._credit_live(pool bigint, row_available numeric) RETURNS numeric
LANGUAGE C VOLATILE STRICT AS 'MODULE_PATHNAME', 'apikeys_credit_live';
COMMENT ON FUNCTION apikeys._credit_live(bigint, numeric) IS
	'Internal: what the pool holds for charges (its row''s available and its lease''s free part)';

-- An amount for display: no trailing zeros beyond one decimal (1000.0, 0.25).
CREATE FUNCTION apikeys._credit_display(amount numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.round($1, GREATEST(pg_catalog.scale(pg_catalog.trim_scale($1)), 1))
$$;
COMMENT ON FUNCTION apikeys._credit_display(numeric) IS
	'Internal: an amount of credits with at least one decimal and no trailing zeros';

-- 22023 unless owner is an owner: not NULL or blank, at most 200 characters
-- (as apikey_create requires).
CREATE FUNCTION apikeys._require_owner(owner text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._require_text('owner', owner);
	IF pg_catalog.char_length(owner) OPERATOR(pg_catalog.>) 200 THEN
		RAISE EXCEPTION 'owner must be at most 200 characters long'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The owner given is %s characters long.',
											 pg_catalog.char_length(owner));
	END IF;
END
$$;
COMMENT ON FUNCTION apikeys._require_owner(text) IS
	'Internal: 22023 unless owner is not NULL or blank and at most 200 characters';

-- 22023 unless credit is a credit name.
CREATE FUNCTION apikeys._require_credit(credit text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF credit IS NULL OR credit OPERATOR(pg_catalog.!~) '^[a-z0-9_]{1,64}$' THEN
		RAISE EXCEPTION 'invalid credit name'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A credit name is 1 to 64 characters of a-z, 0-9 and _.';
	END IF;
END
$$;
COMMENT ON FUNCTION apikeys._require_credit(text) IS
	'Internal: 22023 unless credit is 1-64 characters of [a-z0-9_]';

-- 22023 unless amount is a number with at most 4 decimals within range
-- (not negative unless negative_ok).
CREATE FUNCTION apikeys._require_amount(argname text, amount numeric, negative_ok boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF amount IS NULL THEN
		RAISE EXCEPTION '% must not be null', argname USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF amount OPERATOR(pg_catalog.=) 'NaN' OR amount OPERATOR(pg_catalog.=) 'Infinity'
	   OR amount OPERATOR(pg_catalog.=) '-Infinity' THEN
		RAISE EXCEPTION '% must be a finite number', argname USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF pg_catalog.abs(amount) OPERATOR(pg_catalog.>) 99999999999999 THEN
		RAISE EXCEPTION '% is out of range', argname
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'An amount of credits is at most 99999999999999.';
	END IF;
	IF pg_catalog.scale(pg_catalog.trim_scale(amount)) OPERATOR(pg_catalog.>) 4 THEN
		RAISE EXCEPTION '% must have at most 4 decimal places', argname
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF amount OPERATOR(pg_catalog.<) 0 AND NOT negative_ok THEN
		RAISE EXCEPTION '% must not be negative', argname USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;
COMMENT ON FUNCTION apikeys._require_amount(text, numeric, boolean) IS
	'Internal: 22023 unless amount is a finite number with at most 4 decimals';

-- The first day of the refill period that contains at (UTC): today for
-- daily; for monthly the last refill_day on or before it (clamped to each
-- month's last day).
CREATE FUNCTION apikeys._quota_period_start(refill text, refill_day integer, at timestamptz)
RETURNS date
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d date := pg_catalog.timezone('UTC', at)::date;
	m date := pg_catalog.date_trunc('month', d)::date;
	r date;
BEGIN
	IF refill IS NULL THEN
		RETURN NULL;
	ELSIF refill OPERATOR(pg_catalog.=) 'daily' THEN
		RETURN d;
	END IF;
	r := apikeys._quota_refill_date(m, refill_day);
	IF r OPERATOR(pg_catalog.<=) d THEN
		RETURN r;
	END IF;
	RETURN apikeys._quota_refill_date((m OPERATOR(pg_catalog.-) interval '1 month')::date, refill_day);
END
$$;
COMMENT ON FUNCTION apikeys._quota_period_start(text, integer, timestamptz) IS
	'Internal: the first UTC day of the quota refill period containing at';

-- refill_day of the month starting at month, clamped to its last day.
CREATE FUNCTION apikeys._quota_refill_date(month date, refill_day integer) RETURNS date
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT $1 OPERATOR(pg_catalog.+) (LEAST($2,
		pg_catalog.date_part('day', ($1 OPERATOR(pg_catalog.+) interval '1 month' OPERATOR(pg_catalog.-) interval '1 day'))::integer)
		OPERATOR(pg_catalog.-) 1)
$$;
COMMENT ON FUNCTION apikeys._quota_refill_date(date, integer) IS
	'Internal: refill_day of a month, clamped to the month''s last day';

-- When the period that started on start ends (the next refill), UTC.
CREATE FUNCTION apikeys._quota_period_end(refill text, refill_day integer, start date)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.timezone('UTC', (CASE $1
		WHEN 'daily' THEN $3 OPERATOR(pg_catalog.+) 1
		WHEN 'monthly' THEN apikeys._quota_refill_date(
			(pg_catalog.date_trunc('month', $3) OPERATOR(pg_catalog.+) interval '1 month')::date, $2)
		END)::timestamp)
$$;
COMMENT ON FUNCTION apikeys._quota_period_end(text, integer, date) IS
	'Internal: when the quota period that started on start ends (NULL: never refills)';

CREATE FUNCTION apikeys.apikey_credit_add(owner text, credit text, amount numeric)
RETURNS numeric
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	p apikeys.credit_pools;
	back numeric;
	balance numeric;
BEGIN
	PERFORM apikeys._require_owner(apikey_credit_add.owner);
	PERFORM apikeys._require_credit(apikey_credit_add.credit);
	PERFORM apikeys._require_amount('amount', amount, true);
	INSERT INTO apikeys.credit_pools (owner, credit)
	VALUES (apikey_credit_add.owner, apikey_credit_add.credit)
	ON CONFLICT (owner, credit) WHERE key_id IS NULL DO NOTHING;
	SELECT * INTO STRICT p FROM apikeys.credit_pools AS t
	 WHERE t.owner OPERATOR(pg_catalog.=) apikey_credit_add.owner
	   AND t.credit OPERATOR(pg_catalog.=) apikey_credit_add.credit
	   AND t.key_id IS NULL
	   FOR UPDATE;
	-- the lease's free part comes back to the row, so the whole balance is here
	back := apikeys._credit_recall(p.id);
	balance := p.available OPERATOR(pg_catalog.+) back OPERATOR(pg_catalog.+) amount;
	IF balance OPERATOR(pg_catalog.>) 99999999999999 THEN
		RAISE EXCEPTION 'balance of credit "%" cannot exceed 99999999999999', apikey_credit_add.credit
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF balance OPERATOR(pg_catalog.<) 0 THEN
		RAISE EXCEPTION 'balance of credit "%" cannot go below 0', apikey_credit_add.credit
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The balance is %s; taking %s would leave %s.',
											 apikeys._credit_display(balance OPERATOR(pg_catalog.-) amount),
											 apikeys._credit_display(OPERATOR(pg_catalog.-) amount),
											 apikeys._credit_display(balance));
	END IF;
	UPDATE apikeys.credit_pools AS t
	   SET available = balance, leased = t.leased OPERATOR(pg_catalog.-) back,
		   low_notified = t.low_notified AND balance OPERATOR(pg_catalog.<) t.low_balance
	 WHERE t.id OPERATOR(pg_catalog.=) p.id
	RETURNING * INTO p;
	PERFORM apikeys._credit_apply(p.id, p.available, p.leased, p.generation, NULL,
								  false, false, 0, false);
	PERFORM apikeys._audit('credits_added', '', apikey_credit_add.owner,
						   pg_catalog.jsonb_build_object('credit', apikey_credit_add.credit,
														 'amount', amount,
														 'balance', apikeys._credit_display(balance)));
	RETURN apikeys._credit_display(balance);
END
$$;
COMMENT ON FUNCTION apikeys.apikey_credit_add(text, text, numeric) IS
	'Adds amount (negative: takes away, never below 0) to the owner''s balance of credit; returns the new balance';

CREATE FUNCTION apikeys.apikey_credits(owner text)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._require_owner(apikey_credits.owner);
	RETURN (SELECT COALESCE(pg_catalog.jsonb_object_agg(p.credit,
				apikeys._credit_display(apikeys._credit_live(p.id, p.available))), '{}')
			  FROM apikeys.credit_pools AS p
			 WHERE p.owner OPERATOR(pg_catalog.=) apikey_credits.owner AND p.key_id IS NULL);
END
$$;
COMMENT ON FUNCTION apikeys.apikey_credits(text) IS
	'The owner''s balances as {"credit": balance, ...} ({} when none)';

CREATE FUNCTION apikeys.apikey_credit_alert(owner text, credit text, below numeric)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	PERFORM apikeys._require_owner(apikey_credit_alert.owner);
	PERFORM apikeys._require_credit(apikey_credit_alert.credit);
	IF below IS NOT NULL THEN
		PERFORM apikeys._require_amount('below', below, false);
	END IF;
	INSERT INTO apikeys.credit_pools AS t (owner, credit, low_balance)
	VALUES (apikey_credit_alert.owner, apikey_credit_alert.credit, below)
	ON CONFLICT (owner, credit) WHERE key_id IS NULL
	DO UPDATE SET low_balance = excluded.low_balance, low_notified = false;
	PERFORM apikeys._audit('credit_alert_set', '', apikey_credit_alert.owner,
						   pg_catalog.jsonb_build_object('credit', apikey_credit_alert.credit,
														 'below', below));
END
$$;
COMMENT ON FUNCTION apikeys.apikey_credit_alert(text, text, numeric) IS
	'NOTIFY apikeys_credits_low once when the owner''s balance of credit falls below this (NULL: never)';

CREATE FUNCTION apikeys.apikey_quota_set(id text, credit text, amount numeric,
	refill text DEFAULT NULL, refill_day integer DEFAULT NULL, owner text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	k apikeys.keys;
	p apikeys.credit_pools;
	day integer := refill_day;
	start date;
BEGIN
	PERFORM apikeys._require_credit(apikey_quota_set.credit);
	IF amount IS NOT NULL THEN
		PERFORM apikeys._require_amount('amount', amount, false);
	END IF;
	IF refill IS NOT NULL AND refill OPERATOR(pg_catalog.<>) ALL ('{daily,monthly}') THEN
		RAISE EXCEPTION 'refill must be NULL, ''daily'' or ''monthly'''
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF refill IS DISTINCT FROM 'monthly' AND day IS NOT NULL THEN
		RAISE EXCEPTION 'refill_day applies only to monthly refills'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF refill OPERATOR(pg_catalog.=) 'monthly' THEN
		day := COALESCE(day, 1);
		IF day NOT BETWEEN 1 AND 31 THEN
			RAISE EXCEPTION 'refill_day must be between 1 and 31'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'A day past the end of a month means its last day.';
		END IF;
	END IF;
	k := apikeys._lock_key(apikey_quota_set.id, apikey_quota_set.owner);
	IF amount IS NULL THEN
		DELETE FROM apikeys.credit_pools AS t
		 WHERE t.key_id OPERATOR(pg_catalog.=) k.id
		   AND t.credit OPERATOR(pg_catalog.=) apikey_quota_set.credit;
		IF FOUND THEN
			PERFORM apikeys._audit('quota_removed', k.id, k.owner,
								   pg_catalog.jsonb_build_object('credit', apikey_quota_set.credit));
		END IF;
		RETURN;
	END IF;
	start := apikeys._quota_period_start(refill, day, pg_catalog.now());
	INSERT INTO apikeys.credit_pools AS t (owner, credit, key_id, available, leased,
										   amount, refill, refill_day, period)
	VALUES (k.owner, apikey_quota_set.credit, k.id, amount, 0, amount, refill, day, start)
	ON CONFLICT (key_id, credit) WHERE key_id IS NOT NULL
	DO UPDATE SET available = excluded.available, leased = 0, amount = excluded.amount,
				  refill = excluded.refill, refill_day = excluded.refill_day,
				  period = excluded.period,
				  generation = t.generation OPERATOR(pg_catalog.+) 1
	RETURNING * INTO p;
	PERFORM apikeys._credit_apply(p.id, p.available, 0, p.generation,
								  apikeys._quota_period_end(refill, day, start),
								  true, true, 0, false);
	PERFORM apikeys._audit('quota_set', k.id, k.owner,
						   pg_catalog.jsonb_build_object('credit', apikey_quota_set.credit,
														 'amount', amount, 'refill', refill,
														 'refill_day', day));
END
$$;
COMMENT ON FUNCTION apikeys.apikey_quota_set(text, text, numeric, text, integer, text) IS
	'Caps what key id may spend of credit: sets its remaining quota to amount, and back to amount each day or month with refill; NULL amount removes the cap';

CREATE FUNCTION apikeys.apikey_charge(key text, credit text, cost numeric DEFAULT 1,
	permission text DEFAULT NULL, client_ip inet DEFAULT NULL)
RETURNS apikeys.charge
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'apikey_charge';
COMMENT ON FUNCTION apikeys.apikey_charge(text, text, numeric, text, inet) IS
	'Validates a key as apikey_validate does and takes cost of credit from its owner''s balance and its quota; insufficient_credits when either is short; given back if the transaction rolls back';

-- The pre-request's charge: _authenticate, also taking cost of credit (PT402).
CREATE FUNCTION apikeys._authenticate_charge(key text, permission text, forwarded_for text,
	credit text, cost numeric)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'apikeys_authenticate_charge';
COMMENT ON FUNCTION apikeys._authenticate_charge(text, text, text, text, numeric) IS
	'Internal: _authenticate that also charges cost of credit (PT402 when credits run out), given back if the request fails';

CREATE FUNCTION apikeys.apikey_credit_usage(owner text, days integer DEFAULT 30)
RETURNS TABLE (key_id text, day date, credit text, spent numeric)
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._require_owner(apikey_credit_usage.owner);
	PERFORM apikeys._require_days(apikey_credit_usage.days);
	RETURN QUERY
	SELECT u.key_id, u.day, u.credit, apikeys._credit_display(u.spent)
	  FROM apikeys.credit_usage AS u
	  JOIN apikeys.keys AS k ON k.id OPERATOR(pg_catalog.=) u.key_id
	 WHERE k.owner OPERATOR(pg_catalog.=) apikey_credit_usage.owner
	   AND u.day OPERATOR(pg_catalog.>) (pg_catalog.timezone('UTC', pg_catalog.now())::date
										 OPERATOR(pg_catalog.-) apikey_credit_usage.days)
	 ORDER BY u.day DESC, u.key_id, u.credit;
END
$$;
COMMENT ON FUNCTION apikeys.apikey_credit_usage(text, integer) IS
	'What each key of owner spent of each credit per UTC day, the last days days (as flushed)';

-- The worker's lease pass: for each pool a charge waits on, reconcile it
-- if shared memory never met it (write off what the row says was leased:
-- a lease this server lost in a crash), refill a quota whose period ended,
-- and top the free part of its lease (frees) up to lease, or to what the
-- waiting charge wants when that is more: so no more than that is ever
-- free in memory, which bounds what a crash can cost.  Rows locked by an
-- administrator are skipped until the next pass.
CREATE FUNCTION apikeys._credit_serve(ids bigint[], wants numeric[], frees numeric[],
	synced boolean[], lease numeric)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	w record;
	p apikeys.credit_pools;
	granted numeric;
	reset boolean;
	at timestamptz := pg_catalog.now();
BEGIN
	FOR w IN SELECT * FROM ROWS FROM (pg_catalog.unnest(ids), pg_catalog.unnest(wants),
									  pg_catalog.unnest(frees), pg_catalog.unnest(synced))
			 AS w(id, want, free, synced) LOOP
		SELECT * INTO p FROM apikeys.credit_pools AS t
		 WHERE t.id OPERATOR(pg_catalog.=) w.id FOR UPDATE SKIP LOCKED;
		IF NOT FOUND THEN
			IF NOT EXISTS (SELECT FROM apikeys.credit_pools AS t WHERE t.id OPERATOR(pg_catalog.=) w.id) THEN
				-- gone (a removed quota): nothing to charge from it
				PERFORM apikeys._credit_apply(w.id, 0, 0, 0, NULL, false, false, 0, true);
			END IF;
			CONTINUE;
		END IF;
		reset := false;
		IF NOT w.synced AND p.leased OPERATOR(pg_catalog.>) 0 THEN
			PERFORM apikeys._audit('credits_written_off', COALESCE(p.key_id, ''), p.owner,
				pg_catalog.jsonb_build_object('credit', p.credit,
					'amount', apikeys._credit_display(p.leased),
					'reason', 'lease lost by a server stop without shutdown (at most this much was unspent)'));
			p.leased := 0;
		END IF;
		IF p.key_id IS NOT NULL AND p.refill IS NOT NULL
		   AND apikeys._quota_period_end(p.refill, p.refill_day, p.period) OPERATOR(pg_catalog.<=) at THEN
			p.period := apikeys._quota_period_start(p.refill, p.refill_day, at);
			p.available := p.amount;
			p.leased := 0;
			p.generation := p.generation OPERATOR(pg_catalog.+) 1;
			reset := true;
			PERFORM apikeys._audit('quota_refilled', p.key_id, p.owner,
				pg_catalog.jsonb_build_object('credit', p.credit,
											  'amount', apikeys._credit_display(p.amount),
											  'period', p.period));
		END IF;
		IF reset THEN
			w.free := 0;		-- the old generation's lease is void
		END IF;
		granted := LEAST(p.available,
						 GREATEST(w.want, lease OPERATOR(pg_catalog.-) w.free, 0));
		UPDATE apikeys.credit_pools AS t
		   SET available = p.available OPERATOR(pg_catalog.-) granted,
			   leased = p.leased OPERATOR(pg_catalog.+) granted,
			   generation = p.generation, period = p.period
		 WHERE t.id OPERATOR(pg_catalog.=) p.id
		RETURNING * INTO p;
		PERFORM apikeys._credit_apply(p.id, p.available, p.leased, p.generation,
									  apikeys._quota_period_end(p.refill, p.refill_day, p.period),
									  p.key_id IS NOT NULL, reset, granted, true);
	END LOOP;
END
$$;
COMMENT ON FUNCTION apikeys._credit_serve(bigint[], numeric[], numeric[], boolean[], numeric) IS
	'Internal (worker): reconciles, refills and leases the pools charges wait for';

-- The worker's settle pass: what committed charges spent leaves the
-- leases (of the generation it was spent from), per-key spend is added
-- up, idle pools' leases go back to their rows, and balances that fell
-- below their alert announce it once.
CREATE FUNCTION apikeys._credit_settle(pools bigint[], gens integer[], spent numeric[],
	spend_keys text[], spend_days date[], spend_pools bigint[], spend_amounts numeric[],
	back_pools bigint[], back_gens integer[], back_amounts numeric[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	got bigint[];
BEGIN
	-- rows an administrator holds are skipped (returned), never waited for
	SELECT COALESCE(pg_catalog.array_agg(l.id), '{}') INTO got
	  FROM (SELECT p.id FROM apikeys.credit_pools AS p
			 WHERE p.id OPERATOR(pg_catalog.=) ANY (pools OPERATOR(pg_catalog.||) back_pools)
			 ORDER BY p.id FOR UPDATE SKIP LOCKED) AS l;
	UPDATE apikeys.credit_pools AS p
	   SET leased = p.leased OPERATOR(pg_catalog.-) s.spent
	  FROM ROWS FROM (pg_catalog.unnest(pools), pg_catalog.unnest(gens), pg_catalog.unnest(spent)) AS s(id, gen, spent)
	 WHERE p.id OPERATOR(pg_catalog.=) s.id AND p.generation OPERATOR(pg_catalog.=) s.gen
	   AND p.id OPERATOR(pg_catalog.=) ANY (got);
	INSERT INTO apikeys.credit_usage AS u (key_id, day, credit, spent)
	SELECT s.key_id, s.day, p.credit, pg_catalog.sum(s.amount)
	  FROM ROWS FROM (pg_catalog.unnest(spend_keys), pg_catalog.unnest(spend_days), pg_catalog.unnest(spend_pools), pg_catalog.unnest(spend_amounts))
		   AS s(key_id, day, pool, amount)
	  JOIN apikeys.credit_pools AS p ON p.id OPERATOR(pg_catalog.=) s.pool
	 WHERE EXISTS (SELECT FROM apikeys.keys AS k WHERE k.id OPERATOR(pg_catalog.=) s.key_id)
	 GROUP BY s.key_id, s.day, p.credit
	ON CONFLICT (key_id, day, credit)
	DO UPDATE SET spent = u.spent OPERATOR(pg_catalog.+) excluded.spent;
	UPDATE apikeys.credit_pools AS p
	   SET available = p.available OPERATOR(pg_catalog.+) b.amount,
		   leased = p.leased OPERATOR(pg_catalog.-) b.amount
	  FROM ROWS FROM (pg_catalog.unnest(back_pools), pg_catalog.unnest(back_gens), pg_catalog.unnest(back_amounts)) AS b(id, gen, amount)
	 WHERE p.id OPERATOR(pg_catalog.=) b.id AND p.generation OPERATOR(pg_catalog.=) b.gen
	   AND b.amount OPERATOR(pg_catalog.>) 0 AND p.id OPERATOR(pg_catalog.=) ANY (got);
	PERFORM pg_catalog.pg_notify('apikeys_credits_low',
			pg_catalog.jsonb_build_object('owner', p.owner, 'credit', p.credit,
				'balance', apikeys._credit_display(apikeys._credit_live(p.id, p.available)))::text)
	  FROM apikeys.credit_pools AS p
	 WHERE p.id OPERATOR(pg_catalog.=) ANY (got) AND p.id OPERATOR(pg_catalog.=) ANY (pools)
	   AND p.key_id IS NULL AND p.low_balance IS NOT NULL AND NOT p.low_notified
	   AND apikeys._credit_live(p.id, p.available) OPERATOR(pg_catalog.<) p.low_balance;
	UPDATE apikeys.credit_pools AS p SET low_notified = true
	 WHERE p.id OPERATOR(pg_catalog.=) ANY (got) AND p.id OPERATOR(pg_catalog.=) ANY (pools)
	   AND p.key_id IS NULL AND p.low_balance IS NOT NULL AND NOT p.low_notified
	   AND apikeys._credit_live(p.id, p.available) OPERATOR(pg_catalog.<) p.low_balance;
	RETURN QUERY
	SELECT x FROM pg_catalog.unnest(pools OPERATOR(pg_catalog.||) back_pools) AS x
	 WHERE NOT x OPERATOR(pg_catalog.=) ANY (got)
	   AND EXISTS (SELECT FROM apikeys.credit_pools AS p WHERE p.id OPERATOR(pg_catalog.=) x);
END
$$;
COMMENT ON FUNCTION apikeys._credit_settle(bigint[], integer[], numeric[], text[], date[], bigint[], numeric[], bigint[], integer[], numeric[]) IS
	'Internal (worker): settles spent credits, writes per-key spend, returns idle leases, announces low balances; returns the pools it skipped (locked)';

------------------------------------------------------------------------------
-- Rate limits (SPEC section 12): named limits on a key or on an owner,
-- counted in shared memory by apikey_validate and apikey_charge
-- (src/ratelimit.c says how).
------------------------------------------------------------------------------

CREATE TABLE apikeys.ratelimits (
	id			bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	name		text NOT NULL CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.:-]{1,64}$'),
	key_id		text REFERENCES apikeys.keys (id) ON DELETE CASCADE,
	owner		text,
	max			integer NOT NULL CHECK (max OPERATOR(pg_catalog.>) 0),
	per			interval NOT NULL
				CHECK (pg_catalog.date_part('epoch', per) BETWEEN 1 AND 86400),
	CHECK ((key_id IS NULL) OPERATOR(pg_catalog.<>) (owner IS NULL))
);
CREATE UNIQUE INDEX ratelimits_key_idx ON apikeys.ratelimits (key_id, name)
	WHERE key_id IS NOT NULL;
CREATE UNIQUE INDEX ratelimits_owner_idx ON apikeys.ratelimits (owner, name)
	WHERE owner IS NOT NULL;
COMMENT ON TABLE apikeys.ratelimits IS
	'Rate limits: at most max requests in any window of length per, for one key or shared by an owner''s keys';
-- every change reaches every backend's limit cache at commit (and on subscribers)
CREATE TRIGGER ratelimits_invalidate_cache
	AFTER INSERT OR UPDATE OR DELETE ON apikeys.ratelimits
	FOR EACH ROW EXECUTE FUNCTION apikeys._invalidate_cache();
ALTER TABLE apikeys.ratelimits ENABLE ALWAYS TRIGGER ratelimits_invalidate_cache;
CREATE TRIGGER ratelimits_invalidate_cache_truncate
	AFTER TRUNCATE ON apikeys.ratelimits
	FOR EACH STATEMENT EXECUTE FUNCTION apikeys._invalidate_cache();
ALTER TABLE apikeys.ratelimits ENABLE ALWAYS TRIGGER ratelimits_invalidate_cache_truncate;
SELECT pg_catalog.pg_extension_config_dump('apikeys.ratelimits', '');
SELECT pg_catalog.pg_extension_config_dump('apikeys.ratelimits_id_seq', '');

-- 22023 unless exactly one of key_id and owner is given.
CREATE FUNCTION apikeys._require_one_target(key_id text, owner text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF (key_id IS NULL) OPERATOR(pg_catalog.=) (owner IS NULL) THEN
		RAISE EXCEPTION 'give exactly one of key_id and owner'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A rate limit belongs to one key, or to an owner (shared by all its keys).';
	END IF;
	IF owner IS NOT NULL THEN
		PERFORM apikeys._require_owner(owner);
	END IF;
END
$$;
COMMENT ON FUNCTION apikeys._require_one_target(text, text) IS
	'Internal: 22023 unless exactly one of key_id and owner is given';

CREATE FUNCTION apikeys.apikey_ratelimit_set(name text, max integer, per interval,
	key_id text DEFAULT NULL, owner text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	k apikeys.keys;
	who text := apikey_ratelimit_set.owner;
BEGIN
	PERFORM apikeys._require_one_target(apikey_ratelimit_set.key_id, apikey_ratelimit_set.owner);
	IF apikey_ratelimit_set.name IS NULL
	   OR apikey_ratelimit_set.name OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_.:-]{1,64}$' THEN
		RAISE EXCEPTION 'invalid rate limit name'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A rate limit name is 1 to 64 characters of A-Z, a-z, 0-9, _, ., : and -.';
	END IF;
	IF apikey_ratelimit_set.max IS NULL OR apikey_ratelimit_set.max OPERATOR(pg_catalog.<=) 0 THEN
		RAISE EXCEPTION 'max must be a positive number of requests'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- judged by its length in seconds, the measure the windows use (so
	-- '1 year -359 days' is 6.25 days, and '-1 year 361 days' negative)
	IF apikey_ratelimit_set.per IS NULL
	   OR pg_catalog.date_part('epoch', apikey_ratelimit_set.per) NOT BETWEEN 1 AND 86400 THEN
		RAISE EXCEPTION 'per must be between 1 second and 1 day'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('The interval given was %s.',
											 COALESCE(apikey_ratelimit_set.per::text, 'NULL'));
	END IF;
	IF apikey_ratelimit_set.key_id IS NOT NULL THEN
		SELECT * INTO k FROM apikeys.keys AS t
		 WHERE t.id OPERATOR(pg_catalog.=) apikey_ratelimit_set.key_id;
		IF NOT FOUND THEN
			PERFORM apikeys._no_such_key(apikey_ratelimit_set.key_id);
		END IF;
		who := k.owner;
	END IF;
	-- at most 32 limits per key and 32 per owner, so that a request checks
	-- every one (the validation reads 64); serialised per owner
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('apikeys.ratelimits'),
											 pg_catalog.hashtext(who));
	IF (SELECT pg_catalog.count(*) FROM apikeys.ratelimits AS r
		 WHERE (r.key_id OPERATOR(pg_catalog.=) apikey_ratelimit_set.key_id
				OR r.owner OPERATOR(pg_catalog.=) apikey_ratelimit_set.owner)
		   AND r.name OPERATOR(pg_catalog.<>) apikey_ratelimit_set.name) OPERATOR(pg_catalog.>=) 32 THEN
		RAISE EXCEPTION 'too many rate limits'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A key, and an owner, can have at most 32 rate limits each.';
	END IF;
	IF apikey_ratelimit_set.key_id IS NOT NULL THEN
		INSERT INTO apikeys.ratelimits AS r (name, key_id, max, per)
		VALUES (apikey_ratelimit_set.name, k.id, apikey_ratelimit_set.max, apikey_ratelimit_set.per)
		ON CONFLICT (key_id, name) WHERE key_id IS NOT NULL
		DO UPDATE SET max = excluded.max, per = excluded.per;
	ELSE
		INSERT INTO apikeys.ratelimits AS r (name, owner, max, per)
		VALUES (apikey_ratelimit_set.name, apikey_ratelimit_set.owner,
				apikey_ratelimit_set.max, apikey_ratelimit_set.per)
		ON CONFLICT (owner, name) WHERE owner IS NOT NULL
		DO UPDATE SET max = excluded.max, per = excluded.per;
	END IF;
	PERFORM apikeys._audit('ratelimit_set', COALESCE(apikey_ratelimit_set.key_id, ''), who,
						   pg_catalog.jsonb_build_object('name', apikey_ratelimit_set.name,
														 'max', apikey_ratelimit_set.max,
														 'per', apikey_ratelimit_set.per));
END
$$;
COMMENT ON FUNCTION apikeys.apikey_ratelimit_set(text, integer, interval, text, text) IS
	'Sets rate limit name of key_id or of owner (shared by its keys): at most max requests in any window of length per (1 second to 1 day)';

CREATE FUNCTION apikeys.apikey_ratelimit_drop(name text, key_id text DEFAULT NULL,
	owner text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r apikeys.ratelimits;
BEGIN
	PERFORM apikeys._require_one_target(apikey_ratelimit_drop.key_id, apikey_ratelimit_drop.owner);
	DELETE FROM apikeys.ratelimits AS t
	 WHERE t.name OPERATOR(pg_catalog.=) apikey_ratelimit_drop.name
	   AND (t.key_id OPERATOR(pg_catalog.=) apikey_ratelimit_drop.key_id
			OR t.owner OPERATOR(pg_catalog.=) apikey_ratelimit_drop.owner)
	RETURNING * INTO r;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	PERFORM apikeys._audit('ratelimit_dropped', COALESCE(r.key_id, ''),
						   COALESCE(r.owner, (SELECT k.owner FROM apikeys.keys AS k
											   WHERE k.id OPERATOR(pg_catalog.=) r.key_id)),
						   pg_catalog.jsonb_build_object('name', r.name, 'max', r.max, 'per', r.per));
	RETURN true;
END
$$;
COMMENT ON FUNCTION apikeys.apikey_ratelimit_drop(text, text, text) IS
	'Drops rate limit name of key_id or of owner; false if there was none';

CREATE FUNCTION apikeys.apikey_ratelimits(owner text)
RETURNS TABLE (name text, key_id text, max integer, per interval)
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._require_owner(apikey_ratelimits.owner);
	RETURN QUERY
	SELECT r.name, r.key_id, r.max, r.per
	  FROM apikeys.ratelimits AS r
	 WHERE r.owner OPERATOR(pg_catalog.=) apikey_ratelimits.owner
		OR r.key_id OPERATOR(pg_catalog.=) ANY (
			SELECT k.id FROM apikeys.keys AS k
			 WHERE k.owner OPERATOR(pg_catalog.=) apikey_ratelimits.owner)
	 ORDER BY r.key_id NULLS FIRST, r.name;
END
$$;
COMMENT ON FUNCTION apikeys.apikey_ratelimits(text) IS
	'The rate limits of owner (key_id NULL) and of its keys';

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
-- charges cost (default 1) of it through apikey_charge.
CREATE FUNCTION apikeys.routes_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r apikeys.routes := CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN OLD ELSE NEW END;
BEGIN
	IF TG_OP OPERATOR(pg_catalog.<>) 'DELETE' THEN
		-- a route with a credit charges cost of it (1 unless given)
		IF NEW.cost IS NOT NULL AND NEW.credit IS NULL THEN
			RAISE EXCEPTION 'a route with a cost needs a credit'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Set credit to the credit the route charges, or cost to NULL.';
		END IF;
		IF NEW.credit IS NOT NULL THEN
			PERFORM apikeys._require_credit(NEW.credit);
			NEW.cost := COALESCE(NEW.cost, 1);
			PERFORM apikeys._require_amount('cost', NEW.cost, false);
		END IF;
		r := NEW;
	END IF;
	PERFORM apikeys._audit(CASE TG_OP WHEN 'INSERT' THEN 'route_added'
									 WHEN 'UPDATE' THEN 'route_changed'
									 ELSE 'route_removed' END,
						   '', '',
						   pg_catalog.jsonb_build_object('method', r.method, 'path', r.path,
														 'permission', r.permission,
														 'credit', r.credit, 'cost', r.cost));
	RETURN r;
END
$$;
COMMENT ON FUNCTION apikeys.routes_changed() IS
	'Trigger function: checks a route''s credit and cost and audits route changes';
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
CREATE FUNCTION apikeys._request_route(method text, path text, seed boolean,
	OUT permission text, OUT credit text, OUT cost numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m text := pg_catalog.upper(method);
	segs text[] := pg_catalog.string_to_array(pg_catalog.ltrim(path, '/'), '/');
	found_route boolean;
BEGIN
	IF seed THEN
		SELECT true, r.permission INTO found_route, permission
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
		   AND r.path OPERATOR(pg_catalog.=) _request_route.path
		 ORDER BY r.method OPERATOR(pg_catalog.=) '*'
		 LIMIT 1;
	END IF;
	-- then the routes table (the seed API's deployment may add metered routes)
	IF found_route IS NOT TRUE THEN
		SELECT true, r.permission, r.credit, r.cost INTO found_route, permission, credit, cost
		  FROM apikeys.routes AS r
		 WHERE (r.method OPERATOR(pg_catalog.=) ANY (ARRAY['*', m])
				OR (m OPERATOR(pg_catalog.=) 'HEAD' AND r.method OPERATOR(pg_catalog.=) 'GET'))
		   AND apikeys._path_matches(r.path, _request_route.path)
		 ORDER BY pg_catalog.array_to_string(ARRAY(
					 SELECT CASE WHEN s OPERATOR(pg_catalog.=) '*' THEN '0' ELSE '1' END
					   FROM pg_catalog.unnest(pg_catalog.string_to_array(r.path, '/')) AS s), '') DESC,
				  CASE r.method WHEN m THEN 0 WHEN 'GET' THEN 1 ELSE 2 END
		 LIMIT 1;
	END IF;
	IF found_route THEN
		RETURN;
	END IF;
	IF pg_catalog.cardinality(segs) OPERATOR(pg_catalog.=) 0 OR segs[1] OPERATOR(pg_catalog.=) '' THEN
		RETURN;
	END IF;
	IF segs[1] OPERATOR(pg_catalog.=) 'rpc' AND pg_catalog.cardinality(segs) OPERATOR(pg_catalog.>=) 2 THEN
		permission := segs[2] OPERATOR(pg_catalog.||) ':call';
		RETURN;
	END IF;
	permission := segs[1] OPERATOR(pg_catalog.||)
		   CASE WHEN m OPERATOR(pg_catalog.=) ANY ('{GET,HEAD}') THEN ':read' ELSE ':write' END;
END
$$;
COMMENT ON FUNCTION apikeys._request_route(text, text, boolean) IS
	'Internal: the permission a request method and path need (NULL: any valid key), and the credit and cost it charges, from the routes or the default';

CREATE FUNCTION apikeys._request_permission(method text, path text, seed boolean)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT r.permission FROM apikeys._request_route($1, $2, $3) AS r
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
	need record;
BEGIN
	-- PostgREST serves "todos" (no leading slash) as "/todos": match it so
	path := '/' OPERATOR(pg_catalog.||) pg_catalog.ltrim(path, '/');
	IF path IS NULL THEN
		RAISE EXCEPTION 'request path is not valid'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A percent escape in the path is malformed or does not decode to text.';
	END IF;
	need := apikeys._request_route(method, path, seed);
	IF need.credit IS NULL THEN
		PERFORM apikeys._authenticate(headers OPERATOR(pg_catalog.->>) 'x-api-key', need.permission,
									  headers OPERATOR(pg_catalog.->>) 'x-forwarded-for');
	ELSE
		-- a metered route: 402 when credits run out, given back if the request fails
		PERFORM apikeys._authenticate_charge(headers OPERATOR(pg_catalog.->>) 'x-api-key',
											 need.permission,
											 headers OPERATOR(pg_catalog.->>) 'x-forwarded-for',
											 need.credit, need.cost);
	END IF;
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
BEGIN
	RETURN apikeys.apikey_credits(apikeys._require_auth_owner());
END
$$;
COMMENT ON FUNCTION apikeys_api.credits() IS
	'GET /v1/account/credits: the balances of the key''s owner ({} when none)';

------------------------------------------------------------------------------
-- Hot standbys (SPEC section 13): usage shipped to the primary exactly once
------------------------------------------------------------------------------

-- A standby's worker ships its usage counts here in numbered batches
-- (src/ship.c).  One row per standby (per source id: random at a
-- standby's first start, kept across its clean restarts): the last batch
-- applied, updated in the transaction that applies it, so that a batch
-- sent again is recognised and not applied twice, and another server
-- sending under the same source id is found out (batch numbers carry
-- random low bits).  Not dumped: it describes this
-- server's history, not configuration.
CREATE TABLE apikeys.standby_batches (
	source			uuid CONSTRAINT standby_batches_pkey PRIMARY KEY,
	standby			text NOT NULL,
	last_batch		bigint NOT NULL DEFAULT 0,
	batches			bigint NOT NULL DEFAULT 0,
	duplicates		bigint NOT NULL DEFAULT 0,
	conflicts		bigint NOT NULL DEFAULT 0,
	calls			bigint NOT NULL DEFAULT 0,
	rejected		bigint NOT NULL DEFAULT 0,
	first_batch_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_batch_at	timestamptz
);
COMMENT ON TABLE apikeys.standby_batches IS
	'Per hot standby shipping usage here: the last batch applied (a batch sent again is not applied twice), and what was applied';

CREATE FUNCTION apikeys._usage_ship(source uuid, standby text, batch bigint,
	key_ids text[], days date[], calls bigint[], rejected bigint[], last_used timestamptz[])
RETURNS TABLE (outcome text, i integer, last_used_done boolean)
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'apikeys_usage_ship';
COMMENT ON FUNCTION apikeys._usage_ship(uuid, text, bigint, text[], date[], bigint[], bigint[], timestamptz[]) IS
	'A hot standby''s batch of usage counts, applied once per source and batch number; returns, for the counters whose key exists, what became of the batch (applied, duplicate, conflict) and their ordinals';

CREATE FUNCTION apikeys.apikey_standby_status(OUT in_recovery boolean, OUT source uuid,
	OUT target text, OUT connected boolean, OUT last_batch bigint,
	OUT last_shipped_at timestamptz, OUT batches bigint, OUT shipped_calls bigint,
	OUT shipped_rejected bigint, OUT pending_keys integer, OUT pending_calls bigint,
	OUT pending_rejected bigint, OUT lag_seconds double precision, OUT dropped_calls bigint,
	OUT connection_errors bigint, OUT last_error text, OUT last_error_at timestamptz)
RETURNS record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'apikey_standby_status';
COMMENT ON FUNCTION apikeys.apikey_standby_status() IS
	'This database''s usage shipping on this server: on a hot standby, what reached the primary, what waits, and the last error';

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
-- Credits: administrators grant and charge; the tables hold no key material.
GRANT EXECUTE ON FUNCTION
	apikeys.apikey_credit_add(text, text, numeric), apikeys.apikey_credits(text),
	apikeys.apikey_credit_alert(text, text, numeric),
	apikeys.apikey_quota_set(text, text, numeric, text, integer, text),
	apikeys.apikey_charge(text, text, numeric, text, inet),
	apikeys.apikey_credit_usage(text, integer)
TO apikeys_admin;
GRANT SELECT ON apikeys.credit_pools, apikeys.credit_usage TO apikeys_admin;
-- Rate limits: administrators set them; the table holds no key material.
GRANT EXECUTE ON FUNCTION
	apikeys.apikey_ratelimit_set(text, integer, interval, text, text),
	apikeys.apikey_ratelimit_drop(text, text, text),
	apikeys.apikey_ratelimits(text)
TO apikeys_admin;
GRANT SELECT ON apikeys.ratelimits TO apikeys_admin;

-- Hot standbys: the shipping connection's role is made a member of
-- apikeys_standby; administrators watch the shipping.
GRANT USAGE ON SCHEMA apikeys TO apikeys_standby;
GRANT EXECUTE ON FUNCTION
	apikeys._usage_ship(uuid, text, bigint, text[], date[], bigint[], bigint[], timestamptz[])
TO apikeys_standby;
GRANT EXECUTE ON FUNCTION apikeys.apikey_standby_status() TO apikeys_admin;
GRANT SELECT ON apikeys.standby_batches TO apikeys_admin;

-- This database gets its background worker once CREATE EXTENSION commits.
SELECT apikeys._launch_worker();
