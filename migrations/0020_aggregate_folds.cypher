// Corpus aggregates are folded per corpus by one writer at a time (workers/store/aggregates.py): one
// (:AggFold {corpus_id}) per corpus holds the folder's lease and the open fold's progress counter, and a graph
// waits for its fold with Graph.agg_state = 'pending' (then 'folding', then 'folded').

CREATE CONSTRAINT agg_fold_corpus_unique IF NOT EXISTS
FOR (f:AggFold) REQUIRE f.corpus_id IS UNIQUE;

// "Graphs of corpus C not yet folded": the planner of a fold and the job's completion check.
CREATE INDEX graph_corpus_agg_state IF NOT EXISTS
FOR (g:Graph) ON (g.corpus_id, g.agg_state);
