"""The one error type of the service's start-up, light enough for the CLI to import always."""


class StartupError(Exception):
    """The service cannot start; the message is the one line shown to the operator."""
