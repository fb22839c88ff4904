-- Privileges, with real roles: nudge's functions run with the caller's rights. A role that
-- may only SELECT the corpus cannot write it (a dry run still works); a role without SELECT
-- cannot read it; nudge_revert needs UPDATE on the table; the backups in nudge.fit_backups
-- are visible only to roles that may SELECT every row of their table; and no role can write
-- nudge's catalog itself (only nudge does), so nobody can plant a fit or a backup that
-- nudge_fit or nudge_revert would later write, or change a fit's status. t() is nudge_bad_input's: SQLSTATE and message, then whether the table is
-- byte-identical (read by a SECURITY DEFINER helper, whatever the current role may see).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS nudge;
DROP ROLE IF EXISTS nudge_reader;
DROP ROLE IF EXISTS nudge_writer;
DROP ROLE IF EXISTS nudge_outsider;
DROP ROLE IF EXISTS nudge_updater;
DROP ROLE IF EXISTS nudge_colwriter;
RESET client_min_messages;
SET nudge.progress = off;
CREATE SCHEMA priv;
GRANT USAGE ON SCHEMA priv TO PUBLIC;
SET search_path = priv, public;
SELECT last_value AS seq_last, is_called AS seq_called FROM nudge.fits_fit_id_seq \gset
SELECT setval('nudge.fits_fit_id_seq', 3000) IS NOT NULL AS seq_set;

