// Feature pages (service/query/features.py): a feature's instances by activation, highest first. With this
// composite index the planner streams them in order (equality on fkey, order on activation) and stops at the
// page's LIMIT instead of sorting every instance of a hot feature.

CREATE INDEX node_fkey_activation IF NOT EXISTS
FOR (n:Node) ON (n.fkey, n.activation);
