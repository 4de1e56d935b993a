/*
 * ratelimit.h
 *		Rate limits per key and per owner, counted in shared memory: a
 *		sliding window kept in sub-buckets, all limits of a request checked
 *		and consumed together or not at all.  The argument is in ratelimit.c.
 */
#ifndef APIKEYS_RATELIMIT_H
#define APIKEYS_RATELIMIT_H

#include "datatype/timestamp.h"

#include "lookup.h"

/* The most constrained limit of a request, for the validation record. */
typedef struct RateInfo
{
	bool		limited;		/* the key or its owner has a limit */
	int32		limit;			/* its max */
	int32		remaining;		/* requests left in its window after this one */
	TimestampTz reset;			/* when it next admits one more */
} RateInfo;

/* The most limits one request consumes (a key's and its owner's). */
#define RATELIMIT_MAX_PER_REQUEST	64

extern Size ratelimit_shmem_size(void);
extern void ratelimit_shmem_request(void);
extern void ratelimit_shmem_startup(void);

/*
 * Checks every limit of the key row and of its owner at now; true if all
 * have room, and then, if consume, each is counted once.  False: nothing
 * counted.  *info describes the most constrained limit either way.
 */
extern bool ratelimit_check(const KeyRow *row, TimestampTz now, RateInfo *info,
							bool consume);

/* Removes states whose window has passed (the worker, or a full table). */
extern void ratelimit_purge(void);

/* True if a validation found the state table full within the last seconds. */
extern bool ratelimit_pressure(void);

#endif							/* APIKEYS_RATELIMIT_H */
