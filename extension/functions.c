/*
 * The SQL functions of the azure_local_ai extension (see azure_local_ai--1.0.0.sql and
 * azure_local_ai--1.0.0--1.1.0.sql for the signatures, and which are STRICT).
 *
 * Embeddings and rerank scores go through the sidecar's binary routes (inference/protocol.py):
 * texts as length-prefixed UTF-8, vectors or scores back as float32 little-endian. Everything
 * else uses the sidecar's JSON routes.
 */
#include "azure_local_ai.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#define EMBED_PATH "/internal/embed"
#define RERANK_PATH "/internal/rerank"
/*
 * rank() sends the query with at most this many documents per request (the scores of a pair
 * do not depend on the other documents), like create_embeddings' default batch_size.
 */
#define RERANK_BATCH_DOCUMENTS 128
/* Requests stay well below the sidecar's default max_request_bytes (32 MB). */
#define MAX_BATCH_BYTES (16 * 1024 * 1024)
#define METADATA_TIMEOUT_MS 60000
/*
 * A model URI is name:version, each part a directory name in the sidecar's model store (at
 * most 255 bytes). Longer ones are refused here: the sidecar's HTTP server would refuse such
 * a request line without saying why.
 */
#define MAX_MODEL_URI_BYTES 511

PG_FUNCTION_INFO_V1(alai_create_embeddings);
PG_FUNCTION_INFO_V1(alai_create_embeddings_array);
PG_FUNCTION_INFO_V1(alai_create_embeddings_ids);
PG_FUNCTION_INFO_V1(alai_embed_query);
PG_FUNCTION_INFO_V1(alai_embed_passage);
PG_FUNCTION_INFO_V1(alai_rank);
PG_FUNCTION_INFO_V1(alai_get_settings);
PG_FUNCTION_INFO_V1(alai_get_setting);
PG_FUNCTION_INFO_V1(alai_set_setting);
PG_FUNCTION_INFO_V1(alai_set_settings);
PG_FUNCTION_INFO_V1(alai_model_register);
PG_FUNCTION_INFO_V1(alai_model_unregister);
PG_FUNCTION_INFO_V1(alai_model_loaded);
PG_FUNCTION_INFO_V1(alai_model_unload);
PG_FUNCTION_INFO_V1(alai_model_metadata);
PG_FUNCTION_INFO_V1(alai_version);

/* -- argument checks ------------------------------------------------------------------------ */

static int
check_timeout(int32 timeout_ms)
{
	if (timeout_ms <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must be a positive number of milliseconds, got %d",
						timeout_ms)));
	return timeout_ms;
}

static int
check_batch_size(int64 batch_size)
{
	if (batch_size <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be a positive number of inputs, got " INT64_FORMAT,
						batch_size)));
	return batch_size > PG_INT32_MAX ? PG_INT32_MAX : (int) batch_size;
}

/*
 * The sidecar is the judge of model URIs; this only keeps off what cannot be one. argname is
 * the SQL argument's name, hint how to give one.
 */
static char *
check_model_argument(char *model_uri, const char *argname, const char *hint)
{
	size_t		len = strlen(model_uri);

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", argname),
				 errhint("%s", hint)));
	if (len > MAX_MODEL_URI_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is %zu bytes long; a model URI has at most %d", argname, len,
						MAX_MODEL_URI_BYTES),
				 errhint("%s", hint)));
	return model_uri;
}

static char *
check_model_uri(char *model_uri)
{
	return check_model_argument(model_uri, "model_uri",
								"Give the model as name:version, e.g. multilingual-e5-small:v1.");
}

static char *
model_uri_arg(FunctionCallInfo fcinfo, int argno)
{
	return check_model_uri(text_to_cstring(PG_GETARG_TEXT_PP(argno)));
}

