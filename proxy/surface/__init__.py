"""Local routes: everything on the HTTP front but the invocation hot path, behind one interface.

`await Surface.answer(LocalRequest) -> LocalAnswer | Forward` (see `messages` for the contract, `routes`
for the table). Independent of the HTTP server: a front needs only a small dispatch to plug it in.
"""

from proxy.surface.messages import Forward, LocalAnswer, LocalRequest
from proxy.surface.routes import Surface

__all__ = ["Forward", "LocalAnswer", "LocalRequest", "Surface"]
