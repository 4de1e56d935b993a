/*
 * test_pure.c
 *		Unit tests for the pure-C modules: key format and scope matching.
 *
 * Vectors were computed independently (Python's zlib.crc32 and a direct
 * base62 conversion).  Every candidate handed to apikey_parse lives in a
 * heap buffer of exactly its length, so AddressSanitizer catches any read
 * past the end.  Prints one line per failed check and a closing summary.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyformat.h"
#include "scope_match.h"

static int	passed;
static int	failed;

#define CHECK(cond, ...) \
	do { \
		if (cond) \
			passed++; \
		else \
		{ \
			failed++; \
			printf("FAIL %s:%d: ", __FILE__, __LINE__); \
			printf(__VA_ARGS__); \
			printf("\n"); \
		} \
	} while (0)

static const char random_vector[] = "0123456789ABCDEFGHIJKLMNOPQRSTUV";

/* Parses a copy of s[0..len) held in a buffer of exactly len bytes. */
static int
parse_exact(const char *s, size_t len, size_t *prefixlen)
{
	char	   *copy = malloc(len ? len : 1);
	int			ok;

	memcpy(copy, s, len);
	ok = apikey_parse(copy, len, prefixlen);
	free(copy);
	return ok;
}

/* Deterministic pseudo-random bytes (xorshift32) for garbage inputs. */
static uint32_t rng_state = 2463534242u;

static uint8_t
next_byte(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return (uint8_t) rng_state;
}

static void
test_crc32(void)
{
	CHECK(apikey_crc32("", 0) == 0, "crc32 of empty input");
	CHECK(apikey_crc32("123456789", 9) == 0xCBF43926u, "crc32 check value");
	CHECK(apikey_crc32("The quick brown fox jumps over the lazy dog", 43) == 0x414FA339u,
		  "crc32 of the quick brown fox");
}

static void
test_checksum_encoding(void)
{
	char		out[APIKEY_CHECKSUM_CHARS + 1] = {0};

	base62_encode_checksum(0, out);
	CHECK(strcmp(out, "000000") == 0, "checksum 0 is %s", out);
	base62_encode_checksum(61, out);
	CHECK(strcmp(out, "00000z") == 0, "checksum 61 is %s", out);
	base62_encode_checksum(62, out);
	CHECK(strcmp(out, "000010") == 0, "checksum 62 is %s", out);
	base62_encode_checksum(0xFFFFFFFFu, out);
	CHECK(strcmp(out, "4gfFC3") == 0, "checksum 2^32-1 is %s", out);
	base62_encode_checksum(0xCBF43926u, out);
	CHECK(strcmp(out, "3jZRME") == 0, "checksum 0xCBF43926 is %s", out);
}

static void
test_base62_from_random(void)
{
	const uint8_t bytes[] = {0, 61, 62, 247, 248, 255, 1, 123};
	char		out[8] = {0};
	size_t		used = 0;

	CHECK(base62_from_random(bytes, sizeof(bytes), out, 5, &used) == 5,
		  "five digits from eight bytes");
	CHECK(memcmp(out, "0z0z1", 5) == 0, "bytes 248 and 255 are rejected: %.5s", out);
	CHECK(used == 7, "seven bytes consumed, got %zu", used);
	CHECK(base62_from_random(bytes, sizeof(bytes), out, 7, &used) == -1,
		  "running out of bytes is reported");

	/* every digit value is reachable and equally likely per accepted byte */
	{
		int			counts[62] = {0};

		for (int b = 0; b < 248; b++)
		{
			uint8_t		byte = (uint8_t) b;
			char		c;

			base62_from_random(&byte, 1, &c, 1, NULL);
			counts[strchr("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", c) -
				   "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"]++;
		}
		for (int d = 0; d < 62; d++)
			CHECK(counts[d] == 4, "digit %d drawn %d times of 248", d, counts[d]);
	}
}

static void
test_known_keys(void)
{
	char		key[APIKEY_MAX_LEN + 1];
	size_t		len;
	size_t		plen = 0;

	len = apikey_assemble("ak", 2, random_vector, key);
	CHECK(strcmp(key, "ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1") == 0, "ak vector: %s", key);
	CHECK(len == 2 + 1 + APIKEY_BODY_CHARS, "ak vector length %zu", len);
	CHECK(parse_exact(key, len, &plen) && plen == 2, "ak vector parses");

	len = apikey_assemble("vfx_prod", 8, random_vector, key);
	CHECK(strcmp(key, "vfx_prod_0123456789ABCDEFGHIJKLMNOPQRSTUV2fLanX") == 0,
		  "vfx_prod vector: %s", key);
	CHECK(parse_exact(key, len, &plen) && plen == 8, "prefix with underscore parses, plen %zu", plen);
}

