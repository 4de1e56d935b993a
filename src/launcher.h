/*
 * launcher.h
 *		The launcher: one background worker that starts a worker per
 *		database where the extension exists.
 */
#ifndef APIKEYS_LAUNCHER_H
#define APIKEYS_LAUNCHER_H

#include "fmgr.h"

/* Registers the launcher (from _PG_init, while preloading). */
extern void apikeys_register_launcher(void);

extern PGDLLEXPORT void apikeys_launcher_main(Datum arg);

#endif							/* APIKEYS_LAUNCHER_H */
