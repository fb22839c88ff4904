-- Attacks (issue 17), with real roles: a role with CREATE on a schema of the caller's
-- search_path, or on public before CREATE EXTENSION nudge, plants functions, aggregates,
-- operators and catalog views shadowing everything nudge might name; a role with UPDATE on a
-- table forges the catalog, applies or reverts someone else's staged fit, or plants a backup
-- past the table's row-level security; any role calls the internal entry points; every
-- function gets NULLs and garbage. Each attack must fail: the marker table stays empty (every
-- hostile object logs into it, and counts in a sequence that a rollback does not undo), each
-- refusal is a clear SQLSTATE (42501 for privileges), never class XX, and the server stays up.
-- real[] and double precision[] only (runs on PostgreSQL 15 without pgvector);
-- tests/python/test_attacks.py does the same for vector columns and on Citus.
-- Works in three databases made from one template (helpers, roles' tables, no nudge):
-- nudge_atk (nudge first, hostile objects after), nudge_atk_pre (hostile objects first, nudge
-- in another schema, then in public), dropped at the end; the regression database is left
-- as it was.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS nudge;
DROP DATABASE IF EXISTS nudge_atk WITH (FORCE);
DROP DATABASE IF EXISTS nudge_atk_pre WITH (FORCE);
DROP DATABASE IF EXISTS nudge_atk_tpl WITH (FORCE);
DROP ROLE IF EXISTS nudge_attacker;
DROP ROLE IF EXISTS nudge_owner;
DROP ROLE IF EXISTS nudge_writer;
DROP ROLE IF EXISTS nudge_updater;
DROP ROLE IF EXISTS nudge_plain;
SELECT current_database() AS regress_db \gset
CREATE ROLE nudge_attacker;  -- CREATE on public and its own schema evil: plants objects
CREATE ROLE nudge_owner;     -- owns the tables it fits, not a superuser
CREATE ROLE nudge_writer;    -- SELECT and UPDATE on some of the owner's tables
CREATE ROLE nudge_updater;   -- UPDATE on the rows id <= 100 of a table with row-level security
CREATE ROLE nudge_plain;     -- nothing
CREATE DATABASE nudge_atk_tpl;
\c nudge_atk_tpl
SET client_min_messages = warning;

-- == the template: the marker, the helpers, the owner's tables
CREATE TABLE public.attack_marker (who text, what text);
GRANT SELECT, INSERT ON public.attack_marker TO PUBLIC;
CREATE SEQUENCE public.attack_hits;
GRANT USAGE ON SEQUENCE public.attack_hits TO PUBLIC;
GRANT CREATE ON SCHEMA public TO nudge_attacker;
CREATE SCHEMA evil AUTHORIZATION nudge_attacker;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE SCHEMA chk;
GRANT USAGE ON SCHEMA chk TO PUBLIC;

-- BEGIN plant (tests/python/test_attacks.py reads chk.plant and chk.plant_one from here)
-- chk.plant(s, nudge_names): as the calling role (the attacker), fill schema s with hostile
-- objects: every function, aggregate, operator and catalog view name nudge might use
-- unqualified, each logging to public.attack_marker and counting in public.attack_hits
-- (a sequence: counts even a call whose transaction rolled back), then doing what the
-- built-in does. Returns how many objects it created.
CREATE FUNCTION chk.plant(s name, nudge_names boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog AS $plant$
DECLARE
  n bigint := 0; i int := 0; k int := 0;
  spec record; l text; r text; op text; res text; args text; body text; what text;
  log text := 'PERFORM pg_catalog.nextval(''public.attack_hits''::pg_catalog.regclass); '
              'INSERT INTO public.attack_marker VALUES (CURRENT_USER, %L); ';
  oids text[] := ARRAY['oid', 'regclass', 'regtype', 'regproc', 'regprocedure', 'regnamespace', 'regrole'];
  nums text[] := ARRAY['smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision'];
  texts text[] := ARRAY['text', 'character varying', 'name', '"char"', 'character'];
  others text[] := ARRAY['uuid', 'boolean', 'tid', 'timestamp with time zone', 'interval', 'jsonb', 'bytea',
                         'real[]', 'double precision[]', 'text[]', 'bigint[]', 'integer[]', 'oid[]', 'tid[]'];
  pairs text[] := '{}';
BEGIN
  -- functions: name, argument types, result type, what the built-in returns
  FOR spec IN SELECT * FROM (VALUES
    ('nextval', 'text', 'bigint', 'pg_catalog.nextval($1::pg_catalog.regclass)'),
    ('nextval', 'regclass', 'bigint', 'pg_catalog.nextval($1)'),
    ('currval', 'text', 'bigint', 'pg_catalog.currval($1::pg_catalog.regclass)'),
    ('currval', 'regclass', 'bigint', 'pg_catalog.currval($1)'),
    ('setval', 'text, bigint', 'bigint', 'pg_catalog.setval($1::pg_catalog.regclass, $2)'),
    ('setval', 'regclass, bigint', 'bigint', 'pg_catalog.setval($1, $2)'),
    ('setval', 'regclass, bigint, boolean', 'bigint', 'pg_catalog.setval($1, $2, $3)'),
    ('lastval', '', 'bigint', 'pg_catalog.lastval()'),
    ('has_table_privilege', 'regclass, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2)'),
    ('has_table_privilege', 'oid, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2)'),
    ('has_table_privilege', 'text, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2)'),
    ('has_table_privilege', 'name, regclass, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2, $3)'),
    ('has_table_privilege', 'name, oid, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2, $3)'),
    ('has_table_privilege', 'name, text, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2, $3)'),
    ('has_table_privilege', 'oid, regclass, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2, $3)'),
    ('has_table_privilege', 'oid, oid, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2, $3)'),
    ('has_table_privilege', 'oid, text, text', 'boolean', 'pg_catalog.has_table_privilege($1, $2, $3)'),
    ('has_column_privilege', 'regclass, text, text', 'boolean', 'pg_catalog.has_column_privilege($1, $2, $3)'),
    ('has_column_privilege', 'oid, text, text', 'boolean', 'pg_catalog.has_column_privilege($1, $2, $3)'),
    ('has_column_privilege', 'text, text, text', 'boolean', 'pg_catalog.has_column_privilege($1, $2, $3)'),
    ('has_column_privilege', 'regclass, smallint, text', 'boolean', 'pg_catalog.has_column_privilege($1, $2, $3)'),
    ('has_column_privilege', 'name, regclass, text, text', 'boolean', 'pg_catalog.has_column_privilege($1, $2, $3, $4)'),
    ('has_any_column_privilege', 'regclass, text', 'boolean', 'pg_catalog.has_any_column_privilege($1, $2)'),
    ('has_any_column_privilege', 'oid, text', 'boolean', 'pg_catalog.has_any_column_privilege($1, $2)'),
    ('has_schema_privilege', 'text, text', 'boolean', 'pg_catalog.has_schema_privilege($1, $2)'),
    ('has_schema_privilege', 'oid, text', 'boolean', 'pg_catalog.has_schema_privilege($1, $2)'),
    ('has_sequence_privilege', 'regclass, text', 'boolean', 'pg_catalog.has_sequence_privilege($1, $2)'),
    ('has_sequence_privilege', 'text, text', 'boolean', 'pg_catalog.has_sequence_privilege($1, $2)'),
    ('has_function_privilege', 'regprocedure, text', 'boolean', 'pg_catalog.has_function_privilege($1, $2)'),
    ('has_function_privilege', 'text, text', 'boolean', 'pg_catalog.has_function_privilege($1, $2)'),
    ('pg_has_role', 'oid, text', 'boolean', 'pg_catalog.pg_has_role($1, $2)'),
    ('pg_has_role', 'name, text', 'boolean', 'pg_catalog.pg_has_role($1, $2)'),
    ('pg_has_role', 'regrole, text', 'boolean', 'pg_catalog.pg_has_role($1, $2)'),
    ('pg_has_role', 'name, name, text', 'boolean', 'pg_catalog.pg_has_role($1, $2, $3)'),
    ('pg_has_role', 'oid, oid, text', 'boolean', 'pg_catalog.pg_has_role($1, $2, $3)'),
    ('row_security_active', 'regclass', 'boolean', 'pg_catalog.row_security_active($1)'),
    ('row_security_active', 'oid', 'boolean', 'pg_catalog.row_security_active($1)'),
    ('row_security_active', 'text', 'boolean', 'pg_catalog.row_security_active($1)'),
    ('format', 'text', 'text', 'pg_catalog.format($1)'),
    ('format', 'text, text', 'text', 'pg_catalog.format($1, $2)'),
    ('format', 'text, regclass', 'text', 'pg_catalog.format($1, $2)'),
    ('format', 'text, name', 'text', 'pg_catalog.format($1, $2)'),
    ('format', 'text, bigint', 'text', 'pg_catalog.format($1, $2)'),
    ('format', 'text, text, text', 'text', 'pg_catalog.format($1, $2, $3)'),
    ('format', 'text, regclass, text', 'text', 'pg_catalog.format($1, $2, $3)'),
    ('format', 'text, bigint, bigint', 'text', 'pg_catalog.format($1, $2, $3)'),
    ('format', 'text, text, text, text', 'text', 'pg_catalog.format($1, $2, $3, $4)'),
    ('format', 'text, regclass, text, text', 'text', 'pg_catalog.format($1, $2, $3, $4)'),
    ('format', 'text, regclass, text, text, text', 'text', 'pg_catalog.format($1, $2, $3, $4, $5)'),
    ('quote_ident', 'text', 'text', 'pg_catalog.quote_ident($1)'),
    ('quote_ident', 'name', 'text', 'pg_catalog.quote_ident($1)'),
    ('quote_literal', 'text', 'text', 'pg_catalog.quote_literal($1)'),
    ('quote_literal', 'regclass', 'text', 'pg_catalog.quote_literal($1)'),
    ('quote_literal', 'bigint', 'text', 'pg_catalog.quote_literal($1)'),
    ('quote_nullable', 'text', 'text', 'pg_catalog.quote_nullable($1)'),
    ('concat', 'text, text', 'text', 'pg_catalog.concat($1, $2)'),
    ('concat_ws', 'text, text, text', 'text', 'pg_catalog.concat_ws($1, $2, $3)'),
    ('lower', 'text', 'text', 'pg_catalog.lower($1)'),
    ('upper', 'text', 'text', 'pg_catalog.upper($1)'),
    ('length', 'text', 'integer', 'pg_catalog.length($1)'),
    ('length', 'bytea', 'integer', 'pg_catalog.length($1)'),
    ('octet_length', 'text', 'integer', 'pg_catalog.octet_length($1)'),
    ('substr', 'text, integer', 'text', 'pg_catalog.substr($1, $2)'),
    ('substr', 'text, integer, integer', 'text', 'pg_catalog.substr($1, $2, $3)'),
    ('substr', 'bytea, integer, integer', 'bytea', 'pg_catalog.substr($1, $2, $3)'),
    ('replace', 'text, text, text', 'text', 'pg_catalog.replace($1, $2, $3)'),
    ('regexp_replace', 'text, text, text', 'text', 'pg_catalog.regexp_replace($1, $2, $3)'),
    ('regexp_replace', 'text, text, text, text', 'text', 'pg_catalog.regexp_replace($1, $2, $3, $4)'),
    ('split_part', 'text, text, integer', 'text', 'pg_catalog.split_part($1, $2, $3)'),
    ('btrim', 'text', 'text', 'pg_catalog.btrim($1)'),
    ('strpos', 'text, text', 'integer', 'pg_catalog.strpos($1, $2)'),
    ('starts_with', 'text, text', 'boolean', 'pg_catalog.starts_with($1, $2)'),
    ('left', 'text, integer', 'text', 'pg_catalog."left"($1, $2)'),
    ('right', 'text, integer', 'text', 'pg_catalog."right"($1, $2)'),
    ('repeat', 'text, integer', 'text', 'pg_catalog.repeat($1, $2)'),
    ('string_to_array', 'text, text', 'text[]', 'pg_catalog.string_to_array($1, $2)'),
    ('array_to_string', 'text[], text', 'text', 'pg_catalog.array_to_string($1, $2)'),
    ('array_to_string', 'real[], text', 'text', 'pg_catalog.array_to_string($1, $2)'),
    ('md5', 'text', 'text', 'pg_catalog.md5($1)'),
    ('md5', 'bytea', 'text', 'pg_catalog.md5($1)'),
    ('encode', 'bytea, text', 'text', 'pg_catalog.encode($1, $2)'),
    ('decode', 'text, text', 'bytea', 'pg_catalog.decode($1, $2)'),
    ('get_byte', 'bytea, integer', 'integer', 'pg_catalog.get_byte($1, $2)'),
    ('format_type', 'oid, integer', 'text', 'pg_catalog.format_type($1, $2)'),
    ('format_type', 'regtype, integer', 'text', 'pg_catalog.format_type($1, $2)'),
    ('pg_get_userbyid', 'oid', 'name', 'pg_catalog.pg_get_userbyid($1)'),
    ('to_regclass', 'text', 'regclass', 'pg_catalog.to_regclass($1)'),
    ('to_regtype', 'text', 'regtype', 'pg_catalog.to_regtype($1)'),
    ('to_regnamespace', 'text', 'regnamespace', 'pg_catalog.to_regnamespace($1)'),
    ('to_regprocedure', 'text', 'regprocedure', 'pg_catalog.to_regprocedure($1)'),
    ('current_schema', '', 'name', 'pg_catalog.current_schema()'),
    ('current_schemas', 'boolean', 'name[]', 'pg_catalog.current_schemas($1)'),
    ('current_database', '', 'name', 'pg_catalog.current_database()'),
    ('pg_my_temp_schema', '', 'oid', 'pg_catalog.pg_my_temp_schema()'),
    ('pg_table_is_visible', 'oid', 'boolean', 'pg_catalog.pg_table_is_visible($1)'),
    ('pg_get_expr', 'pg_node_tree, oid', 'text', 'pg_catalog.pg_get_expr($1, $2)'),
    ('pg_relation_size', 'regclass', 'bigint', 'pg_catalog.pg_relation_size($1)'),
    ('pg_backend_pid', '', 'integer', 'pg_catalog.pg_backend_pid()'),
    ('txid_current', '', 'bigint', 'pg_catalog.txid_current()'),
    ('version', '', 'text', 'pg_catalog.version()'),
    ('now', '', 'timestamp with time zone', 'pg_catalog.now()'),
    ('clock_timestamp', '', 'timestamp with time zone', 'pg_catalog.clock_timestamp()'),
    ('statement_timestamp', '', 'timestamp with time zone', 'pg_catalog.statement_timestamp()'),
    ('transaction_timestamp', '', 'timestamp with time zone', 'pg_catalog.transaction_timestamp()'),
    ('timeofday', '', 'text', 'pg_catalog.timeofday()'),
    ('date_part', 'text, timestamp with time zone', 'double precision', 'pg_catalog.date_part($1, $2)'),
    ('date_part', 'text, interval', 'double precision', 'pg_catalog.date_part($1, $2)'),
    ('to_timestamp', 'double precision', 'timestamp with time zone', 'pg_catalog.to_timestamp($1)'),
    ('current_setting', 'text', 'text', 'pg_catalog.current_setting($1)'),
    ('current_setting', 'text, boolean', 'text', 'pg_catalog.current_setting($1, $2)'),
    ('set_config', 'text, text, boolean', 'text', 'pg_catalog.set_config($1, $2, $3)'),
    ('round', 'numeric', 'numeric', 'pg_catalog.round($1)'),
    ('round', 'numeric, integer', 'numeric', 'pg_catalog.round($1, $2)'),
    ('round', 'double precision', 'double precision', 'pg_catalog.round($1)'),
    ('trunc', 'numeric', 'numeric', 'pg_catalog.trunc($1)'),
    ('trunc', 'double precision', 'double precision', 'pg_catalog.trunc($1)'),
    ('ceil', 'numeric', 'numeric', 'pg_catalog.ceil($1)'),
    ('ceil', 'double precision', 'double precision', 'pg_catalog.ceil($1)'),
    ('floor', 'numeric', 'numeric', 'pg_catalog.floor($1)'),
    ('floor', 'double precision', 'double precision', 'pg_catalog.floor($1)'),
    ('abs', 'bigint', 'bigint', 'pg_catalog.abs($1)'),
    ('abs', 'integer', 'integer', 'pg_catalog.abs($1)'),
    ('abs', 'numeric', 'numeric', 'pg_catalog.abs($1)'),
    ('abs', 'double precision', 'double precision', 'pg_catalog.abs($1)'),
    ('sqrt', 'double precision', 'double precision', 'pg_catalog.sqrt($1)'),
    ('power', 'double precision, double precision', 'double precision', 'pg_catalog.power($1, $2)'),
    ('mod', 'bigint, bigint', 'bigint', 'pg_catalog.mod($1, $2)'),
    ('mod', 'integer, integer', 'integer', 'pg_catalog.mod($1, $2)'),
    ('random', '', 'double precision', 'pg_catalog.random()'),
    ('make_interval', 'years integer DEFAULT 0, months integer DEFAULT 0, weeks integer DEFAULT 0, days integer DEFAULT 0, hours integer DEFAULT 0, mins integer DEFAULT 0, secs double precision DEFAULT 0.0',
       'interval', 'pg_catalog.make_interval($1, $2, $3, $4, $5, $6, $7)'),
    ('array_length', 'real[], integer', 'integer', 'pg_catalog.array_length($1, $2)'),
    ('array_length', 'double precision[], integer', 'integer', 'pg_catalog.array_length($1, $2)'),
    ('array_length', 'text[], integer', 'integer', 'pg_catalog.array_length($1, $2)'),
    ('array_length', 'bigint[], integer', 'integer', 'pg_catalog.array_length($1, $2)'),
    ('array_upper', 'real[], integer', 'integer', 'pg_catalog.array_upper($1, $2)'),
    ('array_lower', 'real[], integer', 'integer', 'pg_catalog.array_lower($1, $2)'),
    ('array_ndims', 'real[]', 'integer', 'pg_catalog.array_ndims($1)'),
    ('array_ndims', 'double precision[]', 'integer', 'pg_catalog.array_ndims($1)'),
    ('cardinality', 'real[]', 'integer', 'pg_catalog.cardinality($1)'),
    ('cardinality', 'double precision[]', 'integer', 'pg_catalog.cardinality($1)'),
    ('cardinality', 'text[]', 'integer', 'pg_catalog.cardinality($1)'),
    ('cardinality', 'bigint[]', 'integer', 'pg_catalog.cardinality($1)'),
    ('array_append', 'bigint[], bigint', 'bigint[]', 'pg_catalog.array_append($1, $2)'),
    ('array_append', 'text[], text', 'text[]', 'pg_catalog.array_append($1, $2)'),
    ('array_cat', 'real[], real[]', 'real[]', 'pg_catalog.array_cat($1, $2)'),
    ('to_jsonb', 'text', 'jsonb', 'pg_catalog.to_jsonb($1)'),
    ('to_jsonb', 'real[]', 'jsonb', 'pg_catalog.to_jsonb($1)'),
    ('to_jsonb', 'double precision[]', 'jsonb', 'pg_catalog.to_jsonb($1)'),
    ('jsonb_typeof', 'jsonb', 'text', 'pg_catalog.jsonb_typeof($1)'),
    ('pg_advisory_xact_lock', 'bigint', 'void', 'pg_catalog.pg_advisory_xact_lock($1)'),
    ('pg_advisory_xact_lock', 'integer, integer', 'void', 'pg_catalog.pg_advisory_xact_lock($1, $2)'),
    ('pg_advisory_xact_lock_shared', 'bigint', 'void', 'pg_catalog.pg_advisory_xact_lock_shared($1)'),
    ('pg_try_advisory_xact_lock', 'bigint', 'boolean', 'pg_catalog.pg_try_advisory_xact_lock($1)'),
    ('pg_advisory_lock', 'bigint', 'void', 'pg_catalog.pg_advisory_lock($1)'),
    ('pg_advisory_unlock', 'bigint', 'boolean', 'pg_catalog.pg_advisory_unlock($1)'),
    ('pg_notify', 'text, text', 'void', 'pg_catalog.pg_notify($1, $2)'),
    ('pg_extension_config_dump', 'regclass, text', 'void', 'pg_catalog.pg_extension_config_dump($1, $2)')
  ) AS v(name, args, rettype, expr) LOOP
    what := pg_catalog.format('%I.%I(%s)', s, spec.name, spec.args);
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql AS $f$ BEGIN ' || log || '%s %s; END $f$',
      s, spec.name, spec.args, spec.rettype, what,
      CASE WHEN spec.rettype = 'void' THEN 'PERFORM' ELSE 'RETURN' END, spec.expr));
  END LOOP;

  -- set-returning functions
  FOREACH l IN ARRAY ARRAY['tid', 'oid', 'text', 'bigint', 'integer', 'real', 'double precision', 'numeric',
                           'uuid', 'regclass', 'name', 'character varying', 'boolean'] LOOP
    what := pg_catalog.format('%I.unnest(%s[])', s, l);
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE FUNCTION %I.unnest(%s[]) RETURNS SETOF %s LANGUAGE plpgsql AS $f$ BEGIN ' || log
      || 'RETURN QUERY SELECT pg_catalog.unnest($1); END $f$', s, l, l, what));
  END LOOP;
  FOREACH l IN ARRAY ARRAY['integer', 'bigint'] LOOP
    what := pg_catalog.format('%I.generate_series(%s, %s)', s, l, l);
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE FUNCTION %I.generate_series(%s, %s) RETURNS SETOF %s LANGUAGE plpgsql AS $f$ BEGIN ' || log
      || 'RETURN QUERY SELECT pg_catalog.generate_series($1, $2); END $f$', s, l, l, l, what));
  END LOOP;

  -- aggregates: a state function that logs every row
  FOR spec IN SELECT * FROM (VALUES
    ('array_agg', 'bigint', 'bigint[]', 'pg_catalog.array_append($1, $2)', NULL),
    ('array_agg', 'text', 'text[]', 'pg_catalog.array_append($1, $2)', NULL),
    ('array_agg', 'integer', 'integer[]', 'pg_catalog.array_append($1, $2)', NULL),
    ('array_agg', 'oid', 'oid[]', 'pg_catalog.array_append($1, $2)', NULL),
    ('array_agg', 'real[]', 'real[]', 'pg_catalog.array_cat($1, $2)', NULL),
    ('count', '*', 'bigint', 'pg_catalog.int8inc($1)', '0'),
    ('count', 'bigint', 'bigint', 'pg_catalog.int8inc($1)', '0'),
    ('count', 'text', 'bigint', 'pg_catalog.int8inc($1)', '0'),
    ('count', 'integer', 'bigint', 'pg_catalog.int8inc($1)', '0'),
    ('max', 'bigint', 'bigint', 'GREATEST($1, $2)', NULL),
    ('min', 'bigint', 'bigint', 'LEAST($1, $2)', NULL),
    ('max', 'text', 'text', 'GREATEST($1 COLLATE "C", $2)', NULL),
    ('min', 'text', 'text', 'LEAST($1 COLLATE "C", $2)', NULL),
    ('sum', 'bigint', 'numeric', 'pg_catalog.numeric_add(COALESCE($1, 0::pg_catalog.numeric), $2::pg_catalog.numeric)', NULL),
    ('sum', 'integer', 'bigint', 'pg_catalog.int8pl(COALESCE($1, 0::bigint), $2::bigint)', NULL),
    ('bool_and', 'boolean', 'boolean', '$1 AND $2', NULL),
    ('bool_or', 'boolean', 'boolean', '$1 OR $2', NULL),
    ('every', 'boolean', 'boolean', '$1 AND $2', NULL),
    ('string_agg', 'text, text', 'text', 'pg_catalog.concat($1, $3, $2)', NULL),
    ('jsonb_agg', 'jsonb', 'jsonb', 'pg_catalog.jsonb_insert(COALESCE($1, ''[]''::jsonb), ''{-1}'', $2, true)', NULL)
  ) AS v(name, args, stype, step, initcond) LOOP
    i := i + 1;
    what := pg_catalog.format('%I.%I(%s)', s, spec.name, spec.args);
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE FUNCTION %I.attack_step_%s(%s%s) RETURNS %s LANGUAGE plpgsql AS $f$ BEGIN ' || log || 'RETURN %s; END $f$',
      s, i, spec.stype, CASE WHEN spec.args = '*' THEN '' ELSE ', ' || spec.args END, spec.stype, what, spec.step));
    n := n + chk.plant_one(pg_catalog.format('CREATE AGGREGATE %I.%I(%s) (SFUNC = %I.attack_step_%s, STYPE = %s%s)',
      s, spec.name, spec.args, s, i, spec.stype,
      CASE WHEN spec.initcond IS NULL THEN '' ELSE pg_catalog.format(', INITCOND = %L', spec.initcond) END));
  END LOOP;

  -- operators between every pair of types nudge compares, wherever a built-in one applies
  FOREACH l IN ARRAY oids LOOP FOREACH r IN ARRAY oids LOOP
    pairs := pairs || ARRAY[ARRAY[l, r, '= <> < > <= >=']];
  END LOOP; END LOOP;
  FOREACH l IN ARRAY nums LOOP FOREACH r IN ARRAY nums LOOP
    pairs := pairs || ARRAY[ARRAY[l, r, '= <> < > <= >= + - * / %']];
  END LOOP; END LOOP;
  FOREACH l IN ARRAY texts LOOP FOREACH r IN ARRAY texts LOOP
    pairs := pairs || ARRAY[ARRAY[l, r, '= <> < > <= >= || ~~']];
  END LOOP; END LOOP;
  FOREACH l IN ARRAY nums || oids || ARRAY['uuid', 'boolean', 'tid', 'real[]', 'double precision[]', 'jsonb', 'interval'] LOOP
    pairs := pairs || ARRAY[ARRAY['text', l, '||'], ARRAY[l, 'text', '||']];
  END LOOP;
  FOREACH l IN ARRAY others LOOP
    pairs := pairs || ARRAY[ARRAY[l, l, '= <> < > <= >= || - @> <@ &&']];
  END LOOP;
  pairs := pairs || ARRAY[ARRAY['timestamp with time zone', 'interval', '+ -'], ARRAY['interval', 'double precision', '* /'],
                          ARRAY['double precision', 'interval', '*'], ARRAY['jsonb', 'text', '-> ->> ? -'],
                          ARRAY['jsonb', 'integer', '-> ->>'], ARRAY['real[]', 'real', '||'], ARRAY['bigint[]', 'bigint', '||'],
                          ARRAY['text[]', 'text', '||'], ARRAY['tid', 'tid', '= <>'], ARRAY['bigint', 'bigint[]', '= <>']];
  FOR i IN 1 .. pg_catalog.array_length(pairs, 1) LOOP
    l := pairs[i][1]; r := pairs[i][2];
    FOREACH op IN ARRAY pg_catalog.string_to_array(pairs[i][3], ' ') LOOP
      BEGIN
        EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(NULL::%s OPERATOR(pg_catalog.%s) NULL::%s)::text', l, op, r) INTO res;
      EXCEPTION WHEN OTHERS THEN
        CONTINUE;  -- no built-in operator applies: nudge cannot mean one
      END;
      what := pg_catalog.format('OPERATOR %I.%s (%s, %s)', s, op, l, r);
      k := k + 1;
      n := n + chk.plant_one(pg_catalog.format(
        'CREATE FUNCTION %I.attack_op_%s(%s, %s) RETURNS %s LANGUAGE plpgsql AS $f$ BEGIN ' || log
        || 'RETURN $1 OPERATOR(pg_catalog.%s) $2; END $f$', s, k, l, r, res, what, op));
      n := n + chk.plant_one(pg_catalog.format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.attack_op_%s)',
        s, op, l, r, s, k));
    END LOOP;
  END LOOP;
  FOREACH l IN ARRAY ARRAY['smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision', 'interval'] LOOP
    what := pg_catalog.format('OPERATOR %I.- (NONE, %s)', s, l);
    k := k + 1;
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE FUNCTION %I.attack_neg_%s(%s) RETURNS %s LANGUAGE plpgsql AS $f$ BEGIN ' || log
      || 'RETURN OPERATOR(pg_catalog.-) $1; END $f$', s, k, l, l, what));
    n := n + chk.plant_one(pg_catalog.format('CREATE OPERATOR %I.- (RIGHTARG = %s, FUNCTION = %I.attack_neg_%s)', s, l, s, k));
  END LOOP;

  -- type names nudge might write in a cast (text, oid, regclass, ...; not keywords such as
  -- bigint or real): domains over the built-in type whose check logs every value
  FOREACH l IN ARRAY ARRAY['text', 'oid', 'regclass', 'regtype', 'regnamespace', 'regproc', 'regprocedure', 'regrole',
                           'tid', 'int2', 'int4', 'int8', 'float4', 'float8', 'jsonb', 'json', 'bytea', 'name', 'uuid',
                           'bool', 'bpchar', 'char', 'timestamptz', 'xid', 'cstring'] LOOP
    CONTINUE WHEN l = 'cstring';  -- a pseudo-type: no domain over it
    what := pg_catalog.format('domain %I.%I', s, l);
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE FUNCTION %I.attack_domain_%s(pg_catalog.%I) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN ' || log
      || 'RETURN true; END $f$', s, l, l, what));
    n := n + chk.plant_one(pg_catalog.format('CREATE DOMAIN %I.%I AS pg_catalog.%I CHECK (%I.attack_domain_%s(VALUE))',
                                             s, l, l, s, l));
  END LOOP;

  -- catalog relations nudge reads, as views that log once per scan
  FOREACH l IN ARRAY ARRAY['pg_class', 'pg_attribute', 'pg_namespace', 'pg_type', 'pg_proc', 'pg_extension',
                           'pg_index', 'pg_constraint', 'pg_depend', 'pg_policy', 'pg_roles',
                           'pg_settings', 'pg_inherits', 'pg_attrdef', 'pg_sequence', 'pg_operator',
                           'pg_stat_activity', 'pg_locks', 'pg_tables', 'pg_database'] LOOP
    what := pg_catalog.format('view %I.%I', s, l);
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE FUNCTION %I.attack_view_%s() RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN ' || log || 'RETURN true; END $f$',
      s, l, what));
    SELECT pg_catalog.string_agg(pg_catalog.format('x.%I', a.attname), ', ' ORDER BY a.attnum) INTO args
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = pg_catalog.format('pg_catalog.%I', l)::pg_catalog.regclass AND a.attnum > 0
       AND NOT a.attisdropped AND a.atttypid <> 'anyarray'::pg_catalog.regtype;
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE VIEW %I.%I AS SELECT %s FROM pg_catalog.%I AS x WHERE (SELECT %I.attack_view_%s())', s, l, args, l, s, l));
  END LOOP;

  -- nudge's own names, for an extension that lives in another schema: each finds the real
  -- one through pg_extension and calls it
  IF nudge_names THEN
    FOR spec IN SELECT * FROM (VALUES
      ('nudge_digest', 'real[]', 'bigint', NULL, '$1'),
      ('nudge_digest', 'double precision[]', 'bigint', NULL, '$1'),
      ('nudge_floats', 'bytea', 'real[]', NULL, '$1'),
      ('nudge_bytes', 'real[]', 'bytea', NULL, '$1'),
      ('nudge_apply_step', 'bigint, integer', 'bigint', NULL, '$1, $2'),
      ('nudge_shard_pass', 'oid[], text, text, text, bytea', 'bytea', NULL, '$1, $2, $3, $4, $5'),
      ('nudge_shard_topk', 'oid[], text, text, bytea', 'bytea', NULL, '$1, $2, $3, $4'),
      ('nudge_may_read_vectors', 'regclass', 'boolean', 'nudge', '$1'),
      ('nudge_revert', 'bigint, text', 'bigint', NULL, '$1, $2')
    ) AS v(name, args, rettype, ns, params) LOOP
      what := pg_catalog.format('%I.%I(%s)', s, spec.name, spec.args);
      n := n + chk.plant_one(pg_catalog.format(
        'CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql AS $f$ DECLARE r %s; ns text := %L; BEGIN ' || log
        || 'IF ns IS NULL THEN SELECT n.nspname INTO ns FROM pg_catalog.pg_extension AS e, pg_catalog.pg_namespace AS n '
        || 'WHERE n.oid OPERATOR(pg_catalog.=) e.extnamespace AND e.extname OPERATOR(pg_catalog.=) %L; END IF; '
        || 'EXECUTE pg_catalog.format(%L, ns) INTO r USING %s; RETURN r; END $f$',
        s, spec.name, spec.args, spec.rettype, spec.rettype, spec.ns, what, 'nudge',
        pg_catalog.format('SELECT %%I.%I(%s)', spec.name, spec.params), spec.params));
    END LOOP;
  END IF;
  RETURN n;
