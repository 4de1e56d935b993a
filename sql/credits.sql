-- Credits (SPEC section 11): apikey_credit_add, apikey_credits,
-- apikey_quota_set, apikey_charge, apikey_credit_alert and the spend the
-- worker's flush writes; their errors (22023, P0002, 0A000), their audit
-- rows, who may call them, and routes that charge a credit.
--
-- A charge reserves in shared memory; the first charge of a pool waits for
-- the worker's lease, and apikeys.flush_usage() has the worker settle what
-- committed charges spent (apikeys.credit_usage, the low-balance NOTIFY)
-- before it returns.  Balances are read with apikey_credits, which does not
-- depend on when the worker leased or settled.  Keys and key ids are random:
-- they stay in psql variables and are never printed.
\set SHOW_CONTEXT never

SELECT key AS k_main, id AS id_main FROM apikeys.apikey_create('credits_owner', 'main') \gset
SELECT key AS k_meter, id AS id_meter FROM apikeys.apikey_create('credits_owner', 'metered', scope => 'verify') \gset
SELECT key AS k_gone, id AS id_gone FROM apikeys.apikey_create('credits_owner', 'to revoke') \gset
SELECT key AS k_other, id AS id_other FROM apikeys.apikey_create('credits_other', 'other owner''s') \gset
-- outcome texts show key ids as <id_meter> and <id_other>, a key as <key>
CREATE TEMP TABLE masks (id text, label text);
INSERT INTO masks VALUES (:'id_meter', '<id_meter>'), (:'id_other', '<id_other>'), (:'k_main', '<key>');
CREATE FUNCTION pg_temp.masked(t text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	m record;
BEGIN
	FOR m IN SELECT * FROM pg_temp.masks LOOP
		t := replace(t, m.id, m.label);
	END LOOP;
	RETURN t;
END
$$;

------------------------------------------------------------------------------
-- apikey_credit_add: creates at 0, adds, takes away, never below 0
------------------------------------------------------------------------------
-- an owner without credits has none
SELECT apikeys.apikey_credits('credits_owner') AS none_yet,
       apikeys.apikey_credits('credits_nobody') AS unknown_owner;
SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', 1000) AS created;
SELECT apikeys.apikey_credit_add('credits_owner', 'phone_credit', 500) AS created;
SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', 250.5) AS added;
SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', -250.5) AS taken_away;
SELECT apikeys.apikey_credit_add('credits_owner', 'fraction', 0.25) AS four_decimals_kept,
       apikeys.apikey_credit_add('credits_owner', 'fraction', 0.0001) AS smallest_unit;
SELECT apikeys.apikey_credit_add('credits_owner', 'fraction', -0.2501) AS to_zero;
-- the seed's shape: one decimal at least, no trailing zeros
SELECT apikeys.apikey_credits('credits_owner');
-- below 0: 22023, the balance unchanged
SELECT * FROM regress.error_of($$SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', -1000.5)$$);
SELECT * FROM regress.error_of($$SELECT apikeys.apikey_credit_add('credits_owner', 'fraction', -0.0001)$$);
-- a new credit cannot start below 0 either, and is not created
SELECT * FROM regress.error_of($$SELECT apikeys.apikey_credit_add('credits_owner', 'new_credit', -1)$$);
SELECT apikeys.apikey_credits('credits_owner') AS unchanged;

-- 22023: owner, credit name (1-64 characters of [a-z0-9_]) and amount
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_credit_add(NULL, 'email_credit', 1)$$),
  ($$SELECT apikeys.apikey_credit_add('', 'email_credit', 1)$$),
  ($$SELECT apikeys.apikey_credit_add('  ', 'email_credit', 1)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', NULL, 1)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', '', 1)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', 'Email_credit', 1)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', 'email-credit', 1)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', 'email credit', 1)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', repeat('c', 65), 1)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', NULL)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', 0.00001)$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', 'NaN')$$),
  ($$SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', 1e15)$$)) AS t(q);
-- 64 characters is a name; trailing zeros beyond 4 decimals are no decimals
SELECT apikeys.apikey_credit_add('credits_names', repeat('c', 64), 1.000000) AS longest_name;
SELECT length(c) AS name_length FROM jsonb_object_keys(apikeys.apikey_credits('credits_names')) AS c;
-- none of the refused calls created a credit
SELECT apikeys.apikey_credits('credits_owner');

-- apikey_credits: 22023 for a NULL or empty owner
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_credits(NULL)$$),
  ($$SELECT apikeys.apikey_credits('')$$)) AS t(q);

