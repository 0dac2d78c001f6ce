/*
 * HTTP client for the inference sidecar.
 *
 * One libcurl easy handle and one multi handle live for the whole backend, so connections
 * are kept alive between calls. Transfers run through the multi interface in short poll
 * slices with CHECK_FOR_INTERRUPTS() in between: query cancel and statement_timeout stop an
 * in-flight call within a slice. Whatever way a call ends (success, ERROR, cancel), the easy
 * handle is detached from the multi handle in PG_FINALLY; libcurl then closes a connection
 * whose transfer was cut short, so the next call starts clean.
 *
 * libcurl callbacks never call palloc or ereport (an ERROR must not longjmp through
 * libcurl): the response is collected with malloc and copied into palloc'd memory after.
 */
#include "azure_local_ai.h"

#include <curl/curl.h>

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/miscnodes.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#define POLL_SLICE_MS 25

static CURL *easy = NULL;
static CURLM *multi = NULL;

typedef struct ResponseBuffer
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		too_large;
} ResponseBuffer;

static size_t
write_callback(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	ResponseBuffer	   *buf = (ResponseBuffer *) userdata;
	size_t		n = size * nmemb;

	/* the body is copied into palloc'd memory, NUL-terminated */
	if (buf->len + n + 1 > MaxAllocSize)
	{
		buf->too_large = true;
		return 0;				/* makes libcurl fail the transfer with CURLE_WRITE_ERROR */
	}
	if (buf->len + n + 1 > buf->cap)
	{
		size_t		cap = buf->cap ? buf->cap : 8192;
		char	   *data;

		while (cap < buf->len + n + 1)
			cap *= 2;
		data = realloc(buf->data, cap);
		if (data == NULL)
			return 0;
		buf->data = data;
		buf->cap = cap;
	}
	memcpy(buf->data + buf->len, ptr, n);
	buf->len += n;
	return n;
}

bool
alai_service_url_check_hook(char **newval, void **extra, GucSource source)
{
	const char *url = *newval;

	if (url[0] == '\0' || strncmp(url, "http://", 7) == 0 || strncmp(url, "https://", 8) == 0)
		return true;
	if (strncmp(url, "unix:/", 6) == 0)
		return true;
	GUC_check_errdetail("azure_local_ai.service_url must look like http://host:port or "
						"unix:/path/to/socket, got \"%s\".", url);
	return false;
}

const char *
alai_service_display_url(void)
{
	return alai_service_url ? alai_service_url : "";
}

char *
alai_url_escape(const char *text)
{
	StringInfoData out;
	const unsigned char *p;

	initStringInfo(&out);
	/* percent-encoded UTF-8, whatever the database's encoding */
	for (p = (const unsigned char *) pg_server_to_any(text, strlen(text), PG_UTF8); *p; p++)
	{
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
			*p == '-' || *p == '_' || *p == '.' || *p == '~')
			appendStringInfoChar(&out, (char) *p);
		else
			appendStringInfo(&out, "%%%02X", *p);
	}
	return out.data;
}

static void
ensure_handles(void)
{
	static bool curl_initialized = false;

	if (!curl_initialized)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialize libcurl")));
		curl_initialized = true;
	}
	/* a handle that could not be created is tried again by the next call */
	if (multi == NULL)
		multi = curl_multi_init();
	if (easy == NULL)
		easy = curl_easy_init();
	if (multi == NULL || easy == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
}

