#!/usr/bin/env python3
"""Static checker for spec macro files (spec itself is not available here).

It tokenizes a macro file the way spec reads it (comments, single and double
quoted strings with backslash escapes, braces and parentheses), opens every
``def name '...'`` body and checks it as code too, and then reports:

* unterminated strings and unbalanced braces/parentheses/brackets;
* required macros that no ``def``/``rdef`` defines;
* names passed literally to ``image_par(unit, "name" ...)`` that the server's
  parameter table (``eiger_server.control.table.lookup``) does not know;
* mistakes that only show in a real spec session (issue 16), one rule each
  (see ``RULES``): paths sent without being made absolute with ``CWD``, a
  naive ``"%s/%s"`` join (``DATA_DIR`` ends in ``/``), ``COUNT_TIME`` in the
  scan head, more than one ``#IMG`` writer, ``eiger_read_acq`` ignoring ROIs,
  undocumented ``image_par`` call forms, ``%R`` cut out of ``date()``, a
  ``cdef`` key shared by all units, constructs a spec grammar rejects or reads
  differently (concatenation in an argument, ``var (expr)``, a variable named
  like a standard macro), ``ntrigger`` from ``max_trigger`` or never checked.

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
    "eiger_setup", "eiger_menu", "eiger", "eiger_restart", "EIGER_DATA", "EIGER_data",
    "eiger_scan_head", "eiger_scan_tail", "eiger_precount", "eiger_read_acq",
    "eiger_save_acq", "eigerls", "eiger_transfer", "eiger_save", "eiger_delete",
    "eiger_stream_save", "eiger_read",
)

# image_par() keys spec answers itself for every image device; they never
# reach the server, so the server's table need not know them.
SPEC_OWN_KEYS = frozenset({"disable", "responsive"})

# Keywords that introduce a macro definition followed by the macro's name.
_DEF_WORDS = ("def", "rdef")

# Words of spec's grammar that look like identifiers but are not operands.
_KEYWORDS = frozenset({"if", "else", "while", "for", "do", "break", "continue", "return",
                       "local", "global", "def", "rdef", "undef", "in", "exit", "shared",
                       "unglobal", "constant", "delete", "print", "eprint", "history",
                       "lscmd", "syms", "float", "double", "string", "array", "ulong",
                       "ushort", "long", "short", "byte", "ubyte"})

# Standard spec macros with short names a variable might get: spec expands a
# macro wherever its name appears as a word, so a local, parameter or
# variable of that name is replaced by the macro's text.
STANDARD_MACRO_NAMES = frozenset({"u", "p", "ct", "uct", "mv", "mvr", "umv", "umvr", "wa",
                                  "wm", "wh", "lm", "set", "set_lm", "tw", "br", "ubr",
                                  "ca", "ci", "cz", "mk", "pl", "do", "qdo", "newfile",
                                  "ascan", "dscan", "mesh", "timescan", "loopscan"})

# image_par names whose extra arguments the documentation puts inside the name
# string ("roisum 1 2 3 4", "monitor_save 3 0 1"); every other name takes its
# value as the third argument of image_par.
MULTIWORD_NAMES = frozenset({"roisum", "monitor_save", "monitor_save_threshold"})

# image_par names documented only with a value: image_par(unit, "transfer",
# filename|pattern); without one they do something else or fail.
VALUE_REQUIRED = frozenset({"transfer", "delete", "save", "pixelmask_load"})

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
class MacroDef:
    """One ``def name [(params)] 'body'`` with its body's tokens."""
    name: str
    line: int
    params: List[str]
    tokens: List[Token]


@dataclass
class MacroFile:
    """What the checker learned from one file."""
    defined: Dict[str, int] = field(default_factory=dict)           # name -> line
    image_par_names: List[Tuple[str, int]] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    defs: Dict[str, MacroDef] = field(default_factory=dict)          # def bodies
    top_tokens: List[Token] = field(default_factory=list)            # file-level code


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


