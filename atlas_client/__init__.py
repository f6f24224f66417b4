"""A small Python client of the Circuit Atlas API, for notebooks and scripts.

    from atlas_client import Atlas
    atlas = Atlas("http://127.0.0.1:8000", key="ca_...")
    job = atlas.submit_corpus(["the cat sat on the"], model="zoo-gpt2-4l", dictionaries="zoo-gpt2-4l-dicts")
    job.wait()                                   # a progress bar until the job ends
    circuit = atlas.circuit(job.graph_ids()[0])  # .to_networkx(), .to_dataframe()

Every call is one HTTP request (or a poll loop) to the REST API; errors are :class:`AtlasError` carrying the
API's status and message. The `atlas corpus` and `atlas circuit` commands are built on it.
"""

from atlas_client.api import Atlas, AtlasError
from atlas_client.jobs import Analysis, Job
from atlas_client.results import Circuit

__all__ = ["Analysis", "Atlas", "AtlasError", "Circuit", "Job"]
