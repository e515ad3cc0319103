#!/usr/bin/env python3
"""Static checker for spec macro files (spec itself is not available here).

It tokenizes a macro file the way spec reads it (comments, single and double
quoted strings with backslash escapes, braces and parentheses), opens every
``def name '...'`` body and checks it as code too, and then reports:

* unterminated strings and unbalanced braces/parentheses/brackets;
* required macros that no ``def``/``rdef`` defines;
* names passed literally to ``image_par(unit, "name" ...)`` that the server's
  parameter table (``eiger_server.control.table.lookup``) does not know.

Run it as ``python tools/check_macros.py macros/eiger.mac``: exit status 0
when the file is clean, 1 with one message per problem otherwise.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

# Every macro the requirements (spec's eiger help page) name.
REQUIRED_MACROS: Tuple[str, ...] = (
    "eiger_setup", "eiger_menu", "eiger", "eiger_restart", "EIGER_DATA",
    "eiger_scan_head", "eiger_scan_tail", "eiger_precount", "eiger_read_acq",
    "eiger_save_acq", "eigerls", "eiger_transfer", "eiger_save", "eiger_delete",
    "eiger_stream_save", "eiger_read",
)

# image_par() keys spec answers itself for every image device; they never
# reach the server, so the server's table need not know them.
SPEC_OWN_KEYS = frozenset({"disable", "responsive"})

# Keywords that introduce a macro definition followed by the macro's name.
_DEF_WORDS = ("def", "rdef")

_OPEN = {"{": "}", "(": ")", "[": "]"}
_CLOSE = {v: k for k, v in _OPEN.items()}


@dataclass
class Token:
    kind: str        # "ident", "string", "number", "punct"
    text: str        # identifier/punct text, or the raw contents of a string
    line: int
    quote: str = ""  # the quote character of a string


@dataclass
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class MacroFile:
    """What the checker learned from one file."""
    defined: Dict[str, int] = field(default_factory=dict)           # name -> line
    image_par_names: List[Tuple[str, int]] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)


def tokenize(text: str, first_line: int = 1) -> Tuple[List[Token], List[Problem]]:
    """Split spec macro source into tokens; report unterminated strings."""
    tokens: List[Token] = []
    problems: List[Problem] = []
    i, n, line = 0, len(text), first_line
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r\f\v;":
            i += 1
        elif c == "\\":
            # A backslash outside a string escapes the next character
            # (line continuation, or \' inside a def body).
            if i + 1 < n and text[i + 1] == "\n":
                line += 1
            i += 2
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "'\"":
            start_line, j, raw = line, i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    raw.append(text[j:j + 2])
                    if text[j + 1] == "\n":
                        line += 1
                    j += 2
                    continue
                if text[j] == "\n":
                    line += 1
                raw.append(text[j])
                j += 1
            if j >= n:
                problems.append(Problem(start_line, f"unterminated {c} string "
                                        "(add the closing quote)"))
                tokens.append(Token("string", "".join(raw), start_line, c))
                return tokens, problems
            tokens.append(Token("string", "".join(raw), start_line, c))
            i = j + 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(Token("ident", text[i:j], line))
            i = j
        elif c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            j = i
            while j < n and (text[j].isalnum() or text[j] in "._"):
                j += 1
            tokens.append(Token("number", text[i:j], line))
            i = j
        else:
            tokens.append(Token("punct", c, line))
            i += 1
    return tokens, problems


def _check_balance(tokens: Sequence[Token], where: str) -> List[Problem]:
    """Report braces, parentheses and brackets that do not pair up."""
    stack: List[Token] = []
    problems: List[Problem] = []
    for tok in tokens:
        if tok.kind != "punct":
            continue
        if tok.text in _OPEN:
            stack.append(tok)
        elif tok.text in _CLOSE:
            if stack and stack[-1].text == _CLOSE[tok.text]:
                stack.pop()
            else:
                expected = f"'{_OPEN[stack[-1].text]}'" if stack else "nothing"
                problems.append(Problem(tok.line, f"unbalanced '{tok.text}' {where} "
                                        f"(expected {expected} here)"))
                if stack and tok.text == "}":
                    # Resynchronise on braces so one slip is reported once.
                    while stack and stack[-1].text != "{":
                        stack.pop()
                    if stack:
                        stack.pop()
    for tok in stack:
        problems.append(Problem(tok.line, f"'{tok.text}' {where} is never closed "
                                f"(add '{_OPEN[tok.text]}')"))
    return problems


def _call_args(tokens: Sequence[Token], open_index: int) -> List[List[Token]]:
    """The comma-separated arguments of a call whose '(' is at open_index."""
    args: List[List[Token]] = [[]]
    depth = 0
    for tok in tokens[open_index:]:
        if tok.kind == "punct" and tok.text in _OPEN:
            depth += 1
            if depth == 1:
                continue
        elif tok.kind == "punct" and tok.text in _CLOSE:
            depth -= 1
            if depth == 0:
                break
        elif tok.kind == "punct" and tok.text == "," and depth == 1:
            args.append([])
            continue
        args[-1].append(tok)
    return args


def _literal_name(arg: Sequence[Token]) -> Optional[str]:
    """First word of the string an image_par name argument starts with.

    Handles "name", "name " value (concatenation) and sprintf("name %s", v).
    """
    if not arg:
        return None
    first = arg[0]
    if first.kind == "ident" and first.text == "sprintf" and len(arg) > 2:
        first = arg[2]
    if first.kind != "string":
        return None
    words = first.text.split()
    return words[0] if words else ""


def scan_code(text: str, first_line: int, result: MacroFile, where: str) -> None:
    """Check one piece of macro code and, recursively, the def bodies in it."""
    tokens, problems = tokenize(text, first_line)
    result.problems.extend(problems)
    result.problems.extend(_check_balance(tokens, where))
    for k, tok in enumerate(tokens):
        if tok.kind != "ident":
            continue
        if tok.text in _DEF_WORDS and k + 1 < len(tokens) and tokens[k + 1].kind == "ident":
            name_tok = tokens[k + 1]
            result.defined.setdefault(name_tok.text, name_tok.line)
            if tok.text == "def":
                body = _def_body(tokens, k + 2)
                if body is not None:
                    scan_code(body.text, body.line, result,
                              f"in the body of {name_tok.text}")
        elif (tok.text == "image_par" and k + 1 < len(tokens)
              and tokens[k + 1].text == "("):
            args = _call_args(tokens, k + 1)
            if len(args) >= 2:
                name = _literal_name(args[1])
                if name is not None:
                    result.image_par_names.append((name, tok.line))


def _def_body(tokens: Sequence[Token], k: int) -> Optional[Token]:
    """The body string of ``def name [(args)] 'body'`` starting after the name."""
    if k < len(tokens) and tokens[k].kind == "punct" and tokens[k].text == "(":
        depth = 0
        while k < len(tokens):
            if tokens[k].text == "(":
                depth += 1
            elif tokens[k].text == ")":
                depth -= 1
                if depth == 0:
                    k += 1
                    break
            k += 1
    if k < len(tokens) and tokens[k].kind == "string":
        return tokens[k]
    return None


def parse_macros(text: str) -> MacroFile:
    """Tokenize and scan a whole macro file."""
    result = MacroFile()
    scan_code(text, 1, result, "at file level")
    return result


def _default_lookup() -> Callable[[str], object]:
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from eiger_server.control.table import lookup  # noqa: E402 (path set just above)
    return lookup


def check_text(text: str, required: Iterable[str] = REQUIRED_MACROS,
               lookup: Optional[Callable[[str], object]] = None) -> List[str]:
    """All problems of a macro file's text, as messages (empty: clean)."""
    lookup = lookup or _default_lookup()
    parsed = parse_macros(text)
    messages = [str(p) for p in sorted(parsed.problems, key=lambda p: p.line)]
    for name in required:
        if name not in parsed.defined:
            messages.append(f"macro {name} is required but never defined "
                            f"(add: def {name} '...')")
    for name, line in parsed.image_par_names:
        if name in SPEC_OWN_KEYS:
            continue
        if not name or lookup(name) is None:
            messages.append(f"line {line}: image_par name {name!r} is not in the "
                            "server's parameter table (see eiger_server/control/table.py)")
    return messages


def check_file(path: str, required: Iterable[str] = REQUIRED_MACROS,
               lookup: Optional[Callable[[str], object]] = None) -> List[str]:
    """All problems of the macro file at ``path``."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [f"{path}: {m}" for m in check_text(text, required, lookup)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Check spec macro files for eiger_server.")
    parser.add_argument("files", nargs="+", help="macro files, e.g. macros/eiger.mac")
    parser.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            messages = check_file(path)
        except OSError as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            status = 1
            continue
        for message in messages:
            print(message)
        if messages:
            status = 1
        elif not args.quiet:
            parsed = parse_macros(Path(path).read_text(encoding="utf-8", errors="replace"))
            print(f"{path}: ok ({len(parsed.defined)} macros, "
                  f"{len(parsed.image_par_names)} image_par names checked)")
    return status


if __name__ == "__main__":
    sys.exit(main())