END
$plant$;
-- one CREATE: 1, or 0 when the schema already has an object of that name and signature
CREATE FUNCTION chk.plant_one(ddl text) RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
  EXECUTE ddl;
  RETURN 1;
EXCEPTION WHEN duplicate_function OR duplicate_object OR duplicate_table OR duplicate_alias THEN
  RETURN 0;
END $$;
-- END plant

-- BEGIN helpers (tests/python/test_attacks.py reads the chk helpers from here)
SET check_function_bodies = off;  -- they name nudge's catalog, not there yet
-- What the marker table and the hit counter hold: empty, or who ran which hostile object
CREATE FUNCTION chk.marker() RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT format('marker rows: %s, hostile calls: %s', (SELECT count(*) FROM public.attack_marker),
                (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.attack_hits))
      || coalesce((SELECT string_agg(format(E'\n  %s, run as %s (%s)', m.what, m.who, m.n), '' ORDER BY m.what, m.who)
                     FROM (SELECT what, who, count(*) AS n FROM public.attack_marker GROUP BY 1, 2) AS m), '')
$$;
-- A table's rows, whatever the current role may see
CREATE FUNCTION chk.fingerprint(t regclass) RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE r text;
BEGIN
  EXECUTE format('SELECT count(*) || '':'' || coalesce(md5(string_agg(x::text, E''\n'' ORDER BY x::text)), '''') FROM %s AS x', t)
     INTO r;
  RETURN r;
END $$;
-- A corpus's ids and embeddings
CREATE FUNCTION chk.emb_fp(t regclass) RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE r text;
BEGIN
  EXECUTE format('SELECT md5(string_agg(x.id::text || '':'' || x.embedding::text, '','' ORDER BY x.id::text)) FROM %s AS x', t) INTO r;
  RETURN r;
END $$;
-- t(statement, table): run it as the current role; its SQLSTATE and message (or ok), flagged
-- when of class XX, and whether the table is as it was. Fit ids and OIDs print as <n>.
CREATE TABLE chk.cases (n serial, who name, stmt text, sqlstate text);
GRANT INSERT ON chk.cases TO PUBLIC;
GRANT USAGE ON SEQUENCE chk.cases_n_seq TO PUBLIC;
CREATE FUNCTION chk.t(stmt text, tbl regclass DEFAULT NULL) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  msg text; state text; before text;
BEGIN
  IF tbl IS NOT NULL THEN before := chk.fingerprint(tbl); END IF;
  BEGIN
    EXECUTE stmt;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
  END;
  INSERT INTO chk.cases (who, stmt, sqlstate) VALUES (current_user, stmt, state);
  RETURN pg_catalog.concat(current_user, ': ',
           coalesce(state || ': ' || pg_catalog.regexp_replace(msg, '(fit|OID) [1-9][0-9]*', '\1 <n>', 'g'), 'ok'),
           CASE WHEN state LIKE 'XX%' THEN '   <-- INTERNAL ERROR' END,
           CASE WHEN tbl IS NULL THEN ''
                WHEN chk.fingerprint(tbl) = before THEN pg_catalog.format(' (%s unchanged)', tbl)
                ELSE pg_catalog.format(' (%s CHANGED)', tbl) END);
END $$;
-- shard(statement): what an internal shard function gave: raised an error, returned NULL, or
-- returned a reply (nudge's message: an error reply carries a SQLSTATE and a message)
CREATE FUNCTION chk.shard(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  b bytea; msg text; state text; code bigint; len bigint;
BEGIN
  BEGIN
    EXECUTE stmt INTO b;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
    INSERT INTO chk.cases (who, stmt, sqlstate) VALUES (current_user, stmt, state);
    RETURN pg_catalog.concat('raised ', state, ': ', pg_catalog.regexp_replace(msg, 'OID [1-9][0-9]*', 'OID <n>', 'g'),
                             CASE WHEN state LIKE 'XX%' THEN '   <-- INTERNAL ERROR' END);
  END;
  IF b IS NULL THEN
    RETURN 'NULL';
  ELSIF pg_catalog.length(b) >= 22 AND pg_catalog.substr(b, 1, 6) = '\x4e4447520245'::bytea THEN  -- NDGR 2 E
    SELECT pg_catalog.sum(pg_catalog.get_byte(b, 6 + i)::bigint << (8 * i)) INTO code FROM pg_catalog.generate_series(0, 7) AS i;
    SELECT pg_catalog.string_agg(pg_catalog.chr((((code >> (6 * i)) & 63) + 48)::int), '' ORDER BY i) INTO state
      FROM pg_catalog.generate_series(0, 4) AS i;
    SELECT pg_catalog.sum(pg_catalog.get_byte(b, 14 + i)::bigint << (8 * i)) INTO len FROM pg_catalog.generate_series(0, 7) AS i;
    msg := pg_catalog.convert_from(pg_catalog.substr(b, 23, len::int), 'UTF8');
    INSERT INTO chk.cases (who, stmt, sqlstate) VALUES (current_user, stmt, state);
    RETURN pg_catalog.concat('error reply ', state, ': ', pg_catalog.regexp_replace(msg, 'OID [1-9][0-9]*', 'OID <n>', 'g'),
                             CASE WHEN state LIKE 'XX%' THEN '   <-- INTERNAL ERROR' END);
  ELSIF pg_catalog.substr(b, 1, 6) = '\x4e444752024f'::bytea THEN  -- NDGR 2 O
    RETURN 'ok reply';
  ELSE
    RETURN pg_catalog.format('a reply of %s bytes that is not nudge''s', pg_catalog.length(b));
  END IF;
END $$;
-- Little-endian u64, and the messages of nudge's Citus protocol (src/shard.rs,
-- crates/nudge-core/src/partial.rs): a shard pass request around a shard spec, a top-k request
CREATE FUNCTION chk.u64(x numeric) RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
  SELECT decode(string_agg(lpad(to_hex(mod(div(x, 256::numeric ^ i), 256)::int), 2, '0'), '' ORDER BY i), 'hex')
    FROM generate_series(0, 7) AS i
$$;
CREATE FUNCTION chk.spec(dim numeric, k numeric, nq numeric, nm numeric, rest bytea DEFAULT '\x') RETURNS bytea
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
  SELECT '\x4e44475302'::bytea || chk.u64(dim) || chk.u64(k) || chk.u64(nq) || chk.u64(nm) || rest
         || chk.u64(0) || chk.u64(0)  -- no partitions
$$;
CREATE FUNCTION chk.pass_request(spec bytea) RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
  SELECT '\x4e44475102'::bytea || chk.u64(length(spec)) || spec || chk.u64(0) || chk.u64(0) || chk.u64(0) || chk.u64(0)
$$;
CREATE FUNCTION chk.topk_request(k numeric, dim numeric, nfloats numeric, floats bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
  SELECT '\x4e44474b03'::bytea || chk.u64(k) || chk.u64(6) || convert_to('cosine', 'UTF8') || chk.u64(dim)
         || chk.u64(nfloats) || floats || chk.u64(0)
         || chk.u64(0)  -- no partitions
$$;

-- A fit's status, rows written, staged rows and backups, whatever the current role may see
CREATE FUNCTION chk.fit_state(id bigint) RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT format('status %s, rows_written %s, staged rows %s, backups %s', f.status, f.rows_written,
                (SELECT count(*) FROM nudge.fit_staged AS s WHERE s.fit_id = f.fit_id),
                (SELECT count(*) FROM nudge.fit_backups AS b WHERE b.fit_id = f.fit_id))
    FROM nudge.fits AS f WHERE f.fit_id = id
$$;
-- After a cycle: the fits of a corpus not reported yet, by status, and whether its ids and
-- embeddings are exactly as they were before any fit
CREATE TABLE chk.originals (corpus regclass PRIMARY KEY, fp text);
CREATE TABLE chk.reported (fit_id bigint PRIMARY KEY);
CREATE FUNCTION chk.summary(c regclass) RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE r text;
BEGIN
  SELECT string_agg(format('%s %s', s.status, s.n), ', ' ORDER BY s.status) INTO r
    FROM (SELECT f.status, count(*) AS n FROM nudge.fits AS f
           WHERE f.corpus::oid = c::oid AND NOT EXISTS (SELECT 1 FROM chk.reported AS x WHERE x.fit_id = f.fit_id)
           GROUP BY f.status) AS s;
  INSERT INTO chk.reported SELECT f.fit_id FROM nudge.fits AS f WHERE f.corpus::oid = c::oid ON CONFLICT DO NOTHING;
  RETURN format('%s: fits %s; embeddings as before: %s', c, coalesce(r, 'none'),
                chk.emb_fp(c) = (SELECT o.fp FROM chk.originals AS o WHERE o.corpus::oid = c::oid));
END $$;

-- cycle(corpus, qrels): every entry point on one corpus, as the current role, under the
-- current search_path: a fit choosing gamma by folds, evaluations, a refit, reverts, dry runs
-- (validation tables, reference search, NUDGE-M; a seeded split), a target column, staged
-- fits applied in batches (progress reported) and reverted, a staged refit, two stacked strict
-- fits, a staged fit dropped, the digest of every row (as real[]). nudge's functions are called in the
-- extension's schema (public or other_schema), every other name is pg_catalog's: a hostile
-- object can only run if nudge itself names it.
CREATE PROCEDURE chk.cycle(corpus regclass, qrels regclass)
LANGUAGE plpgsql AS $cycle$
DECLARE
  ns pg_catalog.text;
  p pg_catalog.text;
  fit pg_catalog.text;
  ty pg_catalog.text;
  a bigint; b bigint; s bigint; x bigint; w bigint; k bigint;
BEGIN
  SELECT n.nspname INTO ns FROM pg_catalog.pg_extension AS e JOIN pg_catalog.pg_namespace AS n
      ON n.oid OPERATOR(pg_catalog.=) e.extnamespace WHERE e.extname OPERATOR(pg_catalog.=) 'nudge';
  p := pg_catalog.concat(pg_catalog.quote_ident(ns), '.');
  fit := pg_catalog.format('SELECT f.fit_id FROM %snudge_fit(%L, %L, %L, %L', p, corpus, 'embedding', 'attack.q', qrels);
  EXECUTE pg_catalog.concat(fit, ') AS f') INTO a;
  EXECUTE pg_catalog.format('SELECT e.queries FROM %snudge_evaluate(%L, %L, %L, %L) AS e',
                            p, corpus, 'embedding', 'attack.q', qrels) INTO x;
  EXECUTE pg_catalog.format('SELECT e.queries FROM %snudge_evaluate(%L, %L, %L, %L, k => 3, distance => %L) AS e',
                            p, corpus, 'embedding', 'attack.q', qrels, 'inner_product') INTO x;
  EXECUTE pg_catalog.format('SELECT f.fit_id FROM %snudge_refit(%s) AS f', p, a) INTO b;
  EXECUTE pg_catalog.format('SELECT f.fit_id FROM %snudge_refit(%s, dry_run => true) AS f', p, b) INTO x;
  -- guarded refits: one scored and not written (dry run), one rejected
  EXECUTE pg_catalog.format('SELECT f.fit_id FROM %snudge_refit(%s, dry_run => true, guard_queries => %L, guard_qrels => %L) AS f',
                            p, b, 'attack.gq', 'attack.gr') INTO x;
  EXECUTE pg_catalog.format('SELECT f.fit_id FROM %snudge_refit(%s, guard_queries => %L, guard_qrels => %L, guard_metric => %L, guard_tolerance => -2) AS f',
                            p, b, 'attack.gq', 'attack.gr', 'mrr@5') INTO x;
  EXECUTE pg_catalog.format('SELECT %snudge_revert(%s)', p, b) INTO x;
  EXECUTE pg_catalog.format('SELECT %snudge_revert(%s, lock => %L)', p, a, 'table') INTO x;
  EXECUTE pg_catalog.concat(fit, pg_catalog.format(', validation_queries => %L, validation_qrels => %L, method => %L, gamma_search => %L, dry_run => true) AS f',
                                                   'attack.q', qrels, 'nudge_m', 'reference')) INTO x;
  EXECUTE pg_catalog.concat(fit, ', validation_fraction => 0.25, seed => 3, metric => ''mrr@5'', negative_rule => ''move'', dry_run => true) AS f') INTO x;
  EXECUTE pg_catalog.concat(fit, ', gamma => 0.2, target => ''nudged'') AS f') INTO x;
  EXECUTE pg_catalog.concat(fit, ', gamma => 0.2, staged => true) AS f') INTO s;
  IF ns OPERATOR(pg_catalog.=) 'other_schema' THEN CALL other_schema.nudge_apply(s, 3, w, k);
  ELSE CALL public.nudge_apply(s, 3, w, k); END IF;
  EXECUTE pg_catalog.format('SELECT %snudge_revert(%s)', p, s) INTO x;
  EXECUTE pg_catalog.format('SELECT f.fit_id FROM %snudge_refit(%s, staged => true) AS f', p, s) INTO s;
  IF ns OPERATOR(pg_catalog.=) 'other_schema' THEN CALL other_schema.nudge_apply(s, 100, w, k);
  ELSE CALL public.nudge_apply(s, 100, w, k); END IF;
  EXECUTE pg_catalog.format('SELECT %snudge_revert(%s)', p, s) INTO x;
  EXECUTE pg_catalog.concat(fit, ', gamma => 0.2, lock => ''table'') AS f') INTO a;
  EXECUTE pg_catalog.concat(fit, ', gamma => 0.3) AS f') INTO b;
  EXECUTE pg_catalog.format('SELECT %snudge_revert(%s)', p, b) INTO x;
  EXECUTE pg_catalog.format('SELECT %snudge_revert(%s)', p, a) INTO x;
  EXECUTE pg_catalog.concat(fit, ', gamma => 0.2, staged => true) AS f') INTO s;
  EXECUTE pg_catalog.format('SELECT %snudge_revert(%s)', p, s) INTO x;
  SELECT pg_catalog.format_type(a.atttypid, NULL) INTO ty FROM pg_catalog.pg_attribute AS a
   WHERE a.attrelid OPERATOR(pg_catalog.=) corpus::pg_catalog.oid AND a.attname OPERATOR(pg_catalog.=) 'embedding';
  -- nudge_digest itself, on values of both array types (not over the table: on Citus a query
  -- of this file over a distributed table is deparsed and re-planned by Citus, which names
  -- aggregates and types by their bare names; those are this file's queries, not nudge's)
  EXECUTE pg_catalog.format('SELECT %snudge_digest(''{0.5,0.25}''::pg_catalog.float4[])', p) INTO x;
  EXECUTE pg_catalog.format('SELECT %snudge_digest(''{0.5,0.25}''::pg_catalog.float8[])', p) INTO x;
END
$cycle$;

-- Dependencies of nudge's objects (its members, and their policies, defaults, constraints,
-- indexes, rules) on anything outside pg_catalog, nudge's extension schema and schema nudge
CREATE FUNCTION chk.foreign_deps() RETURNS SETOF text LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
WITH RECURSIVE ext AS (SELECT e.oid, e.extnamespace FROM pg_extension AS e WHERE e.extname = 'nudge'),
own (classid, objid) AS (
    SELECT d.classid, d.objid FROM pg_depend AS d, ext
     WHERE d.refclassid = 'pg_extension'::regclass::oid AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION
    SELECT d.classid, d.objid FROM pg_depend AS d JOIN own AS o ON d.refclassid = o.classid AND d.refobjid = o.objid
     WHERE d.deptype IN ('a', 'i')),
-- pg_catalog, the extension's schema, and the schemas the extension created (nudge; the
-- `tests` schema of a build with pgrx's test functions, which pg_regress runs on)
allowed (nsp) AS (SELECT 'pg_catalog'::text UNION ALL SELECT 'pg_toast'
                  UNION ALL SELECT quote_ident(n.nspname) FROM ext JOIN pg_namespace AS n ON n.oid = ext.extnamespace
                  UNION ALL SELECT quote_ident(n.nspname) FROM ext JOIN pg_depend AS d
                                 ON d.refclassid = 'pg_extension'::regclass::oid AND d.refobjid = ext.oid AND d.deptype = 'e'
                               AND d.classid = 'pg_namespace'::regclass::oid
                            JOIN pg_namespace AS n ON n.oid = d.objid)
SELECT DISTINCT format('%s %s depends on %s %s', me.type, me.identity, ref.type, ref.identity)
  FROM own AS o
  JOIN pg_depend AS d ON d.classid = o.classid AND d.objid = o.objid AND d.deptype <> 'e'
  CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) AS me
  CROSS JOIN LATERAL pg_identify_object(d.refclassid, d.refobjid, d.refobjsubid) AS ref
 WHERE CASE WHEN ref.type = 'schema' THEN ref.identity ELSE quote_ident(ref.schema) END NOT IN (SELECT nsp FROM allowed)
 ORDER BY 1
$$;
-- nudge's functions: SQL and PL/pgSQL ones (not procedures, which cannot have a SET clause
-- and commit) pin search_path; SECURITY DEFINER ones too; internal ones are not PUBLIC's
CREATE FUNCTION chk.function_rules() RETURNS SETOF text LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
SELECT format('%s: %s', p.oid::regprocedure, v.problem)
  FROM pg_depend AS d
  JOIN pg_extension AS e ON d.refclassid = 'pg_extension'::regclass::oid AND d.refobjid = e.oid AND e.extname = 'nudge'
  JOIN pg_proc AS p ON d.classid = 'pg_proc'::regclass::oid AND d.objid = p.oid AND d.deptype = 'e'
  CROSS JOIN LATERAL (VALUES
    (CASE WHEN p.prokind <> 'p' AND p.prolang IN (SELECT l.oid FROM pg_language AS l WHERE l.lanname IN ('sql', 'plpgsql'))
               AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c WHERE c ~ '^search_path="?pg_catalog"?(, *"?pg_temp"?)?$')
          THEN 'no SET search_path = pg_catalog, pg_temp' END),
    (CASE WHEN p.prosecdef AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c WHERE c ~ '^search_path="?pg_catalog"?(, *"?pg_temp"?)?$')
          THEN 'SECURITY DEFINER without a pinned search_path' END),
    -- (nudge_apply_step stays executable: CALL nudge_apply runs with the caller's rights and
    -- calls it; it refuses every role but the one that staged the fit, or a superuser)
    (CASE WHEN p.proname IN ('nudge_shard_pass', 'nudge_shard_topk')
               AND has_function_privilege('public', p.oid, 'EXECUTE')
          THEN 'internal, yet executable by PUBLIC' END)) AS v(problem)
 WHERE v.problem IS NOT NULL
 ORDER BY 1
$$;
-- What PUBLIC may do to nudge's catalog
CREATE FUNCTION chk.catalog_rights() RETURNS SETOF text LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
SELECT format('%s: %s', c.oid::regclass,
              string_agg(format('%s %s', x.p, CASE WHEN has_table_privilege('public', c.oid, x.p) THEN 'yes' ELSE 'no' END),
                         ', ' ORDER BY x.o))
  FROM pg_class AS c CROSS JOIN unnest('{SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER}'::text[]) WITH ORDINALITY AS x(p, o)
 WHERE c.relnamespace = 'nudge'::regnamespace::oid AND c.relkind IN ('r', 'v', 'p')
 GROUP BY c.oid
UNION ALL
SELECT format('%s: %s', c.oid::regclass,
              string_agg(format('%s %s', x.p, CASE WHEN has_sequence_privilege('public', c.oid, x.p) THEN 'yes' ELSE 'no' END),
                         ', ' ORDER BY x.o))
  FROM pg_class AS c CROSS JOIN unnest('{USAGE,UPDATE}'::text[]) WITH ORDINALITY AS x(p, o)
 WHERE c.relnamespace = 'nudge'::regnamespace::oid AND c.relkind = 'S'
 GROUP BY c.oid
UNION ALL
SELECT format('schema nudge: CREATE %s', CASE WHEN has_schema_privilege('public', 'nudge', 'CREATE') THEN 'yes' ELSE 'no' END)
UNION ALL
SELECT format('functions of nudge in schema public while nudge lives in %s: %s', n.nspname,
              (SELECT count(*) FROM pg_depend AS d JOIN pg_proc AS p ON d.classid = 'pg_proc'::regclass::oid AND d.objid = p.oid
                WHERE d.refclassid = 'pg_extension'::regclass::oid AND d.refobjid = e.oid AND d.deptype = 'e'
                  AND p.pronamespace = 'public'::regnamespace::oid))
  FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
 WHERE e.extname = 'nudge' AND n.nspname <> 'public'
ORDER BY 1
$$;
CREATE FUNCTION chk.summary_all() RETURNS SETOF text LANGUAGE sql SET search_path = pg_catalog AS $$
  SELECT chk.summary(c) FROM unnest('{attack.d_int,attack.d_big,attack.d_num,attack.d_text,attack.d_vc,attack.d_uuid}'::regclass[]) WITH ORDINALITY AS x(c, o) ORDER BY o
$$;
RESET check_function_bodies;
-- END helpers

-- The owner's tables, in schema attack: 12 queries in 4 dimensions, query k relevant to
-- document 3k % 40 + 1; one corpus of 40 documents per id type nudge compares (integer, bigint,
-- numeric, text, varchar, uuid), real[] or double precision[], each with a target column and
-- its labels naming its ids; and a corpus of 160 rows under row-level security
CREATE SCHEMA attack AUTHORIZATION nudge_owner;
GRANT USAGE ON SCHEMA attack TO PUBLIC;
GRANT CREATE ON SCHEMA attack TO nudge_updater;
SET ROLE nudge_owner;
CREATE TABLE attack.q AS
SELECT k AS id, ARRAY(SELECT sin((k * 3 % 40 + 1) * j * 0.41 + j + 0.3 * cos(k * j))::real
                        FROM generate_series(1, 4) j) AS embedding
  FROM generate_series(1, 12) k;
CREATE TEMP TABLE base AS
SELECT i, ARRAY(SELECT sin(i * j * 0.41 + j)::real FROM generate_series(1, 4) j) AS e FROM generate_series(1, 160) i;
CREATE TABLE attack.d_int (id integer PRIMARY KEY, embedding real[], nudged real[]);
INSERT INTO attack.d_int SELECT i, e FROM base WHERE i <= 40;
CREATE TABLE attack.r_int AS SELECT k AS query_id, k * 3 % 40 + 1 AS doc_id FROM generate_series(1, 12) k;
CREATE TABLE attack.d_big (id bigint PRIMARY KEY, embedding double precision[], nudged double precision[]);
INSERT INTO attack.d_big SELECT i, e FROM base WHERE i <= 40;
CREATE TABLE attack.r_big AS SELECT query_id, doc_id::text AS doc_id, 1 AS score FROM attack.r_int;
CREATE TABLE attack.d_num (id numeric PRIMARY KEY, embedding real[], nudged real[]);
INSERT INTO attack.d_num SELECT i + 0.5, e FROM base WHERE i <= 40;
CREATE TABLE attack.r_num AS SELECT query_id, (doc_id + 0.5)::text AS doc_id FROM attack.r_int;
CREATE TABLE attack.d_text (id text PRIMARY KEY, embedding real[], nudged real[]);
INSERT INTO attack.d_text SELECT 'doc ' || i, e FROM base WHERE i <= 40;
CREATE TABLE attack.r_text AS SELECT query_id, 'doc ' || doc_id AS doc_id FROM attack.r_int;
CREATE TABLE attack.d_vc (id varchar(20) PRIMARY KEY, embedding double precision[], nudged double precision[]);
INSERT INTO attack.d_vc SELECT 'v' || i, e FROM base WHERE i <= 40;
CREATE TABLE attack.r_vc AS SELECT query_id, ('v' || doc_id)::varchar(20) AS doc_id FROM attack.r_int;
CREATE TABLE attack.d_uuid (id uuid PRIMARY KEY, embedding real[], nudged real[]);
INSERT INTO attack.d_uuid SELECT md5(i::text)::uuid, e FROM base WHERE i <= 40;
CREATE TABLE attack.r_uuid AS SELECT query_id, md5(doc_id::text)::uuid AS doc_id FROM attack.r_int;
-- guard queries (ids of their own) and labels (the integer corpora's doc ids, as text)
CREATE TABLE attack.gq AS SELECT id + 100 AS id, embedding FROM attack.q;
CREATE TABLE attack.gr AS SELECT query_id + 100 AS query_id, doc_id::text AS doc_id FROM attack.r_int;
CREATE TABLE attack.d_rls (id integer PRIMARY KEY, embedding real[]);
INSERT INTO attack.d_rls SELECT i, e FROM base;
ALTER TABLE attack.d_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY rls_read ON attack.d_rls FOR SELECT USING (true);
CREATE POLICY rls_update ON attack.d_rls FOR UPDATE TO nudge_updater USING (id <= 100) WITH CHECK (id <= 100);
CREATE TABLE attack.r_rls_hi AS SELECT k AS query_id, 110 + k AS doc_id FROM generate_series(1, 12) k;
-- a trigger of the owner on one corpus logs who writes it
CREATE TABLE attack.trigger_log (who name, superuser boolean, op text);
GRANT INSERT ON attack.trigger_log TO PUBLIC;
CREATE TABLE attack.d_trig (id integer PRIMARY KEY, embedding real[], nudged real[]);
INSERT INTO attack.d_trig SELECT i, e FROM base WHERE i <= 40;
CREATE FUNCTION attack.log_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO attack.trigger_log
  SELECT CURRENT_USER, r.rolsuper, TG_OP FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER;
  RETURN NEW;
END $$;
CREATE TRIGGER log_writer BEFORE UPDATE ON attack.d_trig FOR EACH ROW EXECUTE FUNCTION attack.log_writer();
GRANT SELECT ON ALL TABLES IN SCHEMA attack TO nudge_writer, nudge_updater;
GRANT UPDATE ON attack.d_trig TO nudge_writer;
GRANT UPDATE ON attack.d_int, attack.d_text TO nudge_writer;
GRANT UPDATE ON attack.d_rls TO nudge_updater;
DROP TABLE base;
RESET ROLE;
INSERT INTO chk.originals
SELECT c::regclass, chk.emb_fp(c::regclass)
  FROM unnest('{attack.d_int,attack.d_big,attack.d_num,attack.d_text,attack.d_vc,attack.d_uuid,attack.d_rls,attack.d_trig}'::text[]) AS c;
\c :regress_db
CREATE DATABASE nudge_atk TEMPLATE nudge_atk_tpl;
CREATE DATABASE nudge_atk_pre TEMPLATE nudge_atk_tpl;

-- ==================== nudge installed first, hostile objects after ====================
\c nudge_atk
SET client_min_messages = warning;
CREATE EXTENSION nudge;
SET nudge.progress = off;
\pset format unaligned
\pset tuples_only on

-- == what PUBLIC may do: read the catalog, nothing else; internal functions are not its own
SELECT chk.catalog_rights();
SELECT chk.function_rules();
SELECT chk.foreign_deps();

-- == attack 4: plant a backup past row-level security. nudge_updater may UPDATE only the rows
-- id <= 100 of d_rls; it tries to draw a fit id, record an applied fit and back up row 150
-- with a vector of its choosing (and the row's current digest), so that the owner's next
-- fit would write that vector into row 150
SET ROLE nudge_updater;
SELECT chk.t($$UPDATE attack.d_rls SET embedding = '{9,9,9,9}' WHERE id = 150$$, 'attack.d_rls');
SELECT chk.t($$SELECT pg_catalog.nextval('nudge.fits_fit_id_seq')$$);
SELECT chk.t($$SELECT pg_catalog.setval('nudge.fits_fit_id_seq', 1000)$$);
SELECT chk.t($$INSERT INTO nudge.fits (fit_id, corpus, id_column, embedding, embedding_type, queries, qrels, method,
                                       gamma_search, negative_rule, gamma, train_queries, validation_query_count,
                                       records_moving, records_changed, rows_written, seconds, status, lock)
               VALUES (pg_catalog.currval('nudge.fits_fit_id_seq'), 'attack.d_rls', 'id', 'embedding', 'real[]',
                       'attack.q', 'attack.r_int', 'nudge_n', 'fixed', 'skip', 0.2, 12, 0, 1, 1, 1, 0, 'applied', 'rows')$$, 'nudge.fits');
SELECT chk.t($$INSERT INTO nudge.fits (fit_id, corpus, id_column, embedding, embedding_type, queries, qrels, method,
                                       gamma_search, negative_rule, gamma, train_queries, validation_query_count,
                                       records_moving, records_changed, rows_written, seconds, status, lock)
               VALUES (1000, 'attack.d_rls', 'id', 'embedding', 'real[]',
                       'attack.q', 'attack.r_int', 'nudge_n', 'fixed', 'skip', 0.2, 12, 0, 1, 1, 1, 0, 'applied', 'rows')$$, 'nudge.fits');
SELECT chk.t($$INSERT INTO nudge.fit_backups (fit_id, corpus, row_id, original, written)
               SELECT pg_catalog.currval('nudge.fits_fit_id_seq'), 'attack.d_rls', '150', '{9,9,9,9}', nudge_digest(d.embedding)
                 FROM attack.d_rls AS d WHERE d.id = 150$$, 'nudge.fit_backups');
SELECT chk.t($$INSERT INTO nudge.fit_staged (fit_id, corpus, row_id, row_tableoid, row_ctid, read, vector)
               SELECT pg_catalog.currval('nudge.fits_fit_id_seq'), 'attack.d_rls', '150', d.tableoid, d.ctid,
                      nudge_digest(d.embedding), '{9,9,9,9}'
                 FROM attack.d_rls AS d WHERE d.id = 150$$, 'nudge.fit_staged');
RESET ROLE;
SELECT count(*) AS fits_recorded_by_the_updater FROM nudge.fits WHERE created_by = 'nudge_updater';
SELECT embedding::text AS row150 FROM attack.d_rls WHERE id = 150 \gset
SET ROLE nudge_owner;
SELECT records_changed > 0 AS owner_fitted FROM nudge_fit('attack.d_rls', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2);
RESET ROLE;
SELECT embedding::text = :'row150' AS row150_untouched, embedding::text <> '{9,9,9,9}' AS row150_not_planted
  FROM attack.d_rls WHERE id = 150;
SET ROLE nudge_owner;
SELECT nudge_revert(fit_id) > 0 AS owner_reverted FROM nudge.fits
 WHERE corpus = 'attack.d_rls'::regclass::oid AND status = 'applied' AND created_by = 'nudge_owner';
RESET ROLE;
-- the updater fits d_rls itself, with labels of its own on row 150, beyond its policy: row
-- 150 is not written and no backup of it is recorded
SET ROLE nudge_updater;
CREATE TABLE attack.r150 AS SELECT k AS query_id, 150 AS doc_id FROM generate_series(1, 12) k;
SELECT chk.t($$SELECT fit_id FROM nudge_fit('attack.d_rls', 'embedding', 'attack.q', 'attack.r150', gamma => 0.2)$$, 'attack.d_rls');
RESET ROLE;
SELECT embedding::text = :'row150' AS row150_untouched FROM attack.d_rls WHERE id = 150;
SELECT count(*) AS backups_of_row150 FROM nudge.fit_backups
 WHERE corpus::oid = 'attack.d_rls'::regclass::oid AND row_id = '150';
-- the owner fits rows 111..122; the updater, which may UPDATE rows id <= 100 only, cannot
-- revert that fit in part (nor mark it reverted): 42501, the fit intact; the owner reverts it
SET ROLE nudge_owner;
SELECT fit_id AS hi_fit FROM nudge_fit('attack.d_rls', 'embedding', 'attack.q', 'attack.r_rls_hi', gamma => 0.2) \gset
RESET ROLE;
SELECT chk.fit_state(:hi_fit) AS hi_before \gset
SET ROLE nudge_updater;
SELECT chk.t('SELECT nudge_revert(' || :hi_fit || ')', 'attack.d_rls');
SELECT chk.t('SELECT nudge_revert(' || :hi_fit || ', lock => ''table'')', 'attack.d_rls');
RESET ROLE;
SELECT chk.fit_state(:hi_fit) = :'hi_before' AS owner_fit_intact;
SET ROLE nudge_owner;
SELECT nudge_revert(:hi_fit) > 0 AS owner_reverted;
RESET ROLE;
SELECT chk.summary('attack.d_rls');

-- == attack 5: someone else's staged fit. The owner stages a fit of d_int; nudge_writer, which
-- may UPDATE d_int, tries to apply it, revert it (drop it), or step it: 42501, and the staged
-- fit is intact; the owner applies it
SET ROLE nudge_owner;
SELECT fit_id AS staged_fit FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, staged => true) \gset
RESET ROLE;
SELECT chk.fit_state(:staged_fit) AS staged_before \gset
SELECT :'staged_before';
SET ROLE nudge_writer;
SELECT chk.t('CALL nudge_apply(' || :staged_fit || ')', 'attack.d_int');
SELECT chk.t('CALL nudge_apply(' || :staged_fit || ', 1)', 'attack.d_int');
SELECT chk.t('SELECT nudge_revert(' || :staged_fit || ')', 'attack.d_int');
SELECT chk.t('SELECT nudge_revert(' || :staged_fit || ', lock => ''table'')', 'attack.d_int');
SELECT chk.t('SELECT nudge_apply_step(' || :staged_fit || ', 100)', 'attack.d_int');
RESET ROLE;
SELECT chk.fit_state(:staged_fit) = :'staged_before' AS staged_fit_intact;
SET ROLE nudge_owner;
CALL nudge_apply(:staged_fit);
SELECT chk.fit_state(:staged_fit);
SELECT nudge_revert(:staged_fit) > 0 AS owner_reverted;
RESET ROLE;
-- a superuser may apply and drop another role's staged fit
SET ROLE nudge_owner;
SELECT fit_id AS staged_fit FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, staged => true) \gset
RESET ROLE;
CALL nudge_apply(:staged_fit, 5);
SELECT nudge_revert(:staged_fit) > 0 AS superuser_reverted;
SET ROLE nudge_owner;
SELECT fit_id AS staged_fit FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, staged => true) \gset
RESET ROLE;
SELECT nudge_revert(:staged_fit) = 0 AS superuser_dropped;
SELECT chk.summary('attack.d_int');

-- == attack 6: tampering with the catalog. The owner fits d_int in place; nudge_writer (UPDATE
-- on d_int) and the owner itself try to mark it reverted, delete or change its backups, the
-- staged rows, the sequence, the policies, the schema: 42501 every time; the owner reverts
SET ROLE nudge_owner;
SELECT fit_id AS owner_fit FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2) \gset
SELECT fit_id AS staged_fit FROM nudge_fit('attack.d_text', 'embedding', 'attack.q', 'attack.r_text', gamma => 0.2, staged => true) \gset
RESET ROLE;
SELECT chk.fit_state(:owner_fit) AS owner_fit_before \gset
SELECT chk.fit_state(:staged_fit) AS staged_before \gset
SET ROLE nudge_writer;
SELECT chk.t('UPDATE nudge.fits SET rows_written = 0, status = ''reverted'' WHERE fit_id = ' || :owner_fit, 'nudge.fits');
SELECT chk.t('UPDATE nudge.fits SET status = ''applied'' WHERE fit_id = ' || :staged_fit, 'nudge.fits');
SELECT chk.t('UPDATE nudge.fits SET reverted_at = now()', 'nudge.fits');
SELECT chk.t('DELETE FROM nudge.fits WHERE fit_id = ' || :owner_fit, 'nudge.fits');
SELECT chk.t('DELETE FROM nudge.fit_backups WHERE fit_id = ' || :owner_fit, 'nudge.fit_backups');
SELECT chk.t('UPDATE nudge.fit_backups SET original = ''{9,9,9,9}'' WHERE fit_id = ' || :owner_fit, 'nudge.fit_backups');
SELECT chk.t('INSERT INTO nudge.fit_backups (fit_id, corpus, row_id, original, written) VALUES ('
             || :owner_fit || ', ''attack.d_int'', ''39'', ''{9,9,9,9}'', 0)', 'nudge.fit_backups');
SELECT chk.t('DELETE FROM nudge.fit_staged WHERE fit_id = ' || :staged_fit, 'nudge.fit_staged');
SELECT chk.t('UPDATE nudge.fit_staged SET vector = ''{9,9,9,9}''', 'nudge.fit_staged');
SELECT chk.t('INSERT INTO nudge.fit_staged (fit_id, corpus, row_id, read, vector) VALUES ('
             || :staged_fit || ', ''attack.d_text'', ''doc 39'', 0, ''{9,9,9,9}'')', 'nudge.fit_staged');
