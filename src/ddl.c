/*
 * ddl.c
 *		What DDL means for the workers and the counters: database commands
 *		that need the worker out of the way, and the extension's own
 *		CREATE and DROP.
 *
 * DROP DATABASE, ALTER DATABASE ... RENAME / SET TABLESPACE and CREATE
 * DATABASE ... TEMPLATE refuse to run while another connection (the
 * worker's) uses the database.  The ProcessUtility hook pauses that
 * database's worker (stops it and keeps the launcher from restarting it)
 * for the duration of the command.  Invariants:
 *	- A pause is taken only by a caller that PostgreSQL will let run the
 *	  command (owner, superuser, or CREATEDB for a template), so a role
 *	  without the privilege never stops a worker.
 *	- A pause is released on every way out: normal end, ERROR (a cancel, a
 *	  timeout, a failed check inside PostgreSQL), and FATAL or backend exit
 *	  (a before_shmem_exit callback releases what this backend still holds).
 *
 * CREATE EXTENSION asks the launcher for a worker at commit.  DROP
 * EXTENSION wakes the worker at commit so that it leaves, and the dropping
 * transaction itself forgets the counters of the dropped keys table when it
 * commits (an object-access hook sees the table dropped), so that they
 * never occupy the counter table, whether or not a worker is running.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_class.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "credits.h"
#include "ddl.h"
#include "slots.h"
#include "usage.h"

PG_FUNCTION_INFO_V1(apikeys_launch_worker);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static object_access_hook_type prev_object_access_hook = NULL;

/* This backend's pause, if it holds one (at most one command at a time). */
static Oid	paused_dbid = InvalidOid;
static bool exit_callback_registered = false;

/* What to do when the current transaction commits. */
static bool launch_at_commit = false;	/* CREATE EXTENSION ran */
static bool wake_at_commit = false; /* DROP EXTENSION ran */
static Oid	forget_at_commit = InvalidOid;	/* keys table dropped */
static int	forget_level = 0;	/* nesting level that dropped it */
static bool xact_callbacks_registered = false;

/* ----------------------------------------------------------------------
 * Commit and abort
 * ----------------------------------------------------------------------
 */

static void
reset_at_commit(void)
{
	launch_at_commit = wake_at_commit = false;
	forget_at_commit = InvalidOid;
	forget_level = 0;
}

/* Carries out at commit what CREATE and DROP EXTENSION asked for. */
static void
commit_xact_callback(XactEvent event, void *arg)
{
	/* a prepared transaction's DDL takes effect later, in another backend */
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PREPARE)
		return;
	if (event == XACT_EVENT_COMMIT)
	{
		if (OidIsValid(forget_at_commit))
		{
			usage_forget(MyDatabaseId, forget_at_commit);
			credits_forget(MyDatabaseId, forget_at_commit);
		}
		if (launch_at_commit)
			worker_request_start(MyDatabaseId);
		if (launch_at_commit || wake_at_commit)
			worker_wake(MyDatabaseId);
	}
	reset_at_commit();
}

/* A subtransaction that dropped the keys table rolled back: keep its counters. */
static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (!OidIsValid(forget_at_commit))
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB && forget_level >= level)
	{
		forget_at_commit = InvalidOid;
		forget_level = 0;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB && forget_level >= level)
		forget_level = level - 1;
}

static void
register_xact_callbacks(void)
{
	if (!xact_callbacks_registered)
	{
		RegisterXactCallback(commit_xact_callback, NULL);
		RegisterSubXactCallback(subxact_callback, NULL);
		xact_callbacks_registered = true;
	}
}

/* apikeys._launch_worker(): called by the install script. */
Datum
apikeys_launch_worker(PG_FUNCTION_ARGS)
{
	register_xact_callbacks();
	launch_at_commit = true;
	PG_RETURN_VOID();
}

/* Object-access hook: notes a drop of apikeys.keys, to forget its counters. */
static void
apikeys_object_access(ObjectAccessType access, Oid classId, Oid objectId,
					  int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (access == OAT_DROP && classId == RelationRelationId && subId == 0 &&
		get_rel_relkind(objectId) == RELKIND_RELATION)
	{
		char	   *name = get_rel_name(objectId);
		Oid			nsp = get_rel_namespace(objectId);

		if (name && strcmp(name, "keys") == 0 &&
			nsp == get_namespace_oid("apikeys", true))
		{
			register_xact_callbacks();
			forget_at_commit = objectId;
			forget_level = GetCurrentTransactionNestLevel();
		}
	}
}

/* ----------------------------------------------------------------------
 * Stepping aside for database DDL
 * ----------------------------------------------------------------------
 */

