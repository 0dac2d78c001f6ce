/*
 * azure_local_ai: shared declarations of the module's parts.
 *
 *   azure_local_ai.c  _PG_init: server parameters and hooks
 *   allowlist.c       azure.extensions, enforced on CREATE EXTENSION
 *   sidecar.c         HTTP client for the inference sidecar (libcurl, interruptible)
 *   functions.c       the SQL functions of the azure_local_ai extension
 */
#ifndef AZURE_LOCAL_AI_H
#define AZURE_LOCAL_AI_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#define AZURE_LOCAL_AI_VERSION "1.1.0"

/* server parameters (GUCs) */
extern char *alai_allowed_extensions;	/* azure.extensions */
extern char *alai_service_url;	/* azure_local_ai.service_url */
extern char *alai_service_token;	/* azure_local_ai.service_token */

/* allowlist.c */
extern void alai_allowlist_init(void);
extern bool alai_allowlist_check_hook(char **newval, void **extra, GucSource source);

/* sidecar.c */
typedef struct SidecarResponse
{
	long		status;			/* HTTP status */
	char	   *body;			/* palloc'd, NUL-terminated after body_len bytes */
	size_t		body_len;
	char	   *content_type;	/* palloc'd, or NULL */
} SidecarResponse;

extern bool alai_service_url_check_hook(char **newval, void **extra, GucSource source);

/*
 * Perform one request within remaining_ms; ERRORs (with a fitting SQLSTATE) on transport
 * failures, timeouts (messages name timeout_ms, the caller's whole budget) and cancel.
 * HTTP error statuses are returned, not raised: see alai_raise_http_error.
 */
extern void alai_http_request(const char *method, const char *path,
							  const char *content_type, const char *body, size_t body_len,
							  int remaining_ms, int timeout_ms, SidecarResponse *response);

/* Raise the ERROR that an HTTP error response of the sidecar stands for. */
extern void alai_raise_http_error(const SidecarResponse *response) pg_attribute_noreturn();

/* The response body as jsonb: NULL if it is not JSON (try), or ERROR 08P01 (parse). */
extern Jsonb *alai_try_parse_json(const SidecarResponse *response);
extern Jsonb *alai_parse_json(const SidecarResponse *response);

/* Member key of a jsonb object container, or NULL. */
extern JsonbValue *alai_jsonb_get(JsonbContainer *container, const char *key);

/* The sidecar's URL as shown in messages. */
extern const char *alai_service_display_url(void);

/* Percent-encode a path segment or query value. */
extern char *alai_url_escape(const char *text);

#endif							/* AZURE_LOCAL_AI_H */
