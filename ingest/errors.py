class IngestError(ValueError):
    """A file cannot be ingested. The message is meant for the user, as is."""
