// Feature labels (service/query/labels.py): a researcher's label and note on a (:Feature), with the API key id
// that set it (label_by) and when (label_at, epoch seconds; kept when a label is cleared). Circuits carry
// labels, so their ETags include the newest label_at: this index answers it without scanning every feature.

CREATE INDEX feature_label_at IF NOT EXISTS
FOR (f:Feature) ON (f.label_at);
