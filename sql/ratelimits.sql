-- Rate limits (SPEC section 12): apikey_ratelimit_set, apikey_ratelimit_drop
-- and apikey_ratelimits, their errors (22023, P0002) and audit events, who
-- may call them; the validation record's ratelimit_limit,
-- ratelimit_remaining and ratelimit_reset; rate_limited counted as rejected;
-- all or nothing across a key's and its owner's limits; an owner's limit
-- shared by its keys; a charge refused for credits gives its counts back;
-- READ ONLY transactions.
--
-- Every window here is 1 hour or 1 day, so the few seconds the test takes
-- never move a result; times are printed as booleans only.  Keys and key ids
-- are random: they stay in a temporary table and are shown by label.
-- Concurrency, windows that slide and a full state table are in
-- test/t/016_ratelimits.pl.
\set SHOW_CONTEXT never

CREATE TEMP TABLE k (label text PRIMARY KEY, key text, id text);
INSERT INTO k SELECT 'one', key, id FROM apikeys.apikey_create('rl_owner', 'one');
INSERT INTO k SELECT 'two', key, id FROM apikeys.apikey_create('rl_owner', 'two');
INSERT INTO k SELECT 'other', key, id FROM apikeys.apikey_create('rl_other', 'other owner''s');
SELECT key AS k_one, id AS id_one FROM k WHERE label = 'one' \gset
SELECT key AS k_two, id AS id_two FROM k WHERE label = 'two' \gset
SELECT key AS k_other, id AS id_other FROM k WHERE label = 'other' \gset
-- a key id or a key in any text shows as <label> or <key label>
CREATE FUNCTION pg_temp.masked(t text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	r record;
BEGIN
	FOR r IN SELECT * FROM pg_temp.k LOOP
		t := replace(replace(t, r.key, '<key ' || r.label || '>'), r.id, '<' || r.label || '>');
	END LOOP;
	RETURN t;
END
$$;
-- the label of a key id ('' stays '', NULL stays NULL)
CREATE FUNCTION pg_temp.label_of(id text) RETURNS text LANGUAGE sql AS $$
	SELECT CASE WHEN $1 = '' THEN '' ELSE COALESCE((SELECT '<' || label || '>' FROM pg_temp.k WHERE k.id = $1), $1) END
$$;
-- n validations of the key labelled l, one after the other: "code:count, ..."
CREATE FUNCTION pg_temp.calls(l text, n int, perm text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	codes text[] := '{}';
	k text := (SELECT key FROM pg_temp.k WHERE label = l);
BEGIN
	FOR i IN 1 .. n LOOP
		codes := codes || (apikeys.apikey_validate(k, perm)).code;
	END LOOP;
	RETURN (SELECT string_agg(c || ':' || cnt, ', ' ORDER BY c)
	          FROM (SELECT c, count(*) AS cnt FROM unnest(codes) AS c GROUP BY c) AS s);
END
$$;
-- the validations of the keys labelled ls, in this order: each record, and
-- the clock just after the call
CREATE FUNCTION pg_temp.in_order(ls text[], perm text DEFAULT NULL)
RETURNS TABLE (n int, label text, v apikeys.validation, checked_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
	FOR i IN 1 .. cardinality(ls) LOOP
		n := i;
		label := ls[i];
		v := apikeys.apikey_validate((SELECT key FROM pg_temp.k WHERE k.label = ls[i]), perm);
		checked_at := clock_timestamp();
		RETURN NEXT;
	END LOOP;
END
$$;

------------------------------------------------------------------------------
-- The validation record gains three trailing columns; NULL without limits
------------------------------------------------------------------------------
SELECT attnum, attname, format_type(atttypid, atttypmod) AS type
  FROM pg_attribute
 WHERE attrelid = 'apikeys.validation'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;
SELECT attnum, attname
  FROM pg_attribute
 WHERE attrelid = 'apikeys.charge'::regclass AND attname LIKE 'ratelimit%'
 ORDER BY attnum;
SELECT valid, code, ratelimit_limit, ratelimit_remaining, ratelimit_reset
  FROM apikeys.apikey_validate(:'k_one');
SELECT code, ratelimit_limit, ratelimit_remaining, ratelimit_reset
  FROM apikeys.apikey_validate('not a key');

------------------------------------------------------------------------------
-- apikey_ratelimit_set: the contract and its errors
------------------------------------------------------------------------------
-- (other tests' limits and audit rows may be there already)
SELECT count(*) AS limits_before FROM apikeys.ratelimits \gset
SELECT count(*) AS audit_before FROM apikeys.audit \gset
-- exactly one of key_id and owner, checked first
SELECT * FROM regress.error_of($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour')$$);
SELECT * FROM regress.error_of(format($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', key_id => %L, owner => 'rl_owner')$$, :'id_one'), :'id_one');
-- max: positive, not NULL
SELECT pg_temp.masked(q) AS call, pg_temp.masked(regress.outcome(q)) AS outcome FROM (VALUES
  (format($$SELECT apikeys.apikey_ratelimit_set('n', 0, '1 hour', key_id => %L)$$, :'id_one')),
  (format($$SELECT apikeys.apikey_ratelimit_set('n', -1, '1 hour', key_id => %L)$$, :'id_one')),
  (format($$SELECT apikeys.apikey_ratelimit_set('n', NULL, '1 hour', key_id => %L)$$, :'id_one')),
  ($$SELECT apikeys.apikey_ratelimit_set('n', 0, '1 hour', owner => 'rl_owner')$$),
  ($$SELECT apikeys.apikey_ratelimit_set('n', -2147483648, '1 hour', owner => 'rl_owner')$$)) AS t(q);
-- per: from 1 second to 1 day, not NULL (the detail says what was given)
SELECT per, e.state, e.message, e.detail
  FROM (VALUES ('999 milliseconds'), ('0'), ('-1 hour'), ('1 day 1 second'), ('25 hours'),
               ('1 mon'), (NULL)) AS t(per),
       LATERAL regress.error_of(format($$SELECT apikeys.apikey_ratelimit_set('n', 1, %L, owner => 'rl_owner')$$, t.per)) AS e;
-- name: 1 to 64 characters of A-Za-z0-9_.:-
SELECT pg_temp.masked(q) AS call, regress.outcome(q) AS outcome FROM (VALUES
  ($$SELECT apikeys.apikey_ratelimit_set(NULL, 1, '1 hour', owner => 'rl_owner')$$),
  ($$SELECT apikeys.apikey_ratelimit_set('', 1, '1 hour', owner => 'rl_owner')$$),
  ($$SELECT apikeys.apikey_ratelimit_set('per second', 1, '1 hour', owner => 'rl_owner')$$),
  ($$SELECT apikeys.apikey_ratelimit_set('per/second', 1, '1 hour', owner => 'rl_owner')$$),
  ($$SELECT apikeys.apikey_ratelimit_set('naïve', 1, '1 hour', owner => 'rl_owner')$$),
  ($$SELECT apikeys.apikey_ratelimit_set(E'burst\n', 1, '1 hour', owner => 'rl_owner')$$),
  ($$SELECT apikeys.apikey_ratelimit_set(repeat('n', 65), 1, '1 hour', owner => 'rl_owner')$$)) AS t(q);
SELECT * FROM regress.error_of($$SELECT apikeys.apikey_ratelimit_set('a b', 1, '1 hour', owner => 'rl_owner')$$);
-- owner: not blank, at most 200 characters
SELECT pg_temp.masked(q) AS call, regress.outcome(q) AS outcome FROM (VALUES
  ($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', owner => '')$$),
  ($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', owner => '  ')$$),
  ($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', owner => repeat('o', 201))$$)) AS t(q);
SELECT * FROM regress.error_of($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', owner => repeat('o', 201))$$);
-- an unknown key id: P0002, the id echoed only when it is shaped like one;
-- a key given by mistake as key_id never reaches the message
SELECT * FROM regress.error_of($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', key_id => 'key_0000000000000000')$$);
SELECT * FROM regress.error_of($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', key_id => 'not an id')$$);
SELECT e.state, position(:'k_one' IN concat(e.message, e.detail)) = 0 AS key_not_echoed,
       position(substr(:'k_one', 4, 20) IN concat(e.message, e.detail)) = 0 AS no_part_of_it,
       e.message, e.detail
  FROM regress.error_of(format($$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', key_id => %L)$$, :'k_one')) AS e;
-- none of the refused calls wrote a limit or an audit row
SELECT count(*) - :limits_before AS limits_added FROM apikeys.ratelimits;
SELECT count(*) - :audit_before AS audit_rows_added FROM apikeys.audit;

-- the bounds themselves are limits: 1 second, 1 day (as 24 hours too), a
-- 64-character name, an owner of 200 characters, the largest max
SELECT apikeys.apikey_ratelimit_set('per-second', 1, '1 second', owner => 'rl_bounds') AS one_second,
       apikeys.apikey_ratelimit_set('per.day', 2147483647, '1 day', owner => 'rl_bounds') AS one_day,
       apikeys.apikey_ratelimit_set('A-Za-z0-9_.:', 5, '24 hours', owner => 'rl_bounds') AS "24_hours",
       apikeys.apikey_ratelimit_set(repeat('n', 64), 5, '1 hour', owner => 'rl_bounds') AS long_name,
       apikeys.apikey_ratelimit_set('n', 5, '1.5 seconds', owner => repeat('o', 200)) AS long_owner;
SELECT length(name) AS name_length, key_id, max, per FROM apikeys.apikey_ratelimits('rl_bounds')
 ORDER BY length(name), name;
SELECT name, max, per FROM apikeys.apikey_ratelimits(repeat('o', 200));

------------------------------------------------------------------------------
-- Upsert: setting a limit again changes its max and per
------------------------------------------------------------------------------
SELECT apikeys.apikey_ratelimit_set('steady', 10, '1 hour', key_id => :'id_one') AS set;
SELECT apikeys.apikey_ratelimit_set('steady', 20, '1 day', key_id => :'id_one') AS set_again;
-- the same name on another key and on an owner are other limits
SELECT apikeys.apikey_ratelimit_set('steady', 30, '1 hour', key_id => :'id_two') AS other_key,
       apikeys.apikey_ratelimit_set('steady', 40, '1 hour', owner => 'rl_owner') AS owner_limit;
SELECT apikeys.apikey_ratelimit_set('steady', 50, '1 day', owner => 'rl_owner') AS owner_again;
SELECT pg_temp.label_of(key_id) AS key, owner, name, max, per
  FROM apikeys.ratelimits WHERE name = 'steady' ORDER BY pg_temp.label_of(key_id) NULLS FIRST;

------------------------------------------------------------------------------
-- apikey_ratelimits(owner): the owner's limits (key_id NULL), then its
-- keys' limits, by key id and name; nobody else's
------------------------------------------------------------------------------
SELECT apikeys.apikey_ratelimit_set('burst', 5, '1 hour', key_id => :'id_one'),
       apikeys.apikey_ratelimit_set('aaa', 6, '1 hour', key_id => :'id_two'),
       apikeys.apikey_ratelimit_set('account', 1000, '1 day', owner => 'rl_owner'),
       apikeys.apikey_ratelimit_set('other', 7, '1 hour', key_id => :'id_other'),
       apikeys.apikey_ratelimit_set('other', 8, '1 hour', owner => 'rl_other');
-- the rows (shown by label: key ids are random, so their order is checked
-- separately below)
SELECT pg_temp.label_of(key_id) AS key, name, max, per
  FROM apikeys.apikey_ratelimits('rl_owner')
 ORDER BY key_id IS NOT NULL, pg_temp.label_of(key_id), name;
-- in the documented order: the owner's first, then by key id and name
SELECT bool_and(ord = expected) AS in_order, count(*) AS rows
  FROM (SELECT ord, row_number() OVER (ORDER BY key_id NULLS FIRST, name) AS expected
          FROM apikeys.apikey_ratelimits('rl_owner') WITH ORDINALITY AS r(name, key_id, max, per, ord)) s;
SELECT pg_temp.label_of(key_id) AS key, name, max, per FROM apikeys.apikey_ratelimits('rl_other');
SELECT count(*) AS no_limits FROM apikeys.apikey_ratelimits('rl_nobody');
SELECT q AS call, regress.outcome(q) AS outcome FROM (VALUES
  ($$SELECT apikeys.apikey_ratelimits(NULL)$$),
  ($$SELECT apikeys.apikey_ratelimits('')$$),
  ($$SELECT apikeys.apikey_ratelimits(repeat('o', 201))$$)) AS t(q);

------------------------------------------------------------------------------
-- apikey_ratelimit_drop: true once, then false
------------------------------------------------------------------------------
SELECT apikeys.apikey_ratelimit_drop('burst', key_id => :'id_one') AS dropped,
       apikeys.apikey_ratelimit_drop('burst', key_id => :'id_one') AS again;
SELECT apikeys.apikey_ratelimit_drop('account', owner => 'rl_owner') AS dropped,
       apikeys.apikey_ratelimit_drop('account', owner => 'rl_owner') AS again;
-- a key's limit is not its owner's, nor another key's; an unknown key id or
-- owner has none
SELECT apikeys.apikey_ratelimit_drop('aaa', owner => 'rl_owner') AS key_limit_by_owner,
       apikeys.apikey_ratelimit_drop('aaa', key_id => :'id_one') AS by_another_key,
       apikeys.apikey_ratelimit_drop('other', key_id => 'key_0000000000000000') AS unknown_key,
       apikeys.apikey_ratelimit_drop('other', owner => 'rl_nobody') AS unknown_owner;
SELECT pg_temp.masked(q) AS call, regress.outcome(q) AS outcome FROM (VALUES
  ($$SELECT apikeys.apikey_ratelimit_drop('aaa')$$),
  (format($$SELECT apikeys.apikey_ratelimit_drop('aaa', key_id => %L, owner => 'rl_owner')$$, :'id_two')),
  ($$SELECT apikeys.apikey_ratelimit_drop('other', owner => '')$$),
  ($$SELECT apikeys.apikey_ratelimit_drop('other', owner => repeat('o', 201))$$)) AS t(q);
SELECT pg_temp.label_of(key_id) AS key, name, max, per
  FROM apikeys.apikey_ratelimits('rl_owner')
 ORDER BY key_id IS NOT NULL, pg_temp.label_of(key_id), name;

------------------------------------------------------------------------------
-- Audit: ratelimit_set and ratelimit_dropped, with the owner of a key's
-- limit, by the session user
------------------------------------------------------------------------------
SELECT a.event, pg_temp.label_of(a.key_id) AS key, a.owner, a.actor = session_user AS by_session_user,
       a.detail
  FROM apikeys.audit AS a
 WHERE a.event LIKE 'ratelimit%' AND a.owner IN ('rl_owner', 'rl_other')
 ORDER BY a.event_id;

-- start from no limits on these owners and their keys
SELECT count(*) AS dropped
  FROM (SELECT apikeys.apikey_ratelimit_drop(r.name, r.key_id, CASE WHEN r.key_id IS NULL THEN o END)
          FROM unnest(ARRAY['rl_owner', 'rl_other']) AS o, LATERAL apikeys.apikey_ratelimits(o) AS r) s;

------------------------------------------------------------------------------
-- Counting: limit and remaining after each call, reset in the future and at
-- most per + per/10 ahead; the refused call consumes nothing
------------------------------------------------------------------------------
SELECT apikeys.apikey_ratelimit_set('hourly', 3, '1 hour', key_id => :'id_one') AS hourly;
SELECT n, (v).valid, (v).code, (v).ratelimit_limit, (v).ratelimit_remaining,
       (v).ratelimit_reset > checked_at AS reset_in_future,
       (v).ratelimit_reset <= checked_at + interval '66 minutes' AS within_per_and_a_tenth
  FROM pg_temp.in_order(array_fill('one'::text, ARRAY[5]))
 ORDER BY n;
-- the refused calls did not count: raising max by one lets exactly one more through
SELECT apikeys.apikey_ratelimit_set('hourly', 4, '1 hour', key_id => :'id_one') AS raised;
SELECT code, ratelimit_limit, ratelimit_remaining FROM apikeys.apikey_validate(:'k_one');
SELECT code, ratelimit_limit, ratelimit_remaining FROM apikeys.apikey_validate(:'k_one');
-- a day's window: reset at most 1 day + 2.4 hours ahead
SELECT apikeys.apikey_ratelimit_set('daily', 100, '1 day', key_id => :'id_two') AS daily;
SELECT (v).code, (v).ratelimit_limit, (v).ratelimit_remaining,
       (v).ratelimit_reset > checked_at AS reset_in_future,
       (v).ratelimit_reset <= checked_at + interval '26.4 hours' AS within_per_and_a_tenth
  FROM pg_temp.in_order('{two}');

-- the limit is checked after the permission check: a refusal for its
-- address, scope or revocation consumes nothing and reports no limit
SELECT apikeys.apikey_ratelimit_set('hourly', 2, '1 hour', key_id => :'id_two') AS two_per_hour;
UPDATE apikeys.keys SET scope = 'verify', ip_restrictions = '{10.0.0.0/8}' WHERE id = :'id_two';
SELECT code, ratelimit_limit, ratelimit_remaining, ratelimit_reset
  FROM apikeys.apikey_validate(:'k_two', 'verify:email', '192.0.2.1');
SELECT code, ratelimit_limit, ratelimit_remaining, ratelimit_reset
  FROM apikeys.apikey_validate(:'k_two', 'lists:write', '10.1.2.3');
UPDATE apikeys.keys SET ip_restrictions = '{}' WHERE id = :'id_two';
SELECT pg_temp.calls('two', 10, 'lists:write') AS refused_for_scope;
INSERT INTO k SELECT 'gone', key, id FROM apikeys.apikey_create('rl_owner', 'revoked');
SELECT apikeys.apikey_ratelimit_set('hourly', 1, '1 hour', key_id => (SELECT id FROM k WHERE label = 'gone')) AS gone_limit,
       apikeys.apikey_revoke((SELECT id FROM k WHERE label = 'gone')) AS revoked;
SELECT code, ratelimit_limit, ratelimit_remaining, ratelimit_reset
  FROM k, LATERAL apikeys.apikey_validate(k.key) AS v WHERE label = 'gone';
-- so both calls the limit allows are still there
SELECT n, (v).code, (v).ratelimit_limit, (v).ratelimit_remaining
  FROM pg_temp.in_order(array_fill('two'::text, ARRAY[3]), 'verify:email')
 ORDER BY n;
UPDATE apikeys.keys SET scope = 'full' WHERE id = :'id_two';
-- the most constrained limit is the one reported: two per hour, exhausted
-- (the daily one has room)
SELECT code, ratelimit_limit, ratelimit_remaining FROM apikeys.apikey_validate(:'k_two');

------------------------------------------------------------------------------
-- rate_limited is counted as rejected
------------------------------------------------------------------------------
SELECT key AS k_usage, id AS id_usage FROM apikeys.apikey_create('rl_usage', 'counted') \gset
INSERT INTO k VALUES ('usage', :'k_usage', :'id_usage');
SELECT apikeys.apikey_ratelimit_set('hourly', 4, '1 hour', key_id => :'id_usage') AS hourly;
SELECT pg_temp.calls('usage', 10) AS calls;
SELECT apikeys.flush_usage() AS flushed;
-- (summed over two UTC days, in case the test crossed midnight)
SELECT pg_temp.label_of(key_id) AS key, sum(calls) AS calls, sum(rejected) AS rejected
  FROM apikeys.apikey_usage('rl_usage', 2) GROUP BY key_id;
SELECT (apikeys.apikey_analytics('rl_usage', 2))->'totalCalls' AS analytics_total_calls;

------------------------------------------------------------------------------
-- All or nothing: a key limit of 5 and an owner limit of 100; 20 calls pass
-- 5, and the 15 refused consume nothing of the owner's limit
------------------------------------------------------------------------------
INSERT INTO k SELECT 'aon', key, id FROM apikeys.apikey_create('rl_aon', 'limited');
INSERT INTO k SELECT 'aon free', key, id FROM apikeys.apikey_create('rl_aon', 'unlimited');
SELECT apikeys.apikey_ratelimit_set('key5', 5, '1 hour', key_id => (SELECT id FROM k WHERE label = 'aon')),
       apikeys.apikey_ratelimit_set('owner100', 100, '1 hour', owner => 'rl_aon');
SELECT pg_temp.calls('aon', 20) AS twenty_calls;
-- the refused calls report the exhausted limit: 5
SELECT code, ratelimit_limit, ratelimit_remaining FROM k, LATERAL apikeys.apikey_validate(k.key) AS v
 WHERE label = 'aon';
-- the owner's limit: 95 left (the 5 that passed), so the other key's call
-- leaves 94
SELECT code, ratelimit_limit, ratelimit_remaining FROM k, LATERAL apikeys.apikey_validate(k.key) AS v
 WHERE label = 'aon free';
-- and the other way round: an exhausted owner limit refuses a key whose
-- own limit has room, and consumes nothing of it
SELECT apikeys.apikey_ratelimit_set('owner100', 6, '1 hour', owner => 'rl_aon') AS owner_lowered_to_6;
SELECT apikeys.apikey_ratelimit_drop('key5', key_id => (SELECT id FROM k WHERE label = 'aon')) AS key5_dropped,
       apikeys.apikey_ratelimit_set('key50', 50, '1 hour', key_id => (SELECT id FROM k WHERE label = 'aon')) AS key50;
SELECT pg_temp.calls('aon', 10) AS owner_exhausted;
SELECT apikeys.apikey_ratelimit_drop('owner100', owner => 'rl_aon') AS owner_dropped;
SELECT code, ratelimit_limit, ratelimit_remaining FROM k, LATERAL apikeys.apikey_validate(k.key) AS v
 WHERE label = 'aon';

------------------------------------------------------------------------------
-- An owner's limit is shared by all its keys, and by no one else's
------------------------------------------------------------------------------
INSERT INTO k SELECT 'shared a', key, id FROM apikeys.apikey_create('rl_shared', 'a');
INSERT INTO k SELECT 'shared b', key, id FROM apikeys.apikey_create('rl_shared', 'b');
INSERT INTO k SELECT 'shared outsider', key, id FROM apikeys.apikey_create('rl_shared_not', 'c');
SELECT apikeys.apikey_ratelimit_set('account', 4, '1 hour', owner => 'rl_shared') AS account;
SELECT n, label, (v).code, (v).ratelimit_limit, (v).ratelimit_remaining
  FROM pg_temp.in_order('{shared a,shared b,shared b,shared outsider,shared a,shared a,shared b}')
 ORDER BY n;

------------------------------------------------------------------------------
-- apikey_charge: limited like a validation; a charge refused for credits
-- gives its counts back, and a rate-limited charge takes no credit
------------------------------------------------------------------------------
INSERT INTO k SELECT 'charged', key, id FROM apikeys.apikey_create('rl_charge', 'charged');
SELECT key AS k_charged FROM k WHERE label = 'charged' \gset
SELECT apikeys.apikey_credit_add('rl_charge', 'rl_credit', 2) AS balance;
SELECT apikeys.apikey_ratelimit_set('hourly', 3, '1 hour', owner => 'rl_charge') AS hourly;
SELECT code, cost, remaining, ratelimit_limit, ratelimit_remaining
  FROM apikeys.apikey_charge(:'k_charged', 'rl_credit', 2);
-- refused for credits: the count is given back, and the record says so
SELECT code, cost, remaining, ratelimit_limit, ratelimit_remaining
  FROM apikeys.apikey_charge(:'k_charged', 'rl_credit', 1);
SELECT code, cost, remaining, ratelimit_limit, ratelimit_remaining
  FROM apikeys.apikey_charge(:'k_charged', 'never_had', 1);
-- so the next call finds the window as the first charge left it
SELECT code, ratelimit_limit, ratelimit_remaining FROM apikeys.apikey_validate(:'k_charged');
SELECT apikeys.apikey_credit_add('rl_charge', 'rl_credit', 10) AS topped_up;
SELECT code, cost, remaining, ratelimit_limit, ratelimit_remaining
  FROM apikeys.apikey_charge(:'k_charged', 'rl_credit', 1);
-- exhausted: rate_limited, and no credit taken
SELECT code, cost, remaining, ratelimit_limit, ratelimit_remaining
  FROM apikeys.apikey_charge(:'k_charged', 'rl_credit', 1);
SELECT apikeys.apikey_credits('rl_charge') AS balance_after;

------------------------------------------------------------------------------
-- READ ONLY: limits count in a READ ONLY transaction and write nothing
------------------------------------------------------------------------------
INSERT INTO k SELECT 'read only', key, id FROM apikeys.apikey_create('rl_readonly', 'ro');
SELECT apikeys.apikey_ratelimit_set('hourly', 2, '1 hour', key_id => (SELECT id FROM k WHERE label = 'read only')) AS hourly;
BEGIN READ ONLY;
SELECT pg_temp.calls('read only', 3) AS in_read_only;
SELECT pg_current_xact_id_if_assigned() IS NULL AS wrote_nothing;
COMMIT;
SELECT code, ratelimit_limit, ratelimit_remaining FROM k, LATERAL apikeys.apikey_validate(k.key) AS v
 WHERE label = 'read only';

------------------------------------------------------------------------------
-- A change takes effect at the next call of the session
------------------------------------------------------------------------------
INSERT INTO k SELECT 'changed', key, id FROM apikeys.apikey_create('rl_changed', 'changed');
SELECT pg_temp.calls('changed', 3) AS no_limit_yet;
SELECT apikeys.apikey_ratelimit_set('hourly', 1, '1 hour', owner => 'rl_changed') AS owner_limit_set;
SELECT pg_temp.calls('changed', 3) AS owner_limit_of_one;
SELECT apikeys.apikey_ratelimit_set('hourly', 3, '1 hour', owner => 'rl_changed') AS raised_to_3;
SELECT pg_temp.calls('changed', 3) AS two_more;
SELECT apikeys.apikey_ratelimit_drop('hourly', owner => 'rl_changed') AS dropped;
SELECT pg_temp.calls('changed', 3) AS no_limit_again;
SELECT code, ratelimit_limit, ratelimit_remaining, ratelimit_reset FROM k, LATERAL apikeys.apikey_validate(k.key) AS v
 WHERE label = 'changed';
-- a deleted key's limits go with it
SELECT apikeys.apikey_ratelimit_set('hourly', 1, '1 hour', key_id => (SELECT id FROM k WHERE label = 'changed')) AS set;
DELETE FROM apikeys.keys WHERE id = (SELECT id FROM k WHERE label = 'changed');
SELECT count(*) AS limits_left FROM apikeys.ratelimits WHERE key_id = (SELECT id FROM k WHERE label = 'changed');

------------------------------------------------------------------------------
-- Privileges: administrators only; PUBLIC has nothing on apikeys.ratelimits
------------------------------------------------------------------------------
SET ROLE apikeys_validator;
SELECT f AS call, regress.outcome(q) AS outcome FROM (VALUES
  ('apikey_ratelimit_set', $$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', owner => 'rl_owner')$$),
  ('apikey_ratelimit_drop', $$SELECT apikeys.apikey_ratelimit_drop('n', owner => 'rl_owner')$$),
  ('apikey_ratelimits', $$SELECT apikeys.apikey_ratelimits('rl_owner')$$),
  ('ratelimits', $$SELECT * FROM apikeys.ratelimits$$),
  ('apikey_validate', format($$SELECT apikeys.apikey_validate(%L)$$, :'k_one'))) AS t(f, q);
-- a validator validates a key with a limit: the limit applies
SELECT code, ratelimit_limit, ratelimit_remaining FROM apikeys.apikey_validate(:'k_one');
RESET ROLE;
SET ROLE apikeys_anon;
SELECT f AS call, regress.outcome(q) AS outcome FROM (VALUES
  ('apikey_ratelimit_set', $$SELECT apikeys.apikey_ratelimit_set('n', 1, '1 hour', owner => 'rl_owner')$$),
  ('apikey_ratelimit_drop', $$SELECT apikeys.apikey_ratelimit_drop('n', owner => 'rl_owner')$$),
  ('apikey_ratelimits', $$SELECT apikeys.apikey_ratelimits('rl_owner')$$),
  ('ratelimits', $$SELECT * FROM apikeys.ratelimits$$)) AS t(f, q);
RESET ROLE;
SELECT r AS role,
       has_table_privilege(r, 'apikeys.ratelimits', 'SELECT') AS sel,
       has_table_privilege(r, 'apikeys.ratelimits', 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') AS other,
       has_function_privilege(r, 'apikeys.apikey_ratelimit_set(text, integer, interval, text, text)', 'EXECUTE') AS set,
       has_function_privilege(r, 'apikeys.apikey_ratelimit_drop(text, text, text)', 'EXECUTE') AS drop,
       has_function_privilege(r, 'apikeys.apikey_ratelimits(text)', 'EXECUTE') AS list
  FROM unnest(ARRAY['public', 'apikeys_validator', 'apikeys_anon', 'apikeys_admin']) AS r
 ORDER BY r;
-- administrators set, list and drop; the audit names the session user
SET ROLE apikeys_admin;
SELECT apikeys.apikey_ratelimit_set('by_admin', 9, '1 hour', owner => 'rl_admin') AS set;
SELECT name, key_id, max, per FROM apikeys.apikey_ratelimits('rl_admin');
SELECT name, max, per FROM apikeys.ratelimits WHERE owner = 'rl_admin';
SELECT apikeys.apikey_ratelimit_drop('by_admin', owner => 'rl_admin') AS dropped;
RESET ROLE;
SELECT event, owner, actor = session_user AS by_session_user, detail
  FROM apikeys.audit WHERE owner = 'rl_admin' ORDER BY event_id;
