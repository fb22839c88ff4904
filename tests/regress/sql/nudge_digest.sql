-- The value functions nudge's own statements call: nudge_digest (what nudge.fit_backups.written
-- holds), and nudge_floats / nudge_bytes (vectors to and from Citus shards as little-endian
-- float4 bytes). Exact round trips, known encodings, and bad input with its SQLSTATE.
CREATE FUNCTION digest_try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE stmt INTO r;
  RETURN coalesce(r, 'NULL');
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
\pset format unaligned

-- known encodings: four bytes per value, little-endian
SELECT nudge_bytes('{1,2.5,-2}'::real[]) AS bytes;
SELECT nudge_floats('\x0000803f00002040000000c0') AS floats;
-- every bit pattern survives both ways: signed zeros, subnormals, extremes, infinities, NaN
CREATE TABLE d_bits AS
  SELECT ('\x' || b)::bytea AS b
    FROM (VALUES ('00000000'), ('00000080'), ('01000000'), ('ffff7f7f'), ('ffff7fff'), ('0000807f'),
                 ('000080ff'), ('0000c07f'), ('0100c0ff'), ('3412cdab')) AS v(b);
SELECT count(*) AS patterns, count(*) FILTER (WHERE nudge_bytes(nudge_floats(b)) = b) AS exact FROM d_bits;
SELECT nudge_bytes(nudge_floats(pg_catalog.string_agg(b, '' ORDER BY b))) = pg_catalog.string_agg(b, '' ORDER BY b) AS all_at_once FROM d_bits;
-- the real[] is an ordinary one: one dimension from 1; empty is the empty array
SELECT array_ndims(f), array_lower(f, 1), array_length(f, 1) FROM (SELECT nudge_floats('\x0000803f00002040') AS f) AS x;
SELECT nudge_floats(''::bytea) = '{}'::real[] AS empty, nudge_bytes('{}'::real[]) = ''::bytea AS empty_bytes;
-- a vector column's values as the digest sees them, after a trip through bytes
SELECT count(*) AS rows, count(*) FILTER (WHERE nudge_digest(nudge_floats(nudge_bytes(embedding))) = nudge_digest(embedding)) AS same_digest
  FROM docs_arr;
-- nudge_digest: a real[] and its double precision[] cast digest alike; order matters
SELECT nudge_digest('{0.5,0.25}'::real[]) = nudge_digest('{0.5,0.25}'::double precision[]) AS cast_alike,
       nudge_digest('{0.5,0.25}'::real[]) <> nudge_digest('{0.25,0.5}'::real[]) AS ordered,
       nudge_digest('{0.5,NULL}'::real[]) <> nudge_digest('{0.5,0}'::real[]) AS null_is_not_zero;

-- bad input
SELECT digest_try($$SELECT nudge_floats('\x0000803f00')::text$$);
SELECT digest_try($$SELECT nudge_floats('\x00')::text$$);
SELECT digest_try($$SELECT nudge_bytes('{1,NULL,3}'::real[])::text$$);
-- NULL in, NULL out (STRICT)
SELECT digest_try($$SELECT nudge_floats(NULL)::text$$), digest_try($$SELECT nudge_bytes(NULL)::text$$),
       digest_try($$SELECT nudge_digest(NULL::real[])::text$$);
DROP TABLE d_bits;
DROP FUNCTION digest_try(text);
