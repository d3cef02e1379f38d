-- capirelay SQLite outbox: a webhook's event rejected at ingest keeps its errors in
-- `problems` (code, field, severity, message), and `capirelay trace` tells its story from
-- those codes instead of reading the `reason` sentence.  Receipts written before kept
-- the codes only in that sentence, "rejected (code, code): first message"; they are
-- given the same structured problems here, once (the sentence is left as it was).

UPDATE receipts
SET problems = (
    SELECT json_group_array(json_object(
        'code', value,
        'field', '',
        'severity', 'error',
        'message', CASE WHEN key = 0 AND instr(receipts.reason, '): ') > 0
                        THEN substr(receipts.reason, instr(receipts.reason, '): ') + 3)
                        ELSE '' END
    ))
    FROM json_each('["' || replace(substr(receipts.reason, 11, instr(receipts.reason, ')') - 11),
                                   ', ', '","') || '"]')
)
WHERE outcome = 'dropped'
  AND problems IS NULL
  AND reason GLOB 'rejected (*)*'
  AND instr(reason, ')') > 11
  -- codes are lower-case snake_case (as capirelay.outbox.receipts.REJECTED_REASON reads
  -- them): nothing in them can break the JSON array built by concatenation above
  AND substr(reason, 11, instr(reason, ')') - 11) NOT GLOB '*[^a-z0-9_, ]*'
  AND json_valid('["' || replace(substr(reason, 11, instr(reason, ')') - 11), ', ', '","') || '"]');
