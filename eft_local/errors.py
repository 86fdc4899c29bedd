"""User-facing errors: one clear line, never a traceback."""


class UserError(Exception):
    """A problem the user can fix. The message is the single line we print."""


class Cancelled(Exception):
    """The caller's cancel flag was seen; raised between decoding steps."""


class EngineBusy(UserError):
    """A second generation was started while one is running on the same engine."""


# -- text that isn't valid Unicode: one rule for every edge (HTTP fields, flags, rows, templates) -------
def unicode_problem(text: str) -> str | None:
    """Why ``text`` can't be written as UTF-8, or None when it can.

    The cause is a lone surrogate: ``"\\ud800"`` in JSON, or a byte that is not UTF-8 in a
    command-line argument, environment variable or file name, which Python decodes to
    U+DC80..U+DCFF (``surrogateescape``). Such text would fail later, deep in a tokenizer or a
    writer, so each front end refuses it where it comes in."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        what = (
            f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8"
            if 0xDC80 <= code <= 0xDCFF
            else f"a lone surrogate U+{code:04X}"
        )
        return f"{what}, at character {e.start + 1}"
    return None


def bad_text_in(value: object) -> tuple[str, str] | None:
    """The first string (or object key) in a JSON-like ``value`` that is not valid Unicode, as
    (its path such as ``messages[1].content``, ``unicode_problem``'s reason); None if all are.
    A bad key appears in the path with its bad part escaped (``\\udcff``), so the path itself is
    safe to print or send. Iterative: any depth ``json.loads`` accepts."""
    todo: list[tuple[str, object]] = [("", value)]
    while todo:
        path, item = todo.pop()
        if isinstance(item, str):
            problem = unicode_problem(item)
            if problem:
                return path, problem
        elif isinstance(item, dict):
            for key, sub in reversed(item.items()):
                name = key.encode("utf-8", "backslashreplace").decode() if isinstance(key, str) else str(key)
                where = f"{path}.{name}" if path else name
                todo.append((where, key if isinstance(key, str) and unicode_problem(key) else sub))
        elif isinstance(item, (list, tuple)):
            todo.extend((f"{path}[{i}]", sub) for i, sub in reversed(list(enumerate(item))))
    return None


def check_text(text: str, what: str) -> str:
    """``text`` unchanged, or a UserError: ``{what} is not valid Unicode: …`` (one line)."""
    problem = unicode_problem(text)
    if problem:
        raise UserError(f"{what} is not valid Unicode: {problem}")
    return text