/* Backend exit (FATAL included): releases a pause this backend still holds. */
static void
release_pause_at_exit(int code, Datum arg)
{
	if (OidIsValid(paused_dbid))
	{
		Oid			dbid = paused_dbid;

		paused_dbid = InvalidOid;
		worker_resume(dbid);
	}
}

/*
 * The database a utility statement needs free of other connections, if
 * any; *template says it is only the source of CREATE DATABASE.
 */
static Oid
database_needing_exclusive_access(Node *parsetree, bool *template)
{
	const char *dbname = NULL;
	ListCell   *lc;

	*template = false;
	switch (nodeTag(parsetree))
	{
		case T_DropdbStmt:
			dbname = ((DropdbStmt *) parsetree)->dbname;
			break;
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				dbname = ((RenameStmt *) parsetree)->subname;
			break;
		case T_CreatedbStmt:
			*template = true;
			dbname = "template1";
			foreach(lc, ((CreatedbStmt *) parsetree)->options)
			{
				DefElem    *opt = lfirst_node(DefElem, lc);

				if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
					dbname = defGetString(opt);
			}
			break;
		case T_AlterDatabaseStmt:
			foreach(lc, ((AlterDatabaseStmt *) parsetree)->options)
			{
				DefElem    *opt = lfirst_node(DefElem, lc);

				if (strcmp(opt->defname, "tablespace") == 0)
					dbname = ((AlterDatabaseStmt *) parsetree)->dbname;
			}
			break;
		default:
			break;
	}
	return dbname ? get_database_oid(dbname, true) : InvalidOid;
}

/* True if role owns database dbid (or is a superuser). */
static bool
database_owned_by(Oid dbid, Oid role)
{
#if PG_VERSION_NUM >= 160000
	return object_ownercheck(DatabaseRelationId, dbid, role);
#else
	return pg_database_ownercheck(dbid, role);
#endif
}

/*
 * True if PostgreSQL would let the current user run the command on dbid:
 * the owner (or a superuser) for DROP, RENAME and SET TABLESPACE; for a
 * CREATE DATABASE template, a CREATEDB role if it is marked as a template,
 * else its owner.  Finer checks (RENAME also needs CREATEDB) are left to
 * PostgreSQL: a pause that then fails is released at once.
 */
static bool
may_run_database_command(Oid dbid, bool template)
{
	Oid			user = GetUserId();

	if (superuser())
		return true;
	if (!template)
		return database_owned_by(dbid, user);
	if (!have_createdb_privilege())
		return false;
	if (database_owned_by(dbid, user))
		return true;
	{
		HeapTuple	tuple = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dbid));
		bool		is_template = false;

		if (HeapTupleIsValid(tuple))
		{
			is_template = ((Form_pg_database) GETSTRUCT(tuple))->datistemplate;
			ReleaseSysCache(tuple);
		}
		return is_template;
	}
}

/* Runs the utility statement through the next hook or the standard path. */
static void
run_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			ProcessUtilityContext context, ParamListInfo params,
			QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* Runs the statement with the worker of dbid stopped, restarting it after. */
static void
run_utility_paused(Oid dbid, PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	if (!exit_callback_registered)
	{
		before_shmem_exit(release_pause_at_exit, (Datum) 0);
		exit_callback_registered = true;
	}
	/* nothing that can throw between taking the pause and noting it */
	if (!worker_pause(dbid))
	{
		run_utility(pstmt, queryString, readOnlyTree, context, params,
					queryEnv, dest, qc);
		return;
	}
	paused_dbid = dbid;
	PG_TRY();
	{
		worker_wait_stopped(dbid);
		run_utility(pstmt, queryString, readOnlyTree, context, params,
					queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		paused_dbid = InvalidOid;
		worker_resume(dbid);
	}
	PG_END_TRY();
}

static void
apikeys_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					   bool readOnlyTree, ProcessUtilityContext context,
					   ParamListInfo params, QueryEnvironment *queryEnv,
					   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	bool		template;
	Oid			dbid;

	if (IsA(stmt, DropStmt) && ((DropStmt *) stmt)->removeType == OBJECT_EXTENSION)
	{
		register_xact_callbacks();
		wake_at_commit = true;
	}

	dbid = database_needing_exclusive_access(stmt, &template);
	if (OidIsValid(dbid) && dbid != MyDatabaseId && !OidIsValid(paused_dbid) &&
		may_run_database_command(dbid, template))
		run_utility_paused(dbid, pstmt, queryString, readOnlyTree, context,
						   params, queryEnv, dest, qc);
	else
		run_utility(pstmt, queryString, readOnlyTree, context, params,
					queryEnv, dest, qc);
}

/* Installs the hooks (from _PG_init, while preloading). */
void
apikeys_install_ddl_hooks(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = apikeys_ProcessUtility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = apikeys_object_access;
}
