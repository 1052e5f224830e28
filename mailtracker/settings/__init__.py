"""Settings: the configuration file, the task definition, secrets and OAuth2 tokens."""
