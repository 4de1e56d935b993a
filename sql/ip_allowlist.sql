-- IP allowlists: a key with restrictions is valid only from an address
-- inside one of its networks; the address is client_ip, else the
-- connection's, and an unknown address (this test runs over a Unix socket)
-- is refused.
\set SHOW_CONTEXT never

SELECT key AS k FROM apikeys.apikey_create('ip_owner', 'restricted',
       ip_restrictions => '{192.0.2.0/24,198.51.100.7/32,2001:db8::/32}') \gset
SELECT key AS open FROM apikeys.apikey_create('ip_owner', 'unrestricted') \gset

SELECT t.ip, (apikeys.apikey_validate(:'k', NULL, t.ip::inet)).code
  FROM (VALUES (1, '192.0.2.1'), (2, '192.0.2.255'), (3, '192.0.3.1'),
               (4, '198.51.100.7'), (5, '198.51.100.8'),
               (6, '2001:db8::1'), (7, '2001:db9::1'), (8, '::ffff:192.0.2.1'),
               (9, '10.0.0.1'), (10, '192.0.2.0/25')) AS t(n, ip)
 ORDER BY t.n;

-- unknown address: no client_ip and a Unix-socket connection
SELECT inet_client_addr() IS NULL AS over_unix_socket,
       (apikeys.apikey_validate(:'k')).code AS restricted_key,
       (apikeys.apikey_validate(:'open')).code AS unrestricted_key;

-- the address check comes before the permission check
SELECT (apikeys.apikey_validate(:'k', 'lists:read', '192.0.2.1')).code AS inside_with_permission,
       (apikeys.apikey_validate(:'k', 'lists:read', '10.0.0.1')).code AS outside_with_permission;

-- an empty list means no restriction at all
SELECT (apikeys.apikey_validate(:'open', NULL, '203.0.113.9')).code AS any_address;
