-- azure_local_ai 1.0.0: text embeddings from local models, computed by the inference sidecar
-- at the server parameter azure_local_ai.service_url.
--
-- The signatures are those of the cloud product's azure_local_ai (May 2024), so that its
-- documented examples run unchanged; embed_query and embed_passage are additions.
--
-- NULL handling:
--   * create_embeddings(text, text), embed_query, embed_passage, get_setting, model_loaded and
--     model_metadata are STRICT: a NULL argument gives NULL.
--   * The array overloads of create_embeddings are STRICT too: a NULL argument gives no rows.
--     A NULL element of inputs gives a row with a NULL embedding, in its place.
--   * set_setting, model_register, model_unregister and model_unload change state, so a NULL
--     argument is an error (22004) rather than a silent no-op; tokenizer_path may be NULL.
-- The embedding functions are IMMUTABLE (a model version always gives the same vector), which
-- is what lets them appear in a GENERATED ALWAYS AS (...) STORED column.
-- An empty string is sent to the sidecar like any text; the sidecar refuses it (22023).

\echo Use "CREATE EXTENSION azure_local_ai" to load this file. \quit

-- Roles of the cloud product. They are cluster-wide and outlive the extension.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'azure_pg_admin') THEN
        CREATE ROLE azure_pg_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                   WHERE rolname = 'azure_local_ai_setting_manager') THEN
        CREATE ROLE azure_local_ai_setting_manager NOLOGIN;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-- Embeddings ----------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.create_embeddings(
    model_uri text, input text, timeout_ms integer DEFAULT 3600000)
RETURNS real[]
AS 'MODULE_PATHNAME', 'alai_create_embeddings'
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.create_embeddings(text, text, integer) IS
'Embedding of input by the model model_uri (name:version), within timeout_ms milliseconds.';

CREATE FUNCTION @extschema@.create_embeddings(
    model_uri text, inputs text[], batch_size bigint DEFAULT 128,
    timeout_ms integer DEFAULT 3600000)
RETURNS TABLE (embedding real[])
AS 'MODULE_PATHNAME', 'alai_create_embeddings_array'
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE ROWS 128;

COMMENT ON FUNCTION @extschema@.create_embeddings(text, text[], bigint, integer) IS
'One row per input, in input order, sending at most batch_size inputs per request; '
'timeout_ms bounds the whole call.';

CREATE FUNCTION @extschema@.create_embeddings(
    model_uri text, inputs text[], ids anyarray, batch_size bigint DEFAULT 128,
    timeout_ms integer DEFAULT 3600000)
RETURNS TABLE (id anyelement, embedding real[])
AS 'MODULE_PATHNAME', 'alai_create_embeddings_ids'
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE ROWS 128;

COMMENT ON FUNCTION @extschema@.create_embeddings(text, text[], anyarray, bigint, integer) IS
'One (id, embedding) row per input, in input order; ids[i] labels inputs[i].';

CREATE FUNCTION @extschema@.embed_query(model_uri text, input text)
RETURNS real[]
AS 'MODULE_PATHNAME', 'alai_embed_query'
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.embed_query(text, text) IS
'Embedding of a search query: the model''s query prefix (e5: "query: ") is applied.';

CREATE FUNCTION @extschema@.embed_passage(model_uri text, input text)
RETURNS real[]
AS 'MODULE_PATHNAME', 'alai_embed_passage'
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.embed_passage(text, text) IS
'Embedding of a document passage: the model''s passage prefix (e5: "passage: ") is applied.';

-- Settings ------------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.get_setting(
    keys text[] DEFAULT ARRAY[]::text[], timeout_ms integer DEFAULT 3600000)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'alai_get_settings'
LANGUAGE c VOLATILE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.get_setting(text[], integer) IS
'The inference settings named by keys as a JSON object; all settings when keys is empty.';

CREATE FUNCTION @extschema@.get_setting(key text, timeout_ms integer DEFAULT 3600000)
RETURNS text
AS 'MODULE_PATHNAME', 'alai_get_setting'
LANGUAGE c VOLATILE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.get_setting(text, integer) IS
'The value of one inference setting, as text.';

CREATE FUNCTION @extschema@.set_setting(
    key text, value text, timeout_ms integer DEFAULT 3600000)
RETURNS void
AS 'MODULE_PATHNAME', 'alai_set_setting'
LANGUAGE c VOLATILE;

COMMENT ON FUNCTION @extschema@.set_setting(text, text, integer) IS
'Change one inference setting; it applies without restarting the sidecar. Needs superuser, '
'azure_pg_admin or azure_local_ai_setting_manager.';

CREATE FUNCTION @extschema@.set_setting(
    keys text[], "values" text[], timeout_ms integer DEFAULT 3600000)
RETURNS void
AS 'MODULE_PATHNAME', 'alai_set_settings'
LANGUAGE c VOLATILE;

COMMENT ON FUNCTION @extschema@.set_setting(text[], text[], integer) IS
'Change several inference settings at once: all apply, or none. Needs superuser, '
'azure_pg_admin or azure_local_ai_setting_manager.';

-- Models --------------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.model_register(
    model_uri text, model_path text, tokenizer_path text DEFAULT NULL,
    timeout_ms integer DEFAULT 3600000)
RETURNS bigint
AS 'MODULE_PATHNAME', 'alai_model_register'
LANGUAGE c VOLATILE;

COMMENT ON FUNCTION @extschema@.model_register(text, text, text, integer) IS
'Register a model directory (or .onnx file plus tokenizer_path) on the sidecar''s machine '
'under model_uri; returns its id. Needs superuser, azure_pg_admin or '
'azure_local_ai_setting_manager.';

CREATE FUNCTION @extschema@.model_unregister(
    model_uri text, timeout_ms integer DEFAULT 3600000)
RETURNS void
AS 'MODULE_PATHNAME', 'alai_model_unregister'
LANGUAGE c VOLATILE;

COMMENT ON FUNCTION @extschema@.model_unregister(text, integer) IS
'Forget a registered model. Needs superuser, azure_pg_admin or azure_local_ai_setting_manager.';

CREATE FUNCTION @extschema@.model_loaded(model_uri text, timeout_ms integer DEFAULT 3600000)
RETURNS boolean
AS 'MODULE_PATHNAME', 'alai_model_loaded'
LANGUAGE c VOLATILE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.model_loaded(text, integer) IS
'Whether the model is loaded in the sidecar; an unknown model is an error (42704).';

CREATE FUNCTION @extschema@.model_unload(model_uri text, timeout_ms integer DEFAULT 3600000)
RETURNS void
AS 'MODULE_PATHNAME', 'alai_model_unload'
LANGUAGE c VOLATILE;

COMMENT ON FUNCTION @extschema@.model_unload(text, integer) IS
'Unload a model from the sidecar''s memory (it stays registered). Needs superuser, '
'azure_pg_admin or azure_local_ai_setting_manager.';

CREATE FUNCTION @extschema@.model_metadata(model_uri text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'alai_model_metadata'
LANGUAGE c VOLATILE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.model_metadata(text) IS
'What the sidecar knows of a model: name, version, dimensions, max tokens, pooling, prefixes, '
'license, source, files with sha256, loaded, precision (60 s timeout).';

CREATE FUNCTION @extschema@.version()
RETURNS text
AS 'MODULE_PATHNAME', 'alai_version'
LANGUAGE c IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.version() IS 'Version of the azure_local_ai module.';
