"""GET /analyses/{id}/plot.svg|png: the picture of a done analysis beside its JSON. The bars drawn are the
result's numbers (read back from the SVG), the PNG decodes, and analyses without a picture or not done yet
answer 404 / 409. The analyses run with the worker's own function (workers/analysis/jobs.run_analysis) on
generated graphs written by the real writer."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest

from tests.query.graphs import make_records
from tests.query.test_api import small_graph


@pytest.fixture(scope="module")
def client(settings, neo4j_driver) -> Iterator[object]:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def _done(driver, kind: str, params: dict, db: str | None) -> str:  # noqa: ANN001
    from workers.analysis import jobs

    aid = jobs.create_analysis(driver, kind, params, None, database=db)
    jobs.run_analysis(driver, aid, database=db)
    return aid


def _bar_widths(svg: str, series: str) -> list[float]:
    """Widths of the bars of one series: each is a closed path 'M x0 y0 L x1 y0 L x1 y1 L x0 y1 z'."""
    widths = []
    for m in re.finditer(rf'<g id="{series}">\s*<path d="([^"]+)"', svg):
        xs = [float(v) for v in re.findall(r"[ML] ([-\d.]+) [-\d.]+", m.group(1))]
        widths.append(max(xs) - min(xs))
    return widths


def test_recurring_features_picture_is_its_result(client, store, neo4j_driver, settings) -> None:  # noqa: ANN001
    db = settings.neo4j_database
    recs = make_records(small_graph() * 2 + [([n for n in small_graph()[0][0] if n.node_id != "feat:L1.mlp:p1:f1"],
                                               [], [])])
    store(recs)
    aid = _done(neo4j_driver, "recurring_features", {"graph_ids": [r.graph_id for r in recs]}, db)
    result = client.get(f"/analyses/{aid}").json()["result"]
    fracs = [f["fraction"] for f in result["features"]]
    assert fracs == [1.0, 2 / 3]
    r = client.get(f"/analyses/{aid}/plot.svg")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    svg = r.text
    labels = [f["fkey"] for f in result["features"]]
    assert all(label in svg for label in labels)
    assert svg.index(labels[0]) < svg.index(labels[1])  # drawn top to bottom in the result's order
    widths = _bar_widths(svg, "series-0")
    assert len(widths) == 2 and widths[1] / widths[0] == pytest.approx(fracs[1] / fracs[0], rel=1e-3)

    png = client.get(f"/analyses/{aid}/plot.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    from matplotlib.image import imread

    image = imread(io.BytesIO(png.content), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_kinds_without_a_picture_and_unfinished_analyses(client, store, neo4j_driver, settings) -> None:  # noqa: ANN001
    from workers.analysis import jobs

    db = settings.neo4j_database
    recs = store(make_records(small_graph() * 2))
    aid = _done(neo4j_driver, "cluster_prompts", {"graph_ids": [r.graph_id for r in recs]}, db)
    r = client.get(f"/analyses/{aid}/plot.svg")
    assert r.status_code == 404 and "no picture" in r.json()["detail"]
    queued = jobs.create_analysis(neo4j_driver, "recurring_features", {"graph_ids": [recs[0].graph_id]}, None,
                                  database=db)
    r = client.get(f"/analyses/{queued}/plot.png")
    assert r.status_code == 409 and "queued" in r.json()["detail"]
    assert client.get("/analyses/a-nope/plot.png").status_code == 404
    assert client.get(f"/analyses/{aid}/plot.gif").status_code == 422