SELECT chk.t('TRUNCATE nudge.fit_backups', 'nudge.fit_backups');
SELECT chk.t('TRUNCATE nudge.fits CASCADE', 'nudge.fits');
SELECT chk.t('SELECT pg_catalog.nextval(''nudge.fits_fit_id_seq'')');
SELECT chk.t('SELECT pg_catalog.setval(''nudge.fits_fit_id_seq'', 1)');
SELECT chk.t('ALTER SEQUENCE nudge.fits_fit_id_seq RESTART');
SELECT chk.t('ALTER TABLE nudge.fit_backups DISABLE ROW LEVEL SECURITY');
SELECT chk.t('CREATE POLICY mine ON nudge.fit_backups FOR ALL USING (true)');
SELECT chk.t('DROP TABLE nudge.fit_staged');
SELECT chk.t('CREATE TABLE nudge.mine (x int)');
SELECT chk.t('CREATE FUNCTION nudge.nudge_may_read_vectors(x oid) RETURNS boolean LANGUAGE sql AS ''SELECT true''');
SELECT chk.t('CREATE VIEW nudge.fits_view AS SELECT 1 AS x');
RESET ROLE;
SET ROLE nudge_owner;
SELECT chk.t('UPDATE nudge.fits SET status = ''reverted'' WHERE fit_id = ' || :owner_fit, 'nudge.fits');
SELECT chk.t('DELETE FROM nudge.fit_backups WHERE fit_id = ' || :owner_fit, 'nudge.fit_backups');
SELECT chk.t('DELETE FROM nudge.fit_staged WHERE fit_id = ' || :staged_fit, 'nudge.fit_staged');
SELECT chk.t('INSERT INTO nudge.fit_backups (fit_id, corpus, row_id, original, written) VALUES ('
             || :owner_fit || ', ''attack.d_int'', ''39'', ''{9,9,9,9}'', 0)', 'nudge.fit_backups');
