// Query API (issue #6): API keys (hashed at rest, service/auth.py), cross-prompt analysis jobs
// (workers/analysis/), and weight-level virtual weights [:VW {w, dictionary_set}] read per dictionary set.

CREATE CONSTRAINT api_key_id_unique IF NOT EXISTS
FOR (k:ApiKey) REQUIRE k.key_id IS UNIQUE;

CREATE CONSTRAINT analysis_id_unique IF NOT EXISTS
FOR (a:Analysis) REQUIRE a.analysis_id IS UNIQUE;

CREATE INDEX vw_dictionary_set IF NOT EXISTS
FOR ()-[r:VW]-() ON (r.dictionary_set);
