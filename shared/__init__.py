"""Shared by the three services: event contracts, outbox, inbox, Kafka loop, config, database."""
