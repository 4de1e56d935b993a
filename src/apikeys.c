/*
 * apikeys.c
 *		Module initialisation: _PG_init and the shared memory hooks.
 *
 * While preloading, _PG_init defines every GUC, asks for shared memory and
 * the LWLock tranche (one lock for the counter table, one for the worker
 * slots), installs the DDL hooks and registers the launcher.  Loaded any
 * other way it defines only the session GUCs, and every SQL function then
 * refuses with 55000 (guc.c).  Under pg_upgrade (IsBinaryUpgrade) no
 * launcher is registered.
 *
 * This file depends on every module and no module depends on it.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "apikeys.h"
#include "credits.h"
#include "ddl.h"
#include "guc.h"
#include "identity.h"
#include "launcher.h"
#include "ratelimit.h"
#include "slots.h"
#include "usage.h"

PG_MODULE_MAGIC;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

/* Reserves shared memory and the tranche's LWLocks. */
static void
apikeys_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(add_size(add_size(usage_shmem_size(), slots_shmem_size()),
									add_size(credits_shmem_size(), ratelimit_shmem_size())));
	ratelimit_shmem_request();
	RequestNamedLWLockTranche(APIKEYS_TRANCHE, APIKEYS_NUM_LOCKS);
}

/* Attaches to (or creates) the shared state. */
static void
apikeys_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	usage_shmem_startup();
	slots_shmem_startup();
	credits_shmem_startup();
	ratelimit_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

void
_PG_init(void)
{
	apikeys_define_gucs(process_shared_preload_libraries_in_progress);
	identity_install_log_hook();
	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = apikeys_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = apikeys_shmem_startup;
	apikeys_install_ddl_hooks();
	credits_install_xact_callbacks();
	if (!IsBinaryUpgrade)
		apikeys_register_launcher();

	apikeys_mark_preloaded();
}
