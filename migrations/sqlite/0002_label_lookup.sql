-- Listing by label scans one label's entries newest pipeline first and stops when the page is
-- full: the pipeline id must be in the index, in order. The index it replaces is its prefix.
CREATE INDEX pipeline_labels_lookup ON pipeline_labels (key, value, pipeline_id);
DROP INDEX pipeline_labels_key_value;
