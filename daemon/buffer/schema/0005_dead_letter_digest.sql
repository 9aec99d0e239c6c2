-- Dead letters keep a bounded prefix of the value (contract.DEAD_LETTER_PREFIX_BYTES), with the
-- full value's length and sha256, so a stream of oversized values cannot fill the disk.
ALTER TABLE dead_letters ADD COLUMN raw_bytes BIGINT;
ALTER TABLE dead_letters ADD COLUMN raw_sha256 VARCHAR;
