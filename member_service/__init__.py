"""member_service: turns `profile-insert` into USER or PARTNER profiles."""
