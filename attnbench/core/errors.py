"""The one exception type users see: the CLI turns it into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input: the message says what was wrong and what is accepted."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean "x"?)' when a close match exists, else ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
