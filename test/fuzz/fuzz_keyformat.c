/*
 * fuzz_keyformat.c
 *		libFuzzer target over the pure-C modules: key format and checksum
 *		(src/keyformat.c) and permission matching (src/scope_match.c).
 *
 * Not only "no crash": every property below aborts the run when violated.
 * Each function under test is compared with a reference written here from
 * the contract (SPEC section 2 and scope_match.h), independently of the
 * code under test, and the round trips must hold:
 *
 *	- apikey_parse(x) is true exactly when x is "<prefix>_<body>" with a
 *	  prefix of 1-32 [a-z0-9_], 32 base62 characters and the 6-character
 *	  base62 CRC-32 of everything before it; a parsed key is 40-71 bytes,
 *	  and re-assembling its prefix and random part gives x back;
 *	- apikey_crc32 is the IEEE CRC-32 (bitwise reference), and
 *	  base62_encode_checksum is a bijection onto 6 base62 digits;
 *	- base62_from_random keeps exactly the bytes below 248, in order, and
 *	  reports running out of bytes;
 *	- a key assembled from a fuzzed prefix and random part parses, and a
 *	  single-byte substitution anywhere, an adjacent transposition in its
 *	  checksummed part and a truncation (where, the input picks) are refused;
 *	  the same substitution with the checksum recomputed is accepted exactly
 *	  when the format rules allow it;
 *	- scope_pattern_grants(pattern, permission), with the input split at its
 *	  first NUL byte, agrees with a segment-list reference; "*" and the
 *	  permission itself grant every well-formed permission; nothing grants an
 *	  ill-formed one.
 *
 * Every string handed to the code under test lives in a buffer of exactly
 * its length (libFuzzer's own copy of the input, or one made here), so
 * AddressSanitizer catches a read past its end.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyformat.h"
#include "scope_match.h"

static const char alphabet62[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
static const char prefix_alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789_";

/* Reports a broken property with the offending bytes, then aborts. */
static void
violation(const char *what, const char *s, size_t len)
{
	fprintf(stderr, "PROPERTY VIOLATED: %s\n  input (%zu bytes): \"", what, len);
	for (size_t i = 0; s != NULL && i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			fputc(c, stderr);
		else
			fprintf(stderr, "\\x%02x", c);
	}
	fprintf(stderr, "\"\n");
	abort();
}

#define REQUIRE(cond, what, s, len) \
	do { if (!(cond)) violation((what), (const char *) (s), (len)); } while (0)

/* A heap copy of s[0..len) in a buffer of exactly len bytes (1 if len is 0). */
static char *
exact_copy(const void *s, size_t len)
{
	char	   *p = malloc(len ? len : 1);

	if (p == NULL)
		abort();
	if (len)
		memcpy(p, s, len);
	return p;
}

/* ---------------------------------------------------------------- references */

/* Bitwise CRC-32, IEEE 802.3 reflected polynomial, as zlib computes it. */
static uint32_t
ref_crc32(const char *s, size_t len)
{
	uint32_t	crc = 0xFFFFFFFFu;

	for (size_t i = 0; i < len; i++)
	{
		crc ^= (uint8_t) s[i];
		for (int b = 0; b < 8; b++)
			crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
	}
	return ~crc;
}

static int
ref_digit(char c)
{
	const char *p = c ? strchr(alphabet62, c) : NULL;

	return p ? (int) (p - alphabet62) : -1;
}

static bool
ref_prefix_char(char c)
{
	return c != '\0' && strchr(prefix_alphabet, c) != NULL;
}

static bool
ref_prefix_valid(const char *s, size_t len)
{
	if (len < 1 || len > 32)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!ref_prefix_char(s[i]))
			return false;
	return true;
}

/* The key format of SPEC section 2, checked from scratch. */
static bool
ref_key_valid(const char *s, size_t len)
{
	size_t		plen;
	uint64_t	v = 0;

	if (len < 1 + 1 + 38 || len > 32 + 1 + 38)
		return false;
	plen = len - 38 - 1;
	if (!ref_prefix_valid(s, plen) || s[plen] != '_')
		return false;
	for (size_t i = plen + 1; i < len; i++)
		if (ref_digit(s[i]) < 0)
			return false;
	for (size_t i = len - 6; i < len; i++)
		v = v * 62 + (uint64_t) ref_digit(s[i]);
	return v == ref_crc32(s, len - 6);
}

