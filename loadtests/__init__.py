"""Locust files and the scripts that run them against a live server."""
