"""The one error type for user mistakes.

A ``UserError`` is printed as ``error: <message>`` (one line each) with exit
code 2 and no traceback. Anything else is a bug and keeps its traceback.
"""

from bench.limits import clip_line, short


class UserError(Exception):
    """A mistake in the user's input: a bad key, value, file or flag.

    ``problems`` holds one line per problem so that validation can report
    every problem at once.
    """

    def __init__(self, *problems: str):
        self.problems = [clip_line(p) for p in problems if p]  # one line each, of bounded length
        super().__init__("\n".join(self.problems))


def allowed(key: str, value: object, choices) -> str:
    """Format the standard one-line message for a value outside a fixed set."""
    return f"{key}: {short(value)} is not allowed; allowed: {', '.join(map(str, choices))}"