static char *
required_text(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

static int
required_timeout(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout_ms must not be NULL")));
	return check_timeout(PG_GETARG_INT32(argno));
}

/* Changing settings and models needs superuser or one of the two administration roles. */
static void
require_setting_manager(const char *function)
{
	static const char *const roles[] = {"azure_pg_admin", "azure_local_ai_setting_manager"};
	Oid			user = GetUserId();

	if (superuser())
		return;
	for (int i = 0; i < lengthof(roles); i++)
	{
		Oid			role = get_role_oid(roles[i], true);

		if (OidIsValid(role) && has_privs_of_role(user, role))
			return;
	}
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for azure_local_ai.%s", function),
			 errdetail("Changing inference settings and models needs superuser or membership "
					   "in azure_pg_admin or azure_local_ai_setting_manager."),
			 errhint("An administrator can grant it: GRANT azure_local_ai_setting_manager TO %s;",
					 quote_identifier(GetUserNameFromId(user, false)))));
}

/* -- the HTTP call, bounded by timeout_ms as a whole ---------------------------------------- */

typedef struct CallBudget
{
	int			timeout_ms;		/* as the caller gave it */
	TimestampTz deadline;
} CallBudget;

static CallBudget
budget_start(int timeout_ms)
{
	CallBudget	budget;

	budget.timeout_ms = timeout_ms;
	budget.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	return budget;
}

static void
call(const CallBudget *budget, const char *method, const char *path, const char *content_type,
	 const char *body, size_t body_len, SidecarResponse *response)
{
	long		remaining_ms;

	remaining_ms = (long) ((budget->deadline - GetCurrentTimestamp()) / 1000);
	if (remaining_ms <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("the inference service at %s did not answer within timeout_ms = %d",
						alai_service_display_url(), budget->timeout_ms),
				 errhint("Raise the timeout_ms argument, or check the service's load.")));
	alai_http_request(method, path, content_type, body, body_len,
					  (int) Min(remaining_ms, (long) budget->timeout_ms), budget->timeout_ms,
					  response);
}

/*
 * A JSON call: body (in the database's encoding) is sent as UTF-8; the answer is its JSON, or
 * NULL when empty. HTTP errors become ERRORs.
 */
static Jsonb *
call_json(const CallBudget *budget, const char *method, const char *path, const char *body)
{
	SidecarResponse response;
	char	   *utf8 = body ? pg_server_to_any(body, strlen(body), PG_UTF8) : NULL;

	call(budget, method, path, utf8 ? "application/json" : NULL, utf8, utf8 ? strlen(utf8) : 0,
		 &response);
	if (response.status < 200 || response.status >= 300)
		alai_raise_http_error(&response);
	if (response.body_len == 0)
		return NULL;
	return alai_parse_json(&response);
}

static char *
model_path(const char *model_uri, const char *suffix)
{
	return psprintf("/models/%s%s", alai_url_escape(model_uri), suffix);
}

/* -- embeddings ----------------------------------------------------------------------------- */

static void
set_u32(char *p, uint32 value)
{
	p[0] = (char) (value & 0xff);
	p[1] = (char) ((value >> 8) & 0xff);
	p[2] = (char) ((value >> 16) & 0xff);
	p[3] = (char) ((value >> 24) & 0xff);
}

static void
put_u32(StringInfo buf, uint32 value)
{
	char		le[4];

	set_u32(le, value);
	appendBinaryStringInfo(buf, le, 4);
}

static uint32
get_u32(const char *p)
{
	const unsigned char *b = (const unsigned char *) p;

	return (uint32) b[0] | ((uint32) b[1] << 8) | ((uint32) b[2] << 16) | ((uint32) b[3] << 24);
}

