"""Corrections made the way the FiftyOne App makes them: JSON patches sent to the App server's
real sample routes (``fiftyone/server/routes/sample.py``), served by Starlette in-process."""

from __future__ import annotations

import json

import fiftyone as fo
from bson import json_util
from fiftyone.server.routes.sample import SampleRoutes, generate_sample_etag
from fiftyone.server.utils import json as server_json
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient


class AppClient:
    """Sends the App's label edits to the server's own route handlers."""

    def __init__(self):
        app = Starlette(routes=[Route(path, endpoint) for path, endpoint in SampleRoutes])
        self.client = TestClient(app)

    def patch_sample(self, sample: fo.Sample, ops: list[dict]) -> None:
        """The modal's edit of a sample: a JSON patch on the sample (``If-Match`` its ETag)."""
        sample.reload()
        response = self.client.patch(
            f"/dataset/{sample._dataset._doc.id}/sample/{sample.id}",
            content=json.dumps(ops),
            headers={
                "Content-Type": "application/json-patch+json",
                "If-Match": generate_sample_etag(sample),
            },
        )
        assert response.status_code == 200, response.text
        sample.reload()

    def patch_label(self, sample: fo.Sample, path: str, label_id: str, ops: list[dict]) -> None:
        """An edit of one label of a list field (e.g. from a patches view): a JSON patch on it."""
        sample.reload()
        response = self.client.patch(
            f"/dataset/{sample._dataset._doc.id}/sample/{sample.id}/{path}/{label_id}",
            content=json.dumps(ops),
            headers={
                "Content-Type": "application/json-patch+json",
                "If-Match": generate_sample_etag(sample),
            },
        )
        assert response.status_code == 200, response.text
        sample.reload()


def relabel(field: str, index: int, label: str) -> dict:
    return {"op": "replace", "path": f"/{field}/detections/{index}/label", "value": label}


def delete(field: str, index: int) -> dict:
    return {"op": "remove", "path": f"/{field}/detections/{index}"}


def add(field: str, detection: fo.Detection) -> dict:
    """Appends a detection, serialized as the App's JSON (``_cls``, ``$binary`` mask...)."""
    value = json.loads(json_util.dumps(server_json.serialize(detection)))
    return {"op": "add", "path": f"/{field}/detections/-", "value": value}