CREATE FUNCTION fingerprint(t regclass) RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE r text;
BEGIN
  EXECUTE format('SELECT count(*) || '':'' || coalesce(md5(string_agg(x::text, E''\n'' ORDER BY x::text)), '''') FROM %s AS x', t)
     INTO r;
  RETURN r;
END $$;
CREATE FUNCTION fits_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
  AS $$ SELECT count(*) FROM nudge.fits $$;

CREATE TABLE docs AS
SELECT i AS id, ARRAY(SELECT sin(i * j * 0.41 + j)::real FROM generate_series(1, 4) j) AS embedding
  FROM generate_series(1, 40) i;
ALTER TABLE docs ADD PRIMARY KEY (id);
CREATE TABLE q AS
SELECT k AS id, ARRAY(SELECT sin((k * 3 % 40 + 1) * j * 0.41 + j + 0.3 * cos(k * j))::real
                        FROM generate_series(1, 4) j) AS embedding
  FROM generate_series(1, 12) k;
CREATE TABLE qrels AS SELECT k AS query_id, k * 3 % 40 + 1 AS doc_id FROM generate_series(1, 12) k;
ALTER TABLE docs ADD COLUMN nudged real[];

CREATE TABLE cases (n serial, who name, stmt text, sqlstate text, table_unchanged boolean, fits_unchanged boolean);
GRANT INSERT ON cases TO PUBLIC;
GRANT USAGE ON SEQUENCE cases_n_seq TO PUBLIC;
CREATE FUNCTION t(stmt text, tbl regclass DEFAULT 'priv.docs') RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  msg text; hint text; state text;
  before text := priv.fingerprint(tbl);
  fits_before bigint := priv.fits_count();
  same boolean; same_fits boolean;
BEGIN
  BEGIN
    EXECUTE stmt;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT, state = RETURNED_SQLSTATE;
  END;
  same := priv.fingerprint(tbl) = before;
  same_fits := priv.fits_count() = fits_before;
  INSERT INTO priv.cases (who, stmt, sqlstate, table_unchanged, fits_unchanged) VALUES (current_user, stmt, state, same, same_fits);
  RETURN current_user || ': ' || coalesce(state || ': ' || regexp_replace(msg, 'OID \d+', 'OID <oid>', 'g')
                  || CASE WHEN hint <> '' THEN E'\n       HINT: ' || hint ELSE '' END, 'ok')
      || E'\n       -> ' || CASE WHEN same THEN 'table unchanged' ELSE 'table changed' END
      || CASE WHEN same_fits THEN '' ELSE ', fit recorded' END;
END $$;

CREATE ROLE nudge_reader;     -- SELECT on everything
CREATE ROLE nudge_writer;     -- SELECT and UPDATE on the corpus
CREATE ROLE nudge_outsider;   -- the labels only, and a table of its own
CREATE ROLE nudge_updater;    -- UPDATE on the corpus but no SELECT
CREATE ROLE nudge_colwriter;  -- SELECT, and UPDATE on one column only
GRANT SELECT ON q, qrels TO nudge_reader, nudge_writer, nudge_outsider, nudge_updater, nudge_colwriter;
GRANT SELECT ON docs TO nudge_reader, nudge_writer, nudge_colwriter;
GRANT UPDATE ON docs TO nudge_writer, nudge_updater;
GRANT UPDATE (nudged) ON docs TO nudge_colwriter;
GRANT CREATE ON SCHEMA priv TO nudge_outsider;
\pset format unaligned
\pset tuples_only on

-- the owner fits in place: its backups are what the other roles try to read
SELECT fit_id AS owner_fit FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2) \gset
SELECT :owner_fit AS owner_fit, count(*) AS backups FROM nudge.fit_backups WHERE fit_id = :owner_fit;
SELECT fingerprint('docs') AS owner_fitted \gset

-- == SELECT only: reads and dry runs, no writes, no revert
SET ROLE nudge_reader;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3, target => 'nudged')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3, dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels')$$);
SELECT t('SELECT nudge_revert(' || :owner_fit || ')');
SELECT t('SELECT * FROM nudge_refit(' || :owner_fit || ')');
SELECT t('SELECT * FROM nudge_refit(' || :owner_fit || ', dry_run => true)');
SELECT count(*) AS reader_sees_backups FROM nudge.fit_backups WHERE fit_id = :owner_fit;
-- it cannot draw a fit id, record a fit or change one
SELECT t($$SELECT nextval('nudge.fits_fit_id_seq')$$, 'nudge.fits');
SELECT t($$INSERT INTO nudge.fits (fit_id, corpus, id_column, embedding, embedding_type, queries, qrels, method,
             gamma_search, negative_rule, gamma, train_queries, validation_query_count, records_moving,
             records_changed, rows_written, seconds, status)
           VALUES (currval('nudge.fits_fit_id_seq'), 'priv.docs', 'id', 'embedding', 'real[]', 'priv.q', 'priv.qrels',
             'nudge_n', 'fixed', 'skip', 0.1, 1, 0, 1, 1, 0, 0, 'applied')$$);
SELECT t($$INSERT INTO nudge.fits (fit_id, corpus, id_column, embedding, embedding_type, queries, qrels, method,
             gamma_search, negative_rule, gamma, train_queries, validation_query_count, records_moving,
             records_changed, rows_written, seconds, status)
           VALUES (-1, 'priv.docs', 'id', 'embedding', 'real[]', 'priv.q', 'priv.qrels',
             'nudge_n', 'fixed', 'skip', 0.1, 1, 0, 1, 1, 0, 0, 'dry_run')$$);
SELECT t($$UPDATE nudge.fits SET status = 'reverted'$$, 'nudge.fits');
SELECT t($$DELETE FROM nudge.fits$$, 'nudge.fits');
SELECT t($$SELECT setval('nudge.fits_fit_id_seq', 1)$$, 'nudge.fits');
RESET ROLE;

-- == no SELECT on the corpus: nothing can be read, not even through the backups
SET ROLE nudge_outsider;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3, dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels')$$);
SELECT t('SELECT nudge_revert(' || :owner_fit || ')');
SELECT count(*) AS outsider_sees_backups FROM nudge.fit_backups;
SELECT count(*) > 0 AS outsider_sees_fit_metadata FROM nudge.fits WHERE fit_id = :owner_fit;
SELECT t($$TRUNCATE nudge.fit_backups$$, 'nudge.fit_backups');
SELECT t($$UPDATE nudge.fit_backups SET written = written + 1$$, 'nudge.fit_backups');
-- planting: a backup under someone else's fit, and a backup naming a table it owns
CREATE TABLE mine (id int PRIMARY KEY, embedding real[]);
INSERT INTO mine VALUES (5, '{9,9,9,9}');
SELECT t('INSERT INTO nudge.fit_backups VALUES (' || :owner_fit || $$, 'priv.mine', '5', '{9,9,9,9}', NULL, 0)$$, 'nudge.fit_backups');
SELECT t('INSERT INTO nudge.fit_backups VALUES (' || :owner_fit || $$, 'priv.docs', '5', '{9,9,9,9}', NULL, 0)$$, 'nudge.fit_backups');
RESET ROLE;

-- == a role with SELECT on the corpus and UPDATE on a table of its own (the two roles above
-- together) tries to record a fit of docs and back up "its" rows under it, naming its own
-- table: refused, and the owner's next fit is what it would have been
GRANT nudge_outsider TO nudge_reader;
SET ROLE nudge_reader;
SELECT t($$SELECT nextval('nudge.fits_fit_id_seq')$$, 'nudge.fits');
SELECT t($$INSERT INTO nudge.fits (fit_id, corpus, id_column, embedding, embedding_type, queries, qrels, method,
             gamma_search, negative_rule, gamma, train_queries, validation_query_count, records_moving,
             records_changed, rows_written, seconds, status)
           VALUES (currval('nudge.fits_fit_id_seq'), 'priv.docs', 'id', 'embedding', 'real[]', 'priv.q', 'priv.qrels',
             'nudge_n', 'fixed', 'skip', 0.1, 1, 0, 1, 1, 1, 0, 'dry_run')$$);
SELECT t($$INSERT INTO nudge.fit_backups VALUES (currval('nudge.fits_fit_id_seq'), 'priv.mine', '5', '{9,9,9,9}', NULL, 0)$$, 'nudge.fit_backups');
SELECT t($$UPDATE nudge.fits SET status = 'applied' WHERE fit_id = currval('nudge.fits_fit_id_seq')$$, 'nudge.fits');
RESET ROLE;
REVOKE nudge_outsider FROM nudge_reader;
SELECT embedding AS row5_before FROM docs WHERE id = 5 \gset
SELECT records_changed > 0 AS refitted FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT embedding = :'row5_before' AS row5_untouched, fingerprint('docs') = :'owner_fitted' AS refit_same_as_first_fit FROM docs WHERE id = 5;
SELECT nudge_revert(max(fit_id)) > 0 AS reverted FROM nudge.fits WHERE corpus = 'docs'::regclass AND status = 'applied';

-- == UPDATE without SELECT: it may lock the table but read nothing, so it can neither fit
-- nor revert (the backups it would restore are hidden from it)
SET ROLE nudge_updater;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3)$$);
SELECT t('SELECT nudge_revert(' || :owner_fit || ')');
RESET ROLE;
-- == UPDATE on another column only: the embedding cannot be written
SET ROLE nudge_colwriter;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3, target => 'nudged')$$);
RESET ROLE;

-- == SELECT and UPDATE: fit, revert, and the owner's own fit is revertible by it too
SET ROLE nudge_writer;
SELECT t('SELECT nudge_revert(' || :owner_fit || ')');
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3)$$);
SELECT t($$SELECT nudge_revert(max(fit_id)) FROM nudge.fits WHERE corpus = 'priv.docs'::regclass AND created_by = current_user$$);
SELECT count(*) > 0 AS writer_sees_backups FROM nudge.fit_backups WHERE corpus = 'priv.docs'::regclass;
RESET ROLE;
SELECT status, created_by FROM nudge.fits WHERE corpus = 'docs'::regclass AND status <> 'dry_run' ORDER BY fit_id;

-- == staged fits: a reader can neither stage a fit nor apply the owner's
SELECT fit_id AS staged_fit FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2, staged => true) \gset
SET ROLE nudge_reader;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.3, staged => true)$$);
SELECT t('CALL nudge_apply(' || :staged_fit || ')');
SELECT count(*) > 0 AS reader_sees_staged_rows FROM nudge.fit_staged WHERE fit_id = :staged_fit;
RESET ROLE;
SET ROLE nudge_outsider;
SELECT count(*) AS outsider_sees_staged_rows FROM nudge.fit_staged;
RESET ROLE;
SELECT nudge_revert(:staged_fit) = 0 AS staged_fit_dropped;

-- == a corpus with row-level security: SELECT on the table is not enough to see the backups
-- (they hold vectors of rows the policy hides); its owner sees them
CREATE TABLE docs_rls AS SELECT id, embedding FROM docs;
ALTER TABLE docs_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY first_half ON docs_rls FOR SELECT USING (id <= 20);
GRANT SELECT ON docs_rls TO nudge_reader;
SELECT records_changed > 0 AS owner_fitted FROM nudge_fit('docs_rls', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT count(*) > 0 AS owner_sees_backups FROM nudge.fit_backups WHERE corpus = 'docs_rls'::regclass;
SET ROLE nudge_reader;
SELECT count(*) AS rows_reader_sees, count(*) FILTER (WHERE id > 20) AS hidden_rows_reader_sees FROM docs_rls;
SELECT count(*) AS rls_backups_reader_sees FROM nudge.fit_backups WHERE corpus = 'docs_rls'::regclass;
RESET ROLE;

-- every refusal of a role above is insufficient_privilege, and left the table and
-- nudge.fits as they were
SELECT count(*) FILTER (WHERE sqlstate IS NOT NULL) AS refused,
       count(*) FILTER (WHERE sqlstate = '42501') AS insufficient_privilege,
       count(*) FILTER (WHERE sqlstate IS NOT NULL AND table_unchanged AND fits_unchanged) AS left_everything_unchanged,
       count(*) FILTER (WHERE sqlstate IS NULL) AS allowed
  FROM cases WHERE who <> session_user;

SET client_min_messages = warning;
DROP OWNED BY nudge_reader, nudge_writer, nudge_outsider, nudge_updater, nudge_colwriter;
DROP ROLE nudge_reader, nudge_writer, nudge_outsider, nudge_updater, nudge_colwriter;
RESET client_min_messages;
SELECT setval('nudge.fits_fit_id_seq', :seq_last, :'seq_called'::boolean) IS NOT NULL AS seq_restored;
