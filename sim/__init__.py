"""The failover simulator: traffic, dual-region topology, failures, checkers and reports."""
