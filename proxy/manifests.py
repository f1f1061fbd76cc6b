"""Kubernetes YAML streams for `serving-sidecar inject`: split into documents, transform each, write back.

Rules:
1. A document the transformation leaves equal is written back as its original text, comments and
   formatting included; a changed one keeps its marker and leading comments and is dumped in block style,
   keys in their original order, multi-line strings as literal blocks (comments inside it are lost, as
   with any YAML round trip).
2. The stream is parsed whole first, so a syntax error is reported with its line in the input; then it is
   split on document markers (`---`, `...` at the start of a line), which YAML forbids inside a scalar.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

from proxy.errors import InjectError

_START = re.compile(r"^---(\s|$)")
_END = re.compile(r"^\.\.\.(\s|$)")


def transform_stream(text: str, transform: Callable[[Any], Any]) -> str:
    """`text` with `transform` applied to each document (rule 1); InjectError if it is not YAML."""
    try:
        parsed = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise InjectError(f"not valid YAML: {_problem(error)}") from error
    chunks = split_documents(text)
    loaded = [yaml.safe_load(chunk) for chunk in chunks]
    if [doc for doc in loaded if doc is not None] != parsed:
        raise InjectError("could not split the YAML stream into its documents (directives or tags in use?)")
    out = []
    for chunk, doc in zip(chunks, loaded, strict=True):
        changed = transform(doc) if doc is not None else None
        out.append(chunk if doc is None or changed == doc else _head(chunk) + _dump(changed))
    return "".join(out)


def _head(chunk: str) -> str:
    """A document's marker line and the comment lines before its content, kept when the rest is rewritten."""
    head = []
    for number, line in enumerate(chunk.splitlines(keepends=True)):
        if number == 0 and _START.match(line):
            bare = line[3:].strip()
            head.append(line if not bare or bare.startswith("#") else "---\n")
        elif not line.strip() or line.lstrip().startswith("#"):
            head.append(line)
        else:
            break
    return "".join(head)


def split_documents(text: str) -> list[str]:
    """The stream's documents as text, each with its own markers and comments; joined they give `text` back."""
    chunks: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if _START.match(line) and current:
            chunks.append("".join(current))
            current = []
        current.append(line)
        if _END.match(line):
            chunks.append("".join(current))
            current = []
    if current:
        chunks.append("".join(current))
    return chunks


def _problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    return str(error)


class _Dumper(yaml.SafeDumper):
    """Block style, sequences indented under their key (as kubectl writes them), no line folding."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def _dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 30)