-- the owner's own table named as the corpus of a fit of nudge's catalog: nudge writes it only
-- through its own rules, never as a corpus
SELECT chk.t($$SELECT * FROM nudge_fit('nudge.fit_backups', 'original', 'attack.q', 'attack.r_int', id_column => 'row_id', gamma => 0.2)$$, 'nudge.fit_backups');
SELECT chk.t($$SELECT * FROM nudge_fit('nudge.fit_staged', 'vector', 'attack.q', 'attack.r_int', id_column => 'row_id', gamma => 0.2)$$, 'nudge.fit_staged');
RESET ROLE;
SELECT chk.fit_state(:owner_fit) = :'owner_fit_before' AS owner_fit_intact,
       chk.fit_state(:staged_fit) = :'staged_before' AS staged_fit_intact;
SET ROLE nudge_owner;
SELECT nudge_revert(:owner_fit) > 0 AS owner_reverted;
SELECT nudge_revert(:staged_fit) = 0 AS owner_dropped_staged;
RESET ROLE;
SELECT chk.summary('attack.d_int');
SELECT chk.summary('attack.d_text');

-- == code of the corpus's owner (a trigger on its table) runs as the role that called nudge,
-- never as the role that owns nudge's catalog
SET ROLE nudge_owner;
CALL chk.cycle('attack.d_trig', 'attack.r_int');
RESET ROLE;
SET ROLE nudge_writer;
SELECT fit_id AS writer_fit FROM nudge_fit('attack.d_trig', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2) \gset
SELECT nudge_revert(:writer_fit) > 0 AS writer_reverted;
RESET ROLE;
SELECT who, superuser, op FROM attack.trigger_log GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
SELECT chk.summary('attack.d_trig');

