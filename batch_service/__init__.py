"""batch_service: keeps each partner's aggregates, starting from `partner-created`."""
