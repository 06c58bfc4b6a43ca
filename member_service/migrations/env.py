"""Alembic environment of the member database."""

from member_service.models import Base
from shared.storage.migrations import run_env

run_env(Base.metadata)
