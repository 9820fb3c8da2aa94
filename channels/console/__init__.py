"""The operations console: web pages for the bank's operators, served at /console/ by the
HTTP app (channels/console/app.py; the pages in pages_*.py, templates/ and static/)."""
