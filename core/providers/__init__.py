"""The outside parties of real-name verification: interfaces, an HTTP client, a simulator.

- `types`: the typed requests and results, `ProviderError` and the `Providers` protocol
  the services code against.
- `config`: where each provider is (URL, credentials, timeout, retries).
- `client`: `HttpProviders`, the protocol over HTTP (any provider speaking the wire
  format of docs/providers.md: a real one or the simulator).
- `sim`: the provider simulator (`tally providers serve`), deterministic from a seed.
- `population`: the simulated world's people, faces, cards and ID card photos.

Only `types` and `population` are imported here: the client and the simulator pull in
httpx and hypercorn, which a caller that only needs the types does not pay for.
"""

from core.providers.population import SIM_TOKEN
from core.providers.types import (
    PROVIDERS,
    CardCheck,
    CardResult,
    IdentityCheck,
    IdentityResult,
    LivenessCheck,
    LivenessResult,
    OcrLookup,
    OcrRequest,
    OcrResult,
    ProviderError,
    Providers,
    SmsResult,
    SmsSend,
)

__all__ = [
    "PROVIDERS",
    "SIM_TOKEN",
    "CardCheck",
    "CardResult",
    "IdentityCheck",
    "IdentityResult",
    "LivenessCheck",
    "LivenessResult",
    "OcrLookup",
    "OcrRequest",
    "OcrResult",
    "ProviderError",
    "Providers",
    "SmsResult",
    "SmsSend",
]