def scan_code(text: str, first_line: int, result: MacroFile, where: str) -> List[Token]:
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
                    body_tokens = scan_code(body.text, body.line, result,
                                            f"in the body of {name_tok.text}")
                    result.defs.setdefault(name_tok.text, MacroDef(
                        name_tok.text, name_tok.line, _def_params(tokens, k + 2),
                        body_tokens))
        elif (tok.text == "image_par" and k + 1 < len(tokens)
              and tokens[k + 1].text == "("):
            args = _call_args(tokens, k + 1)
            if len(args) >= 2:
                name = _literal_name(args[1])
                if name is not None:
                    result.image_par_names.append((name, tok.line))
    return tokens


def _def_params(tokens: Sequence[Token], k: int) -> List[str]:
    """The parameter names of ``def name(a, b) '...'`` (tokens[k] is the '(')."""
    if not (k < len(tokens) and tokens[k].text == "("):
        return []
    names = []
    for tok in tokens[k + 1:]:
        if tok.text == ")":
            break
        if tok.kind == "ident":
            names.append(tok.text)
    return names


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
    result.top_tokens = scan_code(text, 1, result, "at file level")
    return result


# -- issue 16: what misbehaves in a real spec session ---------------------------

def _calls(tokens: Sequence[Token], name: Optional[str] = None):
    """(index, name, args) of every ``ident(...)`` call (of ``name`` only if given)."""
    for k, tok in enumerate(tokens):
        if (tok.kind == "ident" and tok.text not in _KEYWORDS
                and k + 1 < len(tokens) and tokens[k + 1].text == "("
                and (name is None or tok.text == name)):
            yield k, tok.text, _call_args(tokens, k + 1)


def _idents(tokens: Iterable[Token]) -> List[str]:
    return [t.text for t in tokens if t.kind == "ident"]


def _text(tokens: Sequence[Token]) -> str:
    return " ".join(f'"{t.text}"' if t.kind == "string" else t.text for t in tokens)


def _called(defn: MacroDef, defs: Dict[str, MacroDef]) -> List[str]:
    """Names of the defs a def's body calls."""
    return [name for _, name, _ in _calls(defn.tokens) if name in defs]


def _closure(defs: Dict[str, MacroDef], base: Callable[[MacroDef], bool]) -> set:
    """Defs for which ``base`` holds, or that call (transitively) one that does."""
    found = {name for name, d in defs.items() if base(d)}
    changed = True
    while changed:
        changed = False
        for name, d in defs.items():
            if name not in found and any(c in found for c in _called(d, defs)):
                found.add(name)
                changed = True
    return found


def _assignments(tokens: Sequence[Token]):
    """(index, variable, right-hand-side tokens) of every ``var = expr``.

    The expression ends at the end of its line outside brackets (a backslash
    continuation inside parentheses keeps it going), or at a brace.
    """
    for k, tok in enumerate(tokens[:-1]):
        nxt = tokens[k + 1]
        if not (tok.kind == "ident" and nxt.text == "=" and nxt.kind == "punct"):
            continue
        if k + 2 < len(tokens) and tokens[k + 2].text == "=":
            continue                                    # "==" is a comparison
        if k > 0 and tokens[k - 1].text in ("=", "!", "<", ">"):
            continue
        rhs: List[Token] = []
        depth, line = 0, nxt.line
        for t in tokens[k + 2:]:
            if depth == 0 and (t.line != line or t.text in "{}"):
                break
            if t.text in "([":
                depth += 1
            elif t.text in ")]":
                depth -= 1
            rhs.append(t)
            line = t.line
        yield k, tok.text, rhs


