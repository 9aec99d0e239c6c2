-- What each label is worth against the answer the model already gives (issue 19). The labeler also
-- asks the model's greedy answer: `greedy_answer` is its answer identity and `greedy_share` the share
-- of the vote's samples asserting it (the same reading as `confidence`, so `confidence -
-- greedy_share` estimates what training on the label gains; the training gate's min_label_gain).
-- `vote_method`: 'answer' (samples counted by answer identity) or 'meaning' (clustered by meaning);
-- samples.vote_key: what the vote counted the sample as (its identity, or 'meaning:<cluster>').
-- Rows written before this migration have none of these (NULL): the gate's label check skips them.
ALTER TABLE labels ADD COLUMN greedy_answer VARCHAR;
ALTER TABLE labels ADD COLUMN greedy_share DOUBLE;
ALTER TABLE labels ADD COLUMN vote_method VARCHAR;
ALTER TABLE samples ADD COLUMN vote_key VARCHAR;

-- An adapter an operator registered that goes through the loop's evaluation and promotion policy
-- like a trained candidate (`evolvd adapters register PATH --evaluate`). Trained candidates always
-- do; registered ones otherwise wait for the operator's promote or canary.
ALTER TABLE adapters ADD COLUMN gated BOOLEAN NOT NULL DEFAULT false;