------------------------------------------------------------------------------
-- apikey_charge: validates, takes cost, says what remains
------------------------------------------------------------------------------
-- the first charge of a pool waits for the worker's lease; the columns of
-- apikey_validate, then credit, cost and remaining
SELECT valid, code, key_id = :'id_main' AS same_id, owner, name, scope, expires_at, metadata,
       credit, cost, remaining
  FROM apikeys.apikey_charge(:'k_main', 'email_credit');
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'email_credit', 2.5);
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'phone_credit', 0.0001);
-- cost 0 takes nothing and shows what remains
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'email_credit', 0);
SELECT apikeys.apikey_credits('credits_owner') AS after_charges;

-- every refusal of apikey_validate, with remaining NULL and nothing taken
SELECT apikeys.apikey_revoke(:'id_gone') AS revoked;
SELECT t.label, c.valid, c.code, c.key_id IS NOT NULL AS has_key_id, c.credit, c.cost, c.remaining
  FROM (VALUES (1, 'malformed', 'not a key', NULL::text),
               (2, 'empty', '', NULL),
               (3, 'null', NULL, NULL),
               (4, 'not_found', 'ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1', NULL),
               (5, 'revoked', :'k_gone', NULL),
               (6, 'insufficient_scope', :'k_meter', 'lists:write'),
               (7, 'scope grants it', :'k_meter', 'verify:email'))
       AS t(n, label, key, permission),
       LATERAL apikeys.apikey_charge(t.key, 'email_credit', 1, t.permission) AS c
 ORDER BY t.n;
SELECT apikeys.apikey_credits('credits_owner') AS only_the_valid_one_took;

-- short: insufficient_credits, nothing taken, remaining what is left
SELECT apikeys.apikey_credit_add('credits_owner', 'sms_credit', 3) AS sms;
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'sms_credit', 2);
SELECT valid, code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'sms_credit', 2);
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'sms_credit', 1);
SELECT valid, code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'sms_credit', 0.0001);
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'sms_credit', 0);
-- a credit the owner never had: insufficient_credits
SELECT valid, code, credit, remaining FROM apikeys.apikey_charge(:'k_main', 'never_had', 1);
-- the other owner's key charges the other owner's balance
SELECT code, remaining FROM apikeys.apikey_charge(:'k_other', 'email_credit', 1);
SELECT apikeys.apikey_credit_add('credits_other', 'email_credit', 10) AS other_owner;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_other', 'email_credit', 1);
SELECT apikeys.apikey_credits('credits_owner')->'email_credit' AS owner,
       apikeys.apikey_credits('credits_other')->'email_credit' AS other;

-- 22023: credit name, cost NULL, negative, more than 4 decimals, not finite;
-- before the key is looked at
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_charge('not a key', NULL)$$),
  ($$SELECT apikeys.apikey_charge('not a key', '')$$),
  ($$SELECT apikeys.apikey_charge('not a key', 'Email_credit')$$),
  ($$SELECT apikeys.apikey_charge('not a key', repeat('c', 65))$$),
  ($$SELECT apikeys.apikey_charge('not a key', 'email_credit', NULL)$$),
  ($$SELECT apikeys.apikey_charge('not a key', 'email_credit', -1)$$),
  ($$SELECT apikeys.apikey_charge('not a key', 'email_credit', 0.00001)$$),
  ($$SELECT apikeys.apikey_charge('not a key', 'email_credit', 'NaN')$$),
  ($$SELECT apikeys.apikey_charge('not a key', 'email_credit', 'Infinity')$$)) AS t(q);
