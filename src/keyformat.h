/*
 * keyformat.h
 *		API key text format: base62 encoding, CRC32 checksum, parsing.
 *
 * A key reads "<prefix>_<body>": prefix is 1-32 characters of [a-z0-9_],
 * body is APIKEY_RANDOM_CHARS uniformly random base62 characters followed by
 * APIKEY_CHECKSUM_CHARS base62 characters of the CRC32 (IEEE) of everything
 * before the checksum.  Pure C: no PostgreSQL headers, so it can be unit
 * tested and fuzzed on its own.
 */
#ifndef APIKEYS_KEYFORMAT_H
#define APIKEYS_KEYFORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define APIKEY_PREFIX_MAX		32
#define APIKEY_RANDOM_CHARS		32	/* 32 * log2(62) = 190.5 bits */
#define APIKEY_CHECKSUM_CHARS	6	/* 62^6 > 2^32 */
#define APIKEY_BODY_CHARS		(APIKEY_RANDOM_CHARS + APIKEY_CHECKSUM_CHARS)
#define APIKEY_MIN_LEN			(1 + 1 + APIKEY_BODY_CHARS)
#define APIKEY_MAX_LEN			(APIKEY_PREFIX_MAX + 1 + APIKEY_BODY_CHARS)

#define APIKEY_ID_TAG			"key_"
#define APIKEY_ID_RANDOM_CHARS	16	/* about 95 bits */
#define APIKEY_ID_LEN			(4 + APIKEY_ID_RANDOM_CHARS)

/* Result of base62_from_random: characters written, or -1 if bytes ran out. */
extern int	base62_from_random(const uint8_t *random, size_t nrandom,
							   char *out, size_t nchars, size_t *consumed);

/* CRC-32 (IEEE 802.3, as zlib's crc32) of len bytes. */
extern uint32_t apikey_crc32(const char *data, size_t len);

/* Writes v as exactly APIKEY_CHECKSUM_CHARS base62 digits, most significant first. */
extern void base62_encode_checksum(uint32_t v, char *out);

/* True if s (len bytes) is a valid key prefix. */
extern bool apikey_prefix_is_valid(const char *s, size_t len);

/*
 * Assembles a key from a valid prefix and APIKEY_RANDOM_CHARS base62 chars
 * into out (room for APIKEY_MAX_LEN + 1 bytes).  Returns the key's length.
 */
extern size_t apikey_assemble(const char *prefix, size_t prefixlen,
							  const char *random_chars, char *out);

/*
 * True if key (len bytes, need not be NUL-terminated) has the key format and
 * a correct checksum.  Never reads past key[len - 1].  On success, sets
 * *prefixlen when prefixlen is not NULL.
 */
extern bool apikey_parse(const char *key, size_t len, size_t *prefixlen);

/*
 * True if the NUL-terminated string s holds a run of 30 or more base62
 * characters: it may be an api key (or a mistyped one) and must not be
 * echoed in a message.
 */
extern bool apikey_may_be_key(const char *s);

#endif							/* APIKEYS_KEYFORMAT_H */
