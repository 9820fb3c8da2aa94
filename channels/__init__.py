"""The HTTP face: the ASGI app, routes, channel auth, idempotency keys, adapters, health."""
