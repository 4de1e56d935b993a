-- Hot standbys (SPEC section 13), the primary's side: apikeys._usage_ship
-- applies a standby's batch once per (source, batch number), refuses bad
-- batches, and only members of apikeys_standby may call it;
-- apikey_standby_status() on a primary.  Shipping itself, with real
-- standbys, is in test/t/020_standby_shipping.pl.
\set SHOW_CONTEXT never

CREATE TEMP TABLE k (label text PRIMARY KEY, key text, id text);
INSERT INTO k SELECT 'one', key, id FROM apikeys.apikey_create('ship_owner', 'one');
INSERT INTO k SELECT 'two', key, id FROM apikeys.apikey_create('ship_owner', 'two');
SELECT id AS id_one FROM k WHERE label = 'one' \gset
SELECT id AS id_two FROM k WHERE label = 'two' \gset
CREATE FUNCTION pg_temp.usage_of(label text) RETURNS text LANGUAGE sql AS $$
	SELECT coalesce(sum(u.calls), 0) || '/' || coalesce(sum(u.rejected), 0)
	FROM apikeys.usage u JOIN pg_temp.k ON k.id = u.key_id WHERE k.label = $1
$$;

-- batch 1 of a source: applied; the unknown key is left out (ordinal 3)
SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000001', 'replica-a', 1,
	ARRAY[:'id_one', :'id_two', 'ak_nosuchkeyatall0000'],
	ARRAY[current_date, current_date, current_date], ARRAY[5, 2, 9]::bigint[],
	ARRAY[1, 0, 9]::bigint[], ARRAY[now(), NULL, now()]);
SELECT pg_temp.usage_of('one') AS one, pg_temp.usage_of('two') AS two;
SELECT (SELECT last_used_at IS NOT NULL FROM apikeys.keys WHERE id = :'id_one') AS one_used,
	(SELECT last_used_at IS NULL FROM apikeys.keys WHERE id = :'id_two') AS two_unused;

-- the same batch again (its answer was lost), in another order and without
-- its last uses (a standby sends them again later): a duplicate, not
-- applied twice; every counter answers as found, last use not recorded.
-- (A standby's batch numbers carry random low bits, so another server
-- under the same source id never sends this number: see below.)
SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000001', 'replica-a', 1,
	ARRAY['ak_nosuchkeyatall0000', :'id_two', :'id_one'],
	ARRAY[current_date, current_date, current_date], ARRAY[9, 2, 5]::bigint[],
	ARRAY[9, 0, 1]::bigint[], ARRAY[NULL, NULL, NULL]::timestamptz[]);
SELECT pg_temp.usage_of('one') AS one, pg_temp.usage_of('two') AS two;

-- batch 1 again with fewer counters (sent again after a restart that
-- could not restore every counter): still a duplicate, by its number
SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000001', 'replica-a', 1,
	ARRAY[:'id_one', :'id_two'], ARRAY[current_date, current_date],
	ARRAY[5, 2]::bigint[], ARRAY[1, 0]::bigint[], ARRAY[now(), NULL]);
SELECT pg_temp.usage_of('one') AS one, pg_temp.usage_of('two') AS two;

-- a higher number is new, gaps allowed; a lower one can only be another
-- server's: a conflict
SELECT DISTINCT outcome FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000001', 'replica-a', 7,
	ARRAY[:'id_one'], ARRAY[current_date], ARRAY[3]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL::timestamptz]);
SELECT DISTINCT outcome FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000001', 'replica-a', 6,
	ARRAY[:'id_one'], ARRAY[current_date], ARRAY[100]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL::timestamptz]);
-- another source's batch 1 is its own
SELECT count(*) FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000002', 'replica-b', 1,
	ARRAY[:'id_two'], ARRAY[current_date], ARRAY[4]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL::timestamptz]);
SELECT pg_temp.usage_of('one') AS one, pg_temp.usage_of('two') AS two;
SELECT standby, last_batch, batches, duplicates, conflicts, calls, rejected,
	last_batch_at IS NOT NULL AS stamped
FROM apikeys.standby_batches ORDER BY standby;

-- an empty batch still advances the source
SELECT count(*) FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000002', 'replica-b', 2,
	'{}', '{}', '{}', '{}', '{}');
SELECT last_batch FROM apikeys.standby_batches WHERE standby = 'replica-b';

