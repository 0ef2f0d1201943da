"""rayrec.serve_apps: the online recommender, a Ray Serve application, by role.

* ``app``: ``build_app`` (the import path of the Serve config) and the request flow;
* ``config``: ``RecommenderArgs``, the grouped typed arguments;
* ``schemas``: the HTTP request / response bodies;
* ``messages``: the typed messages between the deployments;
* ``deployments``: the ingress, the session and the daily recommender (thin);
* ``policy``: exclusions, filters, blending, popularity fallback (pure functions);
* ``scoring``: model names, checkpoint loading (any registered session model), batched top-K;
* ``demo``: a demo client.
"""
