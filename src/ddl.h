/*
 * ddl.h
 *		The hooks that make DDL and the workers get along.
 */
#ifndef APIKEYS_DDL_H
#define APIKEYS_DDL_H

/* Installs the ProcessUtility and object-access hooks (from _PG_init, while preloading). */
extern void apikeys_install_ddl_hooks(void);

#endif							/* APIKEYS_DDL_H */
