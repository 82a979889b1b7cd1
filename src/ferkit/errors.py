"""The one exception type for errors a user can cause."""


class FerkitError(Exception):
    """A problem with user input (path, file, config, checkpoint); the CLI prints it in one line."""
