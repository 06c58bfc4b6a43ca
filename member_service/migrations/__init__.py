"""Alembic history of the member database."""