-- == internal entry points: not PUBLIC's. A role without rights gets 42501 from each
SET ROLE nudge_owner;
SELECT fit_id AS staged_fit FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, staged => true) \gset
RESET ROLE;
SET ROLE nudge_plain;
SELECT chk.t($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, '\x')$$);
SELECT chk.t($$SELECT nudge_shard_topk('{}', 'id', 'embedding', '\x')$$);
SELECT chk.t('SELECT nudge_apply_step(' || :staged_fit || ', 10)', 'attack.d_int');
RESET ROLE;
SET ROLE nudge_owner;
SELECT chk.t($$SELECT nudge_shard_pass(ARRAY['attack.d_int'::regclass::oid], 'id', 'embedding', NULL, '\x')$$);
RESET ROLE;
-- As a superuser: NULLs, bytes that are no message, messages whose sizes lie; an answer or a
-- clear error, never XX, never a crash (the allocation attacks are at the end of this file)
CREATE TABLE attack.docs_102008 AS SELECT id, embedding FROM attack.d_int;
SELECT chk.shard($$SELECT nudge_shard_pass(NULL, NULL, NULL, NULL, NULL)$$);
SELECT chk.shard($$SELECT nudge_shard_pass(NULL, 'id', 'embedding', NULL, chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY['attack.docs_102008'::regclass::oid], NULL, 'embedding', NULL, chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY['attack.docs_102008'::regclass::oid], 'id', NULL, NULL, chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY['attack.docs_102008'::regclass::oid], 'id', 'embedding', NULL, NULL)$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY[NULL]::oid[], 'id', 'embedding', NULL, chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY['attack.docs_102008'::regclass::oid], 'id', 'embedding', NULL, chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY['attack.docs_102008'::regclass::oid], 'id', 'embedding', 'id', chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY['attack.docs_102008'::regclass::oid], 'id', 'embedding', NULL, chk.pass_request(chk.spec(3, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY['attack.d_int'::regclass::oid], 'id', 'embedding', NULL, chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY[0::oid], 'id', 'embedding', NULL, chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass(ARRAY['pg_class'::regclass::oid], 'oid', 'relacl', NULL, chk.pass_request(chk.spec(4, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, '\x')$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, '\xdeadbeef')$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, (SELECT decode(string_agg(md5(i::text), ''), 'hex') FROM generate_series(1, 64) i))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, '\x4e44475103')$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, '\x4e44475102' || chk.u64(18446744073709551615))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, chk.pass_request('\x4e44475302'))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, chk.pass_request(chk.spec(0, 0, 0, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, chk.pass_request(chk.spec(4, 10, 1000000000, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, chk.pass_request(chk.spec(4, 0, 0, 18446744073709551615)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, chk.pass_request(chk.spec(4611686018427387904, 0, 4, 0)))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, chk.pass_request(chk.spec(1, 1, 1, 0, '\x0000c07f')))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, chk.pass_request(chk.spec(1, 0, 0, 2, chk.u64(5) || chk.u64(5))))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, '\x4e44475102' || chk.u64(length(chk.spec(4, 0, 0, 0))) || chk.spec(4, 0, 0, 0) || chk.u64(1000000000000))$$);
SELECT chk.shard($$SELECT nudge_shard_pass('{}', 'id', 'embedding', NULL, chk.pass_request(chk.spec(4, 0, 0, 0)) || '\x00')$$);
SELECT chk.shard($$SELECT nudge_shard_topk(NULL, NULL, NULL, NULL)$$);
SELECT chk.shard($$SELECT nudge_shard_topk(ARRAY['attack.docs_102008'::regclass::oid], 'id', 'embedding', NULL)$$);
SELECT chk.shard($$SELECT nudge_shard_topk(ARRAY['attack.docs_102008'::regclass::oid], 'id', 'embedding', chk.topk_request(3, 4, 4, '\x0000803f0000803f0000803f0000803f'))$$);
SELECT chk.shard($$SELECT nudge_shard_topk(ARRAY['attack.docs_102008'::regclass::oid], 'id', 'embedding', chk.topk_request(3, 2, 2, '\x0000803f0000803f'))$$);
SELECT chk.shard($$SELECT nudge_shard_topk('{}', 'id', 'embedding', '\xdeadbeef')$$);
SELECT chk.shard($$SELECT nudge_shard_topk('{}', 'id', 'embedding', '\x4e44474b02')$$);
SELECT chk.shard($$SELECT nudge_shard_topk('{}', 'id', 'embedding', chk.topk_request(0, 1, 1, '\x0000803f'))$$);
SELECT chk.shard($$SELECT nudge_shard_topk('{}', 'id', 'embedding', chk.topk_request(3, 0, 0, '\x'))$$);
SELECT chk.shard($$SELECT nudge_shard_topk('{}', 'id', 'embedding', chk.topk_request(3, 1, 18446744073709551615, '\x0000803f'))$$);
SELECT chk.shard($$SELECT nudge_shard_topk(ARRAY['attack.docs_102008'::regclass::oid], 'id', 'embedding', chk.topk_request(4611686018427387904, 4, 4, '\x0000803f0000803f0000803f0000803f'))$$);
SELECT chk.shard($$SELECT nudge_shard_topk('{}', 'id', 'embedding', chk.topk_request(3, 4611686018427387904, 1, '\x0000803f'))$$);
SELECT chk.t('SELECT nudge_apply_step(NULL, NULL)');
SELECT chk.t('SELECT nudge_apply_step(' || :staged_fit || ', NULL)', 'attack.d_int');
SELECT chk.t('SELECT nudge_apply_step(-1, 10)');
SELECT chk.t('SELECT nudge_apply_step(0, 10)');
SELECT chk.t('SELECT nudge_apply_step(9223372036854775807, 10)');
SELECT chk.t('SELECT nudge_apply_step(' || :staged_fit || ', 0)', 'attack.d_int');
SELECT chk.t('SELECT nudge_apply_step(' || :staged_fit || ', -1)', 'attack.d_int');
SELECT chk.t('SELECT nudge_apply_step(' || :owner_fit || ', 10)', 'attack.d_int');
SELECT 1 AS still_connected;
SELECT chk.fit_state(:staged_fit);
SELECT nudge_revert(:staged_fit) = 0 AS dropped;