/* A string cut at ':' into segments (never fewer than one). */
typedef struct Segments
{
	size_t		n;
	const char **seg;
	size_t	   *len;
} Segments;

static Segments
ref_split(const char *s, size_t len)
{
	Segments	r;
	size_t		start = 0;

	r.n = 0;
	r.seg = malloc((len + 1) * sizeof(const char *));
	r.len = malloc((len + 1) * sizeof(size_t));
	for (size_t i = 0; i <= len; i++)
	{
		if (i == len || s[i] == ':')
		{
			r.seg[r.n] = s + start;
			r.len[r.n] = i - start;
			r.n++;
			start = i + 1;
		}
	}
	return r;
}

static void
ref_free(Segments *s)
{
	free(s->seg);
	free(s->len);
}

/* Well-formed: not empty, and no segment empty. */
static bool
ref_permission_wellformed(const char *p, size_t len)
{
	Segments	s;
	bool		ok = len > 0;

	if (!ok)
		return false;
	s = ref_split(p, len);
	for (size_t i = 0; i < s.n; i++)
		if (s.len[i] == 0)
			ok = false;
	ref_free(&s);
	return ok;
}

/* The matching rule of scope_match.h, on segment lists. */
static bool
ref_grants(const char *pat, size_t patlen, const char *perm, size_t permlen)
{
	Segments	p,
				q;
	bool		ok;

	if (!ref_permission_wellformed(perm, permlen))
		return false;
	if (patlen == 1 && pat[0] == '*')
		return true;
	p = ref_split(pat, patlen);
	q = ref_split(perm, permlen);
	ok = (p.n == q.n);
	for (size_t i = 0; ok && i < p.n; i++)
	{
		bool		wildcard = (p.len[i] == 1 && p.seg[i][0] == '*');

		if (!wildcard && (p.len[i] != q.len[i] || memcmp(p.seg[i], q.seg[i], p.len[i]) != 0))
			ok = false;
	}
	ref_free(&p);
	ref_free(&q);
	return ok;
}

/* ---------------------------------------------------------------- properties */

/* The whole input as a candidate key. */
static void
check_parse(const uint8_t *data, size_t size)
{
	const char *key = (const char *) data;
	size_t		plen = (size_t) -1;
	bool		parsed = apikey_parse(key, size, &plen);
	bool		expected = ref_key_valid(key, size);

	REQUIRE(parsed == expected,
			parsed ? "apikey_parse accepted a string that is not a key"
			: "apikey_parse refused a well-formed key", key, size);
	REQUIRE(apikey_parse(key, size, NULL) == parsed,
			"apikey_parse answers differently without prefixlen", key, size);
	if (parsed)
	{
		char	   *out = malloc(APIKEY_MAX_LEN + 1);
		size_t		len;

		REQUIRE(size >= 40 && size <= 71, "a parsed key is not 40-71 bytes", key, size);
		REQUIRE(size == APIKEY_MIN_LEN + plen - 1, "prefix length does not match", key, size);
		REQUIRE(apikey_prefix_is_valid(key, plen), "parsed prefix is invalid", key, size);
		len = apikey_assemble(key, plen, key + plen + 1, out);
		REQUIRE(len == size && memcmp(out, key, size) == 0 && out[len] == '\0',
				"parsed key does not re-assemble to itself", key, size);
		free(out);
	}
	else
		REQUIRE(plen == (size_t) -1, "apikey_parse set prefixlen on failure", key, size);
}

/*
 * The input with its last six bytes replaced by the base62 CRC-32 of the
 * rest (computed by the reference), so that the checksum holds and the
 * fuzzer explores the other rules: length, separator, prefix, body.
 */
static void
check_parse_checksummed(const uint8_t *data, size_t size)
{
	char	   *s;
	uint32_t	crc;

	if (size < 6)
		return;
	s = exact_copy(data, size);
	crc = ref_crc32(s, size - 6);
	for (int i = 5; i >= 0; i--)
	{
		s[size - 6 + i] = alphabet62[crc % 62];
		crc /= 62;
	}
	check_parse((const uint8_t *) s, size);
	free(s);
}

