"""Back-pressure for request bodies inside a Serve replica (Ray 2.60).

Serve's HTTP proxy forwards a request body to the replica through
``ray.serve._private.http_util.ASGIReceiveProxy``, whose ``fetch_until_disconnect`` pulls
every message the proxy has queued, as fast as it can, whether or not the application reads
them: a 200 MB chunked upload lands whole in the replica's memory even when the application
stops reading (and answers 413) after the first 64 KB.  :func:`install` makes that fetch
loop wait while more than ``max_buffered`` body bytes sit unread in the replica, so the
replica holds at most about one pull beyond what the application asked for; the rest never
leaves the proxy (which buffers what the client sends: that part is Ray's, see
docs/operations.md).

The patch changes two methods of that one class in the replica process it is installed in
(the ingress replicas), keeps Ray's behaviour otherwise (disconnect and error handling) and
is a no-op if the class is not there (another Ray version): the body limit itself
(:class:`rayrec.serve_apps.deployments._Guard`) does not depend on it.
"""

from __future__ import annotations

import asyncio
import pickle

__all__ = ["install"]


def install(max_buffered: int) -> bool:
    """Bound the unread body bytes a replica fetches from the proxy; True if installed."""
    try:
        from ray.serve._private import http_util
    except ImportError:  # pragma: no cover - other Ray versions
        return False
    cls = getattr(http_util, "ASGIReceiveProxy", None)
    if cls is None or not hasattr(cls, "fetch_until_disconnect"):
        return False
    if getattr(cls, "_rayrec_max_buffered", None) is not None:
        cls._rayrec_max_buffered = int(max_buffered)
        return True
    original_call = cls.__call__

    def _state(self):
        st = getattr(self, "_rayrec_state", None)
        if st is None:
            st = self._rayrec_state = {"unread": 0, "drained": asyncio.Event()}
        return st

    async def fetch_until_disconnect(self):
        st = _state(self)
        while True:
            while st["unread"] > cls._rayrec_max_buffered:  # wait for the app to read
                st["drained"].clear()
                await st["drained"].wait()
            try:
                # Ray's own proxy -> replica channel (the proxy pickles the ASGI messages it
                # built from the client's bytes; the body stays bytes): what Ray's method does
                pickled = await self._receive_asgi_messages(self._request_metadata)
                for message in pickle.loads(pickled):
                    if message.get("type") == "http.request":
                        st["unread"] += len(message.get("body", b""))
                    self.queue.put_nowait(message)
                    if message["type"] in {"http.disconnect", "websocket.disconnect"}:
                        self._disconnect_message = message
                        return
            except KeyError:  # the request is gone from the proxy (client disconnected)
                message = self._get_default_disconnect_message()
                self.queue.put_nowait(message)
                self._disconnect_message = message
                return
            except Exception as e:  # raised on the next receive, as Ray does
                self.queue.put_nowait(e)
                return

    async def call(self):
        message = await original_call(self)
        if isinstance(message, dict) and message.get("type") == "http.request":
            st = _state(self)
            st["unread"] -= len(message.get("body", b""))
            if st["unread"] <= cls._rayrec_max_buffered:
                st["drained"].set()
        return message

    cls._rayrec_max_buffered = int(max_buffered)
    cls.fetch_until_disconnect = fetch_until_disconnect
    cls.__call__ = call
    return True
