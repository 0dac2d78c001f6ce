-- azure_local_ai 1.1.0: text embeddings and reranking from local models, computed by the
-- inference sidecar at the server parameter azure_local_ai.service_url.
--
-- The signatures are those of the cloud product's azure_local_ai (May 2024), so that its
-- documented examples run unchanged; rank() has the cloud product's reranking signature plus
-- timeout_ms; embed_query and embed_passage are additions.
-- 1.1.0 adds rank() to 1.0.0 (azure_local_ai--1.0.0--1.1.0.sql updates an installed 1.0.0).
--
-- NULL handling:
--   * create_embeddings(text, text), embed_query, embed_passage, get_setting, model_loaded and
--     model_metadata are STRICT: a NULL argument gives NULL.
--   * The array overloads of create_embeddings are STRICT too: a NULL argument gives no rows.
--     A NULL element of inputs gives a row with a NULL embedding, in its place.
--   * rank is not STRICT: document_ids NULL names the documents by their positions ('1', '2',
--     ...), model NULL means the sidecar's setting default_rerank_model. A NULL query,
--     document_contents or timeout_ms, or a NULL element of document_contents or document_ids,
--     is an error (22004).
--   * set_setting, model_register, model_unregister and model_unload change state, so a NULL
--     argument is an error (22004) rather than a silent no-op; tokenizer_path may be NULL.
-- The embedding functions are IMMUTABLE (a model version always gives the same vector), which
-- is what lets them appear in a GENERATED ALWAYS AS (...) STORED column. rank is VOLATILE: with
-- model NULL its answer follows a setting of the sidecar.
-- An empty string is sent to the sidecar like any text; the sidecar refuses it as a text to
-- embed or as rank's query (22023), and scores it as a document like any other.
--
-- search_path: every function is C, none is SECURITY DEFINER, and none resolves a name through
-- search_path when called, so a caller's search_path cannot change what they do.

\echo Use "CREATE EXTENSION azure_local_ai" to load this file. \quit

-- CREATE EXTENSION runs this script with search_path = @extschema@, pg_temp. Until the schema
-- is checked below, it may hold objects of whoever made it: an operator =(oid, regclass) there
-- would beat pg_catalog's for an oid = regclass comparison and run as the superuser running
-- this script. So the script looks up names in pg_catalog only (pg_temp last), and names what
-- it creates with @extschema@. CREATE EXTENSION restores the caller's search_path afterwards.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- The schema. CREATE EXTENSION creates it as the calling user, or uses one that already exists.
-- Whoever owns it, or may create objects in it, could add look-alike overloads beside the
-- functions and have them run by whoever calls azure_local_ai.* (a superuser, the console). So
-- the schema ends up owned by the role running this script (a superuser) with USAGE for
-- everyone and no other privilege, and a schema that already holds objects is refused. It is
-- not a member of the extension: DROP EXTENSION leaves it, empty, for the next CREATE.
DO $schema$
DECLARE
    ns pg_catalog.oid := '@extschema@'::pg_catalog.regnamespace;
    objects pg_catalog.text;
    grantee pg_catalog.oid;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid),
                                 ', ' ORDER BY 1)
      INTO objects
      FROM pg_catalog.pg_depend d
     WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
       AND d.refobjid = ns
       AND NOT (d.classid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                AND d.objid = (SELECT e.oid FROM pg_catalog.pg_extension e
                                WHERE e.extname = 'azure_local_ai'));
    IF objects IS NOT NULL THEN
        RAISE EXCEPTION 'schema "@extschema@" already holds objects that are not part of '
                        'extension azure_local_ai'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('It holds: %s.', objects),
                  HINT = 'Their owners could shadow the extension''s functions. Move them to '
                         'another schema or drop them, then create the extension again.';
    END IF;

    ALTER SCHEMA @extschema@ OWNER TO CURRENT_USER;
    FOR grantee IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
         WHERE n.oid = ns AND a.grantee <> n.nspowner
    LOOP
        IF grantee = 0 THEN
            REVOKE ALL ON SCHEMA @extschema@ FROM PUBLIC CASCADE;
        ELSE
            EXECUTE pg_catalog.format('REVOKE ALL ON SCHEMA @extschema@ FROM %s CASCADE',
                                      grantee::pg_catalog.regrole);
        END IF;
    END LOOP;
END
$schema$;

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-- Roles of the cloud product: their members may change the sidecar's settings and models. They
-- are cluster-wide and outlive the extension. A missing one is created NOLOGIN. One that exists
-- (from an earlier CREATE EXTENSION, or made by an administrator) is used only if no one but
-- superusers controls it: a role that can log in, or on which a non-superuser holds ADMIN
-- OPTION (as a non-superuser who created it does), is refused, because whoever controls it
-- could hand out the administration of the sidecar. It is not changed silently: a superuser
-- decides what to keep.
DO $roles$
DECLARE
    role_name pg_catalog.text;
    role_oid pg_catalog.oid;
    can_login pg_catalog.bool;
    admins pg_catalog.text;
    problems pg_catalog.text[];
    fixes pg_catalog.text[];
BEGIN
    FOREACH role_name IN ARRAY ARRAY['azure_pg_admin', 'azure_local_ai_setting_manager'] LOOP
        SELECT r.oid, r.rolcanlogin INTO role_oid, can_login
          FROM pg_catalog.pg_roles r WHERE r.rolname = role_name;
        IF NOT FOUND THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', role_name);
            CONTINUE;
        END IF;

        problems := ARRAY[]::pg_catalog.text[];
        fixes := ARRAY[]::pg_catalog.text[];
        IF can_login THEN
            problems := problems || 'it can log in'::pg_catalog.text;
            fixes := fixes || pg_catalog.format('ALTER ROLE %I NOLOGIN', role_name);
        END IF;
        SELECT pg_catalog.string_agg(m.member::pg_catalog.regrole::pg_catalog.text, ', '
                                     ORDER BY 1)
          INTO admins
          FROM pg_catalog.pg_auth_members m
          JOIN pg_catalog.pg_roles r ON r.oid = m.member
         WHERE m.roleid = role_oid AND m.admin_option AND NOT r.rolsuper;
        IF admins IS NOT NULL THEN
            problems := problems || pg_catalog.format('non-superusers hold ADMIN OPTION on it (%s)',
                                                      admins);
            fixes := fixes || pg_catalog.format('REVOKE ADMIN OPTION FOR %I FROM %s CASCADE',
                                                role_name, admins);
        END IF;
        IF pg_catalog.cardinality(problems) > 0 THEN
            RAISE EXCEPTION 'role "%" already exists and is not safe to administer azure_local_ai',
                            role_name
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = pg_catalog.format(
                          'Members of %s may change the inference service''s settings and models, '
                          'but %s.', role_name, pg_catalog.array_to_string(problems, ' and ')),
                      HINT = pg_catalog.format(
                          'A superuser should check who created it and its members, then drop it '
                          '(DROP ROLE %I) or make it safe (%s), and create the extension again.',
                          role_name, pg_catalog.array_to_string(fixes, '; '));
        END IF;
    END LOOP;
END
$roles$;

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
