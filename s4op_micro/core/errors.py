"""User-facing errors: one line that names the problem and the fix; the CLI exits 2 on them."""


class UserError(Exception):
    """Bad input or a missing tool. The message is printed as one line, without a traceback."""
