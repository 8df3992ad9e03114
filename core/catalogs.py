"""Checks on the text catalogs, run by ``bin/translations`` and by the test suite.

A catalog is complete when every message of the code has a translation that is not fuzzy
and keeps the message's placeholders. The code keeps no text of its own: Chinese in a
string or a template outside a catalog is text that skipped the catalogs (the interface
once carried every message as a "中文 · English" pair), apart from the files in
:data:`OWN_TEXT`.

    python -m core.catalogs tidy translations
    python -m core.catalogs compile translations
    python -m core.catalogs report translations
    python -m core.catalogs check translations FRESH.pot SOURCE...
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

from babel import Locale
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

#: Chinese characters and the full-width punctuation written with them.
HAN = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
#: Files whose Chinese is not interface text, and why.
OWN_TEXT: dict[str, str] = {
    "core/catalogs.py": "describes the pairs it looks for",
    "core/i18n.py": "each language's name in itself, as the switch shows it",
}
#: A translation identical to an English id of several words was not translated.
_PHRASE = re.compile(r"[A-Za-z]+[ ,.'-]+[A-Za-z]+")
_TEMPLATE_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)


def _read(path: Path) -> Catalog:
    with path.open("rb") as po:
        return read_po(po)


#: Header lines that change on every update and would only make merges conflict.
_VOLATILE_HEADER = re.compile(
    rb'^"(POT-Creation-Date|PO-Revision-Date|Report-Msgid-Bugs-To|Last-Translator|'
    rb"Language-Team|Generated-By): .*\n",
    re.MULTILINE,
)


def _write(catalog: Catalog, path: Path) -> None:
    """Sorted, unwrapped, without locations or dates: a change to the catalogs is the
    messages that changed."""
    po = io.BytesIO()
    write_po(po, catalog, width=0, no_location=True, sort_output=True)
    path.write_bytes(_VOLATILE_HEADER.sub(b"", po.getvalue()))


def tidy(translations: Path) -> int:
    """Rewrite every catalog in the one layout (:func:`_write`); in the English one, each
    untranslated message takes its English id. Returns how many were filled."""
    filled = 0
    for path in sorted(translations.glob("*/LC_MESSAGES/messages.po")):
        catalog = _read(path)
        if path.parent.parent.name == "en":
            for message in catalog:
                if message.id and not any(_strings(message)):
                    message.string = message.id
                    filled += 1
        _write(catalog, path)
    return filled


def _strings(message) -> tuple[str, ...]:
    return message.string if isinstance(message.string, tuple) else (message.string,)


def catalog_problems(translations: Path, fresh: Path) -> Iterator[str]:
    """What keeps the catalogs under ``translations`` from matching ``fresh`` (a template
    just extracted from the code) completely."""
    wanted = {message.id for message in _read(fresh) if message.id}
    for message_id in wanted:
        if HAN.search(message_id if isinstance(message_id, str) else message_id[0]):
            yield f"message id is not English: {message_id!r}"
    for path in sorted(translations.glob("*/LC_MESSAGES/messages.po")):
        locale = path.parent.parent.name
        catalog = _read(path)
        have = {message.id for message in catalog if message.id}
        for message_id in sorted(map(str, wanted - have)):
            yield f"{locale}: not in the catalog (run bin/translations update): {message_id}"
        for message_id in sorted(map(str, have - wanted)):
            yield f"{locale}: no longer in the code (run bin/translations update): {message_id}"
        for message in catalog:
            if not message.id:
                continue
            if message.fuzzy or not all(_strings(message)):
                yield f"{locale}: untranslated: {message.id!r}"
            elif (
                locale == "zh_CN"
                and message.string == message.id
                and _PHRASE.search(str(message.id))
            ):
                yield f"{locale}: the English was copied, not translated: {message.id!r}"
        for message, errors in catalog.check():
            for error in errors:
                yield f"{locale}: {message.id!r}: {error}"


def _python_text(source: str) -> Iterator[tuple[int, str]]:
    """String literals of a module, with their line, leaving out docstrings (a string
    that is a statement of its own)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    skip = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
    meaningful = [t for t in tokens if t.type not in skip]
    for index, token in enumerate(meaningful):
        if token.type == tokenize.STRING:
            before = meaningful[index - 1].type if index else tokenize.NEWLINE
            after = meaningful[index + 1].type if index + 1 < len(meaningful) else None
            if before in (tokenize.NEWLINE, tokenize.ENCODING) and after == tokenize.NEWLINE:
                continue
            yield token.start[0], token.string
        elif token.type == getattr(tokenize, "FSTRING_MIDDLE", None):
            yield token.start[0], token.string


def text_outside_catalogs(root: Path, sources: list[str]) -> Iterator[str]:
    """Places where interface text is written in the code or a template instead of a
    catalog: Chinese in a Python string (docstrings and comments aside) or in a template
    (its ``{# #}`` comments aside)."""
    for name in sources:
        top = root / name
        files = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in files:
            relative = path.relative_to(root).as_posix()
            if relative in OWN_TEXT or "__pycache__" in path.parts:
                continue
            if path.suffix == ".py":
                for line, text in _python_text(path.read_text()):
                    if HAN.search(text):
                        yield f"{relative}:{line}: {text.strip()[:70]}"
            elif path.suffix == ".html":
                content = _TEMPLATE_COMMENT.sub(
                    lambda comment: "\n" * comment.group().count("\n"), path.read_text()
                )
                for line, text in enumerate(content.splitlines(), 1):
                    if HAN.search(text):
                        yield f"{relative}:{line}: {text.strip()[:70]}"


def compile_catalogs(translations: Path) -> None:
    """Write each catalog's ``.mo`` file, which the app reads, when the ``.po`` is newer.
    Untranslated and fuzzy messages are left out (they show their English id). The file
    goes where Flask-Babel looks for it: under the locale as Babel spells it (``zh_CN``
    is ``zh_Hans_CN`` to Babel, and gettext would never try ``zh_CN``)."""
    for path in translations.glob("*/LC_MESSAGES/messages.po"):
        spelled = str(Locale.parse(path.parent.parent.name))
        target = translations / spelled / "LC_MESSAGES" / "messages.mo"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.stat().st_mtime < path.stat().st_mtime:
            with target.open("wb") as mo:
                write_mo(mo, _read(path))


def report(translations: Path) -> None:
    for path in sorted(translations.glob("*/LC_MESSAGES/messages.po")):
        catalog = _read(path)
        messages = [message for message in catalog if message.id]
        missing = sum(1 for m in messages if m.fuzzy or not all(_strings(m)))
        print(f"{path.parent.parent.name}: {len(messages)} messages, {missing} untranslated")


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "tidy":
        print(f"en: {tidy(Path(rest[0]))} new messages take their English id")
        return 0
    if command == "compile":
        compile_catalogs(Path(rest[0]))
        return 0
    if command == "report":
        report(Path(rest[0]))
        return 0
    if command == "check":
        translations, fresh, *sources = rest
        problems = [
            *catalog_problems(Path(translations), Path(fresh)),
            *text_outside_catalogs(Path.cwd(), sources),
        ]
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(problems)} problems", file=sys.stderr)
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
