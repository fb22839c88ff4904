-- Internal entry points are not executable by PUBLIC: the shard functions run on Citus
-- workers only when a coordinator's nudge_fit or nudge_evaluate sends them, as the
-- extension's owner, after checking the caller's rights on the table (src/citus.rs).
-- (nudge_apply_step stays executable: CALL nudge_apply, which runs with the caller's rights,
-- calls it, and it checks everything nudge_apply promises: the role that staged the fit or a
-- superuser, UPDATE on the table, a bounded batch.)
REVOKE EXECUTE ON FUNCTION @extschema@.nudge_shard_pass(pg_catalog.oid[], pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.nudge_shard_topk(pg_catalog.oid[], pg_catalog.text, pg_catalog.text, pg_catalog.bytea) FROM PUBLIC;
