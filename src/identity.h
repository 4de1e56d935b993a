/*
 * identity.h
 *		The key that authenticated the current transaction (identity.c).
 */
#ifndef APIKEYS_IDENTITY_H
#define APIKEYS_IDENTITY_H

/* Installs the emit_log_hook that keeps refused requests out of the log. */
extern void identity_install_log_hook(void);

#endif							/* APIKEYS_IDENTITY_H */
