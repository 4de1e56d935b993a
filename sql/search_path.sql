-- A hostile search_path cannot hijack the extension (SPEC section 6): a
-- schema of look-alike functions, aggregates and operators, searched before
-- pg_catalog, and temporary look-alikes in pg_temp.  Every apikeys function
-- still answers correctly and none of the look-alikes is ever called.
\set SHOW_CONTEXT never

-- every SECURITY DEFINER function, and every SQL or PL/pgSQL function, pins
-- search_path to pg_catalog first and pg_temp last (C functions resolve no
-- names); the list of offenders must be empty
SELECT p.oid::regprocedure AS unpinned_function, p.prosecdef, l.lanname, p.proconfig
  FROM pg_proc AS p
  JOIN pg_namespace AS n ON n.oid = p.pronamespace
  JOIN pg_language AS l ON l.oid = p.prolang
 WHERE n.nspname IN ('apikeys', 'apikeys_api')
   AND (p.prosecdef OR l.lanname NOT IN ('c', 'internal'))
   AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
   -- inlined into its callers' queries, which SET would prevent; its body
   -- is one pg_catalog-qualified operator
   AND p.oid <> 'apikeys._is_expired(timestamptz, timestamptz)'::regprocedure
 ORDER BY 1::text;
SELECT count(*) > 5 AS functions_checked
  FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('apikeys', 'apikeys_api');

------------------------------------------------------------------------------
-- The hostile schema: each look-alike reports its call (a NOTICE and the
-- session setting hostile.calls) and answers wrongly.
------------------------------------------------------------------------------

