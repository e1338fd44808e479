"""Turn a chapter (a MyST Markdown notebook) into a plain Jupyter notebook that reads well in Jupyter.

jupytext reads the chapter into cells (code cells keep their tags, no outputs); the Markdown cells are
then rewritten without Sphinx: roles become Markdown (``{cite}`` -> "(Gong and Lazebnik, 2011)",
``{ref}`` / ``{doc}`` / ``{numref}`` -> links into the published book, ``{eq}`` -> "Eq. (3.1)" with the
same number given to the equation by ``\\tag``, ``{term}`` -> italics, ``{glue:text}`` -> the value the
executed chapter computed), directives become blockquotes (admonitions, exercises), ``<details>``
(solutions), display math or a list of references (``{bibliography}``), and ``(label)=`` targets and
``%`` comments disappear. Everything the converter needs from the book build is passed in a `Resolver`,
which tools/student_book.py fills from the Sphinx environment.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field

ROLE = re.compile(r"\{(?P<role>[A-Za-z][\w:.+-]*)\}`(?P<content>[^`]*)`")
OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:.-]+)\}[ \t]*(?P<arg>.*?)[ \t]*$")
ROLE_OR_CODE = re.compile(ROLE.pattern + r"|(?P<code>`[^`]*`)")
TARGET = re.compile(r"^\s*\(([\w:.-]+)\)=\s*$")
LABELLED_MATH_END = re.compile(r"^(?P<before>.*?)\$\$\s*\((?P<label>[\w:.-]+)\)\s*$")
ADMONITIONS = {
    "note": "Note",
    "tip": "Tip",
    "hint": "Hint",
    "important": "Important",
    "warning": "Warning",
    "caution": "Caution",
    "attention": "Attention",
    "danger": "Danger",
    "error": "Error",
    "seealso": "See also",
}


@dataclass
class Resolver:
    """What the build knows and a Markdown cell does not. Every lookup may return None (then a fallback)."""

    docname: str = ""
    page_url: Callable[[str, str], str] = lambda docname, anchor="": (
        docname + ".html" + (f"#{anchor}" if anchor else "")
    )
    label: Callable[[str], tuple[str, str, str] | None] = lambda name: None  # -> (docname, anchor, title)
    equation: Callable[[str], str | None] = lambda name: None  # -> "3.1"
    figure: Callable[[str], str | None] = lambda name: None  # -> "3.2"
    doc_title: Callable[[str], str | None] = lambda docname: None
    citation: Callable[[str, bool], str | None] = lambda key, textual: None  # -> "Gong and Lazebnik, 2011"
    reference: Callable[[str], str | None] = lambda key: None  # -> one line of a reference list
    glue: Callable[[str], object] = lambda name: None
    cited: list[str] = field(default_factory=list)


def _split_title(content: str) -> tuple[str | None, str]:
    """`text <target>` -> ("text", "target"); `target` -> (None, "target")."""
    m = re.match(r"^(.*?)\s*<([^<>]+)>$", content.strip(), re.S)
    return (m.group(1).strip(), m.group(2).strip()) if m else (None, content.strip())


def _glue_text(value: object, fmt: str) -> str:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value.strip("'\"")
    try:
        return format(value, fmt) if fmt else str(value)
    except (TypeError, ValueError):
        return str(value)


def convert_role(role: str, content: str, r: Resolver) -> str:
    if role == "math":
        return f"${content}$"
    if role == "eq":
        number = r.equation(content)
        return f"Eq. ({number})" if number else f"Eq. ({content})"
    if role.startswith("cite"):
        keys = [k.strip() for k in content.split(",") if k.strip()]
        r.cited.extend(k for k in keys if k not in r.cited)
        textual = role in ("cite:t", "cite:ts", "cite:ct", "cite:cts")
        parts = [r.citation(k, textual) or k for k in keys]
        return "; ".join(parts) if textual else "(" + "; ".join(parts) + ")"
    if role in ("ref", "numref"):
        title, target = _split_title(content)
        found = r.label(target)
        if role == "numref":
            number = r.figure(target)
            text = (title or "Figure {number}").replace("{number}", number or "").replace("%s", number or "")
            if not title and not number:
                text = found[2] if found and found[2] else target
        else:
            text = title or (found[2] if found and found[2] else target)
        if found:
            return f"[{text}]({r.page_url(found[0], found[1])})"
        return f"*{text}*"
    if role == "doc":
        title, target = _split_title(content)
        base = r.docname.rsplit("/", 1)[0] if "/" in r.docname else ""
        docname = target.lstrip("/") if target.startswith("/") else "/".join(p for p in (base, target) if p)
        return f"[{title or r.doc_title(docname) or target}]({r.page_url(docname, '')})"
    if role == "term":
        title, target = _split_title(content)
        return f"*{title or target}*"
    if role.startswith("glue"):
        name, _, fmt = content.partition(":")
        value = r.glue(name.strip())
        return _glue_text(value, fmt) if value is not None else f"`{name.strip()}`"
    if role == "download":
        title, target = _split_title(content)
        return f"`{title or target}`"
    if role in ("sub", "sup"):
        return f"<{role}>{content}</{role}>"
    if role == "abbr":
        return _split_title(content.replace("(", "<", 1).replace(")", ">", 1))[0] or content
    return f"`{content}`"  # func, class, mod, meth, attr, code, command, file, kbd, ...


def convert_inline(text: str, r: Resolver) -> str:
    """Roles outside inline code and code blocks."""
    out, in_code_block = [], False
    for line in text.split("\n"):
        if re.match(r"^\s*(`{3,}|~{3,})", line):
            in_code_block = not in_code_block
            out.append(line)
            continue
        if in_code_block:
            out.append(line)
            continue
        # roles and `inline code` scanned left to right in one pass, so code spans stay as they are
        out.append(ROLE_OR_CODE.sub(lambda m: m["code"] or convert_role(m["role"], m["content"], r), line))
    return "\n".join(out)


def _body_and_options(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    i = 0
    if lines and lines[0].strip() == "---":
        end = next((j for j in range(1, len(lines)) if lines[j].strip() == "---"), None)
        if end is not None:
            for ln in lines[1:end]:
                key, _, val = ln.partition(":")
                if val:
                    options[key.strip()] = val.strip()
            i = end + 1
    while i < len(lines) and re.match(r"^\s*:[\w-]+:", lines[i]):
        m = re.match(r"^\s*:([\w-]+):\s*(.*)$", lines[i])
        options[m.group(1)] = m.group(2)
        i += 1
    return options, lines[i:]


def _quote(text: str) -> str:
    return "\n".join("> " + ln if ln.strip() else ">" for ln in text.strip("\n").split("\n"))


def _find_close(lines: list[str], start: int, fence: str) -> int:
    """Index of the line that closes the directive opened just before `start` (len(lines) if none)."""
    char, depth = fence[0], [len(fence)]
    for i in range(start, len(lines)):
        s = lines[i].strip()
        if s and set(s) == {char} and len(s) >= depth[-1]:
            depth.pop()
            if not depth:
                return i
        elif s.startswith(char * 3) and not set(s) == {char}:
            run = len(s) - len(s.lstrip(char))
            depth.append(run)
    return len(lines)


def convert_directive(name: str, arg: str, body_lines: list[str], r: Resolver) -> str:
    options, body = _body_and_options(body_lines)
    inner = convert_markdown("\n".join(body), r).strip("\n")
    if name == "math":
        label = options.get("label")
        number = r.equation(label) if label else None
        return "$$\n" + inner + (f"\n\\tag{{{number}}}" if number else "") + "\n$$"
    if name in ("code-block", "code", "sourcecode", "code-cell"):
        return f"```{arg}\n" + "\n".join(body) + "\n```"
    if name == "solution" or options.get("class", "").find("dropdown") >= 0:
        summary = "Solution" if name == "solution" else (arg or ADMONITIONS.get(name, name.title()))
        return f"<details><summary>{summary}</summary>\n\n{inner}\n\n</details>"
    if name == "exercise":
        return _quote(f"**Exercise{': ' + convert_inline(arg, r) if arg else ''}**\n\n{inner}")
    if name == "admonition" or name in ADMONITIONS:
        title = convert_inline(arg, r) if arg else ADMONITIONS.get(name, "Note")
        return _quote(f"**{title}**\n\n{inner}")
    if name == "bibliography":
        refs = [r.reference(k) or k for k in r.cited]
        return "**References**\n\n" + "\n".join(f"- {ref}" for ref in refs) if refs else ""
    if name in ("figure", "image"):
        caption = inner or options.get("alt", "")
        return f"![{options.get('alt', caption)}]({arg})" + (f"\n\n*{caption}*" if caption else "")
    if name in ("tableofcontents", "glossary", "toctree", "contents"):
        return inner
    if name in ("epigraph", "pull-quote", "highlights", "topic", "sidebar", "margin", "card"):
        return _quote((f"**{convert_inline(arg, r)}**\n\n" if arg else "") + inner)
    return _quote(f"**{arg or name}**\n\n{inner}")


def convert_markdown(text: str, r: Resolver) -> str:
    """A Markdown cell of a MyST notebook -> Markdown that Jupyter renders."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    plain: list[str] = []

    def flush():
        if plain:
            out.append(convert_inline("\n".join(plain), r))
            plain.clear()

    in_math = False
    while i < len(lines):
        line = lines[i]
        m = OPEN.match(line)
        if m and not in_math:
            flush()
            close = _find_close(lines, i + 1, m["fence"])
            body = [ln[len(m["indent"]) :] if ln.startswith(m["indent"]) else ln for ln in lines[i + 1 : close]]
            out.append(convert_directive(m["name"], m["arg"], body, r))
            i = close + 1
            continue
        if TARGET.match(line) or re.match(r"^\s*%", line):
            i += 1
            continue
        stripped = line.strip()
        end = LABELLED_MATH_END.match(line)
        if end and (in_math or end["before"].strip().startswith("$$")):
            # the end of a labelled display formula: number it as the book does
            number = r.equation(end["label"])
            tag = f"\\tag{{{number}}}" if number else ""
            before = end["before"]
            plain.append(f"{before}{tag}$$" if before.strip() else (f"{tag}\n$$" if tag else "$$"))
            in_math = False
            i += 1
            continue
        if stripped.startswith("$$") or (in_math and stripped.endswith("$$")):
            if in_math or not (len(stripped) > 2 and stripped.endswith("$$")):  # `$$ x $$` on one line stays
                in_math = not in_math
        plain.append(line)
        i += 1
    flush()
    return "\n".join(out)


def leftover_markup(text: str) -> list[str]:
    """MyST that a Jupyter Markdown renderer would show raw (roles, directives, targets)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found = [m.group(0) for m in ROLE_OR_CODE.finditer(prose) if m["role"]]
    found += [ln for ln in text.split("\n") if OPEN.match(ln) or TARGET.match(ln)]
    found += re.findall(r"\$\$\s*\([\w:.-]+\)", text)
    return found
