"""Revisions of the batch database."""