static void
raise_transport_error(CURLcode code, const char *curl_message, const ResponseBuffer *buf,
					  int timeout_ms)
{
	const char *url = alai_service_display_url();
	const char *detail = curl_message[0] ? curl_message : curl_easy_strerror(code);

	switch (code)
	{
		case CURLE_OPERATION_TIMEDOUT:
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("the inference service at %s did not answer within timeout_ms = %d",
							url, timeout_ms),
					 errdetail("%s", detail),
					 errhint("Raise the timeout_ms argument, or check the service's load.")));
			break;
		case CURLE_COULDNT_CONNECT:
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_RESOLVE_PROXY:
		case CURLE_URL_MALFORMAT:	/* a service_url that only starts like a URL */
			ereport(ERROR,
					(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
					 errmsg("could not connect to the inference service at %s", url),
					 errdetail("%s", detail),
					 errhint("Check that the inference sidecar is running and that the server "
							 "parameter azure_local_ai.service_url points at it.")));
			break;
		case CURLE_WRITE_ERROR:
			if (buf->too_large)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("the response of the inference service at %s exceeds 1 GB", url),
						 errhint("Embed fewer inputs per call (batch_size).")));
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory reading the response of the inference service at %s",
							url)));
			break;
		case CURLE_WEIRD_SERVER_REPLY:
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_BAD_CONTENT_ENCODING:
		case CURLE_HTTP2:
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("the inference service at %s answered with something that is not "
							"valid HTTP", url),
					 errdetail("%s", detail),
					 errhint("Check that azure_local_ai.service_url points at the inference "
							 "sidecar and not at another service.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("lost the connection to the inference service at %s", url),
					 errdetail("%s", detail),
					 errhint("Check that the inference sidecar is running; its log may say why "
							 "it stopped.")));
	}
}

/* Append to a request's header list; on failure, ERROR with the list intact (to be freed). */
static void
append_header(struct curl_slist *volatile *headers, const char *header)
{
	struct curl_slist *list = curl_slist_append(*headers, header);

	if (list == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory building a request to the inference service")));
	*headers = list;
}

void
alai_http_request(const char *method, const char *path, const char *content_type,
				  const char *body, size_t body_len, int remaining_ms, int timeout_ms,
				  SidecarResponse *response)
{
	const char *base = alai_service_display_url();
	StringInfoData url;
	/* volatile: changed inside PG_TRY and read in PG_FINALLY after a longjmp */
	struct curl_slist *volatile headers = NULL;
	ResponseBuffer buf = {0};
	char		errbuf[CURL_ERROR_SIZE] = "";
	CURLcode	result = CURLE_OK;
	volatile bool attached = false;

	if (base[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("azure_local_ai.service_url is not set"),
				 errhint("Set the server parameter azure_local_ai.service_url to the inference "
						 "sidecar's address, e.g. http://127.0.0.1:8090.")));
	ensure_handles();

	initStringInfo(&url);
	curl_easy_reset(easy);		/* keeps the live connections */
	if (strncmp(base, "unix:", 5) == 0)
	{
		curl_easy_setopt(easy, CURLOPT_UNIX_SOCKET_PATH, base + 5);
		appendStringInfo(&url, "http://localhost%s", path);
	}
	else
	{
		size_t		n = strlen(base);

		while (n > 0 && base[n - 1] == '/')
			n--;
		appendBinaryStringInfo(&url, base, (int) n);
		appendStringInfoString(&url, path);
	}

	PG_TRY();
	{
		int			running = 1;
		CURLMsg    *msg;
		int			pending;
		CURLMcode	mcode;

		append_header(&headers, "Accept: application/json, application/octet-stream");
		/* libcurl would otherwise send "Expect: 100-continue" and wait for large bodies */
		append_header(&headers, "Expect:");
		if (content_type)
			append_header(&headers, psprintf("Content-Type: %s", content_type));
		/* the sidecar abandons work its caller will no longer wait for */
		append_header(&headers, psprintf("X-Timeout-Ms: %d", remaining_ms));
		if (alai_service_token && alai_service_token[0])
			append_header(&headers, psprintf("Authorization: Bearer %s", alai_service_token));

		curl_easy_setopt(easy, CURLOPT_URL, url.data);
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
		curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);	/* PostgreSQL owns the signals */
		curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) remaining_ms);
		curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) remaining_ms);
		curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
		curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_callback);
		curl_easy_setopt(easy, CURLOPT_WRITEDATA, &buf);
		curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
		curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
		curl_easy_setopt(easy, CURLOPT_USERAGENT, "azure_local_ai/" AZURE_LOCAL_AI_VERSION);
		curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
		/*
		 * A model URI is one path segment, and "." and ".." are left unescaped: libcurl
		 * must not resolve them, or model_unload('..') would POST to /unload.
		 */
		curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L);
		if (strcmp(method, "GET") == 0)
			curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
		else
		{
			curl_easy_setopt(easy, CURLOPT_POST, 1L);
			curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body ? body : "");
			curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
			if (strcmp(method, "POST") != 0)
				curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
		}

		mcode = curl_multi_add_handle(multi, easy);
		if (mcode != CURLM_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("libcurl refused the request: %s", curl_multi_strerror(mcode))));
		attached = true;

		while (running)
		{
			int			numfds;

			mcode = curl_multi_perform(multi, &running);
			if (mcode != CURLM_OK)
				ereport(ERROR,
						(errcode(ERRCODE_SYSTEM_ERROR),
						 errmsg("libcurl failed: %s", curl_multi_strerror(mcode))));
			if (!running)
				break;
			mcode = curl_multi_poll(multi, NULL, 0, POLL_SLICE_MS, &numfds);
			if (mcode != CURLM_OK)
				ereport(ERROR,
						(errcode(ERRCODE_SYSTEM_ERROR),
						 errmsg("libcurl failed: %s", curl_multi_strerror(mcode))));
			CHECK_FOR_INTERRUPTS();
		}

		while ((msg = curl_multi_info_read(multi, &pending)) != NULL)
		{
			if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy)
				result = msg->data.result;
		}
		if (result != CURLE_OK)
			raise_transport_error(result, errbuf, &buf, timeout_ms);

		{
			char	   *ct = NULL;

			curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &response->status);
			curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &ct);
			response->content_type = ct ? pstrdup(ct) : NULL;
		}
		response->body = palloc(buf.len + 1);
		if (buf.len > 0)
			memcpy(response->body, buf.data, buf.len);
		response->body[buf.len] = '\0';
		response->body_len = buf.len;
	}
	PG_FINALLY();
	{
		/* Detaching ends an unfinished transfer and closes its connection. */
		if (attached)
			curl_multi_remove_handle(multi, easy);
		/* The handle must not keep pointers to this call's stack and buffers. */
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, NULL);
		curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
		curl_easy_setopt(easy, CURLOPT_WRITEDATA, NULL);
		curl_slist_free_all(headers);
		free(buf.data);
	}
	PG_END_TRY();
}

