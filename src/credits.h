/*
 * credits.h
 *		Credit balances and key quotas in shared memory: what apikey_charge
 *		reserves from, what the worker leases into and settles out of.
 *		The protocol is in credits.c.
 */
#ifndef APIKEYS_CREDITS_H
#define APIKEYS_CREDITS_H

#include "datatype/timestamp.h"
#include "utils/date.h"
#include "utils/numeric.h"

#include "keyformat.h"
#include "lookup.h"
#include "validate.h"

/* Credits are counted in units of 1/10000: amounts have at most 4 decimals. */
#define CREDIT_SCALE		10000
/* The largest amount, in credits (numeric(18,4) holds below 10^14). */
#define CREDIT_MAX			INT64CONST(99999999999999)

extern Size credits_shmem_size(void);
extern void credits_shmem_startup(void);
extern void credits_install_xact_callbacks(void);

/* Units of a numeric amount; 22023 naming argname unless it is within 0..CREDIT_MAX with at most 4 decimals (negative allowed if asked). */
extern int64 credit_units(Numeric amount, const char *argname, bool allow_negative);
/* The numeric of units, with at least one decimal (1000.0, 0.25). */
extern Numeric credit_numeric(int64 units);

/* Outcome of a reservation. */
typedef enum ChargeResult
{
	CHARGE_DONE,				/* reserved until the transaction ends */
	CHARGE_INSUFFICIENT			/* a pool has less than cost: nothing taken */
} ChargeResult;

/*
 * Reserves cost units from the owner's balance pool (balance_pool, 0: none
 * so insufficient) and the key's quota pool (quota_pool, 0: no quota) of
 * this database's extension instance keys_relid, for key_id spending on
 * day.  All or nothing.  *remaining gets the smaller of what is left of the
 * two (after the charge when done).  May wait for the worker to lease
 * credits, or for a reservation of another transaction to end when this
 * one holds none.
 */
extern ChargeResult credits_charge(Oid keys_relid, int64 balance_pool, int64 quota_pool,
								   int64 cost, Datum key_id, DateADT day,
								   int64 *remaining);

/*
 * After a decision (apikey_decide), the rest of a charge (charge.c): the
 * rate limits, then cost units of credit (checked) from the key's owner's
 * balance and its quota.  Returns OUTCOME_INSUFFICIENT_CREDITS when either
 * is short; the limits are then given back, as they are when the charge
 * fails with an error.  25006 on a hot standby, before any limit is used.
 */
extern Outcome charge_limited(Outcome outcome, const KeyRow *row, text *credit, int64 cost,
							  RateInfo *rate, int64 *remaining);

/* Gives back, at once, the reservation the last credits_charge made (still open). */
extern void credits_undo_last_charge(void);

/* Forgets every credit entry of a dropped database or extension instance. */
extern void credits_forget(Oid dbid, Oid keys_relid);

/* True if a charge found the credit table full within the last seconds. */
extern bool credits_pressure(void);
/*
 * True if the pools of database dbid want the worker (a lease, asked for
 * ahead or waited for, a refill, a reconciliation, room); *has_pools says
 * whether it has pools at all.  A waiting charge wakes the worker; a lease
 * asked for ahead waits for the worker's next look, every PREFETCH_POLL_MS
 * while the database has pools, so that the worker serves them in batches.
 */
extern bool credits_wanted(Oid dbid, bool *has_pools);
#define PREFETCH_POLL_MS	20

/*
 * Worker side (credits_worker.c), run in the worker's transaction with SPI
 * connected: serve the leases, refills and reconciliations charges wait
 * for; settle what committed charges spent, write per-key spend, announce
 * low balances, and hand idle pools back to their rows.
 */
extern void credits_serve_body(void *arg);
extern void credits_settle_body(void *arg);

#endif							/* APIKEYS_CREDITS_H */
