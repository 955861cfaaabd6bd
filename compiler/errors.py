"""The one base class of the errors cosparse reports to users."""


class CosparseError(Exception):
    """A problem with the user's input; the CLI prints it as one paragraph and exits 2."""
