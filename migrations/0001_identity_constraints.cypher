// Identity of every entity of DESIGN.md §3. Uniqueness constraints come first: they also create the
// index each MERGE / MATCH by id uses, and Neo4j refuses to create them on data that already violates them.
// One statement per ';' at the end of a line. Applied by `atlas migrate` (service/db/migrations.py).

CREATE CONSTRAINT model_id_unique IF NOT EXISTS
FOR (m:Model) REQUIRE m.model_id IS UNIQUE;

CREATE CONSTRAINT dictionary_set_id_unique IF NOT EXISTS
FOR (d:DictionarySet) REQUIRE d.dictionary_set_id IS UNIQUE;

CREATE CONSTRAINT corpus_id_unique IF NOT EXISTS
FOR (c:Corpus) REQUIRE c.corpus_id IS UNIQUE;

CREATE CONSTRAINT prompt_id_unique IF NOT EXISTS
FOR (p:Prompt) REQUIRE p.prompt_id IS UNIQUE;

CREATE CONSTRAINT graph_id_unique IF NOT EXISTS
FOR (g:Graph) REQUIRE g.graph_id IS UNIQUE;

// Per-prompt node instances: uid = "<graph_id>|<node id>" (workers/store/records.py), unique database-wide.
CREATE CONSTRAINT node_uid_unique IF NOT EXISTS
FOR (n:Node) REQUIRE n.uid IS UNIQUE;

// Global features, one per (dictionary, index), MERGEd on first use.
CREATE CONSTRAINT feature_fkey_unique IF NOT EXISTS
FOR (f:Feature) REQUIRE f.fkey IS UNIQUE;