/* A real[] of dims float32 little-endian values. */
static ArrayType *
float_array(const char *le_floats, int dims)
{
	Size		nbytes = ARR_OVERHEAD_NONULLS(1) + (Size) dims * sizeof(float4);
	ArrayType  *array = (ArrayType *) palloc0(nbytes);

	SET_VARSIZE(array, nbytes);
	array->ndim = 1;
	array->dataoffset = 0;
	array->elemtype = FLOAT4OID;
	ARR_DIMS(array)[0] = dims;
	ARR_LBOUND(array)[0] = 1;
#ifdef WORDS_BIGENDIAN
	for (int i = 0; i < dims; i++)
	{
		uint32		bits = get_u32(le_floats + 4 * i);

		memcpy(ARR_DATA_PTR(array) + 4 * i, &bits, 4);
	}
#else
	memcpy(ARR_DATA_PTR(array), le_floats, (Size) dims * sizeof(float4));
#endif
	return array;
}

/* A text datum as UTF-8 bytes (the wire's encoding), appended with its length prefix. */
static void
put_text(StringInfo buf, text *t)
{
	const char *data = VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);
	char	   *utf8 = pg_server_to_any(data, len, PG_UTF8);

	if (utf8 != data)
		len = strlen(utf8);
	put_u32(buf, (uint32) len);
	appendBinaryStringInfo(buf, utf8, len);
}

typedef struct Embeddings
{
	int			dims;
	const char *data;			/* one row of dims float32 little-endian per input */
} Embeddings;

/*
 * Embed the texts of body (already encoded: count, then the texts) with one request.
 * input_type is NULL, "query" or "passage".
 */
static Embeddings
embed_request(const CallBudget *budget, const char *model_uri, const char *input_type,
			  StringInfo body, int count)
{
	SidecarResponse response;
	Embeddings	result;
	char	   *path;
	uint64		expected;

	/* the count goes first; it is known only once the batch is built */
	set_u32(body->data, (uint32) count);
	path = psprintf(EMBED_PATH "?model=%s&truncate=true%s%s", alai_url_escape(model_uri),
					input_type ? "&input_type=" : "", input_type ? input_type : "");
	call(budget, "POST", path, "application/octet-stream", body->data, body->len, &response);
	if (response.status != 200)
		alai_raise_http_error(&response);

	if (response.body_len < 8)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("malformed embedding response from the inference service at %s: "
						"%zu bytes, shorter than its header", alai_service_display_url(),
						response.body_len)));
	result.dims = (int) get_u32(response.body + 4);
	result.data = response.body + 8;
	expected = 8 + (uint64) get_u32(response.body) * get_u32(response.body + 4) * 4;
	if (get_u32(response.body) != (uint32) count || result.dims <= 0 || result.dims > 65536 ||
		expected != response.body_len)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("malformed embedding response from the inference service at %s",
						alai_service_display_url()),
				 errdetail("Asked for %d embeddings; the response declares %u of %u dimensions "
						   "in %zu bytes.", count, get_u32(response.body),
						   get_u32(response.body + 4), response.body_len)));
	return result;
}

static Datum
embed_one(FunctionCallInfo fcinfo, const char *input_type)
{
	char	   *model_uri = model_uri_arg(fcinfo, 0);
	text	   *input = PG_GETARG_TEXT_PP(1);
	int			timeout_ms = PG_NARGS() > 2 ? check_timeout(PG_GETARG_INT32(2)) : 3600000;
	CallBudget	budget = budget_start(timeout_ms);
	StringInfoData body;
	Embeddings	emb;

	initStringInfo(&body);
	put_u32(&body, 1);
	put_text(&body, input);
	emb = embed_request(&budget, model_uri, input_type, &body, 1);
	PG_RETURN_ARRAYTYPE_P(float_array(emb.data, emb.dims));
}

Datum
alai_create_embeddings(PG_FUNCTION_ARGS)
{
	return embed_one(fcinfo, NULL);
}

Datum
alai_embed_query(PG_FUNCTION_ARGS)
{
	return embed_one(fcinfo, "query");
}

Datum
alai_embed_passage(PG_FUNCTION_ARGS)
{
	return embed_one(fcinfo, "passage");
}

/*
 * The array overloads: rows in input order, at most batch_size texts (and MAX_BATCH_BYTES)
 * per request, a NULL element gives a NULL embedding. With ids, each row carries the id of
 * the same position.
 */
