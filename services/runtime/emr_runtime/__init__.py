"""Shared runtime of the EMR platform's services: what every service does the same way."""
