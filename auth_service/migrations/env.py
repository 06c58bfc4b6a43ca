"""Alembic environment of the auth database."""

from auth_service.models import Base
from shared.storage.migrations import run_env

run_env(Base.metadata)
