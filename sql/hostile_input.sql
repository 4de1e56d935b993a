-- Hostile input through SQL: every function gets NULLs, blanks, 1 MB
-- strings, non-ASCII and emoji, backslash and control characters, keys of
-- the wrong length or case or with one character changed, invalid cidr and
-- JSON, and out-of-range integers and intervals.  Every case answers with an
-- outcome code (apikey_validate) or the SQLSTATE of SPEC section 5 (the
-- others), the same one for the same kind of mistake; nothing crashes and
-- nothing is left behind.  Keys and ids are random: never printed.
\set SHOW_CONTEXT never

-- Runs a query returning one validation code and reports it, or 'ERROR' and
-- the SQLSTATE if it raised (it never should).
CREATE FUNCTION pg_temp.code(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	c text;
BEGIN
	EXECUTE q INTO c;
	RETURN c;
EXCEPTION WHEN OTHERS THEN
	RETURN 'ERROR ' || SQLSTATE;
END
$$;

-- The message of the error q raises (with detail and hint), or 'no error'.
CREATE FUNCTION pg_temp.message(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	m text;
	d text;
	h text;
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
	RETURN concat_ws(' / ', m, nullif(d, ''), nullif(h, ''));
END
$$;

SELECT count(*) AS keys_before FROM apikeys.keys \gset
SELECT count(*) AS audit_before FROM apikeys.audit \gset

-- fixtures: a full key, a 'lists' key and an office-only key of one owner
SELECT key AS k, id AS kid FROM apikeys.apikey_create('hostile_owner', 'full') \gset
SELECT key AS lk, id AS lkid FROM apikeys.apikey_create('hostile_owner', 'lists',
       scope => 'lists') \gset
SELECT key AS ik FROM apikeys.apikey_create('hostile_owner', 'office',
       ip_restrictions => '{10.0.0.0/8}') \gset
CREATE TEMP TABLE fixture (k text, kid text, lk text, lkid text, ik text);
INSERT INTO fixture VALUES (:'k', :'kid', :'lk', :'lkid', :'ik');

------------------------------------------------------------------------------
-- 1. Hostile text in every text argument
------------------------------------------------------------------------------

CREATE TEMP TABLE hostile (n int, label text, v text);
INSERT INTO hostile VALUES
  (1, 'NULL', NULL),
  (2, 'empty', ''),
  (3, 'spaces', '   '),
  (4, 'tab', E'\t'),
  (5, 'newline', E'\n'),
  (6, 'CR LF', E'\r\n'),
  (7, '1 MB ASCII', repeat('x', 1048576)),
  (8, '1 MB emoji', repeat('🔑', 262144)),
  (9, 'non-ASCII', 'ключ naïve 中文'),
  (10, 'emoji', '🔑🚀'),
  (11, 'backslash 0', E'\\0'),
  (12, 'backslash x00', E'\\x00'),
  (13, 'chr(1)', chr(1)),
  (14, 'chr(127)', chr(127)),
  (15, 'U+FEFF', chr(65279)),
  (16, 'U+00A0', chr(160)),
  (17, 'SQL quote', $q$'); DROP TABLE apikeys.keys; --$q$),
  (18, 'format %', '%s%n%x%'),
  (19, '201 chars', repeat('n', 201)),
  (20, '200 emoji', repeat('🔑', 200));

-- one query template per argument; %s is the hostile value as a literal
CREATE TEMP TABLE arg (n int, arg text, q text);
INSERT INTO arg
SELECT n, arg, replace(replace(q, '<kid>', quote_literal(f.kid)), '<lk>', quote_literal(f.lk))
  FROM fixture AS f, (VALUES
  (1, 'create owner', $$SELECT apikeys.apikey_create(%s, 'n')$$),
  (2, 'create name', $$SELECT apikeys.apikey_create('o', %s)$$),
  (3, 'create scope', $$SELECT apikeys.apikey_create('o', 'n', scope => %s)$$),
  (4, 'create prefix', $$SELECT apikeys.apikey_create('o', 'n', prefix => %s)$$),
  (5, 'list owner', $$SELECT apikeys.apikey_list(%s)$$),
  (6, 'usage owner', $$SELECT apikeys.apikey_usage(%s)$$),
  (7, 'analytics owner', $$SELECT apikeys.apikey_analytics(%s)$$),
  (8, 'revoke id', $$SELECT apikeys.apikey_revoke(%s)$$),
  (9, 'revoke owner', $$SELECT apikeys.apikey_revoke(<kid>, %s)$$),
  (10, 'rotate id', $$SELECT apikeys.apikey_rotate(%s)$$),
  (11, 'rotate owner', $$SELECT apikeys.apikey_rotate(<kid>, owner => %s)$$),
  (12, 'validate key', $$SELECT (apikeys.apikey_validate(%s)).code$$),
  (13, 'validate permission', $$SELECT (apikeys.apikey_validate(<lk>, %s)).code$$))
  AS t(n, arg, q);

CREATE TEMP TABLE matrix AS
SELECT h.n, h.label, a.n AS argn, a.arg,
       CASE WHEN a.arg LIKE 'validate%' THEN pg_temp.code(format(a.q, quote_nullable(h.v)))
            ELSE regress.state(format(a.q, quote_nullable(h.v))) END AS result
  FROM hostile AS h, arg AS a;

-- SQLSTATE per argument ('ok': accepted), or the validation code.  The same
-- mistake gets the same answer in every function: a NULL, empty or blank
-- (spaces, tabs, line breaks) owner, name or id is 22023 wherever it
-- appears; an owner or name over 200 characters is 22023 for create, and an
-- owner nobody has lists nothing elsewhere; any prefix but NULL or a valid
-- one is 22023; an unknown scope is 22023; an unknown id, or another owner,
-- is P0002; a key that is not a key is malformed; a permission the 'lists'
-- scope does not grant is insufficient_scope.
\pset format aligned
SELECT label,
       max(result) FILTER (WHERE argn = 1) AS c_owner,
       max(result) FILTER (WHERE argn = 2) AS c_name,
       max(result) FILTER (WHERE argn = 3) AS c_scope,
       max(result) FILTER (WHERE argn = 4) AS c_prefix,
       max(result) FILTER (WHERE argn = 5) AS list,
       max(result) FILTER (WHERE argn = 6) AS usage,
       max(result) FILTER (WHERE argn = 7) AS analyt,
       max(result) FILTER (WHERE argn = 8) AS rev_id,
       max(result) FILTER (WHERE argn = 9) AS rev_own,
       max(result) FILTER (WHERE argn = 10) AS rot_id,
       max(result) FILTER (WHERE argn = 11) AS rot_own
  FROM matrix GROUP BY n, label ORDER BY n;
SELECT label,
       max(result) FILTER (WHERE argn = 12) AS validate_key,
       max(result) FILTER (WHERE argn = 13) AS validate_permission
  FROM matrix GROUP BY n, label ORDER BY n;

-- 1 MB arguments that are accepted answer normally (an owner with no keys)
SELECT count(*) AS keys_of_1mb_owner FROM apikeys.apikey_list(repeat('x', 1048576));
SELECT a -> 'totalCalls' AS total_calls, a -> 'keys' AS keys,
       jsonb_array_length(a -> 'dailyUsage') AS days
  FROM apikeys.apikey_analytics(repeat('x', 1048576), 1) AS a;
-- a 1 MB permission: well-formed, so 'full' ('*') grants it and 'lists' does not
SELECT (apikeys.apikey_validate(:'k', repeat('p', 1048576))).code AS full_1mb_permission,
       (apikeys.apikey_validate(:'lk', 'lists:' || repeat('p', 1048576))).code AS lists_1mb_action,
       (apikeys.apikey_validate(:'lk', repeat('p:', 524288))).code AS many_segments;

-- a name of 200 emoji is 200 characters (800 bytes): accepted, stored whole
SELECT id AS eid FROM apikeys.apikey_create('hostile_owner', repeat('🔑', 200)) \gset
SELECT length(name) AS name_chars, octet_length(name) AS name_bytes
  FROM apikeys.keys WHERE id = :'eid';

-- error messages never echo a key (SPEC section 2), not even one passed
-- by mistake where an id, a prefix, a scope or an owner belongs: neither the
-- key nor its body appears in the message, detail or hint (an unknown scope
-- is named, SPEC section 5, but not when it is a key)
SELECT q,
       strpos(pg_temp.message(format(q, quote_literal(f.k))), f.k) = 0
       AND strpos(pg_temp.message(format(q, quote_literal(f.k))),
                  substr(f.k, strpos(f.k, '_') + 1)) = 0 AS key_not_echoed,
       regress.state(format(q, quote_literal(f.k))) AS sqlstate
  FROM fixture AS f, (VALUES
  ($$SELECT apikeys.apikey_revoke(%s)$$),
  ($$SELECT apikeys.apikey_rotate(%s)$$),
  ($$SELECT apikeys.apikey_create('o', 'n', prefix => %s)$$),
  ($$SELECT apikeys.apikey_create('o', 'n', scope => %s)$$),
  ($$SELECT apikeys.apikey_usage(%s, 0)$$),
  ($$SELECT apikeys.apikey_analytics(%s, 91)$$),
  ($$SELECT apikeys.apikey_rotate(%s, interval '8 days')$$)) AS t(q);

------------------------------------------------------------------------------
-- 2. Near-keys: right prefix, wrong length, case, one character changed
------------------------------------------------------------------------------

-- 'ak_' and 0 to 80 base62 characters (a key has exactly 38): all malformed
SELECT string_agg(DISTINCT (apikeys.apikey_validate('ak_' || left(repeat(substr(f.k, 4), 3), n))).code, ',')
       AS wrong_lengths, count(*) AS cases
  FROM fixture AS f, generate_series(0, 80) AS n WHERE n <> 38;

-- the key, changed as a careless or hostile client would
SELECT label, (apikeys.apikey_validate(v)).code
  FROM fixture AS f, LATERAL (VALUES
  (1, 'as is', f.k),
  (2, 'upper case', upper(f.k)),
  (3, 'lower case', lower(f.k)),
  (4, 'prefix upper case', 'AK' || substr(f.k, 3)),
  (5, 'leading space', ' ' || f.k),
  (6, 'trailing space', f.k || ' '),
  (7, 'trailing newline', f.k || E'\n'),
  (8, 'trailing chr(1)', f.k || chr(1)),
  (9, 'trailing backslash 0', f.k || E'\\0'),
  (10, 'last character cut', left(f.k, -1)),
  (11, 'first character cut', substr(f.k, 2)),
  (12, 'body without prefix', substr(f.k, 4)),
  (13, 'prefix only', 'ak_'),
  (14, 'twice', f.k || f.k),
  (15, 'separator -', 'ak-' || substr(f.k, 4)),
  (16, 'separator .', 'ak.' || substr(f.k, 4)),
  (17, 'zero-width space inside', left(f.k, 10) || chr(8203) || substr(f.k, 11)),
  (18, 'Cyrillic a in prefix', chr(1072) || substr(f.k, 2)),
  (19, 'fullwidth digit', left(f.k, 3) || chr(65296) || substr(f.k, 5)),
  (20, 'URL-encoded separator', 'ak%5F' || substr(f.k, 4)),
  (21, 'quoted', '"' || f.k || '"'),
  (22, 'Bearer header', 'Bearer ' || f.k),
  (23, 'well-formed, unknown', 'ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1'),
  (24, 'well-formed, prefix vfx_prod, unknown', 'vfx_prod_0123456789ABCDEFGHIJKLMNOPQRSTUV2fLanX'),
  (25, 'checksum right, prefix 33 characters',
       'abcdefghijklmnopqrstuvwxyz0123456_zZ9aQm4Hk2LpW7xYc3VbN8dF1gT6rJ0s2Ndnfn'),
  (26, 'checksum right, prefix ak-1', 'ak-1_0123456789ABCDEFGHIJKLMNOPQRSTUV4TU8aR'))
  AS t(n, label, v) ORDER BY n;

-- every position of each fixture key replaced by every base62 character, '_',
-- '-', ' ', 'é' and '🔑': the checksum catches all of them before any lookup
SELECT count(*) AS substitutions,
       string_agg(DISTINCT (apikeys.apikey_validate(v)).code, ',') AS codes
  FROM (SELECT overlay(key PLACING c FROM pos FOR 1) AS v, substr(key, pos, 1) AS old, c
          FROM fixture AS f, unnest(ARRAY[f.k, f.lk, f.ik]) AS key,
               generate_series(1, length(key)) AS pos,
               regexp_split_to_table('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_- é🔑', '') AS c) AS s
 WHERE c <> old;

-- every adjacent transposition of distinct characters: all malformed
SELECT count(*) > 100 AS transpositions,
       string_agg(DISTINCT (apikeys.apikey_validate(v)).code, ',') AS codes
  FROM (SELECT left(key, pos - 1) || substr(key, pos + 1, 1) || substr(key, pos, 1) || substr(key, pos + 2) AS v
          FROM fixture AS f, unnest(ARRAY[f.k, f.lk, f.ik]) AS key,
               generate_series(1, length(key) - 1) AS pos
         WHERE substr(key, pos, 1) <> substr(key, pos + 1, 1)) AS s;

------------------------------------------------------------------------------
-- 3. Thousands of hostile keys: each gets an outcome code, never an error
------------------------------------------------------------------------------

CREATE TEMP TABLE garbage (family text, v text);
INSERT INTO garbage
-- key-shaped: prefix, separator and 38 hex digits (base62, wrong checksum)
SELECT 'key-shaped md5', 'ak_' || left(md5(i::text) || md5((-i)::text), 38)
  FROM generate_series(1, 2000) AS i
UNION ALL
-- key-shaped with a random prefix of 1-32 characters
SELECT 'random prefix', left(translate(md5((i * 7)::text), 'abcdef', 'xyz_ab') || md5(i::text), 1 + i % 32)
       || '_' || left(upper(md5((i * 3)::text)) || md5((i * 5)::text), 38)
  FROM generate_series(1, 1000) AS i
UNION ALL
-- printable ASCII runs of every length 0-199
SELECT 'ascii runs', repeat(chr(32 + i % 95), i % 200)
  FROM generate_series(1, 1000) AS i
UNION ALL
-- code points from all planes (no surrogates, no NUL), 1-71 of them
SELECT 'unicode', (SELECT string_agg(chr(cp), '')
                     FROM (SELECT (1 + (hashint4(i * 100 + j)::bigint & 2147483647) % 1114110)::int AS cp
                             FROM generate_series(1, 1 + i % 71) AS j) AS c
                    WHERE cp NOT BETWEEN 55296 AND 57343)
  FROM generate_series(1, 1000) AS i
UNION ALL
-- control characters, backslashes and quotes inside a key-long string
SELECT 'controls', left(f.k, i % 41) || chr(1 + i % 31) || E'\\' || '''' || substr(f.k, i % 41 + 1)
  FROM fixture AS f, generate_series(1, 500) AS i;

SELECT family, count(*) AS cases,
       string_agg(DISTINCT (apikeys.apikey_validate(v)).code, ',') AS codes
  FROM garbage GROUP BY family ORDER BY family;

-- hostile permissions on the 'lists' key: only 'lists:<one segment>' passes
SELECT count(*) AS permissions,
       count(*) FILTER (WHERE code <> CASE WHEN p ~ '^lists:[^:]+$' THEN 'valid'
                                           ELSE 'insufficient_scope' END) AS wrong_answers,
       string_agg(DISTINCT code, ',' ORDER BY code) AS codes
  FROM (SELECT p, (apikeys.apikey_validate(f.lk, p)).code
          FROM fixture AS f,
               (SELECT v AS p FROM garbage
                UNION ALL SELECT 'lists:' || left(md5(i::text), i % 8) FROM generate_series(1, 500) AS i
                UNION ALL SELECT 'lists:' || repeat(':', i % 3) || md5(i::text) FROM generate_series(1, 500) AS i
                UNION ALL SELECT '*' UNION ALL SELECT 'lists:*' UNION ALL SELECT '*:*'
                UNION ALL SELECT 'LISTS:read' UNION ALL SELECT 'lists :read') AS g) AS s;

-- hostile client addresses on the office key (10.0.0.0/8): the answer is
-- valid exactly when the address is inside the network
SELECT count(*) AS addresses,
       count(*) FILTER (WHERE code <> CASE WHEN ip <<= '10.0.0.0/8' THEN 'valid'
                                            ELSE 'ip_not_allowed' END) AS wrong_answers,
       string_agg(DISTINCT code, ',' ORDER BY code) AS codes
  FROM (SELECT ip, (apikeys.apikey_validate(f.ik, NULL, ip)).code
          FROM fixture AS f,
               (SELECT ((hashint4(i)::bigint & 255) || '.' || (i % 256) || '.' || (i / 256 % 256) || '.'
                        || (i % 7) || '/' || (i % 33))::inet AS ip
                  FROM generate_series(1, 2000) AS i
                UNION ALL
                SELECT ('::ffff:' || (i % 256) || '.1.2.3')::inet FROM generate_series(1, 20) AS i
                UNION ALL
                SELECT v::inet FROM (VALUES ('10.0.0.0'), ('10.255.255.255'), ('10.1.2.3/8'),
                       ('10.1.2.3/7'), ('0.0.0.0/0'), ('::/0'), ('::1'), ('fe80::1'),
                       ('11.0.0.0'), ('9.255.255.255')) AS x(v)) AS a) AS s;

-- ids of every shape: unknown, P0002, the same message for all
SELECT count(*) AS ids,
       string_agg(DISTINCT regress.state(format('SELECT apikeys.apikey_revoke(%L)', v)), ',') AS revoke,
       string_agg(DISTINCT regress.state(format('SELECT apikeys.apikey_rotate(%L)', v)), ',') AS rotate
  FROM (SELECT 'key_' || left(md5(i::text), 16) FROM generate_series(1, 300) AS i
        UNION ALL SELECT 'key_' || repeat(chr(65 + i % 26), i % 40) FROM generate_series(1, 100) AS i
        UNION ALL (SELECT v FROM garbage WHERE family IN ('key-shaped md5', 'random prefix')
                    ORDER BY v LIMIT 600)) AS g(v);

------------------------------------------------------------------------------
-- 4. Typed arguments: cidr, inet, jsonb, integer, interval
------------------------------------------------------------------------------

-- invalid cidr: the cidr type itself refuses it (22P02) while the literal is
-- cast, before apikey_create runs: the same error as a bare cast
SELECT v AS ip_restrictions,
       regress.state(format('SELECT apikeys.apikey_create(%L, %L, ip_restrictions => %L)',
                            'o', 'n', v)) AS in_call,
       regress.state(format('SELECT %L::cidr[]', v)) AS bare_cast,
       pg_temp.message(format('SELECT apikeys.apikey_create(%L, %L, ip_restrictions => %L)', 'o', 'n', v))
       = pg_temp.message(format('SELECT %L::cidr[]', v)) AS same_message
  FROM (VALUES ('{not-an-ip}'), ('{10.0.0.1/8}'), ('{999.0.0.0/8}'), ('{10.0.0.0/33}'),
               ('{::1/129}'), ('{🔑}'), ('10.0.0.0/8'), ('{10.0.0.0/8'), ('{""}')) AS t(v);

-- well-typed but refused, or accepted
SELECT label, regress.state(q) AS sqlstate
  FROM (VALUES
  ('NULL element', $$SELECT apikeys.apikey_create('o', 'n', ip_restrictions => '{10.0.0.0/8,NULL}')$$),
  ('two dimensions', $$SELECT apikeys.apikey_create('o', 'n', ip_restrictions => '{{10.0.0.0/8},{::/0}}')$$),
  ('NULL array', $$SELECT apikeys.apikey_create('o', 'n', ip_restrictions => NULL)$$),
  ('empty array', $$SELECT apikeys.apikey_create('o', 'n', ip_restrictions => '{}')$$),
  ('everything', $$SELECT apikeys.apikey_create('o', 'n', ip_restrictions => '{0.0.0.0/0,::/0}')$$),
  ('10000 networks', $$SELECT apikeys.apikey_create('o', 'n', ip_restrictions =>
       (SELECT array_agg(('10.' || i / 256 % 256 || '.' || i % 256 || '.0/24')::cidr) FROM generate_series(1, 10000) AS i))$$),
  ('lower bound -1 array', $$SELECT apikeys.apikey_create('o', 'n', ip_restrictions => '[-1:0]={10.0.0.0/8,::/0}')$$))
  AS t(label, q);

-- a key with 10000 networks validates against them
SELECT (apikeys.apikey_validate(c.key, NULL, '10.39.15.7')).code AS inside,
       (apikeys.apikey_validate(c.key, NULL, '10.39.16.7')).code AS outside
  FROM apikeys.apikey_create('hostile_owner', 'many networks', ip_restrictions =>
       (SELECT array_agg(('10.' || i / 256 % 256 || '.' || i % 256 || '.0/24')::cidr)
          FROM generate_series(1, 10000) AS i WHERE i <> 39 * 256 + 16)) AS c;

-- client_ip: invalid inet fails its own cast (22P02) like a bare cast; a
-- NULL address is the connection's (a Unix socket here: unknown, refused)
SELECT v AS client_ip,
       regress.state(format('SELECT apikeys.apikey_validate(%L, NULL, %L)', f.ik, v)) AS in_call,
       regress.state(format('SELECT %L::inet', v)) AS bare_cast
  FROM fixture AS f, (VALUES ('999.1.1.1'), (''), ('localhost'), ('10.0.0.1/33'), ('🔑')) AS t(v);
SELECT (apikeys.apikey_validate(:'ik', NULL, NULL)).code AS unix_socket_no_client_ip;

-- metadata: JSON null, scalars and arrays are refused (22023); invalid JSON
-- fails the jsonb cast (22P02, 22P05); SQL NULL means {}
SELECT label, regress.state(format('SELECT apikeys.apikey_create(%L, %L, metadata => %s)', 'o', 'n', v))
       AS sqlstate
  FROM (VALUES
  ('JSON null', $$'null'$$),
  ('string', $$'"text"'$$),
  ('number', $$'42'$$),
  ('boolean', $$'true'$$),
  ('array', $$'[]'$$),
  ('invalid JSON', $$'{'$$),
  ('\u0000 in a string', $$'{"a": "\u0000"}'$$),
  ('SQL NULL', $$NULL$$),
  ('empty object', $$'{}'$$),
  ('null member', $$'{"a": null}'$$),
  ('emoji keys', $$'{"🔑": "🚀"}'$$),
  ('1 MB object', $$jsonb_build_object('big', repeat('x', 1048576))$$),
  ('nested 1000 deep', $$(repeat('{"a":', 1000) || '1' || repeat('}', 1000))::jsonb$$))
  AS t(label, v);
SELECT metadata AS metadata_of_sql_null
  FROM apikeys.apikey_validate((SELECT key FROM apikeys.apikey_create('hostile_owner', 'no metadata',
                                                                      metadata => NULL)));

-- integers: outside 1-365 (expires_in_days) or 1-90 (days) is 22023 all the
-- way to the ends of integer; past them the integer input fails (22003)
SELECT v, regress.state(format('SELECT apikeys.apikey_create(%L, %L, expires_in_days => %s)', 'o', 'n', v))
          AS expires_in_days,
       regress.state(format('SELECT apikeys.apikey_usage(%L, %s)', 'hostile_owner', v)) AS usage_days,
       regress.state(format('SELECT apikeys.apikey_analytics(%L, %s)', 'hostile_owner', v)) AS analytics_days
  FROM (VALUES ('2147483647'), ('-2147483648'), ('0'), ('-1'), ('1'), ('90'), ('91'), ('365'), ('366'),
               ('NULL'), ($$'2147483648'$$), ($$'-2147483649'$$), ($$'1.5'$$), ($$' 7 '$$)) AS t(v);

-- intervals: grace outside 0-7 days is 22023 (on PostgreSQL 15 'infinity' is
-- not an interval: the interval input refuses it, 22007; too large: 22008)
SELECT v AS grace,
       regress.state(format('SELECT apikeys.apikey_rotate(%L, %s)', f.kid, v)) AS sqlstate
  FROM fixture AS f, (VALUES ($$'1000 years'$$), ($$'-1 day'$$), ($$'7 days 00:00:00.000001'$$),
               ($$'1 mon'$$), ($$'@ 7 days ago'$$), ($$'1 day -25 hours'$$), ('NULL'),
               ($$'0'$$), ($$'-0'$$), ($$'7 days'$$), ($$'168 hours'$$), ($$'6 days 24:00:00'$$),
               ($$'P7D'$$), ($$'178000000 years'$$), ($$'infinity'$$), ($$'200000000 years'$$),
               ($$'🔑'$$)) AS t(v);

------------------------------------------------------------------------------
-- 5. Nothing was left behind, the backend is alive, the fixtures still work
------------------------------------------------------------------------------

SELECT count(*) - :keys_before AS keys_added,
       (SELECT count(*) FROM apikeys.audit) - :audit_before AS audit_events_added
  FROM apikeys.keys;
SELECT count(*) FILTER (WHERE revoked_at IS NOT NULL) AS revoked,
       count(*) FILTER (WHERE expires_at IS NOT NULL) AS expiring,
       count(*) FILTER (WHERE rotated_from IS NOT NULL) AS rotated
  FROM apikeys.keys WHERE owner = 'hostile_owner';
SELECT count(*) AS keys_of_other_owners_from_this_test
  FROM apikeys.keys WHERE owner <> 'hostile_owner' AND created_at >= (
       SELECT min(created_at) FROM apikeys.keys WHERE owner = 'hostile_owner');
SELECT (apikeys.apikey_validate(:'k')).code AS full_key,
       (apikeys.apikey_validate(:'lk', 'lists:read')).code AS lists_key,
       (apikeys.apikey_validate(:'ik', NULL, '10.1.2.3')).code AS office_key;
