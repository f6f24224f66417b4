// Lookups the writer and the query layer do by non-unique properties.

// Delete-then-write of one graph and "all nodes of graph G" scan by graph_id.
CREATE INDEX node_graph_id IF NOT EXISTS
FOR (n:Node) ON (n.graph_id);

// Instances link to their global (:Feature) by this property, not a relationship: hot features would
// otherwise become supernodes.
CREATE INDEX node_fkey IF NOT EXISTS
FOR (n:Node) ON (n.fkey);

CREATE INDEX node_graph_kind IF NOT EXISTS
FOR (n:Node) ON (n.graph_id, n.kind);

CREATE INDEX graph_status IF NOT EXISTS
FOR (g:Graph) ON (g.status);

CREATE INDEX graph_corpus_id IF NOT EXISTS
FOR (g:Graph) ON (g.corpus_id);

CREATE INDEX graph_prompt_id IF NOT EXISTS
FOR (g:Graph) ON (g.prompt_id);

CREATE INDEX prompt_corpus_id IF NOT EXISTS
FOR (p:Prompt) ON (p.corpus_id);

CREATE INDEX feature_dictionary_index IF NOT EXISTS
FOR (f:Feature) ON (f.dictionary, f.index);

// Corpus-level aggregates are read per corpus ("which features feed F in corpus C").
CREATE INDEX agg_corpus IF NOT EXISTS
FOR ()-[r:AGG]-() ON (r.corpus);

CREATE INDEX occurs_corpus IF NOT EXISTS
FOR ()-[r:OCCURS]-() ON (r.corpus);