/* CRC-32 against the bitwise reference; the checksum encoding round trip. */
static void
check_crc(const uint8_t *data, size_t size)
{
	const char *s = (const char *) data;
	uint32_t	crc = apikey_crc32(s, size);
	char	   *digits = malloc(APIKEY_CHECKSUM_CHARS);
	uint64_t	v = 0;

	REQUIRE(crc == ref_crc32(s, size), "apikey_crc32 differs from the reference", s, size);
	base62_encode_checksum(crc, digits);
	for (int i = 0; i < APIKEY_CHECKSUM_CHARS; i++)
	{
		REQUIRE(ref_digit(digits[i]) >= 0, "checksum digit is not base62", s, size);
		v = v * 62 + (uint64_t) ref_digit(digits[i]);
	}
	REQUIRE(v == crc, "checksum digits do not decode to the CRC", s, size);
	free(digits);
}

static void
check_prefix(const uint8_t *data, size_t size)
{
	const char *s = (const char *) data;

	REQUIRE(apikey_prefix_is_valid(s, size) == ref_prefix_valid(s, size),
			"apikey_prefix_is_valid differs from the reference", s, size);
}

/* base62_from_random keeps the bytes below 248, in order, as byte % 62. */
static void
check_from_random(const uint8_t *data, size_t size, size_t nchars)
{
	const uint8_t *bytes = data;
	char	   *out = malloc(nchars ? nchars : 1);
	size_t		consumed = (size_t) -1;
	int			r = base62_from_random(bytes, size, out, nchars, &consumed);
	size_t		filled = 0,
				used = 0;

	while (filled < nchars && used < size)
	{
		uint8_t		b = bytes[used++];

		if (b < 248)
		{
			REQUIRE(out[filled] == alphabet62[b % 62],
					"base62_from_random wrote the wrong digit", (char *) bytes, size);
			filled++;
		}
	}
	REQUIRE(consumed == used, "base62_from_random consumed a wrong count", (char *) bytes, size);
	REQUIRE(r == (filled == nchars ? (int) nchars : -1),
			"base62_from_random returned a wrong result", (char *) bytes, size);
	free(out);
}

/*
 * A key assembled from a prefix and random part taken from the input parses
 * back, and damage to it is caught.
 */
