#!/usr/bin/env python3
"""Render a reStructuredText help page into spec's plain-text help format.

spec's help files are plain text: the page title on top, section headings
in capitals at the left margin, sub-headings indented a little, and the
text indented and wrapped to fit an 80-column terminal.  docutils has no
plain-text writer, so this module adds one (:class:`SpecHelpWriter`) that
walks the document tree.  The same source can also be rendered to HTML
with docutils' own writer.

Usage::

    python tools/rst2spechelp.py help/eiger.rst -o help/eiger --html help/eiger.html

Any docutils warning or error stops the rendering with exit status 1.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Dict, List, Optional, Sequence

import docutils.core
import docutils.utils
from docutils import nodes, writers

WIDTH = 78          # columns of the rendered text
BODY_INDENT = 5     # indent of ordinary paragraphs
STEP = 4            # extra indent of nested blocks and definitions

# Stop on anything docutils warns about: a help page must be clean.
STRICT_SETTINGS: Dict[str, object] = {
    "report_level": 2,     # report warnings and worse
    "halt_level": 2,       # and stop on them
    "exit_status_level": 2,
    "warning_stream": None,
    "input_encoding": "utf-8",
    "output_encoding": "utf-8",
    "file_insertion_enabled": True,
    "raw_enabled": False,
}


def _inline_text(node: nodes.Node) -> str:
    """Text of an inline element, whitespace collapsed."""
    return " ".join(node.astext().split())


def _findall(node: nodes.Node, kind) -> List[nodes.Node]:
    """Descendants of a type (Node.findall is new in docutils 0.18)."""
    finder = getattr(node, "findall", None) or node.traverse
    return list(finder(kind))


class _Renderer:
    """Turns a doctree into lines of text."""

    def __init__(self, width: int = WIDTH) -> None:
        self.width = width

    # -- helpers -----------------------------------------------------------
    def wrap(self, text: str, indent: int, first: Optional[str] = None) -> List[str]:
        prefix = " " * indent
        lines = textwrap.wrap(" ".join(text.split()), width=max(self.width, indent + 20),
                              initial_indent=first if first is not None else prefix,
                              subsequent_indent=prefix, break_long_words=False,
                              break_on_hyphens=False)
        return lines or [(first or prefix).rstrip()]

    @staticmethod
    def join_blocks(blocks: List[List[str]]) -> List[str]:
        out: List[str] = []
        for block in blocks:
            if not block:
                continue
            if out:
                out.append("")
            out.extend(block)
        return out

    def body(self, children: Sequence[nodes.Node], indent: int) -> List[str]:
        return self.join_blocks([self.block(child, indent) for child in children])

    # -- block elements ----------------------------------------------------
    def block(self, node: nodes.Node, indent: int) -> List[str]:
        method = getattr(self, "do_" + node.__class__.__name__, None)
        if method is not None:
            return method(node, indent)
        if isinstance(node, (nodes.Invisible, nodes.system_message)):
            return []
        if isinstance(node, nodes.TextElement):
            return self.wrap(_inline_text(node), indent)
        return self.body(node.children, indent)

    def do_document(self, node: nodes.document, indent: int) -> List[str]:
        blocks: List[List[str]] = []
        children = list(node.children)
        if children and isinstance(children[0], nodes.title):
            title = _inline_text(children.pop(0))
            blocks.append([title.center(self.width).rstrip(), ""])
            if children and isinstance(children[0], nodes.subtitle):
                blocks[-1].insert(1, _inline_text(children.pop(0)).center(self.width).rstrip())
        blocks += [self.block(child, indent) for child in children]
        return self.join_blocks(blocks)

    def do_section(self, node: nodes.section, indent: int) -> List[str]:
        level = 0
        parent = node.parent
        while isinstance(parent, nodes.section):
            level += 1
            parent = parent.parent
        children = list(node.children)
        title = _inline_text(children.pop(0)) if children and isinstance(
            children[0], nodes.title) else ""
        if level == 0:
            heading = [title.upper()]
        else:
            heading = self.wrap(title, min(BODY_INDENT - 2 + STEP * (level - 1), 20))
        return self.join_blocks([heading, self.body(children, indent)])

    def do_paragraph(self, node: nodes.paragraph, indent: int) -> List[str]:
        return self.wrap(_inline_text(node), indent)

    def do_literal_block(self, node: nodes.literal_block, indent: int) -> List[str]:
        pad = " " * (indent + STEP)
        return [(pad + line).rstrip() for line in node.astext().splitlines()]

    do_doctest_block = do_literal_block

    def do_line_block(self, node: nodes.line_block, indent: int) -> List[str]:
        return [" " * indent + _inline_text(line) for line in _findall(node, nodes.line)]

    def do_block_quote(self, node: nodes.block_quote, indent: int) -> List[str]:
        return self.body(node.children, indent + STEP)

    def _list(self, items: Sequence[nodes.Node], markers: Sequence[str],
              indent: int) -> List[str]:
        blocks: List[List[str]] = []
        width = max(len(m) for m in markers) + 1 if markers else 2
        for item, marker in zip(items, markers):
            lines = self.body(item.children, indent + width)
            if lines:
                first = lines[0][indent + width:]
                lines[0] = " " * indent + marker.ljust(width) + first
            blocks.append(lines)
        # Items of one paragraph each stay together; longer items get air.
        if any(len(item.children) > 1 for item in items):
            return self.join_blocks(blocks)
        return [line for block in blocks for line in block]

    def do_bullet_list(self, node: nodes.bullet_list, indent: int) -> List[str]:
        return self._list(node.children, ["*"] * len(node.children), indent)

    def do_enumerated_list(self, node: nodes.enumerated_list, indent: int) -> List[str]:
        start = int(node.get("start", 1))
        markers = [f"{start + i}." for i in range(len(node.children))]
        return self._list(node.children, markers, indent)

    def do_definition_list(self, node: nodes.definition_list, indent: int) -> List[str]:
        blocks = []
        for item in node.children:
            term = " ".join(_inline_text(t) for t in item.children
                            if isinstance(t, (nodes.term, nodes.classifier)))
            block = self.wrap(term, indent)
            for part in item.children:
                if isinstance(part, nodes.definition):
                    block += self.body(part.children, indent + STEP)
            blocks.append(block)
        return self.join_blocks(blocks)

    def do_field_list(self, node: nodes.field_list, indent: int) -> List[str]:
        blocks = []
        for field in node.children:
            name = _inline_text(field[0])
            blocks.append(self.wrap(name + ":", indent) + self.body(field[1].children,
                                                                    indent + STEP))
        return self.join_blocks(blocks)

    def do_option_list(self, node: nodes.option_list, indent: int) -> List[str]:
        blocks = []
        column = indent + 17
        for item in node.children:
            group = item.next_node(nodes.option_group)
            names = ", ".join(_inline_text(opt) for opt in group.children)
            description = item.next_node(nodes.description)
            text = self.body(description.children, column) if description else []
            head = " " * indent + names
            if text and len(head) + 2 <= column:
                text[0] = head.ljust(column) + text[0][column:]
                blocks.append(text)
            else:
                blocks.append([head] + text)
        return self.join_blocks(blocks)

    def do_table(self, node: nodes.table, indent: int) -> List[str]:
        caption = node.next_node(nodes.title)
        rows: List[List[str]] = []
        header_rows = 0
        for part in _findall(node, (nodes.thead, nodes.tbody)):
            for row in part.children:
                rows.append([_inline_text(entry) for entry in row.children])
            if isinstance(part, nodes.thead):
                header_rows = len(rows)
        out: List[str] = []
        if caption is not None and caption.parent is node:
            out += self.wrap(_inline_text(caption).upper(), indent) + [""]
        if not rows:
            return out
        ncols = max(len(r) for r in rows)
        rows = [r + [""] * (ncols - len(r)) for r in rows]
        widths = [max(len(r[c]) for r in rows) for c in range(ncols)]
        # The last column wraps when the table is wider than the page.
        fixed = sum(widths[:-1]) + 2 * (ncols - 1) + indent
        last = max(self.width - fixed, 20)
        for k, row in enumerate(rows):
            cells = [row[c].ljust(widths[c]) for c in range(ncols - 1)]
            lead = " " * indent + "  ".join(cells) + ("  " if cells else "")
            wrapped = textwrap.wrap(row[-1], last) or [""]
            out.append((lead + wrapped[0]).rstrip())
            out += [(" " * len(lead) + more).rstrip() for more in wrapped[1:]]
            if k + 1 == header_rows:
                rule = "  ".join("-" * w for w in widths[:-1])
                rule += ("  " if ncols > 1 else "") + "-" * min(widths[-1], last)
                out.append(" " * indent + rule)
        return out

    def _admonition(self, node: nodes.Element, indent: int, label: str) -> List[str]:
        return self.join_blocks([self.wrap(label.upper() + ":", indent),
                                 self.body([c for c in node.children
                                            if not isinstance(c, nodes.title)],
                                           indent + STEP)])

    def do_note(self, node, indent):
        return self._admonition(node, indent, "Note")

    def do_warning(self, node, indent):
        return self._admonition(node, indent, "Warning")

    def do_admonition(self, node, indent):
        title = node.next_node(nodes.title)
        return self._admonition(node, indent, _inline_text(title) if title else "Note")

    def do_transition(self, node, indent):
        return [" " * indent + "-" * (self.width - 2 * indent)]

    def do_topic(self, node, indent):
        return []       # tables of contents make no sense in a terminal


class SpecHelpTranslator(nodes.NodeVisitor):
    """Collects the rendered text of a whole document."""

    def __init__(self, document: nodes.document) -> None:
        super().__init__(document)
        self.text = ""

    def visit_document(self, node: nodes.document) -> None:
        lines = _Renderer().block(node, BODY_INDENT)
        self.text = "\n".join(lines).rstrip() + "\n"
        raise nodes.SkipNode

    def unknown_visit(self, node: nodes.Node) -> None:
        raise nodes.SkipNode


class SpecHelpWriter(writers.Writer):
    """docutils writer producing spec's plain-text help format."""

    supported = ("spechelp",)
    output = None

    def translate(self) -> None:
        visitor = SpecHelpTranslator(self.document)
        self.document.walkabout(visitor)
        self.output = visitor.text