SELECT * FROM regress.error_of(format($$SELECT apikeys.apikey_charge(%L, 'Email')$$, :'k_main'));

------------------------------------------------------------------------------
-- A charge belongs to its transaction
------------------------------------------------------------------------------
SELECT apikeys.apikey_credit_add('credits_owner', 'tx_credit', 10) AS tx_credit;
-- READ ONLY (a PostgREST GET): the charge works and is final at commit
BEGIN READ ONLY;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'tx_credit', 1);
COMMIT;
SELECT apikeys.apikey_credits('credits_owner')->'tx_credit' AS after_read_only;
-- rolled back: given back; inside the transaction it was taken
BEGIN;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'tx_credit', 4);
SELECT apikeys.apikey_credits('credits_owner')->'tx_credit' AS inside;
ROLLBACK;
SELECT apikeys.apikey_credits('credits_owner')->'tx_credit' AS after_rollback;
-- a savepoint rolled back gives back what was charged after it, no more
BEGIN;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'tx_credit', 1);
SAVEPOINT s;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'tx_credit', 5);
ROLLBACK TO SAVEPOINT s;
SELECT apikeys.apikey_credits('credits_owner')->'tx_credit' AS after_rollback_to;
COMMIT;
SELECT apikeys.apikey_credits('credits_owner')->'tx_credit' AS after_commit;
-- a PL/pgSQL exception block around the charge gives it back; the block's
-- caller commits
SELECT set_config('credits.key', :'k_main', false) IS NOT NULL AS key_set;
DO $$
DECLARE
	c record;
BEGIN
	BEGIN
		SELECT * INTO c FROM apikeys.apikey_charge(current_setting('credits.key'), 'tx_credit', 3);
		RAISE NOTICE 'charged: %, remaining %', c.code, c.remaining;
		RAISE EXCEPTION 'the request failed';
	EXCEPTION WHEN raise_exception THEN
		RAISE NOTICE 'caught: %', SQLERRM;
	END;
END
$$;
SELECT apikeys.apikey_credits('credits_owner')->'tx_credit' AS after_exception_block;
-- a statement that fails after the charge gives it back
SELECT regress.outcome(format($$SELECT (apikeys.apikey_charge(%L, 'tx_credit', 3)).remaining / 0$$, :'k_main'));
SELECT apikeys.apikey_credits('credits_owner')->'tx_credit' AS after_failed_statement;
SELECT set_config('credits.key', '', false) = '' AS key_cleared;
-- PREPARE TRANSACTION after a charge: 0A000 (ahead of the server's own
-- check: max_prepared_transactions is 0 in test/regress.conf, and without a
-- charge the refusal is the server's 55000), and the charge is given back
BEGIN;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'tx_credit', 1);
PREPARE TRANSACTION 'credits_prepared';
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
BEGIN;
SELECT 1 AS no_charge;
PREPARE TRANSACTION 'credits_prepared';
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
-- a credit_add in the transaction is refused the same way
BEGIN;
SELECT apikeys.apikey_credit_add('credits_owner', 'tx_credit', 1) AS in_prepared;
PREPARE TRANSACTION 'credits_prepared';
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT apikeys.apikey_credits('credits_owner')->'tx_credit' AS after_prepare_refused;