static Datum
embed_array(FunctionCallInfo fcinfo, bool with_ids)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *model_uri = model_uri_arg(fcinfo, 0);
	ArrayType  *inputs = PG_GETARG_ARRAYTYPE_P(1);
	int			argno = with_ids ? 3 : 2;
	int			batch_size = check_batch_size(PG_GETARG_INT64(argno));
	int			timeout_ms = check_timeout(PG_GETARG_INT32(argno + 1));
	CallBudget	budget = budget_start(timeout_ms);
	Datum	   *texts;
	bool	   *text_nulls;
	int			n;
	Datum	   *ids = NULL;
	bool	   *id_nulls = NULL;
	int16		id_len = 0;
	bool		id_byval = false;
	MemoryContext batch_context;
	MemoryContext oldcontext;
	int			start = 0;

	/* TABLE(embedding real[]) has one column: a scalar result, described by expectedDesc */
	InitMaterializedSRF(fcinfo, with_ids ? 0 : MAT_SRF_USE_EXPECTED_DESC);
	deconstruct_array_builtin(inputs, TEXTOID, &texts, &text_nulls, &n);

	if (with_ids)
	{
		ArrayType  *id_array = PG_GETARG_ARRAYTYPE_P(2);
		Oid			id_type = ARR_ELEMTYPE(id_array);
		char		id_align;
		int			id_count;

		get_typlenbyvalalign(id_type, &id_len, &id_byval, &id_align);
		deconstruct_array(id_array, id_type, id_len, id_byval, id_align, &ids, &id_nulls,
						  &id_count);
		if (id_count != n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("inputs and ids must have the same number of elements, got %d "
							"inputs and %d ids", n, id_count)));
	}

	batch_context = AllocSetContextCreate(CurrentMemoryContext, "azure_local_ai batch",
										  ALLOCSET_DEFAULT_SIZES);
	while (start < n)
	{
		StringInfoData body;
		Embeddings	emb = {0};
		int			count = 0;
		int			end = start;
		int			k = 0;

		oldcontext = MemoryContextSwitchTo(batch_context);
		initStringInfo(&body);
		put_u32(&body, 0);		/* count, filled in by embed_request */
		while (end < n && count < batch_size)
		{
			if (!text_nulls[end])
			{
				text	   *t = DatumGetTextPP(texts[end]);

				if (count > 0 && body.len + VARSIZE_ANY_EXHDR(t) + 4 > MAX_BATCH_BYTES)
					break;
				put_text(&body, t);
				count++;
			}
			end++;
		}
		if (count > 0)
			emb = embed_request(&budget, model_uri, NULL, &body, count);
		MemoryContextSwitchTo(oldcontext);

		for (int i = start; i < end; i++)
		{
			Datum		values[2];
			bool		nulls[2] = {false, false};
			int			col = 0;

			if (with_ids)
			{
				values[0] = ids[i];
				nulls[0] = id_nulls[i];
				col = 1;
			}
			if (text_nulls[i])
			{
				values[col] = (Datum) 0;
				nulls[col] = true;
			}
			else
			{
				oldcontext = MemoryContextSwitchTo(batch_context);
				values[col] = PointerGetDatum(float_array(emb.data + (Size) k * emb.dims * 4,
														  emb.dims));
				MemoryContextSwitchTo(oldcontext);
				k++;
			}
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		MemoryContextReset(batch_context);
		start = end;
	}
	MemoryContextDelete(batch_context);
	return (Datum) 0;
}

Datum
alai_create_embeddings_array(PG_FUNCTION_ARGS)
{
	return embed_array(fcinfo, false);
}

Datum
alai_create_embeddings_ids(PG_FUNCTION_ARGS)
{
	return embed_array(fcinfo, true);
}

/* -- reranking ----------------------------------------------------------------------------- */

typedef struct RankedDocument
{
	float4		score;
	int			index;			/* position in document_contents, from 0 */
} RankedDocument;

