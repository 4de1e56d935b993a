-- test/bench/http.sql -- what figure 5 (PostgREST) needs in the bench
-- database.  psql variable hot_id: the id of the key the keyed requests send.
--
-- Three PostgREST processes log in as bench_authenticator:
--   keyed      db-schemas apikeys_api, anon role apikeys_anon,
--              db-pre-request apikeys_api.pre_request (the shipped setup);
--              GET /v1/account/credits with X-API-Key -> apikeys_api.credits()
--   anonymous  db-schemas bench_api, anon role bench_anon, no pre-request;
--              GET /bench/anon/credits -> bench_api.credits()
--   noop       the same as anonymous, with db-pre-request
--              bench_api.noop_pre_request, which does nothing;
--              GET /bench/noop/credits -> bench_api.credits()
-- bench_api.credits() is apikeys_api.credits() without the key check: the
-- same balances of the same owner, for a fixed key id.

CREATE ROLE bench_anon NOLOGIN;
CREATE ROLE bench_authenticator LOGIN NOINHERIT;
GRANT apikeys_anon, bench_anon TO bench_authenticator;

CREATE SCHEMA bench_api;
GRANT USAGE ON SCHEMA bench_api TO bench_anon;

SELECT format($f$
CREATE FUNCTION bench_api.credits()
RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $body$
BEGIN
	RETURN apikeys.apikey_credits((SELECT k.owner FROM apikeys.keys AS k
									WHERE k.id OPERATOR(pg_catalog.=) %L));
END
$body$
$f$, :'hot_id') \gexec

REVOKE ALL ON FUNCTION bench_api.credits() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bench_api.credits() TO bench_anon;

-- The third twin's db-pre-request: PostgREST runs it like apikeys_api.pre_request,
-- and it does nothing, which measures what a pre-request costs by itself.
CREATE FUNCTION bench_api.noop_pre_request()
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
END
$$;
REVOKE ALL ON FUNCTION bench_api.noop_pre_request() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bench_api.noop_pre_request() TO bench_anon;
