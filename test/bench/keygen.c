/*
 * keygen.c
 *		Bench-only generator of valid API keys, for loading a large key set
 *		faster than one apikey_create call per key.
 *
 *	keygen N PREFIX FIRST
 *
 * Prints N lines "n<TAB>key<TAB>id" for n = FIRST .. FIRST + N - 1.  Keys are
 * assembled by the extension's own src/keyformat.c (base62 body, CRC32
 * checksum) from the same kind of randomness apikey_create draws: 32 base62
 * characters by rejection sampling of random bytes, and an id of "key_" and
 * 16 base62 characters.  The bench computes the digest in SQL with
 * pgcrypto's digest(key, 'sha256'), the value apikey_create stores, and
 * checks that rows loaded this way have apikey_create's shape and validate.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "keyformat.h"

#define POOL_SIZE	65536
#define DRAW		64			/* bytes offered per base62 string, as apikey_create */

static uint8_t pool[POOL_SIZE];
static size_t pool_used = POOL_SIZE;

/* Points at DRAW fresh random bytes from the kernel, refilling the pool. */
static const uint8_t *
random_draw(void)
{
	const uint8_t *p;

	if (pool_used + DRAW > POOL_SIZE)
	{
		size_t		got = 0;

		while (got < POOL_SIZE)
		{
			ssize_t		n = getrandom(pool + got, POOL_SIZE - got, 0);

			if (n < 0)
			{
				perror("getrandom");
				exit(1);
			}
			got += (size_t) n;
		}
		pool_used = 0;
	}
	p = pool + pool_used;
	pool_used += DRAW;
	return p;
}

/* Writes nchars uniformly random base62 characters to out. */
static void
random_base62(char *out, size_t nchars)
{
	while (base62_from_random(random_draw(), DRAW, out, nchars, NULL) < 0)
		;
}

int
main(int argc, char **argv)
{
	long		count;
	long		first;
	const char *prefix;
	size_t		prefixlen;

	if (argc != 4)
	{
		fprintf(stderr, "usage: %s N PREFIX FIRST\n", argv[0]);
		return 2;
	}
	count = strtol(argv[1], NULL, 10);
	prefix = argv[2];
	first = strtol(argv[3], NULL, 10);
	prefixlen = strlen(prefix);
	if (count < 0 || !apikey_prefix_is_valid(prefix, prefixlen))
	{
		fprintf(stderr, "keygen: bad count or prefix\n");
		return 2;
	}

	for (long n = first; n < first + count; n++)
	{
		char		random_chars[APIKEY_RANDOM_CHARS];
		char		key[APIKEY_MAX_LEN + 1];
		char		id[APIKEY_ID_LEN + 1];

		random_base62(random_chars, APIKEY_RANDOM_CHARS);
		apikey_assemble(prefix, prefixlen, random_chars, key);
		memcpy(id, APIKEY_ID_TAG, strlen(APIKEY_ID_TAG));
		random_base62(id + strlen(APIKEY_ID_TAG), APIKEY_ID_RANDOM_CHARS);
		id[APIKEY_ID_LEN] = '\0';
		printf("%ld\t%s\t%s\n", n, key, id);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}
