/*
 * scope_match.c
 *		Segment-wise matching of scope permission patterns.
 *
 * Reads only the bytes it is given (neither string needs a terminator) and
 * allocates nothing.
 */
#include "scope_match.h"

#include <string.h>

/* Length of the segment starting at s, up to the next ':' or end. */
static size_t
segment_length(const char *s, size_t len)
{
	const char *colon = memchr(s, ':', len);

	return colon ? (size_t) (colon - s) : len;
}

/* True if no segment of the permission is empty. */
static bool
permission_is_wellformed(const char *perm, size_t len)
{
	size_t		pos = 0;

	for (;;)
	{
		size_t		seg = segment_length(perm + pos, len - pos);

		if (seg == 0)
			return false;
		pos += seg;
		if (pos == len)
			return true;
		pos++;					/* skip ':' */
	}
}

bool
scope_pattern_grants(const char *pattern, size_t patternlen,
					 const char *perm, size_t permlen)
{
	size_t		ppos = 0;
	size_t		qpos = 0;

	if (permlen == 0 || !permission_is_wellformed(perm, permlen))
		return false;
	if (patternlen == 1 && pattern[0] == '*')
		return true;

	for (;;)
	{
		size_t		pseg = segment_length(pattern + ppos, patternlen - ppos);
		size_t		qseg = segment_length(perm + qpos, permlen - qpos);
		bool		wildcard = (pseg == 1 && pattern[ppos] == '*');

		if (!wildcard &&
			(pseg != qseg || memcmp(pattern + ppos, perm + qpos, pseg) != 0))
			return false;
		ppos += pseg;
		qpos += qseg;

		/* both must end together */
		if (ppos == patternlen || qpos == permlen)
			return ppos == patternlen && qpos == permlen;
		ppos++;
		qpos++;
	}
}
