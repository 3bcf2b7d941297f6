"""`harness bench`: figures measured against a baseline taken in the same invocation."""
