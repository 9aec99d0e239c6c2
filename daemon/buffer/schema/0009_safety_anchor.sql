-- How many of a data set's rows are safety anchor examples (refusals to harmful requests mixed into
-- every run, training.safety_anchor_share); they come from the policy directory, not the buffer, so
-- dataset_examples lists none of them.
ALTER TABLE datasets ADD COLUMN n_anchor INTEGER NOT NULL DEFAULT 0;
