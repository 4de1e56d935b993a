/*
 * apikeys.h
 *		Names shared by the modules that use the "apikeys" LWLock tranche.
 */
#ifndef APIKEYS_H
#define APIKEYS_H

#include "storage/lwlock.h"

/* The named LWLock tranche and the index of each of its locks. */
#define APIKEYS_TRANCHE			"apikeys"
#define APIKEYS_LOCK_USAGE		0	/* the counter table (usage.c) */
#define APIKEYS_LOCK_SLOTS		1	/* the worker slots (slots.c) */
#define APIKEYS_LOCK_CREDITS	2	/* the credit table (credits.c) */
#define APIKEYS_NUM_LOCKS		3

/* The lock of the tranche at index i (after shared memory is set up). */
static inline LWLock *
apikeys_lock(int i)
{
	return &(GetNamedLWLockTranche(APIKEYS_TRANCHE))[i].lock;
}

#endif							/* APIKEYS_H */
