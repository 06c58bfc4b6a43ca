"""Revisions of the member database."""
