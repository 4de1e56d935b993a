/*
 * keyformat.c
 *		API key text format: base62 encoding, CRC32 checksum, parsing.
 *
 * Owns the shape of a key and nothing else: no I/O, no allocation, no
 * PostgreSQL headers.  Every function reads only the bytes it is given, so a
 * candidate key of any length and content can be handed to apikey_parse.
 */
#include "keyformat.h"

#include <string.h>

static const char base62_alphabet[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* CRC-32 lookup for one nibble, reflected polynomial 0xEDB88320. */
static const uint32_t crc32_nibble[16] = {
	0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC,
	0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
	0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
	0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C
};

/* Value of a base62 digit, or -1. */
static int
base62_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'Z')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 36;
	return -1;
}

/*
 * Fills out with nchars base62 digits drawn uniformly from random bytes by
 * rejection: a byte below 248 (= 4 * 62) gives digit byte % 62, others are
 * skipped, so every digit is equally likely.
 */
int
base62_from_random(const uint8_t *random, size_t nrandom,
				   char *out, size_t nchars, size_t *consumed)
{
	size_t		used = 0;
	size_t		filled = 0;

	while (filled < nchars && used < nrandom)
	{
		uint8_t		b = random[used++];

		if (b < 248)
			out[filled++] = base62_alphabet[b % 62];
	}
	if (consumed)
		*consumed = used;
	return filled == nchars ? (int) filled : -1;
}

uint32_t
apikey_crc32(const char *data, size_t len)
{
	uint32_t	crc = 0xFFFFFFFF;

	for (size_t i = 0; i < len; i++)
	{
		crc ^= (uint8_t) data[i];
		crc = (crc >> 4) ^ crc32_nibble[crc & 0x0F];
		crc = (crc >> 4) ^ crc32_nibble[crc & 0x0F];
	}
	return crc ^ 0xFFFFFFFF;
}

void
base62_encode_checksum(uint32_t v, char *out)
{
	for (int i = APIKEY_CHECKSUM_CHARS - 1; i >= 0; i--)
	{
		out[i] = base62_alphabet[v % 62];
		v /= 62;
	}
}

bool
apikey_prefix_is_valid(const char *s, size_t len)
{
	if (len < 1 || len > APIKEY_PREFIX_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			return false;
	}
	return true;
}

size_t
apikey_assemble(const char *prefix, size_t prefixlen,
				const char *random_chars, char *out)
{
	size_t		len = 0;

	memcpy(out, prefix, prefixlen);
	len += prefixlen;
	out[len++] = '_';
	memcpy(out + len, random_chars, APIKEY_RANDOM_CHARS);
	len += APIKEY_RANDOM_CHARS;
	base62_encode_checksum(apikey_crc32(out, len), out + len);
	len += APIKEY_CHECKSUM_CHARS;
	out[len] = '\0';
	return len;
}

/*
 * The body has a fixed length and no underscore, so the separator is the
 * character just before it; everything ahead of it is the prefix.
 */
bool
apikey_parse(const char *key, size_t len, size_t *prefixlen)
{
	size_t		plen;
	char		expected[APIKEY_CHECKSUM_CHARS];

	if (key == NULL || len < APIKEY_MIN_LEN || len > APIKEY_MAX_LEN)
		return false;
	plen = len - APIKEY_BODY_CHARS - 1;
	if (key[plen] != '_' || !apikey_prefix_is_valid(key, plen))
		return false;
	for (size_t i = plen + 1; i < len; i++)
		if (base62_value(key[i]) < 0)
			return false;

	base62_encode_checksum(apikey_crc32(key, len - APIKEY_CHECKSUM_CHARS),
						   expected);
	if (memcmp(expected, key + len - APIKEY_CHECKSUM_CHARS,
			   APIKEY_CHECKSUM_CHARS) != 0)
		return false;

	if (prefixlen)
		*prefixlen = plen;
	return true;
}
