"""auth_service: signup and login; owns credentials and publishes `profile-insert`."""
