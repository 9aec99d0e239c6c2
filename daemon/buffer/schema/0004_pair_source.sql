-- Where a preference came from: 'critique' (the model's own 1-10 scores of two answers) or 'vote'
-- (a winning reasoning path against a minority path with another answer; the scores are vote
-- counts). Rows written before this migration all came from critiques.
ALTER TABLE preference_pairs ADD COLUMN source VARCHAR NOT NULL DEFAULT 'critique';
