/*
 * guc.h
 *		Every apikeys setting (GUC) with its default, and the preload check.
 *		The variables live in guc.c; the modules that use them read them.
 */
#ifndef APIKEYS_GUC_H
#define APIKEYS_GUC_H

#include "fmgr.h"

/* Defaults, written once: guc.c initialises the variables and the GUCs from them. */
#define DEFAULT_PREFIX					"ak"
#define DEFAULT_BACKEND_CACHE_KEYS		16384
#define DEFAULT_TRUSTED_PROXIES			1
#define DEFAULT_MAX_TRACKED_KEYS		100000
#define DEFAULT_FLUSH_INTERVAL_MS		10000
#define DEFAULT_EXPIRY_INTERVAL_S		60
#define DEFAULT_USAGE_RETENTION_DAYS	400
#define DEFAULT_LOG_REFUSALS			false
#define DEFAULT_MAX_CREDIT_POOLS		10000
#define DEFAULT_CREDIT_LEASE			100
#define DEFAULT_MAX_RATELIMIT_STATES	100000

/* apikeys.default_prefix: the prefix of keys created without one. */
extern char *apikeys_default_prefix;

/* apikeys.backend_cache_keys: keys each backend keeps cached (0: none). */
extern int	apikeys_backend_cache_keys;

/* apikeys.trusted_proxies: proxies whose X-Forwarded-For entries are believed. */
extern int	apikeys_trusted_proxies;

/* apikeys.log_refusals: write refused requests (PT401/PT403) to the server log. */
extern bool apikeys_log_refusals;

/* apikeys.max_tracked_keys: capacity of the shared-memory counter table. */
extern int	apikeys_max_tracked_keys;

/* apikeys.max_credit_pools: capacity of the shared-memory credit table. */
extern int	apikeys_max_credit_pools;

/* apikeys.credit_lease: credits the worker moves to shared memory at a time, per pool. */
extern int	apikeys_credit_lease;

/* apikeys.max_ratelimit_states: capacity of the shared-memory rate limit windows. */
extern int	apikeys_max_ratelimit_states;

/* apikeys.flush_interval (ms), expiry_interval (s), usage_retention_days. */
extern int	apikeys_flush_interval;
extern int	apikeys_expiry_interval;
extern int	apikeys_usage_retention_days;

/* apikeys.primary_conninfo: where a standby ships usage ("": primary_conninfo). */
extern char *apikeys_primary_conninfo;

/*
 * Defines the GUCs: the session ones always, the server ones only while
 * preloading (preloading = true), when they can take effect; then reserves
 * the "apikeys." prefix.
 */
extern void apikeys_define_gucs(bool preloading);

/* Called by _PG_init when loaded through shared_preload_libraries. */
extern void apikeys_mark_preloaded(void);

/* Raises 55000 with a hint unless the library came in through shared_preload_libraries. */
extern void apikeys_require_preload(void);

#endif							/* APIKEYS_GUC_H */