-- bad batches: nothing applied, nothing recorded
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 0,
	'{}', '{}', '{}', '{}', '{}')$$);
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 1,
	ARRAY['a', 'b'], ARRAY[current_date], ARRAY[1, 1]::bigint[], ARRAY[0, 0]::bigint[], ARRAY[NULL, NULL]::timestamptz[])$$);
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 1,
	ARRAY['a'], ARRAY[current_date], ARRAY[-1]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL]::timestamptz[])$$);
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 1,
	ARRAY['a'], ARRAY[current_date], ARRAY[NULL]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL]::timestamptz[])$$);
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 1,
	ARRAY[['a']], ARRAY[[current_date]], ARRAY[[1]]::bigint[], ARRAY[[0]]::bigint[], ARRAY[[NULL]]::timestamptz[])$$);
-- counts a standby never sends (one flush takes at most 2^32-1 of an
-- entry): a huge one would make the usage sums overflow and stop every flush
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 1,
	ARRAY['a'], ARRAY[current_date], ARRAY[9223372036854775800]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL]::timestamptz[])$$);
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 1,
	ARRAY['a'], ARRAY[current_date], ARRAY[0]::bigint[], ARRAY[4294967296]::bigint[], ARRAY[NULL]::timestamptz[])$$);
-- infinity would stay in last_used_at and in apikeys.usage for good
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 1,
	ARRAY['a'], ARRAY[current_date], ARRAY[1]::bigint[], ARRAY[0]::bigint[], ARRAY['infinity']::timestamptz[])$$);
SELECT * FROM regress.error_of($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000003', 'x', 1,
	ARRAY['a'], ARRAY['infinity']::date[], ARRAY[1]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL]::timestamptz[])$$);
SELECT count(*) AS recorded FROM apikeys.standby_batches
WHERE source = '00000000-0000-4000-8000-000000000003';

-- the largest count a standby sends is taken; a last use ahead of the
-- primary's clock (a standby's clock may be ahead) is recorded as now
SELECT count(*) FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000005', 'y', 1,
	ARRAY[:'id_one'], ARRAY[current_date - 1], ARRAY[4294967295]::bigint[], ARRAY[0]::bigint[],
	ARRAY[now() + interval '1 year']);
SELECT calls FROM apikeys.usage WHERE key_id = :'id_one' AND day = current_date - 1;
SELECT last_used_at <= now() AS not_in_the_future FROM apikeys.keys WHERE id = :'id_one';
DELETE FROM apikeys.usage WHERE key_id = :'id_one' AND day = current_date - 1;

-- who may ship: members of apikeys_standby; not PUBLIC, not an administrator
CREATE ROLE ship_nobody;
CREATE ROLE ship_member IN ROLE apikeys_standby;
CREATE ROLE ship_admin IN ROLE apikeys_admin;
SET ROLE ship_nobody;
SELECT regress.outcome($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000004', 'x', 1, '{}', '{}', '{}', '{}', '{}')$$);
SELECT regress.outcome($$SELECT * FROM apikeys.apikey_standby_status()$$);
RESET ROLE;
SET ROLE ship_admin;
SELECT regress.outcome($$SELECT * FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000004', 'x', 1, '{}', '{}', '{}', '{}', '{}')$$);
SELECT regress.outcome($$SELECT * FROM apikeys.apikey_standby_status()$$);
SELECT count(*) >= 2 AS admin_reads_batches FROM apikeys.standby_batches;
RESET ROLE;
SET ROLE ship_member;
-- the member writes usage only through the function (SECURITY DEFINER)
SELECT count(*) FROM apikeys._usage_ship('00000000-0000-4000-8000-000000000004', 'x', 1,
	ARRAY[:'id_two'], ARRAY[current_date], ARRAY[1]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL::timestamptz]);
SELECT regress.outcome($$SELECT * FROM apikeys.usage$$);
SELECT regress.outcome($$SELECT * FROM apikeys.standby_batches$$);
RESET ROLE;
SELECT pg_temp.usage_of('two') AS two;
DROP ROLE ship_nobody, ship_member, ship_admin;

-- on a primary: not in recovery, no shipping, no lag
SELECT in_recovery, source IS NOT NULL AS has_source, target, connected, last_batch,
	batches, lag_seconds, dropped_calls, connection_errors, last_error
FROM apikeys.apikey_standby_status();

-- the setting that names the primary is a server one (reloaded, never per session)
SELECT name, context, setting FROM pg_settings WHERE name = 'apikeys.primary_conninfo';
DELETE FROM apikeys.standby_batches;