/* Best first: higher scores before lower ones, NaN last, ties in input order. */
static int
compare_ranked(const void *a, const void *b)
{
	const RankedDocument *x = (const RankedDocument *) a;
	const RankedDocument *y = (const RankedDocument *) b;
	bool		x_nan = isnan(x->score);
	bool		y_nan = isnan(y->score);

	if (x_nan != y_nan)
		return x_nan ? 1 : -1;
	if (!x_nan && x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return (x->index > y->index) - (x->index < y->index);
}

/*
 * The elements of a text[] argument of rank(), which must be one-dimensional: a matrix of
 * documents has no order to rank them in, nor positions to name them by.
 */
static void
rank_array_elements(ArrayType *array, const char *name, Datum **elements, bool **nulls,
					int *count)
{
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array, got %d dimensions", name,
						ARR_NDIM(array)),
				 errhint("Pass one text per document, e.g. ARRAY['first', 'second'].")));
	deconstruct_array_builtin(array, TEXTOID, elements, nulls, count);
}

/*
 * Score count documents against the query with one request. body holds a placeholder for the
 * text count, then the query and the documents. The scores come back in the documents' order.
 */
static void
rerank_request(const CallBudget *budget, const char *path, StringInfo body, int count,
			   float4 *scores)
{
	SidecarResponse response;

	set_u32(body->data, (uint32) count + 1);	/* the query, then the documents */
	call(budget, "POST", path, "application/octet-stream", body->data, body->len, &response);
	if (response.status != 200)
		alai_raise_http_error(&response);

	if (response.body_len < 4)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("malformed rerank response from the inference service at %s: "
						"%zu bytes, shorter than its header", alai_service_display_url(),
						response.body_len)));
	if (get_u32(response.body) != (uint32) count ||
		response.body_len != 4 + (uint64) get_u32(response.body) * 4)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("malformed rerank response from the inference service at %s",
						alai_service_display_url()),
				 errdetail("Asked for %d scores; the response declares %u in %zu bytes.", count,
						   get_u32(response.body), response.body_len)));
	for (int i = 0; i < count; i++)
	{
		uint32		bits = get_u32(response.body + 4 + 4 * i);

		memcpy(&scores[i], &bits, sizeof(float4));
	}
}

/*
 * rank(query text, document_contents text[], document_ids text[] DEFAULT NULL,
 *      model text DEFAULT NULL, timeout_ms integer DEFAULT 3600000)
 *   RETURNS TABLE (document_id text, rank integer, relevance_score real)
 *
 * Not STRICT: document_ids and model may be NULL, anything else NULL is refused. Every
 * argument is checked before the first request. Rows come best first.
 */
