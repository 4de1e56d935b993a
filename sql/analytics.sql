-- apikey_analytics and apikey_usage: the JSON shape of the HTTP API, UTC-day
-- windows of 1 to 90 days, zero days, revoked keys included, and the two
-- functions agreeing.  Counts come from real validations (flushed with
-- apikeys.flush_usage()) and from history inserted into apikeys.usage.
\set SHOW_CONTEXT never

CREATE TEMP TABLE k AS
SELECT 'active' AS label, c.* FROM apikeys.apikey_create('analytics_owner', 'Production Key', scope => 'lists', prefix => 'vfx_prod') c;
INSERT INTO k SELECT 'revoked', c.* FROM apikeys.apikey_create('analytics_owner', 'Old Key', scope => 'verify') c;
INSERT INTO k SELECT 'idle', c.* FROM apikeys.apikey_create('analytics_owner', 'Idle Key') c;
INSERT INTO k SELECT 'stranger', c.* FROM apikeys.apikey_create('analytics_other', 'Other Key') c;

-- shows dates as days before today (UTC) and key ids by label
CREATE FUNCTION pg_temp.readable(j jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	t text := j::text;
	r record;
BEGIN
	FOR r IN SELECT label, id FROM pg_temp.k LOOP
		t := replace(t, r.id, '<' || r.label || '>');
	END LOOP;
	FOR i IN REVERSE 120..0 LOOP
		t := replace(t, to_char((now() AT TIME ZONE 'UTC')::date - i, 'YYYY-MM-DD'), 'today-' || i);
	END LOOP;
	RETURN replace(t::jsonb::text, 'today-0', 'today')::jsonb;
END
$$;

-- today: 5 valid and 2 refused calls of the active key, 3 valid calls of
-- the key that is then revoked and 2 refused after, 4 of the stranger's
SELECT count(*) FILTER (WHERE valid) AS valid, count(*) FILTER (WHERE NOT valid) AS refused
  FROM (SELECT (apikeys.apikey_validate(key, perm)).valid
          FROM k, (VALUES ('lists:read'), ('lists:read'), ('lists:write'), (NULL), (NULL), ('verify:run'), ('verify:run')) AS p(perm)
         WHERE label = 'active') AS s;
SELECT count(*) AS valid FROM (SELECT apikeys.apikey_validate(key) FROM k, generate_series(1, 3) WHERE label = 'revoked') AS s;
SELECT apikeys.apikey_revoke(id) FROM k WHERE label = 'revoked';
SELECT count(*) AS refused FROM (SELECT apikeys.apikey_validate(key) FROM k, generate_series(1, 2) WHERE label = 'revoked') AS s;
SELECT count(*) AS valid FROM (SELECT apikeys.apikey_validate(key) FROM k, generate_series(1, 4) WHERE label = 'stranger') AS s;
-- malformed and unknown keys belong to nobody and are not counted
SELECT (apikeys.apikey_validate('nope')).code, (apikeys.apikey_validate('ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1')).code;

SELECT apikeys.flush_usage() AS flushed;

-- history: the window is the last N UTC days, today included
INSERT INTO apikeys.usage (key_id, day, calls, rejected)
SELECT k.id, (now() AT TIME ZONE 'UTC')::date - h.ago, h.calls, h.rejected
  FROM k JOIN (VALUES ('active', 1, 10, 0), ('active', 29, 7, 1), ('active', 30, 100, 0),
                      ('active', 89, 4, 0), ('active', 90, 1000, 0),
                      ('revoked', 2, 3, 0), ('stranger', 1, 50, 0)) AS h(label, ago, calls, rejected)
    ON h.label = k.label;

-- the 30-day analytics object: totalCalls, dailyUsage for every day (zeros
-- included, newest first), every key of the owner (revoked too, newest
-- first) with the days it had calls
SELECT jsonb_pretty(pg_temp.readable(apikeys.apikey_analytics('analytics_owner', 30)) - 'dailyUsage');
SELECT jsonb_array_length(a->'dailyUsage') AS days,
       a->'dailyUsage'->0->>'date' = to_char((now() AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD') AS starts_today,
       (SELECT bool_and((e->>'date')::date = (now() AT TIME ZONE 'UTC')::date - (i - 1)::int)
          FROM jsonb_array_elements(a->'dailyUsage') WITH ORDINALITY AS t(e, i)) AS consecutive_newest_first,
       (SELECT count(*) FROM jsonb_array_elements(a->'dailyUsage') e WHERE (e->>'count')::int = 0) AS zero_days,
       (SELECT sum((e->>'count')::int) FROM jsonb_array_elements(a->'dailyUsage') e) AS sum_of_days,
       a->'totalCalls' AS total
  FROM apikeys.apikey_analytics('analytics_owner', 30) AS a;
SELECT jsonb_pretty(jsonb_path_query_array(pg_temp.readable(apikeys.apikey_analytics('analytics_owner', 30)),
                    '$.dailyUsage[*] ? (@.count > 0)')) AS days_with_calls;

-- the default window is 30 days; 1 and 90 are the bounds
SELECT apikeys.apikey_analytics('analytics_owner') = apikeys.apikey_analytics('analytics_owner', 30) AS default_is_30;
SELECT pg_temp.readable(apikeys.apikey_analytics('analytics_owner', 1)) - 'keys' AS one_day;
SELECT d AS days, a->'totalCalls' AS total, jsonb_array_length(a->'dailyUsage') AS day_entries
  FROM unnest(ARRAY[1, 2, 3, 29, 30, 31, 89, 90]) AS d,
       LATERAL apikeys.apikey_analytics('analytics_owner', d) AS a
 ORDER BY d;

-- apikey_usage: the same data as rows, with refused calls
SELECT pg_temp.readable(to_jsonb(u)) AS row
  FROM apikeys.apikey_usage('analytics_owner', 90) AS u JOIN k ON k.id = u.key_id
 ORDER BY u.day DESC, k.label;
SELECT count(*) AS rows_default_window FROM apikeys.apikey_usage('analytics_owner');

-- the two functions agree, whatever the window
SELECT d AS days,
       (SELECT coalesce(sum(calls), 0) FROM apikeys.apikey_usage('analytics_owner', d))
         = (apikeys.apikey_analytics('analytics_owner', d)->>'totalCalls')::numeric AS totals_agree
  FROM unnest(ARRAY[1, 7, 30, 90]) AS d ORDER BY d;

-- an owner with no keys, and one whose key was never used
SELECT apikeys.apikey_analytics('nobody_at_all', 2) - 'dailyUsage' AS no_keys,
       jsonb_path_query_array(apikeys.apikey_analytics('nobody_at_all', 2), '$.dailyUsage[*].count') AS counts;
SELECT count(*) AS usage_rows FROM apikeys.apikey_usage('nobody_at_all');

-- bad arguments: 22023, for both functions
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_analytics('analytics_owner', 0)$$),
  ($$SELECT apikeys.apikey_analytics('analytics_owner', 91)$$),
  ($$SELECT apikeys.apikey_analytics('analytics_owner', -1)$$),
  ($$SELECT apikeys.apikey_analytics('analytics_owner', NULL)$$),
  ($$SELECT apikeys.apikey_analytics(NULL)$$),
  ($$SELECT apikeys.apikey_analytics('')$$),
  ($$SELECT * FROM apikeys.apikey_usage('analytics_owner', 0)$$),
  ($$SELECT * FROM apikeys.apikey_usage('analytics_owner', 91)$$),
  ($$SELECT * FROM apikeys.apikey_usage(NULL)$$)) AS t(q);
