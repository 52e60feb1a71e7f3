"""The one exception type users see: a message that names the problem and the fix."""


class TensorslimError(Exception):
    """Bad input or an impossible request. The CLI prints the message and exits with code 2.

    Messages follow one shape: what is wrong, with the offending value, then how to fix it.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem, self.fix = problem, fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