Datum
alai_rank(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *query;
	Datum	   *texts;
	bool	   *text_nulls;
	int			n;
	Datum	   *ids = NULL;
	bool	   *id_nulls = NULL;
	const char *path = RERANK_PATH;
	CallBudget	budget;
	RankedDocument *ranked;
	float4	   *scores;
	MemoryContext batch_context;
	int			start = 0;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("query must not be NULL"),
				 errdetail("rank() scores each document against the query.")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("document_contents must not be NULL"),
				 errhint("Pass the documents to rank as a text[], e.g. with array_agg().")));
	query = PG_GETARG_TEXT_PP(0);
	rank_array_elements(PG_GETARG_ARRAYTYPE_P(1), "document_contents", &texts, &text_nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document_contents must not be empty"),
				 errdetail("There is nothing to rank.")));
	for (int i = 0; i < n; i++)
		if (text_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("document_contents must not contain NULL, but element %d is NULL",
							i + 1),
					 errdetail("Positions count from 1."),
					 errhint("Leave out the documents without content (and their ids), or pass "
							 "an empty string for them.")));

	if (!PG_ARGISNULL(2))
	{
		int			id_count;

		rank_array_elements(PG_GETARG_ARRAYTYPE_P(2), "document_ids", &ids, &id_nulls,
							&id_count);
		if (id_count != n)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("document_ids and document_contents must have the same number of "
							"elements, got %d document_ids and %d document_contents",
							id_count, n),
					 errhint("document_ids[i] names document_contents[i]; pass NULL to name "
							 "the documents by their positions.")));
		for (int i = 0; i < n; i++)
			if (id_nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("document_ids must not contain NULL, but element %d is NULL",
								i + 1),
						 errdetail("Positions count from 1.")));
	}

	/* without a model, the sidecar uses its setting default_rerank_model */
	if (!PG_ARGISNULL(3))
		path = psprintf(RERANK_PATH "?model=%s",
						alai_url_escape(check_model_argument(
							text_to_cstring(PG_GETARG_TEXT_PP(3)), "model",
							"Give the reranker as name:version, or pass NULL for the "
							"inference setting default_rerank_model.")));
	budget = budget_start(required_timeout(fcinfo, 4));

	InitMaterializedSRF(fcinfo, 0);
	scores = palloc(sizeof(float4) * n);
	batch_context = AllocSetContextCreate(CurrentMemoryContext, "azure_local_ai rerank batch",
										  ALLOCSET_DEFAULT_SIZES);
	while (start < n)
	{
		MemoryContext oldcontext = MemoryContextSwitchTo(batch_context);
		StringInfoData body;
		int			end = start;

		initStringInfo(&body);
		put_u32(&body, 0);		/* the count, filled in by rerank_request */
		put_text(&body, query);
		while (end < n && end - start < RERANK_BATCH_DOCUMENTS)
		{
			text	   *t = DatumGetTextPP(texts[end]);

			if (end > start && body.len + VARSIZE_ANY_EXHDR(t) + 4 > MAX_BATCH_BYTES)
				break;
			put_text(&body, t);
			end++;
		}
		rerank_request(&budget, path, &body, end - start, scores + start);
		MemoryContextSwitchTo(oldcontext);
		MemoryContextReset(batch_context);
		start = end;
	}
	MemoryContextDelete(batch_context);

	/* n is at most MaxArraySize: more than MaxAllocSize for this array */
	ranked = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(RankedDocument) * (Size) n);
	for (int i = 0; i < n; i++)
	{
		ranked[i].score = scores[i];
		ranked[i].index = i;
	}
	qsort(ranked, n, sizeof(RankedDocument), compare_ranked);

	for (int i = 0; i < n; i++)
	{
		int			index = ranked[i].index;
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = ids ? ids[index] : CStringGetTextDatum(psprintf("%d", index + 1));
		values[1] = Int32GetDatum(i + 1);
		values[2] = Float4GetDatum(ranked[i].score);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* -- settings ------------------------------------------------------------------------------- */

/* GET /settings: all settings as one JSON object {key: value}. */
static Jsonb *
fetch_settings(const CallBudget *budget)
{
	Jsonb	   *jb = call_json(budget, "GET", "/settings", NULL);

	if (jb == NULL || !JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the inference service at %s answered GET /settings with something "
						"other than a JSON object", alai_service_display_url())));
	return jb;
}

static char *
known_keys(JsonbContainer *settings)
{
	StringInfoData keys;
	JsonbIterator *it = JsonbIteratorInit(settings);
	JsonbValue	v;
	JsonbIteratorToken token;

	initStringInfo(&keys);
	/* skipNested: the keys met are those of the top-level object */
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
			appendStringInfo(&keys, "%s%.*s", keys.len ? ", " : "", v.val.string.len,
							 v.val.string.val);
	}
	return keys.data;
}

static JsonbValue *
setting_value(JsonbContainer *settings, const char *key)
{
	JsonbValue *value = alai_jsonb_get(settings, key);

	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown inference setting \"%s\"", key),
				 errhint("Known settings: %s.", known_keys(settings))));
	return value;
}