static void
test_prefixes(void)
{
	const char *good[] = {"a", "_", "a_b_c_", "0", "prod_2026", "abcdefghijklmnopqrstuvwxyz012345"};
	const char *bad[] = {"", "A", "ak-1", "ak.", "ak ", "abcdefghijklmnopqrstuvwxyz0123456", "é"};
	char		key[APIKEY_MAX_LEN + 1];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
	{
		size_t		plen = 0;
		size_t		len;

		CHECK(apikey_prefix_is_valid(good[i], strlen(good[i])), "prefix \"%s\" accepted", good[i]);
		len = apikey_assemble(good[i], strlen(good[i]), random_vector, key);
		CHECK(parse_exact(key, len, &plen) && plen == strlen(good[i]),
			  "key with prefix \"%s\" parses", good[i]);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(!apikey_prefix_is_valid(bad[i], strlen(bad[i])), "prefix \"%s\" refused", bad[i]);
}

/* Any one character replaced by any other byte value must be refused. */
static void
test_single_substitutions(void)
{
	char		key[APIKEY_MAX_LEN + 1];
	size_t		len = apikey_assemble("vfx_prod", 8, random_vector, key);
	int			undetected = 0;

	for (size_t i = 0; i < len; i++)
	{
		for (int c = 0; c < 256; c++)
		{
			char		saved = key[i];

			if ((char) c == saved)
				continue;
			key[i] = (char) c;
			if (parse_exact(key, len, NULL))
			{
				undetected++;
				printf("undetected substitution at %zu by byte %d\n", i, c);
			}
			key[i] = saved;
		}
	}
	CHECK(undetected == 0, "%d single-character substitutions went undetected", undetected);

	/* swapping two adjacent distinct characters is caught as well */
	undetected = 0;
	for (size_t i = 0; i + 1 < len; i++)
	{
		char		a = key[i];

		if (a == key[i + 1])
			continue;
		key[i] = key[i + 1];
		key[i + 1] = a;
		if (parse_exact(key, len, NULL))
			undetected++;
		key[i + 1] = key[i];
		key[i] = a;
	}
	CHECK(undetected == 0, "%d adjacent transpositions went undetected", undetected);
}

static void
test_garbage(void)
{
	char		key[APIKEY_MAX_LEN + 1];
	size_t		len = apikey_assemble("ak", 2, random_vector, key);
	char		buf[512];
	int			accepted = 0;

	CHECK(!apikey_parse(NULL, 10, NULL), "NULL pointer refused");
	CHECK(!parse_exact("", 0, NULL), "empty string refused");

	/* every truncation and every one-character extension */
	for (size_t l = 0; l < len; l++)
		accepted += parse_exact(key, l, NULL);
	memcpy(buf, key, len);
	for (int c = 0; c < 256; c++)
	{
		buf[len] = (char) c;
		accepted += parse_exact(buf, len + 1, NULL);
	}
	CHECK(accepted == 0, "%d truncated or extended keys accepted", accepted);

	/* random bytes, and random base62 strings with a separator, of every length */
	accepted = 0;
	for (size_t l = 0; l < sizeof(buf); l++)
	{
		for (int round = 0; round < 20; round++)
		{
			for (size_t i = 0; i < l; i++)
				buf[i] = (char) next_byte();
			accepted += parse_exact(buf, l, NULL);

			for (size_t i = 0; i < l; i++)
				buf[i] = random_vector[next_byte() % 32];
			if (l > APIKEY_BODY_CHARS)
				buf[l - APIKEY_BODY_CHARS - 1] = '_';
			for (size_t i = 0; l > APIKEY_BODY_CHARS && i + APIKEY_BODY_CHARS + 1 < l; i++)
				buf[i] = 'a' + next_byte() % 26;
			accepted += parse_exact(buf, l, NULL);
		}
	}
	CHECK(accepted == 0, "%d garbage strings accepted", accepted);
}

static void
test_scope_match(void)
{
	struct
	{
		const char *pattern;
		const char *perm;
		bool		grants;
	}			cases[] = {
		{"*", "lists:write", true},
		{"*", "admin", true},
		{"*", "a:b:c", true},
		{"*", "", false},
		{"*", "lists:", false},
		{"lists:*", "lists:write", true},
		{"lists:*", "lists:read", true},
		{"lists:*", "lists:*", true},
		{"lists:*", "verify:read", false},
		{"lists:*", "lists", false},
		{"lists:*", "lists:a:b", false},
		{"lists:*", "listsx:read", false},
		{"*:read", "lists:read", true},
		{"*:read", "lists:write", false},
		{"*:read", "lists:readx", false},
		{"*:read", "read", false},
		{"*:*", "lists:write", true},
		{"*:*", "lists", false},
		{"verify:*", "verify:keys", true},
		{"lists:read", "lists:read", true},
		{"lists:read", "lists:rea", false},
		{"lists:read", "lists:*", false},
		{"lists:read", ":read", false},
		{"", "lists:read", false},
		{"lists:", "lists:read", false},
		{"lists", "lists", true},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK(scope_pattern_grants(cases[i].pattern, strlen(cases[i].pattern),
								   cases[i].perm, strlen(cases[i].perm)) == cases[i].grants,
			  "pattern \"%s\" %s \"%s\"", cases[i].pattern,
			  cases[i].grants ? "should grant" : "should not grant", cases[i].perm);
}

int
main(void)
{
	test_crc32();
	test_checksum_encoding();
	test_base62_from_random();
	test_known_keys();
	test_prefixes();
	test_single_substitutions();
	test_garbage();
	test_scope_match();

	printf("%d passed, %d failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
