"""Credentials: refresh maths (schedule), refresh-ahead caching (cache), OAuth flows (oauth)."""
