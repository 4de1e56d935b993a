-- test/bench/naive.sql -- the naive baseline of figure 2, in the bench
-- database only: what a team writes without apikeys.  Look the key's SHA-256
-- up with pgcrypto in a table of its own, check revocation and expiry, then
-- record the use with an UPDATE of last_used_at and a call counter.
--
-- Its table is a copy of apikeys.keys' digests (the same 10,000 keys).

CREATE TABLE bench_naive (
	digest			bytea PRIMARY KEY,
	revoked_at		timestamptz,
	expires_at		timestamptz,
	last_used_at	timestamptz,
	calls			bigint NOT NULL DEFAULT 0
);

INSERT INTO bench_naive (digest, revoked_at, expires_at, last_used_at)
SELECT k.digest, k.revoked_at, k.expires_at, k.last_used_at
  FROM apikeys.keys AS k;

CREATE FUNCTION bench_naive_validate(key text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = public, pg_temp
AS $$
DECLARE
	d bytea := public.digest(key, 'sha256');
	k bench_naive;
BEGIN
	SELECT * INTO k FROM bench_naive AS n WHERE n.digest = d;
	IF NOT FOUND OR k.revoked_at IS NOT NULL OR k.expires_at <= now() THEN
		RETURN false;
	END IF;
	UPDATE bench_naive AS n
	   SET last_used_at = now(), calls = n.calls + 1
	 WHERE n.digest = d;
	RETURN true;
END
$$;

VACUUM ANALYZE bench_naive;
