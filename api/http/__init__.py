"""HTTP: the ASGI app, the handlers, the route table, the OpenAPI document, streams.

It knows the grid only as ``actors.declaration.Grid`` (call, query) and is wired
by the runtime (api/runtime/node.py); it never imports the runtime."""
