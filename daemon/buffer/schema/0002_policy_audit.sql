-- Policies issue: the audit trail records what each decision looked at, and policy file reloads.

-- A summary of the inputs a decision was made on (counts, shares, p-values: never raw PII).
ALTER TABLE policy_decisions ADD COLUMN inputs JSON;

-- subject_kind gains `policy_file` (subject_id: the file) with outcome `applied` or `rejected`,
-- and `dry_run` is never written: a dry run applies nothing.
CREATE INDEX policy_decisions_by_subject ON policy_decisions (subject_kind, subject_id);

-- Why an example was quarantined or redacted (the screen's reasons, no PII values).
ALTER TABLE training_examples ADD COLUMN safety_reasons JSON;
-- What training may see: the texts after redaction (NULL until screened). The originals stay, as
-- the events they came from do, so an edited policy can be dry-run against what was really said.
ALTER TABLE training_examples ADD COLUMN safe_prompt VARCHAR;
ALTER TABLE training_examples ADD COLUMN safe_completion VARCHAR;
