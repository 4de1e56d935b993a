/*
 * scope_match.h
 *		Does a scope's permission pattern grant a requested permission?
 *
 * A permission is "resource:action" (colon-separated segments).  The pattern
 * "*" alone grants every permission; otherwise pattern and permission must
 * have the same number of segments, and each pattern segment is either "*",
 * granting any one whole segment, or must equal the permission's segment.
 * An empty permission, or one with an empty segment, is granted by nothing.
 * Pure C: no PostgreSQL headers.
 */
#ifndef APIKEYS_SCOPE_MATCH_H
#define APIKEYS_SCOPE_MATCH_H

#include <stdbool.h>
#include <stddef.h>

extern bool scope_pattern_grants(const char *pattern, size_t patternlen,
								 const char *permission, size_t permissionlen);

#endif							/* APIKEYS_SCOPE_MATCH_H */
