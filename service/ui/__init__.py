"""The circuit viewer: static ES modules served by the API itself at ``/ui`` (no build step, no second server).

The browser code only talks to the public REST API (``/graphs``, ``/features``, ``/global``, ``/jobs`` ...);
it reads ``/openapi.json`` to tell which optional endpoints exist, and shows "not available" for the rest.
"""

from service.ui.routes import STATIC_DIR, router

__all__ = ["STATIC_DIR", "router"]
