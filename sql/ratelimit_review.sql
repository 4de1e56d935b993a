-- The findings of the outside review of rate limits (issue 14), each as it
-- was reproduced: intervals judged by their length (a '-1 year 361 days'
-- passed as "at most 1 day" and ran with a negative window), at most 32
-- limits per key and per owner (the 65th was silently ignored), a changed
-- per keeps what was counted (it started an empty window), a rotated key's
-- successor keeps the limits and quotas (it had none).  Keys stay in psql
-- variables, never printed.
\set SHOW_CONTEXT never

SELECT key AS k, id AS kid FROM apikeys.apikey_create('rlr_owner', 'reviewed') \gset

-- intervals judged by their length in seconds
SELECT p AS per, (regress.error_of(format(
	'SELECT apikeys.apikey_ratelimit_set(''odd'', 3, %L::interval, key_id => %L)', p, :'kid'))).state
  FROM unnest(ARRAY['-1 year 361 days', '1 year -359 days', '1 mon', '-1 hour',
					'1 day 00:00:00.000001', '0.5 seconds', '1 day', '1 second']) AS p;
SELECT name, per FROM apikeys.apikey_ratelimits('rlr_owner') ORDER BY name;
SELECT apikeys.apikey_ratelimit_drop('odd', key_id => :'kid');

-- at most 32 limits per key and 32 per owner
SELECT count(apikeys.apikey_ratelimit_set('loose' || g, 1000000, '1 hour', owner => 'rlr_owner'))
  FROM generate_series(1, 32) AS g;
SELECT (regress.error_of($$SELECT apikeys.apikey_ratelimit_set('loose33', 1000000, '1 hour', owner => 'rlr_owner')$$)).*;
-- setting an existing one again is a change, not a 33rd
SELECT apikeys.apikey_ratelimit_set('loose1', 999999, '1 hour', owner => 'rlr_owner');
SELECT count(apikeys.apikey_ratelimit_set('own' || g, 1000000, '1 hour', key_id => :'kid'))
  FROM generate_series(1, 31) AS g;
SELECT apikeys.apikey_ratelimit_set('strict', 2, '1 hour', key_id => :'kid');
SELECT (regress.error_of(format($$SELECT apikeys.apikey_ratelimit_set('own33', 5, '1 hour', key_id => %L)$$, :'kid'))).state;
-- with 64 limits in all, the strict one still counts
SELECT string_agg((apikeys.apikey_validate(:'k')).code, ',') AS codes FROM generate_series(1, 3);
SELECT (v).ratelimit_limit, (v).ratelimit_remaining FROM (SELECT apikeys.apikey_validate(:'k') AS v) s;
SELECT count(apikeys.apikey_ratelimit_drop('loose' || g, owner => 'rlr_owner')) FILTER (WHERE true)
  FROM generate_series(1, 32) AS g;
SELECT count(apikeys.apikey_ratelimit_drop('own' || g, key_id => :'kid'))
  FROM generate_series(1, 31) AS g;
SELECT apikeys.apikey_ratelimit_drop('strict', key_id => :'kid');

-- a changed per keeps what was counted
SELECT key AS k2, id AS kid2 FROM apikeys.apikey_create('rlr_owner', 'per change') \gset
SELECT apikeys.apikey_ratelimit_set('l', 3, '1 minute', key_id => :'kid2');
SELECT string_agg((apikeys.apikey_validate(:'k2')).code, ',') AS per_1_minute FROM generate_series(1, 4);
SELECT apikeys.apikey_ratelimit_set('l', 3, '1 hour', key_id => :'kid2');
SELECT string_agg((apikeys.apikey_validate(:'k2')).code, ',') AS per_1_hour FROM generate_series(1, 2);
SELECT apikeys.apikey_ratelimit_set('l', 5, '1 hour', key_id => :'kid2');
SELECT string_agg((apikeys.apikey_validate(:'k2')).code, ',') AS max_raised_to_5 FROM generate_series(1, 3);

-- a rotated key's successor keeps its limits and quotas
SELECT key AS k3, id AS kid3 FROM apikeys.apikey_create('rlr_owner', 'rotated') \gset
SELECT apikeys.apikey_ratelimit_set('one', 1, '1 hour', key_id => :'kid3');
SELECT apikeys.apikey_credit_add('rlr_owner', 'rlr_credit', 100);
SELECT apikeys.apikey_quota_set(:'kid3', 'rlr_credit', 2, 'daily');
SELECT key AS k4, id AS kid4 FROM apikeys.apikey_rotate(:'kid3', '1 day') \gset
SELECT r.name, r.max, r.per, r.key_id = :'kid4' AS on_successor
  FROM apikeys.ratelimits AS r WHERE r.key_id IN (:'kid3', :'kid4') ORDER BY on_successor;
SELECT p.credit, p.amount, p.refill, p.key_id = :'kid4' AS on_successor
  FROM apikeys.credit_pools AS p WHERE p.key_id IN (:'kid3', :'kid4') ORDER BY on_successor;
SELECT string_agg((apikeys.apikey_validate(:'k4')).code, ',') AS successor FROM generate_series(1, 2);
SELECT string_agg(c.code, ',') AS successor_charges
  FROM generate_series(1, 1) AS g, apikeys.apikey_charge(:'k4', 'rlr_credit') AS c;

-- more limits than a backend reads in bulk (10,000): lookups go per key,
-- with the same answers
SELECT key AS k5, id AS kid5 FROM apikeys.apikey_create('rlr_many', 'many') \gset
INSERT INTO apikeys.ratelimits (name, owner, max, per)
SELECT 'bulk', 'rlr_bulk_' || g, 1000, '1 hour' FROM generate_series(1, 10001) AS g;
SELECT apikeys.apikey_ratelimit_set('few', 2, '1 hour', owner => 'rlr_many');
SELECT string_agg((apikeys.apikey_validate(:'k5')).code, ',') AS per_key_lookups FROM generate_series(1, 3);
DELETE FROM apikeys.ratelimits WHERE name = 'bulk';
SELECT string_agg((apikeys.apikey_validate(:'k5')).code, ',') AS bulk_again FROM generate_series(1, 2);

-- the most constrained limit, on a tie, is the one set first, whichever way
-- the limits were read (in bulk here, per key above 10,000 rows)
SELECT key AS kt1, id AS kidt1 FROM apikeys.apikey_create('rlr_tie', 'tie 1') \gset
SELECT key AS kt2 FROM apikeys.apikey_create('rlr_tie', 'tie 2') \gset
SELECT apikeys.apikey_ratelimit_set('o', 4, '1 hour', owner => 'rlr_tie');
SELECT apikeys.apikey_ratelimit_set('k', 3, '1 hour', key_id => :'kidt1');
SELECT (apikeys.apikey_validate(:'kt2')).code;
SELECT ratelimit_limit, ratelimit_remaining FROM apikeys.apikey_validate(:'kt1');
INSERT INTO apikeys.ratelimits (name, owner, max, per)
SELECT 'bulk', 'rlr_bulk_' || g, 1000, '1 hour' FROM generate_series(1, 10001) AS g;
SELECT ratelimit_limit, ratelimit_remaining FROM apikeys.apikey_validate(:'kt1');
DELETE FROM apikeys.ratelimits WHERE name = 'bulk';
