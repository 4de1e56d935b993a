/*
 * ship.h
 *		A hot standby's worker ships usage counts to the primary (ship.c).
 */
#ifndef APIKEYS_SHIP_H
#define APIKEYS_SHIP_H

#include "slots.h"
#include "usage.h"

/* What the shipping connection calls itself on the primary. */
#define SHIP_APPLICATION_NAME	"apikeys usage shipping"

/* Before the first ship: where this worker's status goes. */
extern void ship_init(WorkerSlot *slot);

/*
 * Ships this database's counters to the primary, in as many batches as
 * they take (keys_relid: the keys table; dbname: the database).  False if
 * something failed (recorded, and logged at most once a minute) or the
 * worker must stop; the counts then wait for the next attempt.  The
 * connection is closed again before it returns.
 */
extern bool ship_usage(Oid keys_relid, const char *dbname);

/* Closes the connection to the primary, if any. */
extern void ship_disconnect(void);

/*
 * After promotion: a batch the primary never confirmed is applied here,
 * unless it was applied there and replicated.  ship_resolve_body runs in
 * the worker's transaction (SPI connected); after commit,
 * ship_resolve_settle subtracts the batch.  What must outlive the
 * transaction is allocated in cxt.
 */
typedef struct ShipResolve
{
	Oid			keys_relid;
	MemoryContext cxt;
	uint64		batch;			/* 0: there was none */
	int			n;
	UsageDelta *deltas;
	bool	   *matched;
	bool	   *last_used_done;
} ShipResolve;

extern void ship_resolve_body(void *arg);
extern void ship_resolve_settle(ShipResolve *rs);

#endif							/* APIKEYS_SHIP_H */
