// API keys moved to Redis (service/auth.py): POST /cypher can read the whole user database, so secrets and
// their digests may not live in it. Existing (:ApiKey) nodes are moved by service.auth.move_keys_out_of_neo4j
// (API start-up, `atlas keys ...`); this drops the constraint that indexed them.

DROP CONSTRAINT api_key_id_unique IF EXISTS;