def rule_absolute_paths(parsed: MacroFile) -> List[Problem]:
    """Paths sent to the server or given to mkdir must be made absolute with CWD."""
    defs = parsed.defs
    absolutizers = _closure(defs, lambda d: "CWD" in _idents(d.tokens))
    if not absolutizers:
        return [Problem(1, "no macro makes a path absolute with CWD: eiger_server refuses a "
                           "relative data_directory and, as a daemon, runs in / (join CWD "
                           "to relative names before sending them)")]
    makers = {name for name, d in defs.items()
              if any(t.kind == "string" and "mkdir" in t.text for t in d.tokens)}
    problems = []
    for d in defs.values():
        absolute: set = set()

        def is_abs(expr: Sequence[Token]) -> bool:
            names = _idents(expr)
            if not names and expr and expr[0].kind == "string":
                return expr[0].text.startswith("/") or expr[0].text == ""
            return any(n in absolutizers or n in absolute for n in names)  # noqa: B023 (used in this loop only)

        assigned = {k: (var, rhs) for k, var, rhs in _assignments(d.tokens)}
        for k, tok in enumerate(d.tokens):
            if k in assigned:
                var, rhs = assigned[k]
                (absolute.add if is_abs(rhs) else absolute.discard)(var)
            if tok.kind != "ident" or k + 1 >= len(d.tokens) or d.tokens[k + 1].text != "(":
                continue
            args = _call_args(d.tokens, k + 1)
            if tok.text == "image_par" and len(args) >= 3 and \
                    _literal_name(args[1]) == "data_directory":
                arg, what = args[2], "data_directory"
            elif tok.text in makers and tok.text != d.name and args and args[0]:
                arg, what = args[0], f"{tok.text}()"
            else:
                continue
            if not is_abs(arg):
                problems.append(Problem(tok.line, f"{d.name} gives {what} the path "
                                        f"'{_text(arg)}', which may be relative: make it "
                                        "absolute with CWD first (a daemonized eiger_server "
                                        "runs in /)"))
    return problems


def _last_char_test(tokens: Sequence[Token]) -> bool:
    """Whether the tokens hold ``substr(x, length(x), 1)`` and a "/" string."""
    slash = any(t.kind == "string" and t.text == "/" for t in tokens)
    for _, _, args in _calls(tokens, "substr"):
        if len(args) >= 2 and args[1] and args[1][0].text == "length":
            return slash
    return False


def rule_path_join(parsed: MacroFile) -> List[Problem]:
    """A "%s/%s" join must look at the directory's last character."""
    problems = []
    for d in parsed.defs.values():
        joins = [t for t in d.tokens if t.kind == "string" and "%s/%s" in t.text]
        if joins and not _last_char_test(d.tokens):
            problems.append(Problem(joins[0].line, f"{d.name} joins paths with \"%s/%s\" "
                                    "without looking at the last character of the directory: "
                                    "DATA_DIR conventionally ends in /, which gives //"))
    return problems


def rule_scan_count_time(parsed: MacroFile) -> List[Problem]:
    """The scan head programs the scan's count time, _ctime, and only when > 0."""
    head = parsed.defs.get("eiger_scan_head")
    if head is None:
        return []
    problems = []
    for tok in head.tokens:
        if tok.kind == "ident" and tok.text == "COUNT_TIME":
            problems.append(Problem(tok.line, "eiger_scan_head uses COUNT_TIME, the time of "
                                    "the last count: at scan-head time the scan's count time "
                                    "is _ctime"))
    toks = head.tokens
    if "_ctime" not in _idents(toks):
        problems.append(Problem(head.line, "eiger_scan_head never programs the scan's count "
                                "time _ctime, so the series is armed with a stale exposure"))
    elif not any(toks[i].text == "_ctime" and toks[i + 1].text == ">"
                 and toks[i + 2].text == "0" for i in range(len(toks) - 2)):
        problems.append(Problem(head.line, "eiger_scan_head programs _ctime without testing "
                                "_ctime > 0: a negative _ctime counts to a monitor"))
    return problems


