/*
 * azure.extensions: which extensions CREATE EXTENSION may create.
 *
 * Two hooks enforce the list:
 *   - the ProcessUtility hook checks the extension named by CREATE EXTENSION, and by ALTER
 *     EXTENSION ... UPDATE, before any work is done, so the error names what the user typed;
 *   - the object-access hook checks every extension as it is created, which also covers the
 *     dependencies that CREATE EXTENSION ... CASCADE creates on the way.
 * An update runs the extension's update scripts, as a creation runs its install script: an
 * extension taken off the list after it was created can still be used and dropped, but not
 * updated. Other ALTER EXTENSION forms run no script of the extension and are left alone.
 * Superusers are bound too: the list is a platform policy, not a privilege (a superuser can
 * change the list itself, so it is no boundary against them).
 */
#include "azure_local_ai.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

static ProcessUtility_hook_type prev_process_utility = NULL;
static object_access_hook_type prev_object_access = NULL;

/* Does the comma-separated list contain name (case-insensitively, spaces and quotes ignored)? */
static bool
allowlist_contains(const char *list, const char *name)
{
	const char *p = list ? list : "";
	size_t		namelen = strlen(name);

	while (*p)
	{
		const char *start;
		const char *end;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if (end - start >= 2 && *start == '"' && end[-1] == '"')
		{
			start++;
			end--;
		}
		if ((size_t) (end - start) == namelen && pg_strncasecmp(start, name, namelen) == 0)
			return true;
	}
	return false;
}

static void
check_extension_allowed(const char *name, const char *action)
{
	char	   *upper;

	if (allowlist_contains(alai_allowed_extensions, name))
		return;
	/* the portal shows extension names in upper case */
	upper = pstrdup(name);
	for (char *p = upper; *p; p++)
		*p = pg_toupper((unsigned char) *p);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("extension \"%s\" is not allow-listed for this server, so it cannot be %s",
					name, action),
			 errdetail("The server parameter azure.extensions lists the extensions that may be "
					   "created or updated; currently: \"%s\".",
					   alai_allowed_extensions ? alai_allowed_extensions : ""),
			 errhint("An administrator can allow it by ticking %s in the azure.extensions "
					 "parameter of the console's Server parameters blade (or adding \"%s\" to "
					 "azure.extensions and reloading the configuration). "
					 "SHOW azure.extensions lists the allowed extensions.",
					 upper, name)));
}

bool
alai_allowlist_check_hook(char **newval, void **extra, GucSource source)
{
	const char *p;

	/* Names are identifiers: reject characters no extension name could contain. */
	for (p = *newval; *p; p++)
	{
		if (*p == ';' || *p == '\'' || *p == '\n' || *p == '\r')
		{
			GUC_check_errdetail("azure.extensions must be a comma-separated list of extension "
								"names, e.g. \"vector,azure_local_ai\".");
			return false;
		}
	}
	return true;
}

static void
alai_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					 ProcessUtilityContext context, ParamListInfo params,
					 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, CreateExtensionStmt) && !IsBinaryUpgrade)
	{
		CreateExtensionStmt *stmt = (CreateExtensionStmt *) parsetree;

		/* IF NOT EXISTS on an existing extension creates nothing: nothing to refuse. */
		if (!(stmt->if_not_exists && OidIsValid(get_extension_oid(stmt->extname, true))))
			check_extension_allowed(stmt->extname, "created");
	}
	else if (IsA(parsetree, AlterExtensionStmt) && !IsBinaryUpgrade)
		check_extension_allowed(((AlterExtensionStmt *) parsetree)->extname, "updated");

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
							 dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
}

/*
 * The name of an extension created by the current command. Its pg_extension row is not yet
 * visible to the command's snapshot, hence SnapshotSelf.
 */
static char *
new_extension_name(Oid extension_oid)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	char	   *name = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extension_oid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, SnapshotSelf, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		name = pstrdup(NameStr(((Form_pg_extension) GETSTRUCT(tuple))->extname));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return name;
}

static void
alai_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access)
		prev_object_access(access, classId, objectId, subId, arg);

	if (access == OAT_POST_CREATE && classId == ExtensionRelationId && !IsBinaryUpgrade)
	{
		char	   *name = new_extension_name(objectId);

		if (name)
			check_extension_allowed(name, "created");
	}
}

void
alai_allowlist_init(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = alai_process_utility;
	prev_object_access = object_access_hook;
	object_access_hook = alai_object_access;
}