-- == every public function with NULL in each argument, then with garbage: a clear SQLSTATE
-- (or a result), never class XX; nothing changes
SELECT chk.t($$SELECT * FROM nudge_fit(NULL, 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', NULL, 'attack.q', 'attack.r_int', gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', NULL, 'attack.r_int', gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', id_column => NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', method => NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', validation_queries => NULL, validation_qrels => 'attack.r_int', dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', validation_queries => 'attack.q', validation_qrels => NULL, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', validation_fraction => NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', seed => NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', metric => NULL, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => NULL, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', target => NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, dry_run => NULL)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma_search => NULL, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', negative_rule => NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', folds => NULL, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', update_from => NULL, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', lock => NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', staged => NULL, gamma => 0.2, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_evaluate(NULL, 'embedding', 'attack.q', 'attack.r_int')$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', NULL, 'attack.q', 'attack.r_int')$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', NULL, 'attack.r_int')$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', NULL)$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', k => NULL)$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', id_column => NULL)$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', distance => NULL)$$);
SELECT chk.t($$SELECT nudge_revert(NULL)$$, 'attack.d_int');
SELECT chk.t($$SELECT nudge_revert(1, NULL)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_refit(NULL)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_refit(1, dry_run => NULL)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_refit(1, lock => NULL)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_refit(1, staged => NULL)$$, 'attack.d_int');
SELECT chk.t($$SELECT nudge_digest(NULL::real[])$$);
SELECT chk.t($$SELECT nudge_digest(NULL::double precision[])$$);
SELECT chk.t($$CALL nudge_apply(NULL)$$);
SELECT chk.t($$CALL nudge_apply(1, NULL)$$);
SELECT chk.t($$SELECT nudge.nudge_may_read_vectors(NULL)$$);