def rule_one_img_writer(parsed: MacroFile) -> List[Problem]:
    """Exactly one place writes the #IMG line of a point."""
    writers = [(d.name, t.line) for d in parsed.defs.values() for t in d.tokens
               if t.kind == "string" and "#IMG" in t.text]
    writers += [("file level", t.line) for t in parsed.top_tokens
                if t.kind == "string" and "#IMG" in t.text and t.quote == '"']
    if len(writers) <= 1:
        return []
    where = ", ".join(f"{name} (line {line})" for name, line in writers)
    return [Problem(writers[1][1], f"#IMG lines are written in {len(writers)} places ({where}): "
                    "a point (point 0 at least) would get two; write exactly one per point")]


def rule_read_acq_rois(parsed: MacroFile) -> List[Problem]:
    """eiger_read_acq reads the image whenever ROIs are configured."""
    read = parsed.defs.get("eiger_read_acq")
    if read is None:
        return []
    if "image_get" not in _idents(read.tokens):
        return [Problem(read.line, "eiger_read_acq never calls image_get")]
    knows_rois = _closure(parsed.defs, lambda d: "ROI_info" in _idents(d.tokens))
    if "eiger_read_acq" not in knows_rois:
        return [Problem(read.line, "eiger_read_acq reads the image only for the copy to "
                        "shared memory: with ROIs configured (ROI_info) the Eiger must be read "
                        "in any case, or the ROIs see an old image")]
    return []


def rule_image_par_forms(parsed: MacroFile) -> List[Problem]:
    """image_par is called in the documented forms."""
    problems = []
    for d in parsed.defs.values():
        for k, _, args in _calls(d.tokens, "image_par"):
            if len(args) < 2:
                continue
            line = d.tokens[k].line
            name = _literal_name(args[1])
            if name is None:
                continue
            first = args[1][0]
            extra = len(args[1]) > 1 or (first.kind == "string" and len(first.text.split()) > 1)
            if extra and name not in MULTIWORD_NAMES:
                problems.append(Problem(line, f"image_par name and value in one string "
                                        f"('{_text(args[1])}'): the documented form is "
                                        f"image_par(unit, \"{name}\", value)"))
            elif name in VALUE_REQUIRED and len(args) < 3:
                problems.append(Problem(line, f"image_par(unit, \"{name}\") without a value: "
                                        f"the documented form is image_par(unit, \"{name}\", "
                                        "filename|pattern)"))
    return problems


def rule_date_format(parsed: MacroFile) -> List[Problem]:
    """Parts of the time are asked of date() with a format, not cut out of it."""
    problems = []
    for d in parsed.defs.values():
        for k, _, args in _calls(d.tokens, "substr"):
            first = args[0] if args else []
            if len(first) >= 3 and first[0].text == "date" and first[1].text == "(" \
                    and first[2].text == ")":
                problems.append(Problem(d.tokens[k].line, f"{d.name} cuts a part out of "
                                        "date(), whose format users may change: ask for it, "
                                        "e.g. date(\"%H:%M\")"))
    return problems


def rule_cdef_keys(parsed: MacroFile) -> List[Problem]:
    """A cdef key is built per unit, never one literal shared by all units."""
    problems = []
    for d in parsed.defs.values():
        for k, _, args in _calls(d.tokens, "cdef"):
            if len(args) >= 3 and len(args[2]) == 1 and args[2][0].kind == "string":
                problems.append(Problem(d.tokens[k].line, f"{d.name} uses the cdef key "
                                        f"\"{args[2][0].text}\" for every unit: a second "
                                        "unit replaces or deletes the first one's part; build "
                                        "the key from the unit"))
    return problems


def _operand_end(tok: Token) -> bool:
    return (tok.kind in ("string", "number") or (tok.kind == "ident" and tok.text not in
            _KEYWORDS) or tok.text in (")", "]"))


def _operand_start(prev: Token, tok: Token) -> bool:
    if tok.kind in ("string", "number") or (tok.kind == "ident" and tok.text not in _KEYWORDS):
        return True
    return tok.text == "(" and prev.kind != "ident"      # ident( is a call


