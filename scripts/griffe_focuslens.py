"""A griffe extension for the docs build (``mkdocs.yml``): focuslens docstrings as pages.

It changes nothing in the package; it rewrites docstrings in memory, before griffe
parses them, inside ``mkdocs build`` only:

* ``Example:`` headings become ``Examples:``, the heading griffe reads as an examples
  section (``>>>`` lines rendered as code, not as prose);
* Sphinx roles (``:func:`x```, ``:class:`~a.B```, ...) become cross-references to the
  API page. A name is resolved like Python would from where it is written (the class,
  then the module, then an absolute path; re-exports such as ``focuslens.evaluate``
  lead to the object they name). A reference to an object that does not exist is a
  warning, so ``mkdocs build --strict`` fails on it; a reference to an existing object
  that the API page does not render (private, no docstring, module not on the page)
  is kept as plain code.

The modules the API page renders are read from its ``::: module`` lines
(``docs/api.md`` next to this folder, or the ``api_page`` option).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)(\(\))?`")
_DIRECTIVE = re.compile(r"^:::\s*([\w.]+)\s*$", re.MULTILINE)


def _lookup(root: griffe.Object, path: str) -> griffe.Object | None:
    """The object at a dotted path below ``root`` (``root`` included), aliases followed."""
    parts = path.split(".")
    if parts[0] != root.name:
        return None
    obj: Any = root
    try:
        for part in parts[1:]:
            obj = obj.members[part]
            if obj.is_alias:
                obj = obj.final_target
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return obj


def _exists_at_runtime(path: str) -> bool:
    """Whether ``a.b.c`` names something Python can import (names griffe cannot see,
    such as those bound by tuple unpacking)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return False
        return True
    return False


class FocuslensDocstrings(griffe.Extension):
    """Rewrite ``Example:`` headings and Sphinx roles in every docstring of a package."""

    def __init__(self, api_page: str | None = None) -> None:
        super().__init__()
        page = Path(api_page) if api_page else Path(__file__).parents[1] / "docs" / "api.md"
        text = page.read_text(encoding="utf-8") if page.is_file() else ""
        self.rendered_modules = set(_DIRECTIVE.findall(text))

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in self._walk(pkg):
            doc = obj.docstring
            if doc is None:
                continue
            value = _EXAMPLE.sub(r"\1Examples:", doc.value)
            doc.value = _ROLE.sub(lambda m, o=obj: self._role(m, o, pkg), value)

    def _walk(self, obj: griffe.Object):
        yield obj
        for member in obj.members.values():
            if not member.is_alias:
                yield from self._walk(member)

    def _resolve(self, name: str, where: griffe.Object, pkg: griffe.Module):
        scopes = []
        scope: Any = where
        while scope is not None:
            if scope.is_class or scope.is_module:
                scopes.append(scope.path)
            scope = scope.parent
        for base in scopes:
            found = _lookup(pkg, f"{base}.{name}")
            if found is not None:
                return found
        return _lookup(pkg, name)

    def _runtime(self, name: str, where: griffe.Object) -> bool:
        scope: Any = where
        while scope is not None:
            if (scope.is_class or scope.is_module) and _exists_at_runtime(f"{scope.path}.{name}"):
                return True
            scope = scope.parent
        return _exists_at_runtime(name)

    def _rendered(self, target: griffe.Object) -> bool:
        path = target.path
        if any(part.startswith("_") for part in path.split(".")):
            return False
        if not target.is_module and not target.docstring:
            return False
        module = target if target.is_module else target.module
        return module.path in self.rendered_modules

    def _role(self, match: re.Match, where: griffe.Object, pkg: griffe.Module) -> str:
        tilde, name, call = match.group(1), match.group(2), match.group(3) or ""
        shown = (name.rsplit(".", 1)[-1] if tilde else name) + call
        target = self._resolve(name, where, pkg)
        if target is None:
            ours = name.split(".")[0] == pkg.name or "." not in name
            if ours and not self._runtime(name, where):
                line = where.docstring.lineno if where.docstring else where.lineno
                griffe.logger.warning(
                    f"{where.filepath}:{line}: docstring of {where.path} refers to "
                    f"{name!r}, which does not exist"
                )
            return f"`{shown}`"
        if not self._rendered(target):
            return f"`{shown}`"
        return f"[`{shown}`][{target.path}]"