Jsonb *
alai_try_parse_json(const SidecarResponse *response)
{
	ErrorSaveContext escontext = {T_ErrorSaveContext};
	Datum		result;

	if (response->body_len == 0 || strlen(response->body) != response->body_len)
		return NULL;
	/* JSON comes in UTF-8; jsonb_in reads the database's encoding */
	if (!pg_verify_mbstr(PG_UTF8, response->body, response->body_len, true))
		return NULL;
	if (!DirectInputFunctionCallSafe(jsonb_in,
									 pg_any_to_server(response->body, response->body_len,
													  PG_UTF8),
									 InvalidOid, -1, (Node *) &escontext, &result))
		return NULL;
	return DatumGetJsonbP(result);
}

Jsonb *
alai_parse_json(const SidecarResponse *response)
{
	Jsonb	   *jb = alai_try_parse_json(response);

	if (jb == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the inference service at %s answered HTTP %ld with a body that is not "
						"JSON", alai_service_display_url(), response->status),
				 errhint("Check that azure_local_ai.service_url points at the inference "
						 "sidecar and not at another service.")));
	return jb;
}

JsonbValue *
alai_jsonb_get(JsonbContainer *container, const char *key)
{
	JsonbValue	k;

	if (!JsonContainerIsObject(container))
		return NULL;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(container, JB_FOBJECT, &k);
}