------------------------------------------------------------------------------
-- apikey_quota_set: a key's cap on a credit
------------------------------------------------------------------------------
SELECT apikeys.apikey_credit_add('credits_owner', 'quota_credit', 100) AS balance;
SELECT apikeys.apikey_quota_set(:'id_meter', 'quota_credit', 3);
-- remaining is the smaller of the balance and the quota left
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_meter', 'quota_credit', 1);
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_main', 'quota_credit', 1);
-- the quota short: insufficient_credits, neither quota nor balance touched
SELECT valid, code, cost, remaining FROM apikeys.apikey_charge(:'k_meter', 'quota_credit', 3);
SELECT apikeys.apikey_credits('credits_owner')->'quota_credit' AS balance;
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_meter', 'quota_credit', 2);
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_meter', 'quota_credit', 0.0001);
SELECT apikeys.apikey_credits('credits_owner')->'quota_credit' AS balance;
-- set again: the quota is set to the amount (not added to what was left)
SELECT apikeys.apikey_quota_set(:'id_meter', 'quota_credit', 50);
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_meter', 'quota_credit', 0);
-- the balance short (96 left, quota 200): insufficient_credits, the
-- quota untouched
SELECT apikeys.apikey_quota_set(:'id_meter', 'quota_credit', 200);
SELECT valid, code, cost, remaining FROM apikeys.apikey_charge(:'k_meter', 'quota_credit', 98);
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_meter', 'quota_credit', 0);
-- NULL removes the cap (and again changes nothing)
SELECT apikeys.apikey_quota_set(:'id_meter', 'quota_credit', NULL);
SELECT apikeys.apikey_quota_set(:'id_meter', 'quota_credit', NULL);
SELECT code, cost, remaining FROM apikeys.apikey_charge(:'k_meter', 'quota_credit', 0);
-- a quota of a credit the owner has no balance of: insufficient_credits
SELECT apikeys.apikey_quota_set(:'id_meter', 'no_balance', 10);
SELECT code, remaining FROM apikeys.apikey_charge(:'k_meter', 'no_balance', 1);
-- the owner may be given; refills: daily, monthly on refill_day (1 by default)
SELECT apikeys.apikey_quota_set(:'id_meter', 'daily_credit', 5, 'daily', owner => 'credits_owner');
SELECT apikeys.apikey_quota_set(:'id_meter', 'monthly_credit', 5, 'monthly');
SELECT apikeys.apikey_quota_set(:'id_meter', 'month_end_credit', 5, 'monthly', 31);
-- the current period starts today (daily) or on the last refill day on or
-- before today (monthly; a refill day past the month's end is its last day)
CREATE FUNCTION pg_temp.refill_on(month date, refill_day int) RETURNS date
LANGUAGE sql AS $$
	SELECT month + least(refill_day,
		extract(day FROM month + interval '1 month' - interval '1 day')::int) - 1
$$;
SELECT p.credit, p.amount, p.refill, p.refill_day,
       p.period = CASE p.refill
         WHEN 'daily' THEN t.today
         ELSE CASE WHEN pg_temp.refill_on(t.month, p.refill_day) <= t.today
                   THEN pg_temp.refill_on(t.month, p.refill_day)
                   ELSE pg_temp.refill_on((t.month - interval '1 month')::date, p.refill_day) END
       END AS period_ok
  FROM apikeys.credit_pools AS p,
       (SELECT (now() AT TIME ZONE 'UTC')::date AS today,
               date_trunc('month', now() AT TIME ZONE 'UTC')::date AS month) AS t
 WHERE p.key_id = :'id_meter' AND p.credit IN ('daily_credit', 'monthly_credit', 'month_end_credit')
 ORDER BY p.credit;
-- a refill sets the quota back to its amount, not adding to what was left:
-- the worker's lease pass (apikeys._credit_serve, run here by hand) on a
-- period that has ended
SELECT apikeys.apikey_credit_add('credits_owner', 'daily_credit', 100) AS balance;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_meter', 'daily_credit', 3);
UPDATE apikeys.credit_pools SET period = period - 1 WHERE key_id = :'id_meter' AND credit = 'daily_credit';
SELECT apikeys._credit_serve(ARRAY[id], ARRAY[0::numeric], ARRAY[0::numeric], ARRAY[true], 100)
  FROM apikeys.credit_pools WHERE key_id = :'id_meter' AND credit = 'daily_credit';
SELECT code, remaining FROM apikeys.apikey_charge(:'k_meter', 'daily_credit', 0);
SELECT code, remaining FROM apikeys.apikey_charge(:'k_meter', 'daily_credit', 5);
SELECT valid, code, remaining FROM apikeys.apikey_charge(:'k_meter', 'daily_credit', 1);
SELECT period = (now() AT TIME ZONE 'UTC')::date AS period_is_today
  FROM apikeys.credit_pools WHERE key_id = :'id_meter' AND credit = 'daily_credit';
SELECT apikeys.apikey_credits('credits_owner')->'daily_credit' AS balance;

-- errors: 22023 for the arguments, P0002 for an unknown id or another
-- owner's key (the same message: the id is not confirmed to exist)
SELECT pg_temp.masked(q) AS q, pg_temp.masked(regress.outcome(q)) FROM (VALUES
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 5, 'weekly')$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 5, 'Daily')$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 5, 'daily', 1)$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 5, NULL, 1)$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 5, 'monthly', 0)$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 5, 'monthly', 32)$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', -5)$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 0.00001)$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'C', 5)$$, :'id_meter')),
  (format($$SELECT apikeys.apikey_quota_set(%L, NULL, 5)$$, :'id_meter')),
  ($$SELECT apikeys.apikey_quota_set('key_doesNotExist0000', 'c', 5)$$),
  ($$SELECT apikeys.apikey_quota_set('key_doesNotExist0000', 'c', NULL)$$),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 5, owner => 'credits_owner')$$, :'id_other')),
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', NULL, owner => 'credits_owner')$$, :'id_other')),
  ($$SELECT apikeys.apikey_quota_set(NULL, 'c', 5)$$),
  -- a key passed by mistake is never echoed
  (format($$SELECT apikeys.apikey_quota_set(%L, 'c', 5)$$, :'k_main'))) AS t(q);
