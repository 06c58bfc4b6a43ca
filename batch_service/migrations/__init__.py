"""Alembic history of the batch database."""
