"""The one exception type users see: the CLI turns it into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input: the message says what was wrong and what is accepted."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean "x"?)' when a close match exists, else ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def say(console, message: str, label: str = "", style: str = "bold red") -> None:
    """Print one message as plain text (never read as rich markup: a path like 'no[red]dir' or
    the hint 'attnbench[cluster]' prints verbatim), with an optional styled label ('error:')."""
    from rich.text import Text

    text = Text(f"{label} ", style=style) if label else Text()
    text.append(message)
    console.print(text, soft_wrap=True, highlight=False)
