//! In-database tests run by `cargo pgrx test`. The broader behaviour is covered by the
//! pg_regress suites in tests/regress and the end-to-end checks in tests/python.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup_arrays() {
        Spi::run(
            "SET nudge.progress = off;
             CREATE TABLE t_docs AS
               SELECT i AS id, ARRAY(SELECT sin(i * j * 0.37 + j)::real FROM generate_series(1, 6) j) AS embedding
                 FROM generate_series(1, 120) i;
             CREATE TABLE t_q AS
               SELECT k AS id, ARRAY(SELECT sin((k * 5 % 120 + 1) * j * 0.37 + j + 0.5 * cos(k * j))::real
                                       FROM generate_series(1, 6) j) AS embedding
                 FROM generate_series(1, 30) k;
             CREATE TABLE t_qrels AS SELECT k AS query_id, k * 5 % 120 + 1 AS doc_id FROM generate_series(1, 30) k;",
        )
        .unwrap();
    }

    /// real[] columns need no pgvector: fit, evaluate and revert work on plain arrays.
    #[pg_test]
    fn arrays_without_pgvector() {
        setup_arrays();
        let has_vector = Spi::get_one::<bool>("SELECT count(*) > 0 FROM pg_extension WHERE extname = 'vector'").unwrap();
        assert_eq!(has_vector, Some(false));
        let before = Spi::get_one::<f64>("SELECT ndcg FROM nudge_evaluate('t_docs', 'embedding', 't_q', 't_qrels')")
            .unwrap()
            .unwrap();
        let (fit_id, changed) = Spi::get_two::<i64, i64>(
            "SELECT fit_id, records_changed FROM nudge_fit('t_docs', 'embedding', 't_q', 't_qrels', gamma => 0.3)",
        )
        .unwrap();
        assert!(changed.unwrap() > 0);
        let after = Spi::get_one::<f64>("SELECT ndcg FROM nudge_evaluate('t_docs', 'embedding', 't_q', 't_qrels')")
            .unwrap()
            .unwrap();
        assert!(after > before, "ndcg {before} -> {after}");
        let restored = Spi::get_one_with_args::<i64>("SELECT nudge_revert($1)", &[fit_id.unwrap().into()]).unwrap();
        assert_eq!(restored, changed);
        let back = Spi::get_one::<f64>("SELECT ndcg FROM nudge_evaluate('t_docs', 'embedding', 't_q', 't_qrels')")
            .unwrap()
            .unwrap();
        assert_eq!(back, before);
    }

    /// Errors abort the statement and leave the table as it was.
    #[pg_test(error = "unknown method \"nudge_z\"")]
    fn bad_method_errors() {
        setup_arrays();
        Spi::run("SELECT * FROM nudge_fit('t_docs', 'embedding', 't_q', 't_qrels', method => 'nudge_z')").unwrap();
    }

    /// halfvec and vector values decode to the same floats pgvector's casts give.
    /// Where pgvector is not installed only real[] works (checked above); halfvec needs
    /// pgvector 0.7.0 or later.
    #[pg_test]
    fn decodes_pgvector_types() {
        let available = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')",
        )
        .unwrap();
        if available != Some(true) {
            pgrx::warning!("pgvector is not available: decodes_pgvector_types skipped");
            return;
        }
        Spi::run("CREATE EXTENSION IF NOT EXISTS vector").unwrap();
        let has_halfvec = Spi::get_one::<bool>("SELECT to_regtype('halfvec') IS NOT NULL").unwrap() == Some(true);
        setup_arrays();
        Spi::run("CREATE TABLE t_vec AS SELECT id, embedding::vector(6) AS embedding FROM t_docs;").unwrap();
        if has_halfvec {
            Spi::run(
                "CREATE TABLE t_half AS SELECT id, embedding::halfvec(6) AS embedding FROM t_docs;
                 CREATE TABLE t_halfarr AS SELECT id, embedding::halfvec(6)::real[] AS embedding FROM t_docs;",
            )
            .unwrap();
        } else {
            pgrx::warning!("pgvector has no halfvec (before 0.7.0): halfvec part skipped");
        }
        let q = |t: &str| {
            Spi::get_one::<f64>(&format!(
                "SELECT ndcg + 2 * recall + 3 * mrr FROM nudge_evaluate('{t}', 'embedding', 't_q', 't_qrels', k => 7)"
            ))
            .unwrap()
            .unwrap()
        };
        if has_halfvec {
            assert_eq!(q("t_half"), q("t_halfarr"));
        }
        assert_eq!(q("t_vec"), q("t_docs"));
    }
}
