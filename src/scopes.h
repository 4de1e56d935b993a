/*
 * scopes.h
 *		What a scope grants (scopes.c).
 */
#ifndef APIKEYS_SCOPES_H
#define APIKEYS_SCOPES_H

#include "postgres.h"

/* True if one of scope's (text datum) permission patterns grants permission. */
extern bool scope_grants(Datum scope, text *permission);

/* Raises 22023 for an unknown scope, listing the valid ones (SPI connected);
 * locks the scope row FOR KEY SHARE so it outlives the caller's transaction. */
extern void scope_require_exists(Datum scope);

#endif							/* APIKEYS_SCOPES_H */
