"""The ISO 8583 face: ATMs and POS terminals over TCP (framing, codec, keys, adapter, server).

Only the protocol lives here: parse a message, check its terminal, MAC and PIN,
turn it into the services' typed commands and their results into a response.
"""