-- garbage: tables that are none, are nudge's or the system's; empty, odd and huge values
SELECT chk.t($$SELECT * FROM nudge_fit(0::regclass, 'embedding', 'attack.q', 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit(4294967295::oid::regclass, 'embedding', 'attack.q', 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('pg_class', 'relname', 'attack.q', 'attack.r_int', id_column => 'oid', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('pg_class', 'embedding', 'attack.q', 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('nudge.fits', 'curve', 'attack.q', 'attack.r_int', id_column => 'fit_id', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('nudge.fits_fit_id_seq', 'embedding', 'attack.q', 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 0::regclass, 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'pg_class', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.d_int', 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', '', 'attack.q', 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', repeat('e', 80), 'attack.q', 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', E'embedding\n', 'attack.q', 'attack.r_int', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', id_column => '', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', id_column => 'ctid', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', method => '', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', validation_fraction => -0.5, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', validation_fraction => 'NaN', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', validation_fraction => 'Infinity', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', validation_fraction => 1e-300, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', seed => -1, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', seed => 2147483647, validation_fraction => 0.5, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', metric => '', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', metric => 'ndcg@0', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', metric => 'ndcg@-1', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', metric => 'recall@99999999999999999999', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', metric => 'ndcg@2147483647', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', metric => 'mrr@', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => -1, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 'NaN', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 'Infinity', method => 'nudge_m', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 1e308, method => 'nudge_m', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, target => '', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, target => 'id')$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, target => 'tableoid')$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma_search => '', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', negative_rule => '', gamma => 0.2, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', folds => -1, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', folds => 0, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', folds => 2147483647, dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', update_from => '', dry_run => true)$$);
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', lock => '', gamma => 0.2)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', lock => 'access exclusive', gamma => 0.2)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', staged => true, dry_run => true)$$, 'attack.d_int');
SELECT chk.t($$SELECT * FROM nudge_evaluate(0::regclass, 'embedding', 'attack.q', 'attack.r_int')$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('pg_class', 'relname', 'attack.q', 'attack.r_int', id_column => 'oid')$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', '', 'attack.q', 'attack.r_int')$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', k => 0)$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', k => -2147483648)$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', k => 2147483647)$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', id_column => '')$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', distance => '')$$);
SELECT chk.t($$SELECT * FROM nudge_evaluate('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', distance => 'cosine; SELECT 1')$$);
SELECT chk.t($$SELECT nudge_revert(-1)$$);
SELECT chk.t($$SELECT nudge_revert(0)$$);
SELECT chk.t($$SELECT nudge_revert(9223372036854775807)$$);
SELECT chk.t($$SELECT nudge_revert(-9223372036854775808)$$);
SELECT chk.t($$SELECT nudge_revert(1, '')$$);
SELECT chk.t($$SELECT nudge_revert(1, 'access exclusive')$$);
SELECT chk.t($$SELECT * FROM nudge_refit(-1)$$);
SELECT chk.t($$SELECT * FROM nudge_refit(0)$$);
SELECT chk.t($$SELECT * FROM nudge_refit(9223372036854775807)$$);
SELECT chk.t($$SELECT * FROM nudge_refit(1, lock => '')$$);
SELECT chk.t($$SELECT nudge_digest('{}'::real[])$$);
SELECT chk.t($$SELECT nudge_digest('{NULL}'::real[])$$);
SELECT chk.t($$SELECT nudge_digest('{NaN,Infinity,-Infinity}'::real[])$$);
SELECT chk.t($$SELECT nudge_digest('{{1,2},{3,4}}'::real[])$$);
SELECT chk.t($$SELECT nudge_digest('[5:6]={1,2}'::double precision[])$$);
SELECT chk.t($$SELECT nudge_digest(array_fill(1::real, ARRAY[1000000]))$$);
SELECT nudge_digest('{1,2}'::real[]) = nudge_digest('{1,2}'::double precision[]) AS real_and_double_alike;
SELECT chk.t($$CALL nudge_apply(-1)$$);
SELECT chk.t($$CALL nudge_apply(0)$$);
SELECT chk.t($$CALL nudge_apply(9223372036854775807)$$);
SELECT chk.t($$SELECT nudge.nudge_may_read_vectors(0)$$);
SELECT chk.t($$SELECT nudge.nudge_may_read_vectors('pg_class')$$);
SELECT chk.t($$SELECT nudge.nudge_may_read_vectors(4294967295::oid::regclass)$$);
SET ROLE nudge_owner;
SELECT fit_id AS staged_fit FROM nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2, staged => true) \gset
SELECT chk.t('CALL nudge_apply(' || :staged_fit || ', 0)', 'attack.d_int');
SELECT chk.t('CALL nudge_apply(' || :staged_fit || ', -1)', 'attack.d_int');
SELECT chk.t('CALL nudge_apply(' || :staged_fit || ', 2147483647)', 'attack.d_int');
SELECT nudge_revert(:staged_fit) >= 0 AS reverted_or_dropped;
RESET ROLE;
SELECT count(*) FILTER (WHERE sqlstate LIKE 'XX%') AS internal_errors, count(*) AS cases FROM chk.cases;
SELECT chk.summary('attack.d_int');

