"""The examples' tabs as FastAPI's site shows them, with markdown-include-variants 0.0.8.

FastAPI's examples are ``tutorialNNN.py`` (with ``Annotated``) and
``tutorialNNN_non_an.py`` (the older default-value style). The newest
markdown-include-variants on the package index, 0.0.8, knows neither name: it shows
each ``{* ../../docs_src/... *}`` include as one tab labelled "Python 3.8+", and
never the ``_non_an`` variant. This extension lets it render the include (the
highlighted lines, ``ln[...]`` parts, the full file preview), then names the tab
after the oldest Python the package supports and adds the ``_non_an`` variant as
its own tab under "Other versions and variants", with the tip FastAPI's site gives
it.

Configuration: ``python``, the oldest Python the package supports ("3.11"), which
scripts/docs.py reads from the package's ``requires-python``.
"""

import re
from pathlib import Path
from typing import Any

from markdown import Extension, Markdown
from markdown_include_variants._main import IncludeVariantsPreprocessor, re_line

NON_ANNOTATED = "_non_an"
# The label markdown-include-variants 0.0.8 gives a file without a version suffix.
UNVERSIONED_TAB = "//// tab | Python 3.8+"


class TabsPreprocessor(IncludeVariantsPreprocessor):
    def __init__(self, md: Markdown, python: str) -> None:
        super().__init__(md)
        self.label = f"Python {python}+"

    def run(self, lines: list[str]) -> list[str]:
        new_lines: list[str] = []
        for line in lines:
            match = re.match(re_line, line)
            if not match:
                new_lines.append(line)
                continue
            path = Path(match.group(1))
            title = self.label
            if path.stem.endswith(NON_ANNOTATED):
                title += " - non-Annotated"
            new_lines.extend(
                f"//// tab | {title}" if block_line == UNVERSIONED_TAB else block_line
                for block_line in super().run([line])
            )
            variant = path.with_name(path.stem + NON_ANNOTATED + path.suffix)
            if variant.is_file():
                new_lines.extend(
                    [
                        "///// details | 🤓 Other versions and variants",
                        "",
                        f"//// tab | {self.label} - non-Annotated",
                        "",
                        "/// tip",
                        "",
                        "Prefer to use the `Annotated` version if possible.",
                        "",
                        "///",
                        "",
                        "```python",
                        f"{{!{variant}!}}",
                        "```",
                        "////",
                        "",
                        "/////",
                        "",
                    ]
                )
        return new_lines


class TabsExtension(Extension):
    def __init__(self, **kwargs: Any) -> None:
        self.config = {
            "python": ["", "the oldest Python the package supports, e.g. 3.11"]
        }
        super().__init__(**kwargs)

    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 (Markdown's name)
        python = self.getConfig("python")
        if not re.fullmatch(r"3\.\d+", python):
            raise ValueError(
                f"docs_include_variants: python must be a version such as 3.11, "
                f"not {python!r}"
            )
        # In place of markdown-include-variants' own preprocessor.
        md.preprocessors.register(TabsPreprocessor(md, python), "include_variants", 110)


def makeExtension(**kwargs: Any) -> TabsExtension:  # noqa: N802 (Markdown's name)
    return TabsExtension(**kwargs)
