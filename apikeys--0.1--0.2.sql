-- apikeys 0.1 -> 0.2 (ALTER EXTENSION apikeys UPDATE TO '0.2').
-- Every schema change of 0.2 is made here and in apikeys--0.2.sql alike;
-- test/t/011_upgrade.pl checks that both give the same objects.
-- CREATE OR REPLACE keeps each existing function's privileges and comment.

\echo Use "ALTER EXTENSION apikeys UPDATE TO '0.2'" to load this file. \quit

------------------------------------------------------------------------------
-- One definition of expiry and one writer of the audit trail
------------------------------------------------------------------------------

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

REVOKE ALL ON FUNCTION apikeys._is_expired(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys._audit(text, text, text, jsonb, timestamptz) FROM PUBLIC;

------------------------------------------------------------------------------
-- One C entry point per SQL signature (0.1 bound both to apikey_create)
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION apikeys._create_key(owner text, name text, scope text,
	ip_restrictions cidr[], expires_in_days integer, prefix text,
	metadata jsonb, rotated_from text)
RETURNS apikeys.new_key
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'apikeys_create_key';

CREATE OR REPLACE FUNCTION apikeys.apikey_create(owner text, name text,
	scope text DEFAULT 'full',
	ip_restrictions cidr[] DEFAULT '{}',
	expires_in_days integer DEFAULT NULL,
	prefix text DEFAULT NULL,
	metadata jsonb DEFAULT '{}')
RETURNS apikeys.new_key
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'apikey_create_0_2';

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

REVOKE ALL ON FUNCTION apikeys._grace_end(interval, timestamptz) FROM PUBLIC;

------------------------------------------------------------------------------
-- The lifecycle functions use the helpers above
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION apikeys.apikey_revoke(id text, owner text DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION apikeys.apikey_list(owner text)
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

CREATE OR REPLACE FUNCTION apikeys.apikey_rotate(id text, grace interval DEFAULT '0',
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

------------------------------------------------------------------------------
-- The worker's expiry pass, as a function
------------------------------------------------------------------------------
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

REVOKE ALL ON FUNCTION apikeys._expire_due_keys() FROM PUBLIC;

------------------------------------------------------------------------------
-- Scope administration: the in-use check reads apikeys.keys as the
-- extension's owner, so apikeys_admin can rename and delete unused scopes
------------------------------------------------------------------------------

ALTER FUNCTION apikeys.scopes_in_use() SECURITY DEFINER;

------------------------------------------------------------------------------
-- Cache invalidation from row-level triggers, so that logical replication's
-- apply worker (which fires no statement-level trigger but TRUNCATE's)
-- invalidates the subscriber's caches too
------------------------------------------------------------------------------

DROP TRIGGER keys_invalidate_cache ON apikeys.keys;
DROP TRIGGER scopes_invalidate_cache ON apikeys.scopes;
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

------------------------------------------------------------------------------
-- Edits to the shipped scopes survive pg_dump and pg_restore
------------------------------------------------------------------------------

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

REVOKE ALL ON FUNCTION apikeys._shipped_scopes() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.scopes_restore_edit() FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('apikeys.scopes',
	$$WHERE (name, permissions, description) NOT IN (VALUES
		('full', '{*}'::text[], 'Every permission'),
		('verify', '{verify:*}', 'Every action on the verify resource'),
		('lists', '{lists:*}', 'Every action on the lists resource'),
		('read-only', '{*:read}', 'The read action on every resource'))$$);

------------------------------------------------------------------------------
-- _lock_key checks the owner before it locks: another owner's key is never
-- locked (a lock wait would tell a prober that the id exists)
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION apikeys._lock_key(id text, owner text)
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

------------------------------------------------------------------------------
-- HTTP hardening: the minting functions check their own permission, a key
-- mints only keys within its own limits (permissions, networks, expiry),
-- and a malformed network is refused without echoing it
------------------------------------------------------------------------------

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

REVOKE ALL ON FUNCTION apikeys._auth_has_permission(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys._require_auth_permission(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys._json_networks(text, jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION apikeys_api.create_key(jsonb)
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

CREATE OR REPLACE FUNCTION apikeys_api.revoke_key(id text)
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
COMMENT ON FUNCTION apikeys_api.create_key(jsonb) IS
	'POST /v1/api-keys: mints a key for the caller''s owner, within the caller''s own permissions, networks and expiry';

CREATE OR REPLACE FUNCTION apikeys_api.list_keys()
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

CREATE OR REPLACE FUNCTION apikeys_api.analytics(days integer DEFAULT 30)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM apikeys._require_auth_permission('api-keys:read');
	RETURN apikeys.apikey_analytics(apikeys._require_auth_owner(), analytics.days);
END
$$;

------------------------------------------------------------------------------
-- Route changes are audit events
------------------------------------------------------------------------------

ALTER TABLE apikeys.audit DROP CONSTRAINT audit_event_check,
	ADD CONSTRAINT audit_event_check
	CHECK (event OPERATOR(pg_catalog.=) ANY ('{created,revoked,rotated,expired,route_added,route_changed,route_removed}'));

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

REVOKE ALL ON TABLE apikeys.routes FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.current_key_id(), apikeys.current_owner(), apikeys.current_scope(),
	apikeys.has_permission(text), apikeys.routes_changed(), apikeys._path_matches(text, text),
	apikeys._request_permission(text, text, boolean), apikeys._authorize_request(boolean),
	apikeys._url_path_decode(text), apikeys.pre_request() FROM PUBLIC;

-- the seed API's pre-request uses the same machinery
CREATE OR REPLACE FUNCTION apikeys_api.pre_request()
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

GRANT USAGE ON SCHEMA apikeys TO apikeys_anon;
-- Your own API: the request identity for row-level security, and the
-- pre-request PostgREST runs as its anonymous role.
GRANT EXECUTE ON FUNCTION
	apikeys.current_key_id(), apikeys.current_owner(), apikeys.current_scope(),
	apikeys.has_permission(text)
TO apikeys_anon, apikeys_validator, apikeys_admin;
GRANT EXECUTE ON FUNCTION apikeys.pre_request() TO apikeys_anon, apikeys_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON apikeys.routes TO apikeys_admin;