-- == hostile objects in public (attack 1): every entry point, as a superuser and as the
-- owner of the tables, with the default search_path; nudge must name none of them
SET ROLE nudge_attacker;
SELECT chk.plant('public', true) AS planted \gset
RESET ROLE;
SELECT :planted > 1000 AS planted_in_public;
SET nudge.progress = on;
SET nudge.progress_interval = 0;
SHOW search_path;
CALL chk.cycle('attack.d_int', 'attack.r_int');
CALL chk.cycle('attack.d_big', 'attack.r_big');
CALL chk.cycle('attack.d_num', 'attack.r_num');
CALL chk.cycle('attack.d_text', 'attack.r_text');
CALL chk.cycle('attack.d_vc', 'attack.r_vc');
CALL chk.cycle('attack.d_uuid', 'attack.r_uuid');
SET ROLE nudge_owner;
CALL chk.cycle('attack.d_int', 'attack.r_int');
CALL chk.cycle('attack.d_big', 'attack.r_big');
CALL chk.cycle('attack.d_num', 'attack.r_num');
CALL chk.cycle('attack.d_text', 'attack.r_text');
CALL chk.cycle('attack.d_vc', 'attack.r_vc');
CALL chk.cycle('attack.d_uuid', 'attack.r_uuid');
RESET ROLE;
SELECT chk.marker();
SELECT chk.summary_all();

-- == the same objects in schema evil, first on the caller's search_path, before an explicit
-- pg_catalog: they beat even the built-ins of exactly the same signature
SET ROLE nudge_attacker;
SELECT chk.plant('evil', true) AS planted \gset
RESET ROLE;
SELECT :planted > 1000 AS planted_in_evil;
SET search_path = evil, public, pg_catalog;
CALL chk.cycle('attack.d_int', 'attack.r_int');
CALL chk.cycle('attack.d_big', 'attack.r_big');
CALL chk.cycle('attack.d_num', 'attack.r_num');
CALL chk.cycle('attack.d_text', 'attack.r_text');
CALL chk.cycle('attack.d_vc', 'attack.r_vc');
CALL chk.cycle('attack.d_uuid', 'attack.r_uuid');
SET ROLE nudge_owner;
CALL chk.cycle('attack.d_int', 'attack.r_int');
CALL chk.cycle('attack.d_big', 'attack.r_big');
CALL chk.cycle('attack.d_num', 'attack.r_num');
CALL chk.cycle('attack.d_text', 'attack.r_text');
CALL chk.cycle('attack.d_vc', 'attack.r_vc');
CALL chk.cycle('attack.d_uuid', 'attack.r_uuid');
RESET ROLE;
RESET search_path;
SELECT chk.marker();
SELECT chk.summary_all();
SELECT chk.foreign_deps();

-- ==================== hostile objects first, then CREATE EXTENSION ====================
\c nudge_atk_pre
SET client_min_messages = warning;
SET nudge.progress = on;
SET nudge.progress_interval = 0;
\pset format unaligned
\pset tuples_only on
SET ROLE nudge_attacker;
SELECT chk.plant('public', true) > 1000 AS planted_in_public, chk.plant('evil', true) > 1000 AS planted_in_evil;
RESET ROLE;
-- a role with CREATE on the database takes the name of nudge's catalog schema: the
-- extension must not install into it
GRANT CREATE ON DATABASE nudge_atk_pre TO nudge_attacker;
SET ROLE nudge_attacker;
CREATE SCHEMA nudge;
CREATE TABLE nudge.fits (fit_id bigint);
RESET ROLE;
CREATE SCHEMA other_schema;
GRANT USAGE ON SCHEMA other_schema TO PUBLIC;
SELECT chk.t('CREATE EXTENSION nudge SCHEMA other_schema');
SELECT n.nspname, pg_catalog.pg_get_userbyid(n.nspowner) AS owner FROM pg_catalog.pg_namespace AS n WHERE n.nspname OPERATOR(pg_catalog.=) 'nudge';
SET ROLE nudge_attacker;
DROP SCHEMA nudge CASCADE;
RESET ROLE;
REVOKE CREATE ON DATABASE nudge_atk_pre FROM nudge_attacker;

-- == nudge in schema other_schema, which is not on anyone's search_path; public holds
-- functions named like nudge's own. Installed with the hostile path set (CREATE EXTENSION
-- sets its own)
SET search_path = evil, public, pg_catalog;
CREATE EXTENSION nudge SCHEMA other_schema;
RESET search_path;
SELECT chk.foreign_deps();
SELECT chk.function_rules();
SELECT chk.catalog_rights();
CALL chk.cycle('attack.d_int', 'attack.r_int');
CALL chk.cycle('attack.d_uuid', 'attack.r_uuid');
SET ROLE nudge_owner;
CALL chk.cycle('attack.d_text', 'attack.r_text');
CALL chk.cycle('attack.d_big', 'attack.r_big');
RESET ROLE;
SET search_path = evil, public, pg_catalog;
CALL chk.cycle('attack.d_num', 'attack.r_num');
SET ROLE nudge_owner;
CALL chk.cycle('attack.d_vc', 'attack.r_vc');
CALL chk.cycle('attack.d_int', 'attack.r_int');
RESET ROLE;
RESET search_path;
SELECT chk.marker();
SELECT chk.summary_all();
-- and a plain call of a fit and its revert, other_schema-qualified
SELECT fit_id AS plain_fit FROM other_schema.nudge_fit('attack.d_int', 'embedding', 'attack.q', 'attack.r_int', gamma => 0.2) \gset
SELECT other_schema.nudge_revert(:plain_fit) AS reverted \gset
SELECT :reverted > 0 AS reverted;
SELECT chk.marker();

-- == nudge in public, installed with hostile operators, aggregates and functions already there
-- (the attacker's functions of nudge's own names go first: they would block CREATE EXTENSION)
DROP EXTENSION nudge;
SET ROLE nudge_attacker;
DROP FUNCTION public.nudge_digest(real[]), public.nudge_digest(double precision[]), public.nudge_apply_step(bigint, integer),
              public.nudge_floats(bytea), public.nudge_bytes(real[]),
              public.nudge_shard_pass(oid[], text, text, text, bytea), public.nudge_shard_topk(oid[], text, text, bytea),
              public.nudge_revert(bigint, text);
RESET ROLE;
TRUNCATE chk.reported;
CREATE EXTENSION nudge;
SELECT chk.foreign_deps();
SELECT chk.function_rules();
SELECT chk.catalog_rights();
CALL chk.cycle('attack.d_int', 'attack.r_int');
CALL chk.cycle('attack.d_num', 'attack.r_num');
SET ROLE nudge_owner;
CALL chk.cycle('attack.d_text', 'attack.r_text');
CALL chk.cycle('attack.d_uuid', 'attack.r_uuid');
RESET ROLE;
SET search_path = evil, public, pg_catalog;
CALL chk.cycle('attack.d_big', 'attack.r_big');
SET ROLE nudge_owner;
CALL chk.cycle('attack.d_vc', 'attack.r_vc');
CALL chk.cycle('attack.d_int', 'attack.r_int');
RESET ROLE;
RESET search_path;
SELECT chk.marker();
SELECT chk.summary_all();

-- ==================== back to the regression database ====================
\c :regress_db
SET client_min_messages = warning;
DROP DATABASE nudge_atk WITH (FORCE);
DROP DATABASE nudge_atk_pre WITH (FORCE);
DROP DATABASE nudge_atk_tpl WITH (FORCE);
-- nobody became a superuser
SELECT rolname, rolsuper FROM pg_roles WHERE rolname LIKE 'nudge\_%' ORDER BY rolname;
DROP ROLE nudge_attacker, nudge_owner, nudge_writer, nudge_updater, nudge_plain;

-- == last, as it may take the server down: requests whose sizes ask a worker for terabytes
-- (a shard spec with no queries, one moving record and 2^40 or 2^61 dimensions; a top-k
-- request of 2^40 dimensions with no floats): an error, never an abort
CREATE FUNCTION pg_temp.u64(x numeric) RETURNS bytea LANGUAGE sql AS $$
  SELECT decode(string_agg(lpad(to_hex(mod(div(x, 256::numeric ^ i), 256)::int), 2, '0'), '' ORDER BY i), 'hex')
    FROM generate_series(0, 7) AS i
$$;
CREATE FUNCTION pg_temp.reply(b bytea) RETURNS text LANGUAGE sql AS $$
  SELECT CASE WHEN b IS NULL THEN 'NULL'
              WHEN substr(b, 1, 6) = '\x4e4447520245'::bytea THEN 'error reply ' ||
                   (SELECT string_agg(chr((((c >> (6 * i)) & 63) + 48)::int), '' ORDER BY i)
                      FROM (SELECT sum(get_byte(b, 6 + j)::bigint << (8 * j))::bigint AS c FROM generate_series(0, 7) AS j) AS x,
                           generate_series(0, 4) AS i)
              WHEN substr(b, 1, 6) = '\x4e444752024f'::bytea THEN 'ok reply'
              ELSE 'not a reply' END
$$;
\set VERBOSITY terse
SELECT pg_temp.reply(nudge_shard_pass('{}', 'id', 'embedding', NULL,
         '\x4e44475102'::bytea || pg_temp.u64(61) || '\x4e44475302'::bytea || pg_temp.u64(1099511627776)
         || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(1) || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(0)
         || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(0))) AS huge_dim;
SELECT 1 AS still_connected;
SELECT pg_temp.reply(nudge_shard_pass('{}', 'id', 'embedding', NULL,
         '\x4e44475102'::bytea || pg_temp.u64(61) || '\x4e44475302'::bytea || pg_temp.u64(2305843009213693952)
         || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(1) || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(0)
         || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(0))) AS dim_past_memory;
SELECT 1 AS still_connected;
SELECT pg_temp.reply(nudge_shard_topk('{}', 'id', 'embedding',
         '\x4e44474b03'::bytea || pg_temp.u64(10) || pg_temp.u64(6) || convert_to('cosine', 'UTF8')
         || pg_temp.u64(1099511627776) || pg_temp.u64(0) || pg_temp.u64(0) || pg_temp.u64(0))) AS topk_huge_dim;
SELECT 1 AS still_connected;