CREATE SCHEMA hostile;
CREATE FUNCTION hostile.called(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	RAISE NOTICE 'HIJACKED: %', what;
	PERFORM pg_catalog.set_config('hostile.calls',
		pg_catalog.concat_ws(' ', pg_catalog.current_setting('hostile.calls', true), what), false);
END
$$;

-- functions, one per signature the extension could resolve unqualified
DO $do$
DECLARE
	f record;
BEGIN
	FOR f IN SELECT * FROM (VALUES
		('now', '', 'timestamptz', '2000-01-01 00:00:00+00'),
		('statement_timestamp', '', 'timestamptz', '2000-01-01 00:00:00+00'),
		('clock_timestamp', '', 'timestamptz', '2000-01-01 00:00:00+00'),
		('transaction_timestamp', '', 'timestamptz', '2000-01-01 00:00:00+00'),
		('timezone', 'text, timestamptz', 'timestamp', '2000-01-01 00:00:00'),
		('lower', 'text', 'text', 'hijacked'),
		('upper', 'text', 'text', 'HIJACKED'),
		('btrim', 'text', 'text', 'hijacked'),
		('btrim', 'text, text', 'text', 'hijacked'),
		('length', 'text', 'integer', '1'),
		('length', 'bytea', 'integer', '32'),
		('octet_length', 'text', 'integer', '1'),
		('digest', 'text, text', 'bytea', '\x00'),
		('digest', 'bytea, text', 'bytea', '\x00'),
		('encode', 'bytea, text', 'text', 'hijacked'),
		('decode', 'text, text', 'bytea', '\x00'),
		('format', 'text', 'text', 'hijacked'),
		('format', 'text, text', 'text', 'hijacked'),
		('format', 'text, text, text', 'text', 'hijacked'),
		('jsonb_build_object', 'text, text', 'jsonb', '{"hijacked": true}'),
		('jsonb_build_object', 'text, text, text, boolean', 'jsonb', '{"hijacked": true}'),
		('jsonb_build_object', 'text, text, text, text, text, timestamptz', 'jsonb', '{"hijacked": true}'),
		('jsonb_strip_nulls', 'jsonb', 'jsonb', '{"hijacked": true}'),
		('to_char', 'date, text', 'text', 'hijacked'),
		('to_char', 'timestamp, text', 'text', 'hijacked'),
		('coalesce', 'text, text', 'text', 'hijacked'),
		('nullif', 'text, text', 'text', 'hijacked'),
		('greatest', 'timestamptz, timestamptz', 'timestamptz', '2000-01-01 00:00:00+00'),
		('concat_ws', 'text, text, text', 'text', 'hijacked'),
		('current_setting', 'text', 'text', 'hijacked'),
		('set_config', 'text, text, boolean', 'text', 'hijacked'),
		('inet_client_addr', '', 'inet', '10.0.0.1'),
		('pg_notify', 'text, text', 'void', NULL),
		('gen_random_bytes', 'integer', 'bytea', '\x00'),
		('string_to_array', 'text, text', 'text[]', '{hijacked}'),
		('array_length', 'anyarray, integer', 'integer', '1'),
		('cardinality', 'anyarray', 'integer', '1'),
		('textregexeq', 'text, text', 'boolean', 'true'))
		AS t(name, args, rettype, result)
	LOOP
		EXECUTE pg_catalog.format(
			'CREATE FUNCTION hostile.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L',
			f.name, f.args, f.rettype,
			pg_catalog.format('BEGIN PERFORM hostile.called(%L); RETURN %s; END',
							  f.name || '(' || f.args || ')',
							  CASE WHEN f.result IS NULL THEN ''
								   ELSE pg_catalog.format('%L::%s', f.result, f.rettype) END));
	END LOOP;
END
$do$;

-- set-returning functions and aggregates
CREATE FUNCTION hostile.generate_series(integer, integer) RETURNS SETOF integer
LANGUAGE plpgsql AS $$BEGIN PERFORM hostile.called('generate_series'); RETURN NEXT 1; END$$;
CREATE FUNCTION hostile.unnest(anyarray) RETURNS SETOF anyelement
LANGUAGE plpgsql AS $$BEGIN PERFORM hostile.called('unnest'); END$$;
CREATE FUNCTION hostile.agg_step(state bigint, v bigint) RETURNS bigint
LANGUAGE plpgsql AS $$BEGIN PERFORM hostile.called('aggregate(bigint)'); RETURN 424242; END$$;
CREATE FUNCTION hostile.agg_step(state bigint, v integer) RETURNS bigint
LANGUAGE plpgsql AS $$BEGIN PERFORM hostile.called('aggregate(integer)'); RETURN 424242; END$$;
CREATE FUNCTION hostile.agg_step(state bigint, v timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$BEGIN PERFORM hostile.called('aggregate(timestamptz)'); RETURN 424242; END$$;
CREATE FUNCTION hostile.agg_step(state bigint, v jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$BEGIN PERFORM hostile.called('aggregate(jsonb)'); RETURN 424242; END$$;
CREATE FUNCTION hostile.agg_step(state bigint, v text, d text) RETURNS bigint
LANGUAGE plpgsql AS $$BEGIN PERFORM hostile.called('aggregate(text, text)'); RETURN 424242; END$$;
CREATE FUNCTION hostile.agg_step_star(state bigint) RETURNS bigint
LANGUAGE plpgsql AS $$BEGIN PERFORM hostile.called('count(*)'); RETURN 424242; END$$;
CREATE AGGREGATE hostile.sum(bigint) (sfunc = hostile.agg_step, stype = bigint);
CREATE AGGREGATE hostile.sum(integer) (sfunc = hostile.agg_step, stype = bigint);
CREATE AGGREGATE hostile.max(timestamptz) (sfunc = hostile.agg_step, stype = bigint);
CREATE AGGREGATE hostile.count(*) (sfunc = hostile.agg_step_star, stype = bigint);
CREATE AGGREGATE hostile.jsonb_agg(jsonb) (sfunc = hostile.agg_step, stype = bigint);
CREATE AGGREGATE hostile.string_agg(text, text) (sfunc = hostile.agg_step, stype = bigint);

-- operators: text and bytea equality answer "equal" (would match any owner,
-- id or digest), order operators on time answer "expired", and so on
DO $do$
DECLARE
	o record;
	n int := 0;
BEGIN
	FOR o IN SELECT * FROM (VALUES
		('=', 'text', 'text', 'boolean', 'true'), ('<>', 'text', 'text', 'boolean', 'false'),
		('<', 'text', 'text', 'boolean', 'true'), ('<=', 'text', 'text', 'boolean', 'true'),
		('>', 'text', 'text', 'boolean', 'true'), ('>=', 'text', 'text', 'boolean', 'true'),
		('~', 'text', 'text', 'boolean', 'true'),
		('=', 'bytea', 'bytea', 'boolean', 'true'), ('<>', 'bytea', 'bytea', 'boolean', 'false'),
		('=', 'timestamptz', 'timestamptz', 'boolean', 'true'),
		('<', 'timestamptz', 'timestamptz', 'boolean', 'true'),
		('<=', 'timestamptz', 'timestamptz', 'boolean', 'true'),
		('>', 'timestamptz', 'timestamptz', 'boolean', 'false'),
		('>=', 'timestamptz', 'timestamptz', 'boolean', 'false'),
		('<', 'interval', 'interval', 'boolean', 'false'), ('>', 'interval', 'interval', 'boolean', 'false'),
		('<', 'integer', 'integer', 'boolean', 'false'), ('>', 'integer', 'integer', 'boolean', 'false'),
		('=', 'date', 'date', 'boolean', 'true'), ('>', 'date', 'date', 'boolean', 'true'),
		('<=', 'date', 'date', 'boolean', 'true'),
		('=', 'boolean', 'boolean', 'boolean', 'true'),
		('=', 'jsonb', 'jsonb', 'boolean', 'true'),
		('=', 'text[]', 'text[]', 'boolean', 'true'),
		('+', 'timestamptz', 'interval', 'timestamptz', '2000-01-01 00:00:00+00'),
		('-', 'timestamptz', 'interval', 'timestamptz', '2000-01-01 00:00:00+00'),
		('-', 'date', 'integer', 'date', '2000-01-01'),
		('+', 'bigint', 'bigint', 'bigint', '424242'),
		('||', 'text', 'text', 'text', 'hijacked'),
		('<<=', 'inet', 'inet', 'boolean', 'true'))
		AS t(op, l, r, rettype, result)
	LOOP
		n := n + 1;
		EXECUTE pg_catalog.format(
			'CREATE FUNCTION hostile.op_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS %L',
			n, o.l, o.r, o.rettype,
			pg_catalog.format('BEGIN PERFORM hostile.called(%L); RETURN %L::%s; END',
							  o.l || ' ' || o.op || ' ' || o.r, o.result, o.rettype));
		EXECUTE pg_catalog.format(
			'CREATE OPERATOR hostile.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = hostile.op_%s)',
			o.op, o.l, o.r, n);
	END LOOP;
END
$do$;

-- tables and a type named like the extension's, for unqualified references
CREATE TABLE hostile.keys (LIKE apikeys.keys);
CREATE TABLE hostile.scopes (LIKE apikeys.scopes);
INSERT INTO hostile.scopes VALUES ('full', '{nothing:granted}', 'hijacked'), ('hijacked', '{*}', 'hijacked');
CREATE TABLE hostile.usage (LIKE apikeys.usage);
CREATE TABLE hostile.audit (LIKE apikeys.audit);
CREATE TYPE hostile.new_key AS (hijacked text);

GRANT USAGE ON SCHEMA hostile TO PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA hostile TO PUBLIC;

-- the hijack is real: in this session, unqualified names now reach hostile
SET search_path = hostile, public, pg_catalog;
SELECT now() = '2000-01-01 00:00:00+00' AS now_hijacked, 'a' = 'b' AS equality_hijacked,
       count(*) AS count_hijacked, length('abc') AS length_hijacked
  FROM pg_catalog.generate_series(1, 3);
RESET search_path;
SELECT pg_catalog.set_config('hostile.calls', '', false) IS NOT NULL AS calls_reset;

------------------------------------------------------------------------------
-- Every apikeys function under the hostile search_path
------------------------------------------------------------------------------

SET search_path = hostile, public, pg_catalog;

-- create: every argument, the stored digest is pgcrypto's SHA-256 of the key
SELECT key AS k, id AS kid, prefix, scope, ip_restrictions, expires_at IS NOT NULL AS expires,
       created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour') AS created_now,
       warning IS NOT NULL AS has_warning
  FROM apikeys.apikey_create(owner => 'sp_owner', name => 'main', scope => 'lists',
                             ip_restrictions => '{10.0.0.0/8}', expires_in_days => 30,
                             prefix => 'sp_live', metadata => '{"env": "prod"}') \gset
SELECT :'prefix' AS prefix, :'scope' AS scope, :'ip_restrictions' AS ip_restrictions,
       :'expires' AS expires, :'created_now' AS created_now, :'has_warning' AS has_warning;
SELECT pg_catalog.textregexeq(:'k', '^sp_live_[0-9A-Za-z]{38}$') AS key_shape,
       pg_catalog.textregexeq(:'kid', '^key_[0-9A-Za-z]{16}$') AS id_shape;
SELECT k.digest OPERATOR(pg_catalog.=) public.digest(:'k'::text, 'sha256'::text) AS digest_is_sha256,
       k.last4 OPERATOR(pg_catalog.=) pg_catalog.right(:'k', 4) AS last4_right,
       k.expires_at OPERATOR(pg_catalog.-) k.created_at AS lifetime,
       k.metadata::text AS metadata
  FROM apikeys.keys AS k WHERE k.id OPERATOR(pg_catalog.=) :'kid';
SELECT key AS k2, id AS kid2 FROM apikeys.apikey_create('sp_owner', 'second') \gset
SELECT key AS other_k, id AS other_kid FROM apikeys.apikey_create('sp_other_owner', 'other') \gset
SELECT key AS ek, id AS ekid FROM apikeys.apikey_create('sp_owner', 'to expire', expires_in_days => 1) \gset
UPDATE apikeys.keys SET expires_at = pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 second'
 WHERE id OPERATOR(pg_catalog.=) :'ekid';

-- validate: every outcome, with the right details
SELECT t.label, v.valid, v.code, v.key_id OPERATOR(pg_catalog.=) :'kid' AS same_id, v.owner, v.name,
       v.scope, v.metadata::text AS metadata
  FROM (VALUES (1, 'valid', :'k', 'lists:read', '10.1.2.3'::inet),
               (2, 'malformed', 'sp_live_hijacked', NULL, NULL),
               (3, 'not_found', 'ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1', NULL, NULL),
               (4, 'ip_not_allowed', :'k', 'lists:read', '192.0.2.1'),
               (5, 'no address (Unix socket)', :'k', 'lists:read', NULL),
               (6, 'insufficient_scope', :'k', 'billing:read', '10.1.2.3'))
       AS t(n, label, key, permission, ip),
       LATERAL apikeys.apikey_validate(t.key, t.permission, t.ip) AS v
 ORDER BY t.n;
SELECT (apikeys.apikey_validate(:'ek')).code AS expired_key,
       (apikeys.apikey_validate(:'k2', 'anything:at_all')).code AS full_scope;

-- revoke: true once, then false; another owner's id is P0002, and the
-- owner check is not fooled by the hostile "=" and "<>"
SELECT apikeys.apikey_revoke(:'kid2', 'sp_owner') AS revoked;
SELECT apikeys.apikey_revoke(:'kid2') AS revoked_again;
SELECT (apikeys.apikey_validate(:'k2')).code AS after_revoke;
SELECT pg_catalog.set_config('sp.other_kid', :'other_kid', false) IS NOT NULL AS set;
DO $$
BEGIN
	PERFORM apikeys.apikey_revoke(pg_catalog.current_setting('sp.other_kid'), 'sp_owner');
	RAISE NOTICE 'revoked another owner''s key';
EXCEPTION WHEN no_data_found THEN
	RAISE NOTICE 'P0002: %', pg_catalog.regexp_replace(SQLERRM, 'key_[0-9A-Za-z]+', '<id>');
END
$$;
SELECT (apikeys.apikey_validate(:'other_k')).code AS other_owner_key_untouched;

-- list: only this owner's keys, statuses as of now, newest first
SELECT name, prefix, last4 OPERATOR(pg_catalog.=) pg_catalog.right(:'k', 4) AS last4_of_main,
       scope, ip_restrictions, is_revoked, status
  FROM apikeys.apikey_list('sp_owner');

-- rotate: the successor works, the old key lives through its grace
SELECT key AS rk, id AS rkid, prefix AS rprefix, scope AS rscope, ip_restrictions AS rips,
       expires_at OPERATOR(pg_catalog.-) created_at AS rlifetime
  FROM apikeys.apikey_rotate(:'kid', interval '1 hour', 'sp_owner') \gset
SELECT :'rprefix' AS prefix, :'rscope' AS scope, :'rips' AS ip_restrictions, :'rlifetime' AS lifetime;
SELECT (apikeys.apikey_validate(:'rk', 'lists:write', '10.9.9.9')).code AS successor,
       (apikeys.apikey_validate(:'k', 'lists:write', '10.9.9.9')).code AS old_key_in_grace,
       (SELECT k.rotated_from OPERATOR(pg_catalog.=) :'kid' FROM apikeys.keys AS k
         WHERE k.id OPERATOR(pg_catalog.=) :'rkid') AS linked;
SELECT k.expires_at OPERATOR(pg_catalog.-) r.created_at AS old_key_grace
  FROM apikeys.keys AS k, apikeys.keys AS r
 WHERE k.id OPERATOR(pg_catalog.=) :'kid' AND r.id OPERATOR(pg_catalog.=) :'rkid';
DO $$
BEGIN
	PERFORM apikeys.apikey_rotate(pg_catalog.current_setting('sp.other_kid'), '0', 'sp_owner');
	RAISE NOTICE 'rotated another owner''s key';
EXCEPTION WHEN no_data_found THEN
	RAISE NOTICE 'P0002: %', pg_catalog.regexp_replace(SQLERRM, 'key_[0-9A-Za-z]+', '<id>');
END
$$;

-- flush_usage, usage and analytics: exact counts
SELECT apikeys.flush_usage() AS flushed;
SELECT u.key_id OPERATOR(pg_catalog.=) :'kid' AS main_key, u.calls, u.rejected,
       u.day OPERATOR(pg_catalog.=) (pg_catalog.timezone('UTC', pg_catalog.now()))::date AS today
  FROM apikeys.apikey_usage('sp_owner', 7) AS u
 WHERE u.key_id OPERATOR(pg_catalog.=) ANY (ARRAY[:'kid', :'kid2', :'ekid', :'rkid'])
 ORDER BY u.key_id OPERATOR(pg_catalog.=) :'kid' DESC, u.calls DESC, u.rejected DESC;
SELECT a OPERATOR(pg_catalog.->) 'totalCalls' AS total_calls,
       pg_catalog.jsonb_array_length(a OPERATOR(pg_catalog.->) 'dailyUsage') AS days,
       pg_catalog.jsonb_array_length(a OPERATOR(pg_catalog.->) 'keys') AS keys,
       (a OPERATOR(pg_catalog.->) 'dailyUsage' OPERATOR(pg_catalog.->) 0 OPERATOR(pg_catalog.->>) 'date')
         OPERATOR(pg_catalog.=) pg_catalog.to_char(pg_catalog.timezone('UTC', pg_catalog.now()), 'YYYY-MM-DD')
         AS newest_day_is_today
  FROM apikeys.apikey_analytics('sp_owner', 3) AS a;

-- errors keep their SQLSTATEs (22023) under the hostile path
DO $$
DECLARE
	q text;
BEGIN
	FOREACH q IN ARRAY ARRAY[
		$q$SELECT apikeys.apikey_create('', 'n')$q$,
		$q$SELECT apikeys.apikey_create('o', 'n', scope => 'hijacked')$q$,
		$q$SELECT apikeys.apikey_create('o', 'n', prefix => 'Bad')$q$,
		$q$SELECT apikeys.apikey_list('   ')$q$,
		$q$SELECT apikeys.apikey_usage('sp_owner', 0)$q$,
		$q$SELECT apikeys.apikey_analytics('sp_owner', 91)$q$,
		$q$SELECT apikeys.apikey_rotate('key_x', interval '8 days')$q$]
	LOOP
		BEGIN
			EXECUTE q;
			RAISE NOTICE '%: no error', q;
		EXCEPTION WHEN OTHERS THEN
			RAISE NOTICE '%: %', q, SQLSTATE;
		END;
	END LOOP;
END
$$;

-- none of the look-alikes was called
RESET search_path;
SELECT coalesce(nullif(current_setting('hostile.calls', true), ''), 'none') AS hostile_calls;

------------------------------------------------------------------------------
-- Temporary look-alikes: pg_temp first in search_path
------------------------------------------------------------------------------

CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE plpgsql AS
$$BEGIN PERFORM hostile.called('pg_temp.now'); RETURN '2000-01-01'; END$$;
CREATE FUNCTION pg_temp.digest(text, text) RETURNS bytea LANGUAGE plpgsql AS
$$BEGIN PERFORM hostile.called('pg_temp.digest'); RETURN '\x00'; END$$;
CREATE FUNCTION pg_temp.op_true(a text, b text) RETURNS boolean LANGUAGE plpgsql AS
$$BEGIN PERFORM hostile.called('pg_temp.='); RETURN true; END$$;
CREATE OPERATOR pg_temp.= (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_temp.op_true);
CREATE TEMP TABLE keys (LIKE apikeys.keys);
CREATE TEMP TABLE scopes (name text, permissions text[], description text);
INSERT INTO scopes VALUES ('full', '{nothing:granted}', 'hijacked');
CREATE TEMP TABLE audit (LIKE apikeys.audit);
CREATE TEMP TABLE usage (LIKE apikeys.usage);
SET search_path = pg_temp, hostile, public, pg_catalog;

SELECT key AS tk, id AS tkid FROM apikeys.apikey_create('sp_owner', 'temp path') \gset
SELECT (apikeys.apikey_validate(:'tk', 'a:b')).code AS validate,
       (SELECT pg_catalog.count(*) FROM apikeys.apikey_list('sp_owner')) AS listed,
       apikeys.apikey_revoke(:'tkid', 'sp_owner') AS revoked;
SELECT (apikeys.apikey_validate(:'tk')).code AS after_revoke,
       pg_catalog.jsonb_array_length(apikeys.apikey_analytics('sp_owner', 1) OPERATOR(pg_catalog.->) 'keys')
         AS analytics_keys,
       (SELECT pg_catalog.count(*) FROM apikeys.apikey_usage('sp_owner', 1)) OPERATOR(pg_catalog.>) 0 AS usage_rows,
       apikeys.flush_usage() AS flushed;
SELECT (r).id IS NOT NULL AS rotated
  FROM (SELECT apikeys.apikey_rotate(:'rkid', owner => 'sp_owner') AS r) AS s;
-- the temporary tables received nothing
SELECT (SELECT pg_catalog.count(*) FROM pg_temp.keys) AS temp_keys,
       (SELECT pg_catalog.count(*) FROM pg_temp.audit) AS temp_audit,
       (SELECT pg_catalog.count(*) FROM pg_temp.usage) AS temp_usage;
RESET search_path;
SELECT coalesce(nullif(current_setting('hostile.calls', true), ''), 'none') AS hostile_calls;

------------------------------------------------------------------------------
-- The same calls made by the validator and admin roles, which a hostile
-- schema owner might target
------------------------------------------------------------------------------

SET ROLE apikeys_validator;
SET search_path = hostile, public, pg_catalog;
SELECT (apikeys.apikey_validate(:'other_k', 'lists:read')).code AS validator_sees,
       (apikeys.apikey_validate(:'k2')).code AS revoked_key;
RESET search_path;
RESET ROLE;
SET ROLE apikeys_admin;
SET search_path = hostile, public, pg_catalog;
SELECT (SELECT pg_catalog.count(*) FROM apikeys.apikey_list('sp_owner')) AS admin_lists,
       (apikeys.apikey_validate(:'other_k', 'lists:read')).code AS admin_validates;
RESET search_path;
RESET ROLE;
SELECT coalesce(nullif(current_setting('hostile.calls', true), ''), 'none') AS hostile_calls;

SET client_min_messages = warning;
DROP SCHEMA hostile CASCADE;
RESET client_min_messages;
