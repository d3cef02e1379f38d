-- capirelay PostgreSQL outbox: a webhook's event rejected at ingest keeps its errors in
-- `problems` (code, field, severity, message), and `capirelay trace` tells its story from
-- those codes instead of reading the `reason` sentence.  Receipts written before kept
-- the codes only in that sentence, "rejected (code, code): first message"; they are
-- given the same structured problems here, once (the sentence is left as it was).

UPDATE capirelay_receipts AS r
SET problems = (
    SELECT jsonb_agg(jsonb_build_object(
               'code', c.code,
               'field', '',
               'severity', 'error',
               'message', CASE WHEN c.n = 1 AND strpos(r.reason, '): ') > 0
                               THEN substr(r.reason, strpos(r.reason, '): ') + 3)
                               ELSE '' END
           ) ORDER BY c.n)
    FROM unnest(string_to_array(substring(r.reason FROM '^rejected \(([a-z0-9_, ]+)\)'), ', '))
         WITH ORDINALITY AS c(code, n)
)
WHERE r.outcome = 'dropped'
  AND r.problems IS NULL
  -- codes are lower-case snake_case (as capirelay.outbox.receipts.REJECTED_REASON reads them)
  AND r.reason ~ '^rejected \([a-z0-9_, ]+\)';
