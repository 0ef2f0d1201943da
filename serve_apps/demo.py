"""A demo client of the recommender (the end of ``make demo``): serve the app, post a
session's events, ask for its recommendations, print request and answer."""

from __future__ import annotations

import json
import urllib.request

from ray import serve

from rayrec.serve_apps.app import RecommenderArgs, build_app
from rayrec.serve_apps.scoring import resolve_model_name, resolve_model_path

__all__ = ["demo_request"]



def http_json(method: str, url: str, body: dict | None = None, timeout: float = 60) -> dict:
    """One JSON request to the app (the demos' client; ``urllib`` only)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())

def demo_request(
    args: RecommenderArgs | dict,
    items: list[str] | None = None,
    k: int = 10,
    port: int = 8000,
    session_id: str = "demo-session",
) -> dict:
    """Serve the app on 127.0.0.1:``port``, post a session's events, ask for its
    recommendations and print request and answer.  Ray must be initialised
    (``rayrec.platform.runtime.init_ray``); the app keeps running until ``serve.shutdown()``.
    ``items`` default: the model's three most popular items."""
    a = args if isinstance(args, RecommenderArgs) else RecommenderArgs.model_validate(args)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:  # an already running Serve keeps its own HTTP options
        from ray.serve.context import _get_global_client

        port = int(_get_global_client().http_config.port)
    except (ImportError, AttributeError):
        pass
    serve.run(build_app(a), name="recommender", route_prefix="/")
    s = a.session
    if items is None:
        path = resolve_model_path(s.model_dir, resolve_model_name(s.model_dir, s.model))
        items = json.loads((path / "items.json").read_text())[:3]
    base = f"http://127.0.0.1:{port}"
    events = {"events": [{"session_id": session_id, "item_id": i} for i in items]}

    call = http_json
    print(f"POST {base}/events {json.dumps(events)}")
    print(" ->", json.dumps(call("POST", f"{base}/events", events)))
    url = f"{base}/sessions/{session_id}/recommendations?k={k}"
    print(f"GET {url}")
    ans = call("GET", url)
    print(" ->", json.dumps(ans, indent=1))
    print("keep it running with: serve run serve_apps/configs/recommender.yaml "
          f"(session.model_dir={s.model_dir}, session.model={s.model})")
    return ans