-- none of them left a quota
SELECT count(*) AS quotas_of_c FROM apikeys.credit_pools WHERE credit = 'c';

------------------------------------------------------------------------------
-- Spend per key and UTC day, and usage counts, after the worker's flush
------------------------------------------------------------------------------
SELECT key AS k_use1, id AS id_use1 FROM apikeys.apikey_create('credits_usage_owner', 'service one') \gset
SELECT key AS k_use2, id AS id_use2 FROM apikeys.apikey_create('credits_usage_owner', 'service two') \gset
SELECT apikeys.apikey_credit_add('credits_usage_owner', 'usage_credit', 20) AS balance;
-- 2 + 3 by one key, 1.5 by the other, and 100 refused (insufficient_credits)
SELECT c.n, r.code, r.remaining
  FROM (VALUES (1, :'k_use1', 2), (2, :'k_use1', 3), (3, :'k_use2', 1.5), (4, :'k_use2', 100)) AS c(n, k, cost),
       LATERAL apikeys.apikey_charge(c.k, 'usage_credit', c.cost) AS r
 ORDER BY c.n;
-- rolled back: not spent
BEGIN;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_use1', 'usage_credit', 7);
ROLLBACK;
SELECT apikeys.flush_usage() AS flushed;
SELECT CASE u.key_id WHEN :'id_use1' THEN 'service one' WHEN :'id_use2' THEN 'service two' END AS key,
       u.day = (now() AT TIME ZONE 'UTC')::date AS today, u.credit, u.spent
  FROM apikeys.credit_usage AS u
 WHERE u.key_id IN (:'id_use1', :'id_use2')
 ORDER BY 1;
