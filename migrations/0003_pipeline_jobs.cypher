// Jobs of the corpus pipeline (workers/pipeline/jobs.py): one (:Job) per corpus, prompts looked up by job
// and by state (progress counts, the cancel sweep, the reaper's scan of running prompts).

CREATE CONSTRAINT job_id_unique IF NOT EXISTS
FOR (j:Job) REQUIRE j.job_id IS UNIQUE;

CREATE INDEX prompt_job_id IF NOT EXISTS
FOR (p:Prompt) ON (p.job_id);

CREATE INDEX prompt_state IF NOT EXISTS
FOR (p:Prompt) ON (p.state);