static void
check_assemble(const uint8_t *data, size_t size)
{
	size_t		plen;
	char	   *prefix;
	char	   *random_chars;
	char	   *key;
	size_t		len;
	size_t		parsed_plen = 0;
	size_t		pos;
	char		b;

	if (size < 3)
		return;
	plen = (size_t) data[0] % APIKEY_PREFIX_MAX + 1;
	prefix = malloc(plen);
	for (size_t i = 0; i < plen; i++)
		prefix[i] = prefix_alphabet[data[(1 + i) % size] % (sizeof(prefix_alphabet) - 1)];
	REQUIRE(apikey_prefix_is_valid(prefix, plen), "generated prefix refused", prefix, plen);

	random_chars = malloc(APIKEY_RANDOM_CHARS);
	if (base62_from_random(data + 1, size - 1, random_chars, APIKEY_RANDOM_CHARS, NULL) < 0)
		for (size_t i = 0; i < APIKEY_RANDOM_CHARS; i++)
			random_chars[i] = alphabet62[(data[i % size] + i) % 62];

	key = malloc(APIKEY_MAX_LEN + 1);
	len = apikey_assemble(prefix, plen, random_chars, key);
	REQUIRE(len == plen + 1 + APIKEY_BODY_CHARS && key[len] == '\0',
			"apikey_assemble returned a wrong length", key, len);
	REQUIRE(memcmp(key, prefix, plen) == 0 && key[plen] == '_' &&
			memcmp(key + plen + 1, random_chars, APIKEY_RANDOM_CHARS) == 0,
			"apikey_assemble changed its inputs", key, len);
	REQUIRE(ref_key_valid(key, len), "assembled key fails the reference format", key, len);
	{
		char	   *exact = exact_copy(key, len);

		REQUIRE(apikey_parse(exact, len, &parsed_plen) && parsed_plen == plen,
				"assembled key does not parse", key, len);
		free(exact);
	}

	/* one byte replaced, anywhere, by any other byte value: refused */
	pos = (size_t) data[1] % len;
	b = (char) data[2];
	if (b != key[pos])
	{
		char	   *bad = exact_copy(key, len);

		bad[pos] = b;
		REQUIRE(!apikey_parse(bad, len, NULL), "single-byte substitution accepted", bad, len);
		free(bad);
	}
	/*
	 * the same substitution with the checksum recomputed: the format rules
	 * alone decide, exactly as the reference says (a separator, prefix or
	 * body character of the wrong kind is refused, one of the right kind is
	 * accepted)
	 */
	if (pos < len - APIKEY_CHECKSUM_CHARS)
	{
		char	   *fixed = exact_copy(key, len);
		uint32_t	crc;

		fixed[pos] = b;
		crc = ref_crc32(fixed, len - APIKEY_CHECKSUM_CHARS);
		for (int i = APIKEY_CHECKSUM_CHARS - 1; i >= 0; i--)
		{
			fixed[len - APIKEY_CHECKSUM_CHARS + i] = alphabet62[crc % 62];
			crc /= 62;
		}
		REQUIRE(apikey_parse(fixed, len, NULL) == ref_key_valid(fixed, len),
				"apikey_parse and the format rules disagree on a re-checksummed key", fixed, len);
		free(fixed);
	}
	/* two adjacent distinct characters of the checksummed part swapped: refused */
	pos = (size_t) data[size - 1] % (len - APIKEY_CHECKSUM_CHARS - 1);
	if (key[pos] != key[pos + 1])
	{
		char	   *bad = exact_copy(key, len);

		bad[pos] = key[pos + 1];
		bad[pos + 1] = key[pos];
		REQUIRE(!apikey_parse(bad, len, NULL), "adjacent transposition accepted", bad, len);
		free(bad);
	}
	/* a truncation (to a length the input picks) is refused */
	{
		size_t		l = (size_t) data[size / 2] % len;
		char	   *cut = exact_copy(key, l);

		REQUIRE(!apikey_parse(cut, l, NULL), "truncated key accepted", key, l);
		free(cut);
	}

	free(key);
	free(random_chars);
	free(prefix);
}

/* The input split at its first NUL into pattern and permission (else both the input). */
static void
check_scope(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t		patlen = nul ? (size_t) (nul - data) : size;
	const uint8_t *permsrc = nul ? nul + 1 : data;
	size_t		permlen = nul ? size - patlen - 1 : size;
	char	   *pat = exact_copy(data, patlen);
	char	   *perm = exact_copy(permsrc, permlen);
	static const char star[1] = {'*'};
	bool		wellformed = ref_permission_wellformed(perm, permlen);
	bool		granted = scope_pattern_grants(pat, patlen, perm, permlen);

	REQUIRE(granted == ref_grants(pat, patlen, perm, permlen),
			granted ? "scope_pattern_grants granted what the rule refuses"
			: "scope_pattern_grants refused what the rule grants", data, size);
	if (wellformed)
	{
		REQUIRE(scope_pattern_grants(star, 1, perm, permlen),
				"\"*\" does not grant a well-formed permission", perm, permlen);
		REQUIRE(scope_pattern_grants(perm, permlen, perm, permlen),
				"a permission used as its own pattern does not grant it", perm, permlen);
	}
	else
	{
		REQUIRE(!granted, "an ill-formed permission was granted", data, size);
		REQUIRE(!scope_pattern_grants(star, 1, perm, permlen),
				"\"*\" granted an ill-formed permission", perm, permlen);
	}
	/* a pattern without '*' grants exactly itself */
	if (memchr(pat, '*', patlen) == NULL && granted)
		REQUIRE(patlen == permlen && memcmp(pat, perm, patlen) == 0,
				"a pattern without * granted another permission", data, size);

	free(perm);
	free(pat);
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_parse(data, size);
	check_parse_checksummed(data, size);
	check_crc(data, size);
	check_prefix(data, size);
	check_from_random(data, size, size ? data[0] % 64 : 0);
	check_from_random(data, size, APIKEY_RANDOM_CHARS);
	check_assemble(data, size);
	check_scope(data, size);
	return 0;
}