SELECT apikeys.apikey_credits('credits_usage_owner') AS balance;
-- a charge is counted as a validation is (insufficient_credits as refused)
SELECT CASE u.key_id WHEN :'id_use1' THEN 'service one' WHEN :'id_use2' THEN 'service two' END AS key,
       u.day = (now() AT TIME ZONE 'UTC')::date AS today, u.calls, u.rejected
  FROM apikeys.apikey_usage('credits_usage_owner', 1) AS u
 ORDER BY 1;
-- apikey_credit_usage: 22023 for the window (1 to 90 days) and the owner
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_credit_usage('credits_owner', 0)$$),
  ($$SELECT apikeys.apikey_credit_usage('credits_owner', 91)$$),
  ($$SELECT apikeys.apikey_credit_usage('credits_owner', NULL)$$),
  ($$SELECT apikeys.apikey_credit_usage(NULL)$$),
  ($$SELECT apikeys.apikey_credit_usage('')$$)) AS t(q);

------------------------------------------------------------------------------
-- apikey_credit_alert: NOTIFY apikeys_credits_low once, when the worker's
-- settle finds the balance below the threshold
------------------------------------------------------------------------------
-- a second connection listens (dblink), so the notifications can be read
-- without the sender's PID
CREATE EXTENSION dblink;
SELECT dblink_connect('credits_listener',
       format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
              split_part(current_setting('unix_socket_directories'), ',', 1))) AS connected;
SELECT dblink_exec('credits_listener', 'LISTEN apikeys_credits_low') AS listening;
-- the payloads that arrive within 5 s (waits for the first one only)
CREATE FUNCTION pg_temp.notifications() RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
	got text[] := '{}';
BEGIN
	FOR i IN 1..100 LOOP
		got := got || ARRAY(SELECT extra FROM dblink_get_notify('credits_listener')
							 WHERE notify_name = 'apikeys_credits_low');
		EXIT WHEN cardinality(got) > 0;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN QUERY SELECT unnest(got);
END
$$;
SELECT apikeys.apikey_credit_add('credits_owner', 'alert_credit', 10) AS balance;
SELECT apikeys.apikey_credit_alert('credits_owner', 'alert_credit', 5);
-- 6 left: not below 5, no notification; then 4.5 left
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'alert_credit', 4);
SELECT apikeys.flush_usage() AS flushed;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'alert_credit', 1.5);
SELECT apikeys.flush_usage() AS flushed;
SELECT * FROM pg_temp.notifications() AS low;
-- still below: no second notification, until the balance has been back
-- above the threshold (credit_add) and falls below again
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'alert_credit', 1);
SELECT apikeys.flush_usage() AS flushed;
SELECT apikeys.apikey_credit_add('credits_owner', 'alert_credit', 10) AS topped_up;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'alert_credit', 11);
SELECT apikeys.flush_usage() AS flushed;
SELECT * FROM pg_temp.notifications() AS low_again;
-- NULL: no alert; 22023 for the arguments
SELECT apikeys.apikey_credit_alert('credits_owner', 'alert_credit', NULL);
SELECT low_balance FROM apikeys.credit_pools
 WHERE owner = 'credits_owner' AND credit = 'alert_credit' AND key_id IS NULL;
SELECT q, regress.outcome(q) FROM (VALUES
  ($$SELECT apikeys.apikey_credit_alert(NULL, 'alert_credit', 5)$$),
  ($$SELECT apikeys.apikey_credit_alert('', 'alert_credit', 5)$$),
  ($$SELECT apikeys.apikey_credit_alert('credits_owner', 'Alert', 5)$$),
  ($$SELECT apikeys.apikey_credit_alert('credits_owner', NULL, 5)$$),
  ($$SELECT apikeys.apikey_credit_alert('credits_owner', 'alert_credit', -5)$$),
  ($$SELECT apikeys.apikey_credit_alert('credits_owner', 'alert_credit', 0.00001)$$)) AS t(q);
SELECT dblink_disconnect('credits_listener') AS disconnected;
DROP EXTENSION dblink;

