-- Key format: <prefix>_<body>, body = 32 random base62 characters and a
-- 6-character base62 CRC32 checksum.  Only the SHA-256 digest is stored.
\set SHOW_CONTEXT never

SELECT key AS k, id AS kid FROM apikeys.apikey_create('format_owner', 'format key') \gset

-- the shape of a default key and of a key id
SELECT :'k' ~ '^ak_[0-9A-Za-z]{38}$' AS default_shape,
       length(:'k') AS key_length,
       :'kid' ~ '^key_[0-9A-Za-z]{16}$' AS id_shape;

-- the secret-scanning regex from the README matches it
SELECT :'k' ~ '(^|[^a-z0-9_])[a-z0-9_]{1,32}_[0-9A-Za-z]{38}($|[^0-9A-Za-z])' AS scanner_matches;

-- a prefix with underscores, and the longest prefix
SELECT key AS pk FROM apikeys.apikey_create('format_owner', 'prefixed', prefix => 'vfx_prod') \gset
SELECT :'pk' ~ '^vfx_prod_[0-9A-Za-z]{38}$' AS prefixed_shape,
       (apikeys.apikey_validate(:'pk')).code AS prefixed_validates;
SELECT key AS lk FROM apikeys.apikey_create('format_owner', 'long prefix',
       prefix => 'abcdefghijklmnopqrstuvwxyz_01234') \gset
SELECT length(:'lk') AS longest_key_length, (apikeys.apikey_validate(:'lk')).code;

-- the default prefix comes from apikeys.default_prefix
SET apikeys.default_prefix = 'acme_live';
SELECT key AS gk FROM apikeys.apikey_create('format_owner', 'guc prefix') \gset
SELECT :'gk' ~ '^acme_live_' AS guc_prefix_used;
SET apikeys.default_prefix = 'Bad-Prefix';
RESET apikeys.default_prefix;

-- the stored digest is pgcrypto's digest(key, 'sha256'), so a leaked key can
-- be found by its hash; the stored last4 is the key's last four characters
SELECT count(*) AS found_by_hash
  FROM apikeys.keys
 WHERE digest = public.digest(:'k', 'sha256') AND id = :'kid';
SELECT last4 = right(:'k', 4) AS last4_matches FROM apikeys.keys WHERE id = :'kid';

-- the plaintext is in no column of any table
SELECT count(*) AS rows_with_plaintext
  FROM apikeys.keys AS t
 WHERE strpos(t::text, :'k') > 0 OR strpos(t::text, :'pk') > 0;
SELECT count(*) AS audit_rows_with_plaintext
  FROM apikeys.audit AS a
 WHERE strpos(a::text, :'k') > 0;

-- every single-character change of a valid key is caught by the checksum
-- (malformed, answered without a lookup)
SELECT count(*) >= 300 AS many_substitutions,
       count(*) FILTER (WHERE (apikeys.apikey_validate(v)).code <> 'malformed') AS not_caught
  FROM (SELECT overlay(:'k' PLACING c FROM pos FOR 1) AS v
          FROM generate_series(1, length(:'k')) AS pos,
               unnest(string_to_array('0 9 A Z a z _ -', ' ')) AS c
         WHERE substr(:'k', pos, 1) <> c) AS s;

-- truncated, extended, case-flipped and re-cased keys
SELECT (apikeys.apikey_validate(left(:'k', -1))).code AS truncated,
       (apikeys.apikey_validate(:'k' || 'x')).code AS extended,
       (apikeys.apikey_validate(upper(:'k'))).code AS upper_cased,
       (apikeys.apikey_validate(' ' || :'k')).code AS leading_space;

-- well-formed with a correct checksum but never issued: not_found
SELECT (apikeys.apikey_validate('ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1')).code AS known_vector;
SELECT (apikeys.apikey_validate('vfx_prod_0123456789ABCDEFGHIJKLMNOPQRSTUV2fLanX')).code AS known_vector_prefixed;
-- the same with a wrong checksum: malformed
SELECT (apikeys.apikey_validate('ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r2')).code AS bad_checksum;

-- keys are distinct
SELECT count(DISTINCT key) AS distinct_keys, count(DISTINCT id) AS distinct_ids
  FROM generate_series(1, 50) AS i,
       LATERAL apikeys.apikey_create('format_many', 'k' || i) AS c;
