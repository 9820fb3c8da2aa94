"""ISO 20022 for partner banks and the interbank systems (docs/iso20022.md).

`messages` holds the typed messages, `codec` parses and builds them against the XSD
subsets in `xsd/`, `reasons` is the one table from the services' refusals to ISO status
reasons, and `http` mounts the routes. Nothing is imported here, so a load test can take
the codec without the HTTP layer.
"""