------------------------------------------------------------------------------
-- Audit: every grant, adjustment, alert and quota change (no charge)
------------------------------------------------------------------------------
-- (a refill's period, today, is shown as <today>)
SELECT a.event,
       CASE a.key_id WHEN '' THEN '' WHEN :'id_meter' THEN '<id_meter>' ELSE a.key_id END AS key,
       a.owner, a.actor = session_user AS by_session_user,
       CASE WHEN a.detail->>'period' = ((now() AT TIME ZONE 'UTC')::date)::text
            THEN a.detail || '{"period": "<today>"}' ELSE a.detail END AS detail
  FROM apikeys.audit AS a
 WHERE a.owner = 'credits_owner' AND a.event NOT IN ('created', 'revoked')
 ORDER BY a.event_id;

------------------------------------------------------------------------------
-- Privileges: administrators only; the tables are closed to everyone else
------------------------------------------------------------------------------
-- apikeys_validator may validate, not charge or grant
SET ROLE apikeys_validator;
SELECT f AS call, regress.outcome(q) FROM (VALUES
  ('apikey_charge', format($$SELECT apikeys.apikey_charge(%L, 'email_credit')$$, :'k_main')),
  ('apikey_credit_add', $$SELECT apikeys.apikey_credit_add('credits_owner', 'email_credit', 1)$$),
  ('apikey_credits', $$SELECT apikeys.apikey_credits('credits_owner')$$),
  ('apikey_quota_set', $$SELECT apikeys.apikey_quota_set('key_doesNotExist0000', 'c', 1)$$),
  ('apikey_credit_alert', $$SELECT apikeys.apikey_credit_alert('credits_owner', 'email_credit', 1)$$),
  ('apikey_credit_usage', $$SELECT apikeys.apikey_credit_usage('credits_owner')$$),
  ('credit_pools', $$SELECT * FROM apikeys.credit_pools$$),
  ('credit_usage', $$SELECT * FROM apikeys.credit_usage$$)) AS t(f, q);
RESET ROLE;
-- PUBLIC has nothing on the tables; administrators read them; nobody
-- writes them but the extension's own functions
SELECT r AS role, t AS relation,
       has_table_privilege(r, 'apikeys.' || t, 'SELECT') AS sel,
       has_table_privilege(r, 'apikeys.' || t, 'INSERT, UPDATE, DELETE, TRUNCATE') AS write
  FROM unnest(ARRAY['public', 'apikeys_validator', 'apikeys_anon', 'apikeys_admin']) AS r,
       unnest(ARRAY['credit_pools', 'credit_usage']) AS t
 ORDER BY t, r;
-- administrators charge and read balances
SET ROLE apikeys_admin;
SELECT code, remaining FROM apikeys.apikey_charge(:'k_main', 'email_credit', 1);
SELECT apikeys.apikey_credits('credits_owner')->'email_credit' AS as_admin;
RESET ROLE;

------------------------------------------------------------------------------
-- Routes that charge a credit
------------------------------------------------------------------------------
-- a request through apikeys.pre_request, as PostgREST makes it
CREATE FUNCTION pg_temp.request(k text, method text, path text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('request.headers', json_build_object('x-api-key', k)::text, true);
	PERFORM set_config('request.method', method, true);
	PERFORM set_config('request.path', path, true);
	PERFORM apikeys.pre_request();
END
$$;
BEGIN;
-- cost defaults to 1; the route's credit and cost are audited
INSERT INTO apikeys.routes (method, path, permission, credit, cost) VALUES
	('POST', '/verify/email', 'verify:email', 'email_credit', NULL),
	('POST', '/verify/phone', 'verify:phone', 'phone_credit', 2.5),
	('POST', '/verify/fax', 'fax:send', 'fax_credit', 1);
SELECT method, path, permission, credit, cost FROM apikeys.routes
 WHERE path LIKE '/verify/%' ORDER BY path;
SELECT event, detail->>'path' AS path, detail->>'credit' AS credit, detail->>'cost' AS cost
  FROM apikeys.audit WHERE event = 'route_added' AND detail->>'path' LIKE '/verify/%'
 ORDER BY event_id;
-- a request to a metered route charges its cost, of its key's owner; PT402
-- when the credit runs out (the owner has no fax_credit); PT403 for a scope
-- without the permission
SELECT 'before' AS balances, c->'email_credit' AS email_credit, c->'phone_credit' AS phone_credit,
       apikeys.apikey_credits('credits_other')->'email_credit' AS other_email_credit
  FROM apikeys.apikey_credits('credits_owner') AS c;
SELECT regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'k_main', 'POST', '/verify/email')) AS email,
       regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'k_main', 'POST', '/verify/phone')) AS phone,
       regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'k_main', 'POST', '/verify/fax')) AS fax;
