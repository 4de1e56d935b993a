/*
 * worker.h
 *		The per-database worker.
 */
#ifndef APIKEYS_WORKER_H
#define APIKEYS_WORKER_H

#include "fmgr.h"

extern PGDLLEXPORT void apikeys_worker_main(Datum arg);

#endif							/* APIKEYS_WORKER_H */
