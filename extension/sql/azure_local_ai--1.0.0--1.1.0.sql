-- azure_local_ai 1.0.0 -> 1.1.0: adds rank(), documents ranked by a reranker (cross-encoder)
-- served by the inference sidecar. ALTER EXTENSION azure_local_ai UPDATE runs it, and so does
-- CREATE EXTENSION azure_local_ai after the 1.0.0 script: 1.1.0 has no install script of its
-- own, so a new extension and an updated one are made by the same statements.

\echo Use "ALTER EXTENSION azure_local_ai UPDATE TO '1.1.0'" to load this file. \quit

-- ALTER EXTENSION runs this script with search_path = @extschema@, pg_temp: as in the install
-- script, names are looked up in pg_catalog only (pg_temp last) and what is created is
-- qualified with @extschema@.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- Reranking -----------------------------------------------------------------------------------

-- Not STRICT: document_ids and model default to NULL (positions as ids; the sidecar's setting
-- default_rerank_model). A NULL query, document_contents, element of either array or
-- timeout_ms is refused (22004), naming the position of a NULL element. An empty
-- document_contents is 22023 (invalid_parameter_value), not 2202E: the array is well formed,
-- no subscript is wrong, it is the value that cannot be ranked, as an empty model_uri cannot
-- name a model. 2202E (array_subscript_error) is kept for arrays whose shape is wrong: more
-- than one dimension, or document_ids and document_contents of different lengths. Every check
-- runs before the first request. VOLATILE: with model NULL the answer follows a setting of the
-- sidecar that can change at any moment.
CREATE FUNCTION @extschema@.rank(
    query text, document_contents text[], document_ids text[] DEFAULT NULL,
    model text DEFAULT NULL, timeout_ms integer DEFAULT 3600000)
RETURNS TABLE (document_id text, rank integer, relevance_score real)
AS 'MODULE_PATHNAME', 'alai_rank'
LANGUAGE c VOLATILE PARALLEL SAFE ROWS 100;

COMMENT ON FUNCTION @extschema@.rank(text, text[], text[], text, integer) IS
'The documents ranked by relevance to query, best first (rank 1; ties keep input order), as '
'scored by the reranker model (NULL: the inference setting default_rerank_model); '
'document_ids[i] names document_contents[i] (NULL: positions from 1). timeout_ms bounds the '
'whole call.';
