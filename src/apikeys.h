/*
 * apikeys.h
 *		Module-wide declarations: GUC variables and the preload check.
 */
#ifndef APIKEYS_H
#define APIKEYS_H

/* GUC apikeys.default_prefix: the prefix of keys created without one. */
extern char *apikeys_default_prefix;

/* GUC apikeys.trusted_proxies: proxies whose X-Forwarded-For entries are believed. */
extern int	apikeys_trusted_proxies;

/* Raises 55000 with a hint unless the library came in through shared_preload_libraries. */
extern void apikeys_require_preload(void);

#endif							/* APIKEYS_H */