def render_text(source_path: str, destination_path: Optional[str] = None) -> str:
    """Render the page to spec's help format; write it when a path is given."""
    return docutils.core.publish_file(
        source_path=source_path, destination_path=destination_path,
        writer=SpecHelpWriter(), settings_overrides=dict(STRICT_SETTINGS))


def render_html(source_path: str, destination_path: Optional[str] = None) -> str:
    """Render the page to HTML with docutils' own writer."""
    return docutils.core.publish_file(
        source_path=source_path, destination_path=destination_path,
        writer=writers.get_writer_class("html")(),
        settings_overrides=dict(STRICT_SETTINGS, embed_stylesheet=True))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Render a reStructuredText help page "
                                                 "into spec's plain-text help format.")
    parser.add_argument("source", help="the .rst page, e.g. help/eiger.rst")
    parser.add_argument("-o", "--output", help="plain-text output (default: standard "
                                                    "output, unless only --html is asked)")
    parser.add_argument("--html", help="write HTML to this file")
    args = parser.parse_args(argv)
    try:
        if args.output is not None or args.html is None:
            text = render_text(args.source, args.output)
            if args.output is None:
                sys.stdout.write(text if isinstance(text, str) else text.decode("utf-8"))
        if args.html:
            render_html(args.source, args.html)
    except docutils.utils.SystemMessage as exc:
        print(f"{args.source}: docutils problem, nothing rendered: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.source}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