/* get_setting(keys text[] DEFAULT '{}', timeout_ms integer) -> jsonb; STRICT */
Datum
alai_get_settings(PG_FUNCTION_ARGS)
{
	ArrayType  *keys = PG_GETARG_ARRAYTYPE_P(0);
	CallBudget	budget = budget_start(check_timeout(PG_GETARG_INT32(1)));
	Jsonb	   *settings;
	Datum	   *names;
	bool	   *nulls;
	int			n;
	JsonbParseState *state = NULL;
	JsonbValue *result;

	deconstruct_array_builtin(keys, TEXTOID, &names, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("keys must not contain NULL")));
	settings = fetch_settings(&budget);
	if (n == 0)
		PG_RETURN_JSONB_P(settings);
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < n; i++)
	{
		char	   *key = TextDatumGetCString(names[i]);
		JsonbValue	k;

		k.type = jbvString;
		k.val.string.val = key;
		k.val.string.len = strlen(key);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, setting_value(&settings->root, key));
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}

/* get_setting(key text, timeout_ms integer) -> text; STRICT */
Datum
alai_get_setting(PG_FUNCTION_ARGS)
{
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CallBudget	budget = budget_start(check_timeout(PG_GETARG_INT32(1)));
	JsonbValue *value = setting_value(&fetch_settings(&budget)->root, key);

	if (value->type == jbvNull)
		PG_RETURN_NULL();
	if (value->type == jbvString)
		PG_RETURN_TEXT_P(cstring_to_text_with_len(value->val.string.val, value->val.string.len));
	PG_RETURN_TEXT_P(cstring_to_text(JsonbToCString(NULL, &JsonbValueToJsonb(value)->root, 0)));
}

static void
put_settings(const CallBudget *budget, int n, char **keys, char **values)
{
	StringInfoData body;

	initStringInfo(&body);
	appendStringInfoChar(&body, '{');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(&body, ',');
		escape_json(&body, keys[i]);
		appendStringInfoChar(&body, ':');
		escape_json(&body, values[i]);
	}
	appendStringInfoChar(&body, '}');
	call_json(budget, "PUT", "/settings", body.data);
}

/* set_setting(key text, value text, timeout_ms integer) -> void */
Datum
alai_set_setting(PG_FUNCTION_ARGS)
{
	char	   *key;
	char	   *value;
	CallBudget	budget;

	require_setting_manager("set_setting");
	key = required_text(fcinfo, 0, "key");
	value = required_text(fcinfo, 1, "value");
	budget = budget_start(required_timeout(fcinfo, 2));
	put_settings(&budget, 1, &key, &value);
	PG_RETURN_VOID();
}

/* set_setting(keys text[], "values" text[], timeout_ms integer) -> void, all or nothing */
Datum
alai_set_settings(PG_FUNCTION_ARGS)
{
	Datum	   *key_datums;
	Datum	   *value_datums;
	bool	   *key_nulls;
	bool	   *value_nulls;
	int			nkeys;
	int			nvalues;
	char	  **keys;
	char	  **values;
	CallBudget	budget;

	require_setting_manager("set_setting");
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("keys and values must not be NULL")));
	budget = budget_start(required_timeout(fcinfo, 2));
	deconstruct_array_builtin(PG_GETARG_ARRAYTYPE_P(0), TEXTOID, &key_datums, &key_nulls, &nkeys);
	deconstruct_array_builtin(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, &value_datums, &value_nulls,
							  &nvalues);
	if (nkeys != nvalues)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keys and values must have the same number of elements, got %d keys "
						"and %d values", nkeys, nvalues)));
	if (nkeys == 0)
		PG_RETURN_VOID();
	keys = palloc(sizeof(char *) * nkeys);
	values = palloc(sizeof(char *) * nkeys);
	for (int i = 0; i < nkeys; i++)
	{
		if (key_nulls[i] || value_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("keys and values must not contain NULL (position %d)", i + 1)));
		keys[i] = TextDatumGetCString(key_datums[i]);
		values[i] = TextDatumGetCString(value_datums[i]);
	}
	put_settings(&budget, nkeys, keys, values);
	PG_RETURN_VOID();
}

/* -- models --------------------------------------------------------------------------------- */