SELECT regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'k_meter', 'POST', '/verify/email')) AS verify_scope,
       regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'k_meter', 'POST', '/verify/fax')) AS fax_not_in_scope,
       regress.outcome(format('SELECT pg_temp.request(%L, %L, %L)', :'k_other', 'POST', '/verify/email')) AS other_owner;
SELECT 'after' AS balances, c->'email_credit' AS email_credit, c->'phone_credit' AS phone_credit,
       apikeys.apikey_credits('credits_other')->'email_credit' AS other_email_credit
  FROM apikeys.apikey_credits('credits_owner') AS c;
-- changing a route to a cost without a credit is refused
SELECT regress.outcome($$UPDATE apikeys.routes SET credit = NULL WHERE path = '/verify/fax'$$) AS cost_left_alone;
ROLLBACK;
-- rolled back: the requests' charges are given back
SELECT 'after_rollback' AS balances, c->'email_credit' AS email_credit, c->'phone_credit' AS phone_credit,
       apikeys.apikey_credits('credits_other')->'email_credit' AS other_email_credit
  FROM apikeys.apikey_credits('credits_owner') AS c;
-- 22023: a cost without a credit, a bad credit name, a bad cost
SELECT * FROM regress.error_of($$INSERT INTO apikeys.routes (method, path, permission, cost)
	VALUES ('POST', '/verify/email', 'verify:email', 1)$$);
SELECT q, regress.outcome(q) FROM (VALUES
  ($$INSERT INTO apikeys.routes (path, credit) VALUES ('/verify/email', 'Email_credit')$$),
  ($$INSERT INTO apikeys.routes (path, credit) VALUES ('/verify/email', '')$$),
  ($$INSERT INTO apikeys.routes (path, credit) VALUES ('/verify/email', repeat('c', 65))$$),
  ($$INSERT INTO apikeys.routes (path, credit, cost) VALUES ('/verify/email', 'email_credit', -1)$$),
  ($$INSERT INTO apikeys.routes (path, credit, cost) VALUES ('/verify/email', 'email_credit', 0.00001)$$)) AS t(q);
SELECT count(*) AS routes_left FROM apikeys.routes;

-- more pools than a backend reads in bulk (10,000): pools are looked up one
-- by one, with the same answers
SELECT key AS k_bulk FROM apikeys.apikey_create('credits_bulk', 'bulk') \gset
SELECT apikeys.apikey_credit_add('credits_bulk', 'bulk_credit', 2) AS balance;
INSERT INTO apikeys.credit_pools (owner, credit)
SELECT 'credits_bulk_' || g, 'bulk_credit' FROM generate_series(1, 10001) AS g;
SELECT string_agg(c.code, ',' ORDER BY g) AS per_pool_lookups
  FROM generate_series(1, 3) AS g, apikeys.apikey_charge(:'k_bulk', 'bulk_credit', g - g + 1) AS c;
DELETE FROM apikeys.credit_pools WHERE owner LIKE 'credits\_bulk\_%';
SELECT apikeys.apikey_credits('credits_bulk') AS balance;