/* Text of a string member of a jsonb object, or NULL. */
static char *
jsonb_object_text(JsonbContainer *container, const char *key)
{
	JsonbValue *v = alai_jsonb_get(container, key);

	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* Parse the sidecar's JSON error body {"error": {"message", "code", ...}}, if it is one. */
static bool
parse_error_body(const SidecarResponse *response, char **message, char **code)
{
	Jsonb	   *jb = alai_try_parse_json(response);
	JsonbValue *err;

	*message = NULL;
	*code = NULL;
	if (jb == NULL || !JB_ROOT_IS_OBJECT(jb))
		return false;
	err = alai_jsonb_get(&jb->root, "error");
	if (err == NULL || err->type != jbvBinary || !JsonContainerIsObject(err->val.binary.data))
		return false;
	*message = jsonb_object_text(err->val.binary.data, "message");
	*code = jsonb_object_text(err->val.binary.data, "code");
	return *message != NULL;
}

void
alai_raise_http_error(const SidecarResponse *response)
{
	const char *url = alai_service_display_url();
	char	   *message;
	char	   *code;
	long		status = response->status;
	int			sqlstate;
	const char *hint = NULL;

	if (!parse_error_body(response, &message, &code))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from the inference service at %s: HTTP %ld without "
						"an error description", url, status),
				 errhint("Check that azure_local_ai.service_url points at the inference "
						 "sidecar and not at another service.")));

	if (code == NULL)
		code = "";
	if (strcmp(code, "timeout") == 0)
	{
		sqlstate = ERRCODE_QUERY_CANCELED;
		hint = "Raise the timeout_ms argument, or send fewer inputs per call.";
	}
	else if (strcmp(code, "model_not_found") == 0)
	{
		sqlstate = ERRCODE_UNDEFINED_OBJECT;
		hint = "Deploy the model in the console (Server parameters, azure.extensions), or "
			"register it with azure_local_ai.model_register().";
	}
	else if (strcmp(code, "model_not_loaded") == 0)
	{
		sqlstate = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
		hint = "The model is registered but not loaded: deploy it again in the console, or "
			"load it through the inference service (POST /models/{uri}/load).";
	}
	else if (strcmp(code, "wrong_model_kind") == 0)
	{
		/* an embedding model given to rank(), or a reranker to create_embeddings() */
		sqlstate = ERRCODE_WRONG_OBJECT_TYPE;
		hint = "azure_local_ai.rank() takes a reranker (a cross-encoder); create_embeddings(), "
			"embed_query() and embed_passage() take an embedding model. "
			"azure_local_ai.model_metadata(model_uri) shows a model's kind.";
	}
	else if (strcmp(code, "invalid_input") == 0 || strcmp(code, "input_too_long") == 0)
		sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
	else if (strcmp(code, "too_many_inputs") == 0 || strcmp(code, "request_too_large") == 0)
	{
		sqlstate = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		hint = "Send fewer or shorter inputs per request (create_embeddings: a smaller "
			"batch_size), or raise the inference settings max_inputs_per_request and "
			"max_request_bytes.";
	}
	else if (strcmp(code, "unauthorized") == 0 || status == 401 || status == 403)
	{
		sqlstate = ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		hint = "Set the server parameter azure_local_ai.service_token to the sidecar's "
			"INFERENCE_TOKEN.";
	}
	else if (status == 404)
		sqlstate = ERRCODE_UNDEFINED_OBJECT;
	else if (status == 409)
		sqlstate = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
	else if (status == 413)
		sqlstate = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
	else if (status >= 400 && status < 500)
		sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
	else
		sqlstate = ERRCODE_INTERNAL_ERROR;

	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg("%s", message),
			 errdetail("The inference service at %s answered HTTP %ld%s%s.", url, status,
					   code[0] ? ", code " : "", code),
			 hint ? errhint("%s", hint) : 0));
	pg_unreachable();
}
