-- apikey_credit_usage(owner, days): what each key of the owner spent of each
-- credit per UTC day over the last days (1 to 90) days, newest first, from
-- what the worker flushed (SPEC section 11: "which service consumes
-- credits" in one query).  Spend comes from real charges (flushed with
-- apikeys.flush_usage()) and from history inserted into apikeys.credit_usage.
-- Key ids are random: rows show the key's label, days as days before today.
\set SHOW_CONTEXT never

SELECT key AS k1, id AS id1 FROM apikeys.apikey_create('credit_usage_owner', 'service one') \gset
SELECT key AS k2, id AS id2 FROM apikeys.apikey_create('credit_usage_owner', 'service two') \gset
SELECT key AS k3, id AS id3 FROM apikeys.apikey_create('credit_usage_other', 'stranger') \gset
CREATE TEMP TABLE labels (id text, label text);
INSERT INTO labels VALUES (:'id1', 'service one'), (:'id2', 'service two'), (:'id3', 'stranger');
SELECT apikeys.apikey_credit_add('credit_usage_owner', 'email_credit', 100) AS email,
       apikeys.apikey_credit_add('credit_usage_owner', 'phone_credit', 100) AS phone,
       apikeys.apikey_credit_add('credit_usage_other', 'email_credit', 100) AS other_email;

-- today: service one 2 + 3 email and 1.5 phone, service two 1 email (and
-- 1000 refused), the stranger 7 email; one charge rolled back
SELECT c.n, r.code
  FROM (VALUES (1, :'k1', 'email_credit', 2), (2, :'k1', 'email_credit', 3),
               (3, :'k1', 'phone_credit', 1.5), (4, :'k2', 'email_credit', 1),
               (5, :'k2', 'email_credit', 1000), (6, :'k3', 'email_credit', 7)) AS c(n, k, credit, cost),
       LATERAL apikeys.apikey_charge(c.k, c.credit, c.cost) AS r
 ORDER BY c.n;
BEGIN;
SELECT code FROM apikeys.apikey_charge(:'k2', 'email_credit', 50);
ROLLBACK;
SELECT apikeys.flush_usage() AS flushed;

-- history: the window is the last N UTC days, today included
INSERT INTO apikeys.credit_usage (key_id, day, credit, spent)
SELECT h.id, (now() AT TIME ZONE 'UTC')::date - h.ago, h.credit, h.spent
  FROM (VALUES (:'id1', 1, 'email_credit', 10), (:'id1', 29, 'email_credit', 4),
               (:'id1', 30, 'email_credit', 100), (:'id2', 89, 'phone_credit', 0.25),
               (:'id2', 90, 'phone_credit', 1000), (:'id3', 1, 'email_credit', 70)) AS h(id, ago, credit, spent);

-- the default window is 30 days: today and the 29 days before
SELECT coalesce(l.label, u.key_id) AS key, (now() AT TIME ZONE 'UTC')::date - u.day AS days_ago,
       u.credit, u.spent
  FROM apikeys.apikey_credit_usage('credit_usage_owner') AS u LEFT JOIN labels AS l ON l.id = u.key_id
 ORDER BY u.day DESC, 1, u.credit;
-- 1 day: today only; 90 days: all but the 90-day-old row
SELECT coalesce(l.label, u.key_id) AS key, (now() AT TIME ZONE 'UTC')::date - u.day AS days_ago,
       u.credit, u.spent
  FROM apikeys.apikey_credit_usage('credit_usage_owner', 1) AS u LEFT JOIN labels AS l ON l.id = u.key_id
 ORDER BY u.day DESC, 1, u.credit;
SELECT count(*) AS rows, sum(u.spent) AS spent
  FROM apikeys.apikey_credit_usage('credit_usage_owner', 90) AS u;
-- newest first, as returned
SELECT array_agg((now() AT TIME ZONE 'UTC')::date - u.day) AS days_ago_in_order
  FROM apikeys.apikey_credit_usage('credit_usage_owner', 90) AS u;
-- an owner without spend: no rows
SELECT count(*) AS rows FROM apikeys.apikey_credit_usage('credit_usage_nobody');