/* model_register(model_uri, model_path, tokenizer_path DEFAULT NULL, timeout_ms) -> bigint */
Datum
alai_model_register(PG_FUNCTION_ARGS)
{
	char	   *model_uri;
	char	   *path;
	CallBudget	budget;
	StringInfoData body;
	Jsonb	   *jb;
	JsonbValue *id;

	require_setting_manager("model_register");
	model_uri = check_model_uri(required_text(fcinfo, 0, "model_uri"));
	path = required_text(fcinfo, 1, "model_path");
	budget = budget_start(required_timeout(fcinfo, 3));

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"model_uri\":");
	escape_json(&body, model_uri);
	appendStringInfoString(&body, ",\"model_path\":");
	escape_json(&body, path);
	if (!PG_ARGISNULL(2))
	{
		appendStringInfoString(&body, ",\"tokenizer_path\":");
		escape_json(&body, text_to_cstring(PG_GETARG_TEXT_PP(2)));
	}
	appendStringInfoChar(&body, '}');

	jb = call_json(&budget, "POST", "/models", body.data);
	id = jb ? alai_jsonb_get(&jb->root, "id") : NULL;
	if (id == NULL || id->type != jbvNumeric)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the inference service at %s registered the model but returned no "
						"numeric id", alai_service_display_url())));
	PG_RETURN_DATUM(DirectFunctionCall1(numeric_int8, NumericGetDatum(id->val.numeric)));
}

/* A privileged (model_uri, timeout_ms) -> void function: one call to the model's route. */
static void
change_model(FunctionCallInfo fcinfo, const char *function, const char *method,
			 const char *suffix, const char *body)
{
	char	   *model_uri;
	CallBudget	budget;

	require_setting_manager(function);
	model_uri = check_model_uri(required_text(fcinfo, 0, "model_uri"));
	budget = budget_start(required_timeout(fcinfo, 1));
	call_json(&budget, method, model_path(model_uri, suffix), body);
}

/* model_unregister(model_uri, timeout_ms) -> void */
Datum
alai_model_unregister(PG_FUNCTION_ARGS)
{
	change_model(fcinfo, "model_unregister", "DELETE", "", NULL);
	PG_RETURN_VOID();
}

/* model_unload(model_uri, timeout_ms) -> void */
Datum
alai_model_unload(PG_FUNCTION_ARGS)
{
	change_model(fcinfo, "model_unload", "POST", "/unload", "{}");
	PG_RETURN_VOID();
}

static Jsonb *
fetch_model(const char *model_uri, int timeout_ms)
{
	CallBudget	budget = budget_start(check_timeout(timeout_ms));
	Jsonb	   *jb = call_json(&budget, "GET", model_path(model_uri, ""), NULL);

	if (jb == NULL || !JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the inference service at %s answered GET /models/%s with something "
						"other than a JSON object", alai_service_display_url(), model_uri)));
	return jb;
}

/* model_loaded(model_uri, timeout_ms) -> boolean; STRICT */
Datum
alai_model_loaded(PG_FUNCTION_ARGS)
{
	char	   *model_uri = model_uri_arg(fcinfo, 0);
	Jsonb	   *jb = fetch_model(model_uri, PG_GETARG_INT32(1));
	JsonbValue *loaded = alai_jsonb_get(&jb->root, "loaded");

	if (loaded == NULL || loaded->type != jbvBool)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the inference service at %s described model \"%s\" without a "
						"\"loaded\" flag", alai_service_display_url(), model_uri)));
	PG_RETURN_BOOL(loaded->val.boolean);
}

/* model_metadata(model_uri) -> jsonb; STRICT */
Datum
alai_model_metadata(PG_FUNCTION_ARGS)
{
	char	   *model_uri = model_uri_arg(fcinfo, 0);

	PG_RETURN_JSONB_P(fetch_model(model_uri, METADATA_TIMEOUT_MS));
}

Datum
alai_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(AZURE_LOCAL_AI_VERSION));
}
