"""Type stub for cext/http_auth.pyx (the signature check; channels/app.py)."""

def verify_request(
    secret: bytes,
    channel: str,
    key_id: str,
    method: str,
    path: str,
    query: str,
    timestamp: str,
    nonce: str,
    idempotency_key: str,
    actor: str,
    body: bytes,
    claimed: str,
) -> bool: ...
def sha256(data: bytes) -> bytes: ...
