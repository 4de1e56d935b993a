-- examples/postgrest/verify.sql -- the seed's own metered endpoint,
-- POST /v1/verify/email, next to the key-management API of apikeys_api.
--
-- One function in a schema of the deployment's own (apexverify), served by
-- the same PostgREST (db-schemas = "apikeys_api, apexverify" in
-- postgrest.conf; nginx.conf sends POST /v1/verify/email to
-- /rpc/verify_email with Content-Profile: apexverify), and one row of
-- apikeys.routes that meters it: each request needs permission
-- verify:email (the shipped scope `verify` grants verify:*) and costs 1
-- email_credit of the key's owner, taken by the pre-request
-- (apikeys_api.pre_request) through the key, as apikey_charge does:
--
--   - no credits left (balance, or the key's quota): 402, with
--     {"code":"PT402","message":"not enough email_credit",...}, nothing taken;
--   - a key whose scope lacks verify:email: 403, nothing taken;
--   - a request that fails after the charge (here: no email, 400) rolls its
--     transaction back, and the charge with it: it costs nothing.
--
-- The check is syntax only: this shows metering, not email verification.
-- Write your own metered endpoint the same way: a function PostgREST
-- serves, and a route with a credit and a cost.
--
-- Run as a superuser, in the database of the HTTP API, after
-- CREATE EXTENSION apikeys (idempotent: run it again after changes):
--
--   psql -d apikeys_demo -f examples/postgrest/verify.sql
--
-- and give an owner credits:
--
--   SELECT apikeys.apikey_credit_add('acme', 'email_credit', 1000);

BEGIN;

CREATE SCHEMA IF NOT EXISTS apexverify;
COMMENT ON SCHEMA apexverify IS
	'The seed''s metered endpoints, served by PostgREST next to apikeys_api';
REVOKE ALL ON SCHEMA apexverify FROM PUBLIC;

-- POST /v1/verify/email {"email": "..."}: 200 with
-- {"email": ..., "valid": true|false, "reason": ...}.  A missing or empty
-- email is an error (22023: PostgREST answers 400), so that request is not
-- charged.  STABLE: PostgREST runs the request READ ONLY, and the charge
-- needs no write.
CREATE OR REPLACE FUNCTION apexverify.verify_email(email text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e text := btrim(email);
	local_part text;
	dom text;
	reason text;
BEGIN
	IF e IS NULL OR e = '' THEN
		RAISE EXCEPTION 'email is required'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Send {"email": "name@example.com"}.';
	END IF;
	local_part := substring(e FROM '^(.*)@[^@]*$');
	dom := substring(e FROM '@([^@]*)$');
	reason := CASE
		WHEN length(e) > 254 THEN 'longer than 254 characters'
		WHEN position('@' IN e) = 0 THEN 'no @'
		WHEN local_part IS NULL OR local_part = '' THEN 'nothing before the @'
		WHEN length(local_part) > 64 THEN 'the part before the @ is longer than 64 characters'
		WHEN local_part !~ '^[A-Za-z0-9!#$%&''*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&''*+/=?^_`{|}~-]+)*$'
			THEN 'the part before the @ is not valid'
		WHEN dom IS NULL OR dom = '' THEN 'no domain after the @'
		WHEN dom !~ '^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$'
			THEN 'the domain is not valid'
		END;
	RETURN jsonb_build_object('email', e, 'valid', reason IS NULL, 'reason', COALESCE(reason, 'ok'));
END
$$;
COMMENT ON FUNCTION apexverify.verify_email(text) IS
	'POST /v1/verify/email: a syntax check of an email address (metered: 1 email_credit, permission verify:email)';

-- The role PostgREST runs every request as reaches this one function.
REVOKE ALL ON FUNCTION apexverify.verify_email(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA apexverify TO apikeys_anon;
GRANT EXECUTE ON FUNCTION apexverify.verify_email(text) TO apikeys_anon;

-- The meter: verify:email, 1 email_credit per request (the path is
-- PostgREST's, which nginx maps POST /v1/verify/email to).  An existing row
-- (an operator's own price) is kept.
INSERT INTO apikeys.routes (method, path, permission, credit, cost)
VALUES ('POST', '/rpc/verify_email', 'verify:email', 'email_credit', 1)
ON CONFLICT DO NOTHING;

COMMIT;

-- A running PostgREST picks the new function up.
NOTIFY pgrst, 'reload schema';