def rule_grammar(parsed: MacroFile) -> List[Problem]:
    """Constructs an independent spec grammar rejects or reads differently."""
    problems = []
    for d in parsed.defs.values():
        toks = d.tokens
        # Concatenation by juxtaposition inside a function argument.
        for _k, name, args in _calls(toks):
            for arg in args:
                depth, prev = 0, None
                for tok in arg:
                    if depth == 0 and prev is not None and _operand_end(prev) \
                            and _operand_start(prev, tok):
                        problems.append(Problem(tok.line, f"string concatenation inside an "
                                                f"argument of {name}() ('{_text(arg)}'): "
                                                "build the string with sprintf()"))
                        break
                    if tok.text in "([":
                        depth += 1
                    elif tok.text in ")]":
                        depth -= 1
                    if depth == 0:
                        prev = tok
        # Variables: parameters, locals and assigned names.
        variables: Dict[str, int] = {p: d.line for p in d.params}
        for k, tok in enumerate(toks):
            if tok.text == "local" and tok.kind == "ident":
                for t in toks[k + 1:]:
                    if t.line != tok.line:
                        break
                    if t.kind == "ident":
                        variables.setdefault(t.text, t.line)
        for k, var, _ in _assignments(toks):
            if k == 0 or toks[k - 1].text not in (".", "]"):
                variables.setdefault(var, toks[k].line)
        for var, line in sorted(variables.items(), key=lambda item: item[1]):
            if var in STANDARD_MACRO_NAMES:
                problems.append(Problem(line, f"{d.name} has a variable named {var}, which is "
                                        "a standard spec macro: spec expands the macro in its "
                                        "place; choose another name"))
        for k, tok in enumerate(toks[:-1]):
            if tok.kind == "ident" and tok.text in variables and toks[k + 1].text == "(" \
                    and tok.text not in parsed.defined:
                problems.append(Problem(tok.line, f"'{tok.text} (' in {d.name} reads as a call "
                                        f"of a function {tok.text}(), not as the variable "
                                        "followed by an expression: use sprintf() to join"))
    return problems


def rule_ntrigger(parsed: MacroFile) -> List[Problem]:
    """Scans arm for their points: never max_trigger, and a refusal is noticed."""
    problems = []
    for d in parsed.defs.values():
        reads = [d.tokens[k].line for k, _, args in _calls(d.tokens, "image_par")
                 if len(args) == 2 and _literal_name(args[1]) == "ntrigger"]
        for k, _, args in _calls(d.tokens, "image_par"):
            if len(args) < 3 or _literal_name(args[1]) != "ntrigger":
                continue
            line = d.tokens[k].line
            value = args[2]
            if any(t.kind == "string" and t.text == "max_trigger" for t in value):
                problems.append(Problem(line, f"{d.name} sets ntrigger to max_trigger: arm "
                                        "with the scan's number of points (a DCU refuses, or "
                                        "makes files for, a series that long)"))
            elif not (len(value) == 1 and value[0].kind == "number") and \
                    not any(r > line for r in reads):
                problems.append(Problem(line, f"{d.name} sets ntrigger to '{_text(value)}' and "
                                        "never reads it back: a DCU that refuses the value "
                                        "goes unnoticed (read it back and fall back)"))
    return problems


RULES: Tuple[Callable[[MacroFile], List[Problem]], ...] = (
    rule_absolute_paths, rule_path_join, rule_scan_count_time, rule_one_img_writer,
    rule_read_acq_rois, rule_image_par_forms, rule_date_format, rule_cdef_keys,
    rule_grammar, rule_ntrigger,
)


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
    problems = list(parsed.problems)
    if not problems:
        # The session rules need a file that parses; syntax comes first.
        for rule in RULES:
            problems.extend(rule(parsed))
    messages = [str(p) for p in sorted(problems, key=lambda p: p.line)]
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
