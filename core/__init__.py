"""The engine (single writer, batching, backpressure), journals, stores, recovery and the CLI."""
