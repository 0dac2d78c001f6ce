/*
 * azure_local_ai: module entry point.
 *
 * Loaded through shared_preload_libraries, the module defines its server parameters and
 * installs the extension allowlist. The SQL functions (functions.c) are bound by the
 * azure_local_ai extension's script.
 */
#include "azure_local_ai.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

char	   *alai_allowed_extensions = NULL;
char	   *alai_service_url = NULL;
char	   *alai_service_token = NULL;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomStringVariable("azure.extensions",
							   "Extensions that may be created with CREATE EXTENSION.",
							   "A comma-separated list of extension names, matched "
							   "case-insensitively. It binds every role, superusers included.",
							   &alai_allowed_extensions,
							   "",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   alai_allowlist_check_hook, NULL, NULL);

	DefineCustomStringVariable("azure_local_ai.service_url",
							   "Where the inference sidecar listens.",
							   "http://host:port, or unix:/path/to/socket for a Unix socket.",
							   &alai_service_url,
							   "http://127.0.0.1:8090",
							   PGC_SIGHUP,
							   0,
							   alai_service_url_check_hook, NULL, NULL);

	/*
	 * A secret: superusers only, and left out of SHOW ALL and pg_settings so that it does not
	 * appear in the console's parameter list.
	 */
	DefineCustomStringVariable("azure_local_ai.service_token",
							   "Bearer token for the inference sidecar (empty: none).",
							   NULL,
							   &alai_service_token,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	MarkGUCPrefixReserved("azure_local_ai");

	/*
	 * The allowlist binds the whole server only when the module is preloaded; loaded later
	 * (by a function call) it would protect a single session, so it is not installed then.
	 */
	if (process_shared_preload_libraries_in_progress)
		alai_allowlist_init();
}
